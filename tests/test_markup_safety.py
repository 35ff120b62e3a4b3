"""Text from files is shown literally, never read as rich markup, in every terminal view.

A backlog title ``Fix the [/] parser`` used to crash ``oodatcaa log`` with a ``MarkupError``; a
``[bold red]`` in a title vanished into styling. Each view is run through ``main([...])`` on a
workspace whose titles, log rows, error text, reports, pid files and even its path carry markup.
"""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime

import pytest

from oodatcaa.cli.main import main
from oodatcaa.core.eventlog import EventLog, LogEntry
from oodatcaa.core.failures import Failure
from oodatcaa.core.store import QueueStore
from oodatcaa.core.workspace import Workspace
from support import git_repo

TITLE = "Fix the [/] parser and [bold red]this[/bold red]"
ERROR = "job died: [/] unexpected [red]tag[/red] in output"
#: The repository's directory name: paths in messages and tables must survive too.
DIRNAME = "repo [b]x[red]y"


@pytest.fixture(autouse=True)
def wide(monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")


@pytest.fixture
def ws(tmp_path, capsys) -> Workspace:
    """A workspace with one sprint and story titled :data:`TITLE`, a failure, a log row and a report."""
    repo = git_repo(tmp_path / DIRNAME)
    assert main(["-C", str(repo), "init"]) == 0
    backlog = tmp_path / "backlog.md"
    backlog.write_text(f"# {TITLE}\n\n### T001: {TITLE}\n**Type:** Story\n\n{TITLE}\n\n"
                       "```job\nkind: command\nrun: echo hi\n```\n\n"
                       "**Acceptance Criteria:**\n- [ ] [/] ok `metric: command.returncode == 0` (critical)\n")
    assert main(["-C", str(repo), "sprint", "new", "--backlog", str(backlog)]) == 0
    ws = Workspace(repo)
    store = QueueStore.for_workspace(ws)
    with store.transaction("tester-[/]") as tx:
        tx.queue.task("T001").failure = Failure.of("job_error", ERROR)
        tx.log("T001", "note", f"{TITLE}: {ERROR}")
    EventLog(ws.agent_log_path, ws.lock_path("agent_log")).append(
        [LogEntry(datetime(2026, 1, 1, tzinfo=UTC), "agent-[bold]x[/bold]", "T001", "[/] -> [red]", TITLE)])
    report = ws.report_dir("T001") / "planner.md"
    report.parent.mkdir(parents=True, exist_ok=True)
    report.write_text(f"# {TITLE}\n\n- **Error:** {ERROR}\n\n## [/] section [bold]x[/bold]\n\nplain [/] text\n")
    capsys.readouterr()
    return ws


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


def test_status_shows_titles_literally(ws, capsys):
    code, out, _ = run(capsys, "-C", str(ws.root), "status")
    assert code == 0
    assert TITLE in out and "[in_progress]" in out
    code, out, _ = run(capsys, "-C", str(ws.root), "status", "--json")
    data = json.loads(out)
    assert data["tasks"][0]["title"] == TITLE and data["tasks"][0]["last_error"] == ERROR


def test_log_shows_titles_agents_and_changes_literally(ws, capsys):
    code, out, _ = run(capsys, "-C", str(ws.root), "log")
    assert code == 0
    assert TITLE in out and ERROR in out
    assert "agent-[bold]x[/bold]" in out and "[/] -> [red]" in out and "tester-[/]" in out


def test_report_keeps_brackets_in_headings_and_text(ws, capsys):
    code, out, _ = run(capsys, "-C", str(ws.root), "report", "T001")
    assert code == 0
    for needle in (TITLE, ERROR, "[/] section [bold]x[/bold]", "plain [/] text"):
        assert needle in out, needle


def test_agents_status_shows_pid_file_values_literally(ws, capsys):
    ws.agents_state_dir.mkdir(parents=True, exist_ok=True)
    # our own pid: alive, but not an agent's command line, so reported as not running
    (ws.agents_state_dir / "odd.pid").write_text(json.dumps(
        {"owner": "builder-[/]", "role": "[bold]builder[/bold]", "pid": os.getpid(), "started_at": "[/]2026",
         "log": "x"}))
    code, out, _ = run(capsys, "-C", str(ws.root), "agents", "status")
    assert code == 0
    for needle in ("builder-[/]", "[bold]builder[/bold]", "[/]2026", "no"):
        assert needle in out, needle


def test_queue_commands_show_paths_and_values_literally(ws, capsys):
    code, out, _ = run(capsys, "-C", str(ws.root), "queue", "history")
    assert code == 0 and DIRNAME in out
    data = json.loads(ws.queue_path.read_text())
    data["tasks"][0]["status"] = "[bold]teleported[/]"
    bad = ws.dir / "bad [bold].json"
    bad.write_text(json.dumps(data))
    code, _, err = run(capsys, "queue", "validate", str(bad))
    assert code == 1
    assert "'[bold]teleported[/]' is not one of" in err and "bad [bold].json" in err and DIRNAME in err


def test_error_messages_are_literal(tmp_path, capsys):
    outside = tmp_path / "not a repo [bold]x[red]"
    outside.mkdir()
    code, _, err = run(capsys, "-C", str(outside), "status")
    assert code == 2
    assert "not a repo [bold]x[red]" in err.replace("\n", "")


def test_run_prints_the_negotiators_message_literally(ws, capsys, monkeypatch):
    import oodatcaa.roles.base as base
    import oodatcaa.roles.negotiator as negotiator

    results = iter([(0, f"sprint completed: {TITLE}"), (3, f"stuck: T001 {TITLE} needs a person: {ERROR}")])

    class FakeNegotiator:
        def __init__(self, ctx, **kwargs):
            pass

        def run(self):
            return next(results)

    monkeypatch.setattr(negotiator, "Negotiator", FakeNegotiator)
    monkeypatch.setattr(base, "install_signal_handlers", lambda ctx: None)
    code, out, _ = run(capsys, "-C", str(ws.root), "run")
    assert code == 0 and f"sprint completed: {TITLE}" in out
    code, _, err = run(capsys, "-C", str(ws.root), "run")
    assert code == 3 and f"error: stuck: T001 {TITLE} needs a person: {ERROR}" in err


def test_demo_output_is_literal(ws, capsys, monkeypatch, tmp_path):
    import oodatcaa.demo as demo

    queue = QueueStore.for_workspace(ws).read()
    # the figures show each job kind's headline metrics; another key (a job's own) is not shown at all
    queue.tasks[0].metrics = {"eval.loss": 0.5, "[red]loss[/red]": 0.5}

    def fake_run_demo(path, *, model=None, max_seconds=None, progress=None):
        progress(f"preparing [/] {TITLE}")
        return demo.DemoOutcome(code=3, message=ERROR, queue=queue, wall_seconds=1.0, root=ws.root)

    monkeypatch.setattr(demo, "run_demo", fake_run_demo)
    code, out, err = run(capsys, "demo", str(tmp_path / "d"))
    assert code == 3
    assert f"preparing [/] {TITLE}" in out and TITLE in out  # progress line and the table's title
    assert "T001 needs_plan — loops 0 — eval.loss=0.5" in out and "[red]loss" not in out
    assert f"demo FAILED in 1 s: {ERROR}" in err
    assert DIRNAME in out  # the inspect line

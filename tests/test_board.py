"""Issue 10 part 1 (partial): the board's snapshot, ``watch --once``, no workspace, a small terminal."""

from __future__ import annotations

import io
import json
import os
import shlex
import shutil
import subprocess
import sys
import time

import pytest
from rich.console import Console

from oodatcaa.board.frame import frame
from oodatcaa.board.live import watch
from oodatcaa.board.snapshot import take_snapshot
from oodatcaa.cli.main import main
from oodatcaa.core.workspace import find_workspace
from test_cli import _sprint_with_a_long_title


def test_watch_once_prints_one_frame_and_exits_0(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "80")
    repo = _sprint_with_a_long_title(tmp_path, capsys, "board [/] sprint")
    assert main(["-C", str(repo), "watch", "--once"]) == 0
    out = capsys.readouterr().out
    assert "board [/] sprint" in out and "T001" in out and "agents" in out and "log" in out
    assert max(len(line) for line in out.splitlines()) <= 80


def test_watch_without_a_workspace_gives_the_status_error(tmp_path, capsys):
    assert main(["-C", str(tmp_path), "status"]) != 0
    status_err = capsys.readouterr().err
    assert main(["-C", str(tmp_path), "watch", "--once"]) != 0
    assert capsys.readouterr().err == status_err and status_err


def test_snapshot_rows_and_a_small_terminal(tmp_path, capsys):
    repo = _sprint_with_a_long_title(tmp_path, capsys, "snap")
    ws = find_workspace(repo)
    snap = take_snapshot(ws)
    assert [r.id for r in snap.items] == ["T001"] and snap.items[0].loops == 0 and snap.agents == []
    small = Console(file=io.StringIO(), width=40, height=10)
    assert watch(ws, small, once=False) == 1
    assert "terminal too small" in small.file.getvalue()  # type: ignore[attr-defined]
    wide = Console(file=io.StringIO(), width=80, record=True)
    wide.print(frame(snap))
    assert "(no agents recorded)" in wide.export_text()


def test_board_app_pilot_keys(tmp_path, capsys):
    # run_test under asyncio.run: no async pytest plugin is a dependency
    import asyncio

    from oodatcaa.board.app import BoardApp

    repo = _sprint_with_a_long_title(tmp_path, capsys, "pilot sprint")
    app = BoardApp(find_workspace(repo))
    asyncio.run(_drive(app))


async def _drive(app):
    from oodatcaa.board.app import ReportsScreen

    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.pause()
        assert app.selected_story() == "T001"
        await pilot.press("down", "up", "a")
        await pilot.pause()
        assert "T001" in str(app.query_one("#message").render())  # refused: not awaiting approval, named
        await pilot.press("enter")
        await pilot.pause()
        assert isinstance(app.screen, ReportsScreen)
        await pilot.press("escape", "q")


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux is not installed (apt-get install tmux)")
def test_watch_in_a_real_80x24_terminal_under_tmux(tmp_path, capsys):
    repo = _sprint_with_a_long_title(tmp_path, capsys, "tmux sprint")
    session = f"oodatcaa-board-{os.getpid()}"
    command = f"{shlex.quote(sys.executable)} -m oodatcaa -C {shlex.quote(str(repo))} watch"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    subprocess.run(["tmux", "new-session", "-d", "-x", "80", "-y", "24", "-s", session, command], check=True, env=env)
    try:
        screen = ""
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and "T001" not in screen:
            time.sleep(0.5)
            screen = subprocess.run(["tmux", "capture-pane", "-p", "-t", session], capture_output=True,
                                    text=True).stdout
        assert "tmux sprint" in screen and "T001" in screen, screen
        assert "Traceback" not in screen
        subprocess.run(["tmux", "send-keys", "-t", session, "q"], check=True)
        time.sleep(1.5)
        alive = subprocess.run(["tmux", "has-session", "-t", session], capture_output=True).returncode == 0
        assert not alive, "q did not quit the board"
    finally:
        subprocess.run(["tmux", "kill-session", "-t", session], capture_output=True)


# -- running jobs, criteria, and the SVG snapshot ------------------------------------------------


def _running_step(tmp_path):
    """A workspace whose story T001 has its builder step claimed (in progress, under a lease)."""
    from oodatcaa.core.criteria import MetricCheck
    from oodatcaa.core.leases import claim_next
    from oodatcaa.core.models import Criterion
    from oodatcaa.core.statuses import TaskStatus as S
    from support import add_steps, sample_queue, store_with, workspace

    ws = workspace(tmp_path)
    queue = sample_queue(1)
    task = add_steps(queue.tasks[0])
    task.status = S.IN_PROGRESS
    task.acceptance_criteria.append(Criterion(id="AC2", text="memory", check=MetricCheck(
        kind="metric", metric="train.peak_memory_gb", op="<=", value=1.0)))
    queue.sprint.exit_criteria = ["T001 merged"]
    store = store_with(ws, queue)
    claim = claim_next(store, "builder", "builder-1", ttl_seconds=600, wip_limit=1)
    assert claim is not None and claim.item_id == "T001-B01"
    return ws, store


def test_running_job_row_reads_metrics_and_marks_torn_and_nan_lines(tmp_path):
    from oodatcaa.board.jobs import metrics_path, sparkline

    ws, _store = _running_step(tmp_path)
    path = metrics_path(ws, "T001-B01", 1)
    path.parent.mkdir(parents=True)
    lines = ['{"event": "start", "total_iterations": 100}']
    for it, loss in ((10, 3.0), (20, 2.5), (30, float("nan")), (40, 2.0)):
        lines.append(json.dumps({"event": "train", "iteration": it, "train_loss": loss, "tokens_per_second": 1234.5,
                                 "iterations_per_second": 2.0, "peak_memory_gb": 0.5 + it / 100}))
    path.write_text("\n".join(lines) + '\n{"event": "train", "iter', encoding="utf-8")  # NaN line, torn last line
    snap = take_snapshot(ws)
    [job] = snap.jobs
    assert job.step_id == "T001-B01" and (job.step, job.total) == (40, 100)
    assert job.losses == (3.0, 2.5, 2.0) and job.last_loss == 2.0
    assert job.peak_memory_gb == pytest.approx(0.9) and job.target_gb == 1.0
    assert job.eta_s == pytest.approx(30.0) and job.tokens_per_second == 1234.5
    assert job.skipped == 2 and any("torn" in p for p in job.problems) and any("non-finite" in p for p in job.problems)
    console = Console(file=io.StringIO(), width=80, record=True)
    console.print(frame(snap))
    text = console.export_text()
    assert "running jobs" in text and "40/100" in text and "2.000" in text and "0.90/1.00 GB" in text
    assert "2 line(s) skipped" in text and sparkline(job.losses, 12) in text
    assert "EC1" in text and "not checked" in text and "T001 merged" in text
    assert sparkline([1.0, 2.0, 3.0]) == "▁▅█" and sparkline([]) == "" and sparkline([2.0, 2.0]) == "▁▁"


def test_running_job_without_metrics_yet_is_shown_without_a_problem(tmp_path):
    ws, _store = _running_step(tmp_path)
    [job] = take_snapshot(ws).jobs
    assert job.losses == () and job.skipped == 0 and job.peak_memory_gb is None


def test_exit_criteria_states_kept_by_the_negotiator_show_on_the_board(tmp_path):
    from oodatcaa.board.snapshot import criterion_rows
    from oodatcaa.core.models import CriterionBrief

    ws, store = _running_step(tmp_path)
    with store.transaction("negotiator") as tx:
        tx.queue.sprint.exit_states = [CriterionBrief(id="EC1", text="T001 merged", state="unmet", reason="T001 is in_progress")]
    rows = criterion_rows(store.read())
    assert [(r.id, r.state) for r in rows] == [("EC1", "unmet")]


def _fixed_snapshot():
    """A hand-made snapshot (fixed time, agents, jobs, criteria, log): the board's SVG is then byte-stable."""
    from datetime import UTC, datetime

    from oodatcaa.board.jobs import JobRow
    from oodatcaa.board.snapshot import AgentRow, CriterionRow, ItemRow, Snapshot
    from oodatcaa.core.eventlog import LogEntry

    at = datetime(2026, 12, 2, 12, 0, 0, tzinfo=UTC)
    progress = {"step": 40, "total": 100, "loss": 2.0, "tokens_per_second": 1234.0, "eta_s": 30.0}
    return Snapshot(
        taken_at=at, sprint="SPRINT-2026-001 — fine-tune [in_progress]", objective="objective 50.0 % (1/2 met)",
        agents=[AgentRow("builder-1", "builder", 4242, True, "T001-B01", 3.0),
                AgentRow("tester-1", "tester", 4243, True, None, None),
                AgentRow("planner-1", "planner", 4244, False, None, None)],
        items=[ItemRow("T001", "story", "in_progress", None, None, 1, 0, ()),
               ItemRow("T001-B01", "build", "in_progress", "builder-1", 597.0, 1, None, (), progress),
               ItemRow("T002", "story", "awaiting_test", None, None, 1, 1, ("T001",), awaiting_approval=True)],
        jobs=[JobRow("T001-B01", "lora_train", 40, 100, (3.0, 2.5, 2.2, 2.0), 1234.0, 0.9, 1.0, 30.0, 1, ("torn",))],
        criteria=[CriterionRow("SC1", "adapter beats base", "met"), CriterionRow("EC1", "T001 merged", "unmet")],
        log=[LogEntry(at, "builder-1", "T001-B01", "ready -> in_progress", "claimed")])


def test_board_svg_snapshot_at_80x24(tmp_path, capsys, snap_compare):
    # the expected SVG is tests/__snapshots__/test_board/; after a deliberate change to the board:
    # pytest tests/test_board.py --snapshot-update (textual is pinned in the test extra for this)
    from oodatcaa.board.app import BoardApp

    repo = _sprint_with_a_long_title(tmp_path, capsys, "unused")
    app = BoardApp(find_workspace(repo), source=_fixed_snapshot)
    assert snap_compare(app, terminal_size=(80, 24), press=["down"])

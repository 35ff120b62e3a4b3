"""`oodatcaa sprint new` on backlogs in the original format: estimates, links, statuses, warnings and --strict."""

from __future__ import annotations

import shutil
from datetime import date
from pathlib import Path

from oodatcaa.cli.main import main
from oodatcaa.core.statuses import TaskStatus as S
from oodatcaa.core.store import QueueStore
from oodatcaa.core.workspace import Workspace
from support import git_repo

FIXTURE = Path(__file__).resolve().parent / "fixtures" / "original_backlog.md"


def _repo(tmp_path: Path) -> Path:
    repo = git_repo(tmp_path / "r")
    assert main(["-C", str(repo), "init"]) == 0
    return repo


def _queue(repo: Path):
    return QueueStore.for_workspace(Workspace(repo)).read()


def test_sprint_new_takes_the_original_backlog(tmp_path, capsys):
    repo = _repo(tmp_path)
    backlog = tmp_path / "sprint4.md"
    shutil.copy(FIXTURE, backlog)
    capsys.readouterr()
    assert main(["-C", str(repo), "sprint", "new", "--backlog", str(backlog), "--strict"]) == 0
    assert "warning" not in capsys.readouterr().err
    q = _queue(repo)
    sprint = q.sprint
    assert (sprint.start_date, sprint.target_date) == (date(2025, 10, 5), date(2025, 10, 15))
    assert "Critical Path: T001 → T002 → T003" in sprint.notes and "Total Items: 4" in sprint.notes
    t = {task.id: task for task in q.tasks}
    assert (t["T001"].estimate.low_minutes, t["T001"].estimate.high_minutes, t["T001"].estimate.source) == (45, 45, "backlog")
    assert (t["T002"].estimate.low_minutes, t["T002"].estimate.high_minutes) == (120, 180)
    # no Estimated Time: complexity L, 4-8 h + 30 %
    assert (t["T003"].estimate.low_minutes, t["T003"].estimate.high_minutes, t["T003"].estimate.source) == (
        312, 624, "complexity")
    assert t["T002"].objective_links[1] == "OBJECTIVE.md → Memory → Peak under 16 GB"
    # written blocked: planned first like every story; the promotion keeps it blocked on T001
    assert (t["T002"].status, t["T002"].backlog_status, t["T002"].dependencies) == (S.NEEDS_PLAN, "blocked", ["T001"])
    assert (t["T004"].status, t["T004"].backlog_status) == (S.CANCELLED, "cancelled")
    assert (t["T001"].status, t["T003"].status) == (S.NEEDS_PLAN, S.NEEDS_PLAN)


def test_unknown_field_is_printed_as_a_warning_and_refused_under_strict(tmp_path, capsys):
    repo = _repo(tmp_path)
    backlog = tmp_path / "b.md"
    backlog.write_text("### T001: [bold]x[/bold]\n**Type:** Story\n**Owner:** [red]ana[/red]\n", encoding="utf-8")
    capsys.readouterr()
    assert main(["-C", str(repo), "sprint", "new", "--backlog", str(backlog), "--strict"]) == 2
    err = capsys.readouterr().err
    assert f"{backlog}:3: unknown field **Owner:** in T001" in err and "--strict" in err
    assert not Workspace(repo).queue_path.exists()  # nothing written

    assert main(["-C", str(repo), "sprint", "new", "--backlog", str(backlog)]) == 0
    err = capsys.readouterr().err
    assert f"warning: {backlog}:3: unknown field **Owner:** in T001 is ignored" in err
    assert [task.id for task in _queue(repo).tasks] == ["T001"]


def test_items_written_done_are_left_out_and_satisfy_dependencies(tmp_path, capsys):
    repo = _repo(tmp_path)
    backlog = tmp_path / "b.md"
    backlog.write_text("### T001: a\n**Status:** done\n\n### T002: b\n**Dependencies:** T001\n**Complexity:** M\n",
                       encoding="utf-8")
    assert main(["-C", str(repo), "sprint", "new", "--backlog", str(backlog)]) == 0
    assert "T001 is written 'done'" in capsys.readouterr().err
    [t2] = _queue(repo).tasks
    assert (t2.id, t2.dependencies, t2.estimate.low_minutes, t2.estimate.high_minutes) == ("T002", [], 144, 288)


def test_a_backlog_of_done_items_is_refused(tmp_path, capsys):
    repo = _repo(tmp_path)
    backlog = tmp_path / "b.md"
    backlog.write_text("### T001: a\n**Status:** Completed\n", encoding="utf-8")
    assert main(["-C", str(repo), "sprint", "new", "--backlog", str(backlog)]) == 2
    assert "every item is written done" in capsys.readouterr().err


def test_dependency_on_a_cancelled_item_is_a_warning(tmp_path, capsys):
    repo = _repo(tmp_path)
    backlog = tmp_path / "b.md"
    backlog.write_text("### T001: a\n**Status:** cancelled\n\n### T002: b\n**Dependencies:** T001\n", encoding="utf-8")
    assert main(["-C", str(repo), "sprint", "new", "--backlog", str(backlog)]) == 0
    assert f"{backlog}:4: T002 depends on T001, written cancelled" in capsys.readouterr().err

"""The sprint loop without agents: ``sprint complete``, the next sprint, story IDs across sprints, carry-over,
the roadmap and its refusals (the agents' part is in ``test_roadmap_e2e.py``)."""

from __future__ import annotations

from pathlib import Path

import pytest

from oodatcaa.archive import archived_sprints
from oodatcaa.cli.main import main
from oodatcaa.closing import complete_sprint
from oodatcaa.core.errors import BacklogError, WorkspaceError
from oodatcaa.core.leases import claim_next
from oodatcaa.core.objective import ObjectiveError
from oodatcaa.core.statuses import SprintStatus
from oodatcaa.core.store import QueueStore
from oodatcaa.core.workspace import Workspace
from oodatcaa.roadmap import EXIT_ROADMAP_DONE, next_backlog, run_until_objective
from oodatcaa.sprints import new_sprint
from support import S, git, merge_story, workspace


def item(n: int, deps: str = "None", status: str | None = None) -> str:
    written = f"**Status:** {status}  " if status else ""
    return (f"### T{n:03d}: Story {n}\n**Type:** Story  **Complexity:** S  {written}**Priority:** 1  "
            f"**Dependencies:** {deps}\n**Description:** story {n}.\n\n```job\nkind: command\nrun: \"true\"\n```\n\n"
            "**Acceptance Criteria:**\n- [ ] it runs `metric: command.returncode == 0` (critical)\n\n")


def backlog(path: Path, *items: str, exits: list[str] | None = None) -> Path:
    head = "# Sprint\n\n**Sprint Goal:** test the loop.\n\n"
    if exits:
        head += "## Exit Criteria\n\n" + "".join(f"- [ ] {e}\n" for e in exits) + "\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(head + "".join(items), encoding="utf-8")
    return path


def finish_story(ws: Workspace, task_id: str, status: S = S.DONE, reason: str | None = None) -> None:
    """Put a story where the agents would leave it: merged on the trunk (done) or with a person."""
    store = QueueStore.for_workspace(ws)
    merged = merge_story(ws, task_id, {f"{task_id}.txt": task_id}) if status == S.DONE else None
    with store.transaction("test") as tx:
        task = tx.queue.task(task_id)
        task.status = status
        task.merged_commit = merged
        task.manual_reason = reason


def started(tmp_path: Path, *items: str, exits: list[str] | None = None) -> Workspace:
    ws = workspace(tmp_path)
    new_sprint(ws, backlog(tmp_path / "b1.md", *items, exits=exits))
    return ws


def test_complete_archives_retrospective_history_and_tags(tmp_path):
    ws = started(tmp_path, item(1), item(2, "T001"), exits=["T001 is merged", "T002 is merged"])
    finish_story(ws, "T001")
    finish_story(ws, "T002")
    closed = complete_sprint(ws)
    assert not closed.forced and [s.state for s in closed.exit_states] == ["met", "met"]
    archive = ws.sprint_archive_dir(1)
    retro = (archive / "RETROSPECTIVE.md").read_text()
    assert "## Exit criteria" in retro and "EC1 met" in retro and "T002" in retro
    assert "Sprint 1 initiated" in (archive / "SPRINT_LOG.md").read_text()
    assert "T001" in (archive / "AGENT_LOG.md").read_text()
    # the live logs keep only a note: a new sprint starts a fresh log, nothing was lost
    assert "sprint archived" in ws.agent_log_path.read_text() and "new -> needs_plan" not in ws.agent_log_path.read_text()
    assert archived_sprints(ws)[0].queue.sprint.status == SprintStatus.COMPLETED
    goal = (ws.objectives_dir / "SPRINT_GOAL.md").read_text()
    assert "- [x] T001 is merged" in goal and "Sprint 1 completed: 2 done" in goal
    assert "sprint-1-complete" in git(ws.root, "tag")
    # the sprint's HTML report is committed with the archive (issue 10)
    html = ws.relative(ws.work_dir / "reports" / "sprint_1.html")
    assert html in git(ws.root, "show", "--name-only", "--format=", "HEAD")
    assert not git(ws.root, "status", "--porcelain", "--untracked-files=no")
    with pytest.raises(WorkspaceError, match="already completed and tagged sprint-1-complete"):
        complete_sprint(ws)


def test_complete_is_refused_while_an_item_is_claimed_naming_it(tmp_path):
    ws = started(tmp_path, item(1))
    claim_next(QueueStore.for_workspace(ws), "planner", "planner-7", ttl_seconds=60, wip_limit=1)
    with pytest.raises(WorkspaceError, match=r"T001 \(planner-7, planner\)") as err:
        complete_sprint(ws, force=True)
    assert "nothing was changed" in str(err.value)
    assert QueueStore.for_workspace(ws).read().sprint.status == SprintStatus.IN_PROGRESS


def test_unmet_exit_criteria_refuse_then_force_completes_and_says_which(tmp_path, capsys):
    ws = started(tmp_path, item(1), item(2), exits=["T001 is merged", "T002 is merged", "the answers read well"])
    finish_story(ws, "T001")
    finish_story(ws, "T002", S.NEEDS_MANUAL, "the tokenizer is wrong")
    with pytest.raises(WorkspaceError) as err:
        complete_sprint(ws)
    assert "EC2 unmet" in str(err.value) and "EC3 needs_manual" in str(err.value) and "--force" in str(err.value)
    assert main(["-C", str(ws.root), "sprint", "complete"]) == 2
    assert main(["-C", str(ws.root), "sprint", "complete", "--force"]) == 0
    assert "completed (forced)" in capsys.readouterr().out
    retro = (ws.sprint_archive_dir(1) / "RETROSPECTIVE.md").read_text()
    assert "--force" in retro and "EC3 needs_manual" in retro and "the tokenizer is wrong" in retro


def test_sprint_new_refused_while_running_then_accepted_as_sprint_two(tmp_path):
    ws = started(tmp_path, item(1))
    second = backlog(tmp_path / "b2.md", item(2))
    with pytest.raises(WorkspaceError, match="still in_progress"):
        new_sprint(ws, second)
    finish_story(ws, "T001")
    complete_sprint(ws)
    sprint = new_sprint(ws, second)
    assert sprint.number == 2 and sprint.id.endswith("-002")
    goal = (ws.objectives_dir / "SPRINT_GOAL.md").read_text()
    assert "Sprint 1 completed" in goal and "Sprint 2 initiated" in goal  # the history is kept


def test_a_reused_story_id_is_refused_naming_both_backlogs(tmp_path):
    ws = started(tmp_path, item(1), item(2))
    finish_story(ws, "T001")
    finish_story(ws, "T002")
    complete_sprint(ws)
    with pytest.raises(BacklogError) as err:
        new_sprint(ws, backlog(tmp_path / "roadmap" / "sprint-02.md", item(3), item(2)))
    message = str(err.value)
    assert "sprint-02.md" in message and "b1.md" in message and "T002" in message and "T004" in message
    assert QueueStore.for_workspace(ws).read().sprint.number == 1  # nothing was started


def test_dependencies_on_earlier_stories_and_carry_over(tmp_path):
    ws = started(tmp_path, item(1), item(2), item(3, "T002"))
    finish_story(ws, "T001")
    finish_story(ws, "T002", S.NEEDS_MANUAL, "needs a person")
    with pytest.raises(WorkspaceError):
        complete_sprint(ws)  # T003 waits on a story with a person: it no longer moves, but EC for T002 is unmet
    complete_sprint(ws, force=True)
    depends_on_open = backlog(tmp_path / "b2.md", item(4, "T002"))
    with pytest.raises(BacklogError, match="T004 depends on T002, which sprint 1 left needs_manual"):
        new_sprint(ws, depends_on_open)
    new_sprint(ws, backlog(tmp_path / "b3.md", item(4, "T001, T002")), carry_over=True)
    queue = QueueStore.for_workspace(ws).read()
    by_id = {t.id: t for t in queue.tasks}
    assert set(by_id) == {"T002", "T003", "T004"}
    assert by_id["T002"].carried_from == archived_sprints(ws)[0].queue.sprint.id
    assert by_id["T002"].status == S.NEEDS_PLAN and by_id["T003"].dependencies == ["T002"]
    assert by_id["T004"].dependencies == ["T002"] and by_id["T004"].prior_dependencies == ["T001"]


def test_a_story_left_with_a_person_does_not_hold_the_sprint_open(tmp_path):
    ws = started(tmp_path, item(1), item(2), exits=["T001 is merged"])
    finish_story(ws, "T001")
    finish_story(ws, "T002", S.NEEDS_MANUAL, "prose only")
    closed = complete_sprint(ws)
    assert not closed.forced
    assert "prose only" in closed.retrospective.read_text()


def test_until_objective_without_success_criteria_says_what_to_write(tmp_path, capsys):
    ws = started(tmp_path, item(1))
    with pytest.raises(ObjectiveError, match="Success Criteria"):
        run_until_objective(ws, lambda left: (0, "not run"))
    assert main(["-C", str(ws.root), "run", "--until-objective"]) == 2
    assert "Success Criteria" in capsys.readouterr().err


def test_roadmap_runs_backlogs_in_order_and_stops_when_it_runs_out(tmp_path):
    ws = workspace(tmp_path)
    (ws.objectives_dir / "OBJECTIVE.md").write_text(
        "# OBJECTIVE\n\n## Success Criteria\n\n- [ ] T001 is merged `metric: T001.command.returncode == 0`\n"
        "- [ ] the second story is merged `file: T002.txt`\n- [ ] never `file: no-such-file.txt`\n")
    roadmap = ws.backlogs_dir
    backlog(roadmap / "sprint-02.md", item(2))
    backlog(roadmap / "sprint-01.md", item(1))
    assert next_backlog(ws).name == "sprint-01.md"
    ran: list[str] = []

    def run_sprint(left: float | None) -> tuple[int, str]:
        queue = QueueStore.for_workspace(ws).read()
        for task in queue.tasks:
            finish_story(ws, task.id)
            with QueueStore.for_workspace(ws).transaction("test") as tx:
                tx.queue.task(task.id).metrics = {"command.returncode": 0}
        ran.append(queue.sprint.id)
        return 0, complete_sprint(ws).describe()

    outcome = run_until_objective(ws, run_sprint)
    assert outcome.code == EXIT_ROADMAP_DONE and len(ran) == 2 and ran[0].endswith("-001")
    assert "SC3 unmet" in outcome.message and "no-such-file.txt" in outcome.message and "SC1" not in outcome.message
    assert outcome.report is not None and outcome.report.met == 2
    assert QueueStore.for_workspace(ws).read().objective.met == 2
    assert next_backlog(ws) is None


def _stuck_roadmap(tmp_path: Path, criterion: str) -> Workspace:
    ws = workspace(tmp_path)
    (ws.objectives_dir / "OBJECTIVE.md").write_text(f"# OBJECTIVE\n\n## Success Criteria\n\n- [ ] {criterion}\n")
    backlog(ws.backlogs_dir / "sprint-01.md", item(1), item(2))
    return ws


def _stuck_sprint(ws: Workspace) -> tuple[int, str]:
    finish_story(ws, "T001")
    finish_story(ws, "T002", S.NEEDS_MANUAL, "a person must judge")
    return 3, "sprint stuck, a person is needed: T002"


def test_a_met_objective_completes_the_project_even_when_the_sprint_is_stuck(tmp_path):
    ws = _stuck_roadmap(tmp_path, "T001's file is on the trunk `file: T001.txt`")
    outcome = run_until_objective(ws, lambda left: _stuck_sprint(ws))
    assert outcome.code == 0 and "project complete" in outcome.message
    queue = QueueStore.for_workspace(ws).read()
    assert queue.sprint.status == SprintStatus.PROJECT_COMPLETE and queue.sprint.forced
    assert "a person must judge" in (ws.sprint_archive_dir(1) / "RETROSPECTIVE.md").read_text()
    assert "project-complete" in git(ws.root, "tag")


def test_a_stuck_sprint_with_the_objective_unmet_ends_the_run_with_its_code(tmp_path):
    ws = _stuck_roadmap(tmp_path, "never `file: no-such-file.txt`")
    outcome = run_until_objective(ws, lambda left: _stuck_sprint(ws))
    assert outcome.code == 3 and "T002" in outcome.message
    assert QueueStore.for_workspace(ws).read().sprint.status == SprintStatus.IN_PROGRESS

"""Sprint close (``oodatcaa sprint complete``) and project completion (the end of ``run --until-objective``).

Closing sprint ``N`` (:func:`complete_sprint`, also called by the Negotiator when a sprint is done):

1. refuse while any item is claimed (naming them), and — unless ``force`` — while a story is still
   moving or an exit criterion is not met (naming them);
2. run the Completion Detector (the objective's percentage goes into the queue);
3. mark the sprint ``completed`` (``forced`` when exit criteria were not all met);
4. write ``work/archive/sprint_<N>/RETROSPECTIVE.md`` and verify it (sections, every story);
5. append the sprint to the history in ``objectives/SPRINT_GOAL.md`` and tick its met exit criteria;
6. move the sprint's ``AGENT_LOG.md`` and ``SPRINT_LOG.md`` into the archive (line counts verified),
   copy the final ``SPRINT_QUEUE.json`` there (read back and parsed), and move ``SPRINT_DISCUSS.md``
   (the gray-zone and person decisions at Check) there;
7. commit the archive and ``SPRINT_GOAL.md`` on the trunk and tag ``sprint-<N>-complete``.

Every step can run again: a close killed half-way is finished by the next ``sprint complete`` (or
``oodatcaa run``), which skips what is done.

Completing the project (:func:`complete_project`): when every success criterion of ``OBJECTIVE.md``
is met, the sprint becomes ``project_complete``, ``objectives/PROJECT_COMPLETION_REPORT.md`` is
written, verified and committed, and the annotated tag ``project-complete`` is made.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from oodatcaa.archive import archived_sprints, move_log, write_verified
from oodatcaa.checkrecord import archive_discussion
from oodatcaa.completion import ObjectiveReport, detect_completion, evaluate_exit_criteria
from oodatcaa.core.clock import Clock, utc_stamp
from oodatcaa.core.config import load_config
from oodatcaa.core.errors import WorkspaceError
from oodatcaa.core.eventlog import SPRINT_LOG_HEADER, EventLog, LogEntry
from oodatcaa.core.models import ObjectiveSnapshot, Queue, Sprint
from oodatcaa.core.objective import CriterionState, stories_still_moving
from oodatcaa.core.queuefile import parse_queue
from oodatcaa.core.rotation import write_archive_index
from oodatcaa.core.statuses import SprintStatus
from oodatcaa.core.store import QueueStore
from oodatcaa.core.workspace import Workspace
from oodatcaa.gitops import GitRepo
from oodatcaa.htmlreport import write_sprint_report
from oodatcaa.retrospective import (
    render_completion_report,
    render_retrospective,
    verify_completion_report,
    verify_retrospective,
)

PROJECT_TAG = "project-complete"


def sprint_tag(number: int) -> str:
    """``sprint-<N>-complete`` (DESIGN.md §2)."""
    return f"sprint-{number}-complete"


@dataclass(frozen=True)
class SprintCompletion:
    """What closing a sprint did.

    Attributes:
        sprint: the sprint as completed.
        exit_states: its exit criteria with their states and evidence.
        objective: the Completion Detector's snapshot taken at the close.
        retrospective: the written ``RETROSPECTIVE.md``.
        tag: ``sprint-<N>-complete``.
        forced: completed with ``--force`` while an exit criterion was not met or a story still moved.
    """

    sprint: Sprint
    exit_states: list[CriterionState]
    objective: ObjectiveSnapshot
    retrospective: Path
    tag: str
    forced: bool

    def describe(self) -> str:
        """``SPRINT-2026-001 completed: 5/5 exit criteria met; objective 50.0 % (2/4 met); tagged sprint-1-complete``."""
        met = sum(1 for s in self.exit_states if s.state == "met")
        forced = " (forced)" if self.forced else ""
        return (f"{self.sprint.id} completed{forced}: {met}/{len(self.exit_states)} exit criteria met; "
                f"{self.objective.describe()}; tagged {self.tag}")


def _claimed(queue: Queue) -> list[str]:
    return [f"{i.id} ({i.lease.owner}, {i.lease.role.value})" for i in queue.items() if i.lease is not None]


def _refusal(queue: Queue, states: list[CriterionState]) -> str | None:
    """Why the sprint may not complete without ``--force`` (``None`` when it may)."""
    problems = []
    moving = stories_still_moving(queue.tasks)
    if moving:
        problems.append(f"stories still moving: {', '.join(moving)}")
    for s in states:
        if s.state != "met":
            problems.append(f"{s.id} {s.state}: {s.text} ({s.reason})")
    return "; ".join(problems) or None


def complete_sprint(ws: Workspace, *, force: bool = False, actor: str = "sprint_planner", clock: Clock | None = None,
                    exit_states: list[CriterionState] | None = None) -> SprintCompletion:
    """Close the queue's sprint (see the module docstring); returns what was done.

    ``exit_states``: exit criteria already evaluated by the caller (the Negotiator), else evaluated
    here on the trunk. Raises :class:`WorkspaceError` when there is no sprint, it is already closed
    and tagged, an item is claimed (always refused, naming the items and their owners), or —
    without ``force`` — a story is still moving or an exit criterion is not met (each named);
    nothing is changed then. Git failures raise :class:`~oodatcaa.core.errors.GitOperationError`.
    """
    clock = clock or Clock()
    config = load_config(ws.config_path, ws.agents_dir)
    store = QueueStore.for_workspace(ws, clock=clock)
    queue = store.read()
    sprint = queue.sprint
    if sprint is None:
        raise WorkspaceError(f"{store.path}: no sprint to complete; start one with `oodatcaa sprint new --backlog FILE`")
    git = GitRepo.for_workspace(ws, actor, trunk=config.git.trunk)
    tag = sprint_tag(sprint.number)
    resuming = sprint.status != SprintStatus.IN_PROGRESS
    if resuming and git.tag_exists(tag):
        raise WorkspaceError(f"{sprint.id} is already {sprint.status.value} and tagged {tag}; "
                             "start the next one with `oodatcaa sprint new --backlog FILE`")
    claimed = _claimed(queue)
    if claimed:
        raise WorkspaceError(f"{sprint.id} cannot complete while items are claimed: {', '.join(claimed)}; wait for "
                             "them, or stop the agents (`oodatcaa agents stop`), then try again (nothing was changed)")
    git.require_trunk(ws.config_path)
    states = exit_states if exit_states is not None else evaluate_exit_criteria(ws, queue, git=git)
    refusal = _refusal(queue, states)
    if refusal and not force and not resuming:
        raise WorkspaceError(f"{sprint.id} is not done: {refusal}. Finish it (`oodatcaa run`), or complete it anyway "
                             "with `oodatcaa sprint complete --force` (the retrospective says what was left)")
    snapshot, _report = detect_completion(ws, clock.now(), git=git, queue=queue)
    with store.transaction(actor) as tx:
        current = tx.queue.sprint
        assert current is not None
        if current.status == SprintStatus.IN_PROGRESS:
            current.status, current.completed_at, current.forced = SprintStatus.COMPLETED, tx.now, bool(refusal)
            tx.log("-", "sprint completed", f"{current.id}{' (forced)' if refusal else ''}: {snapshot.describe()}")
        tx.queue.objective = snapshot
    queue = store.read()
    sprint = queue.sprint
    assert sprint is not None
    archive = ws.sprint_archive_dir(sprint.number)
    archive.mkdir(parents=True, exist_ok=True)
    text = render_retrospective(queue, states, objective=snapshot, tag=tag, forced=sprint.forced, now=clock.now(),
                                rules=config.estimates)
    verify_retrospective(text, queue)
    retrospective = write_verified(archive / "RETROSPECTIVE.md", text)
    _record_history(ws, sprint, states, snapshot, tag, queue)
    done = [t.id for t in queue.tasks if t.status.value == "done"]
    result = SprintCompletion(sprint, list(states), snapshot, retrospective, tag, sprint.forced)
    _sprint_log(ws).append([LogEntry(clock.now(), actor, sprint.id, "sprint completed",
                                     f"{result.describe()}; done: {', '.join(done) or 'none'}")])
    _archive_queue_and_logs(ws, store, archive, actor)
    archive_discussion(ws, archive)  # the sprint's Check decisions go with its logs
    # the sprint's offline HTML page (issue 10), regenerated here so it lands in the same commit as the archive
    write_sprint_report(ws, queue)
    # the page's Vega-Lite specs are data next to each run's metrics: committed with it
    chart_dirs = [ws.relative(d) for d in sorted((ws.dir / "runs").glob("*/charts")) if d.is_dir()]
    # with the plans and reports of the stories that were never merged (those of merged ones are committed already)
    git.commit_paths([ws.relative(archive), ws.relative(ws.objectives_dir), ws.relative(ws.archive_dir / "ARCHIVE_INDEX.md"),
                      ws.relative(ws.reports_index_path), ws.relative(ws.work_dir / "plans"),
                      ws.relative(ws.work_dir / "reports"), *chart_dirs],
                     f"[docs] {sprint.id}: sprint {sprint.number} completed")
    if not git.tag_exists(tag):
        met = sum(1 for s in states if s.state == "met")
        git.tag(tag, f"{sprint.id} completed{' (forced)' if sprint.forced else ''}\n\nDone: {', '.join(done) or 'none'}\n"
                     f"Exit criteria met: {met}/{len(states)}\nObjective: {snapshot.describe()}\n")
    return result


def _sprint_log(ws: Workspace) -> EventLog:
    return EventLog(ws.sprint_log_path, ws.lock_path("sprint_log"), header=SPRINT_LOG_HEADER)


def _archive_queue_and_logs(ws: Workspace, store: QueueStore, archive: Path, actor: str) -> None:
    """Move the sprint's logs into ``archive`` (inside a queue transaction: see below), then copy the queue."""
    rel = ws.relative(archive)
    sprint_log = _sprint_log(ws)
    # Inside a transaction: its start delivers the last write's log rows, and its own row (the note)
    # becomes the queue's outbox — so no earlier row is re-appended to the emptied log later.
    with store.transaction(actor) as tx:
        sprint_id = tx.queue.sprint.id if tx.queue.sprint else "-"
        note = LogEntry(tx.now, actor, sprint_id, "sprint archived", f"earlier entries moved to {rel}/")
        moved_agent = move_log(store.log, archive / "AGENT_LOG.md")
        moved_sprint = move_log(sprint_log, archive / "SPRINT_LOG.md", note=note)
        tx.log("-", "sprint archived", f"{moved_agent.entries} AGENT_LOG and {moved_sprint.entries} SPRINT_LOG "
                                       f"entries moved to {rel}/")
    text = store.path.read_text(encoding="utf-8")
    parse_queue(text, store.path)
    write_verified(archive / "SPRINT_QUEUE.json", text)
    parse_queue((archive / "SPRINT_QUEUE.json").read_text(encoding="utf-8"), archive / "SPRINT_QUEUE.json")
    write_archive_index(ws.archive_dir)


_EXIT_HEADING = re.compile(r"^##\s+exit criteria\s*$", re.I)
_BOX = re.compile(r"^(\s*[-*]\s+)\[[ xX]\](.*)$")


def _record_history(ws: Workspace, sprint: Sprint, states: list[CriterionState], snapshot: ObjectiveSnapshot,
                    tag: str, queue: Queue) -> None:
    """Tick the met exit criteria in ``SPRINT_GOAL.md`` (by position) and append the sprint to its history.

    The history line is written once: a close run again after a crash does not repeat it.
    """
    path = ws.objectives_dir / "SPRINT_GOAL.md"
    lines = path.read_text(encoding="utf-8").splitlines() if path.exists() else [f"# SPRINT_GOAL — {sprint.id}", ""]
    met = {int(s.id[2:]) for s in states if s.state == "met" and s.id.startswith("EC") and s.id[2:].isdigit()}
    in_exits, index = False, 0
    for i, line in enumerate(lines):
        if line.startswith("## "):
            in_exits = bool(_EXIT_HEADING.match(line))
            continue
        m = _BOX.match(line) if in_exits else None
        if m:
            index += 1
            lines[i] = f"{m.group(1)}[{'x' if index in met else ' '}]{m.group(2)}"
    counts = {k: sum(1 for t in queue.tasks if t.status.value == k) for k in ("done", "cancelled", "needs_manual")}
    marker = f"Sprint {sprint.number} completed"
    if not any(marker in line for line in lines):
        if not any(line.strip().lower() == "## history" for line in lines):
            lines += ["", "## History", ""]
        forced = " with --force" if sprint.forced else ""
        lines.append(f"- {utc_stamp(sprint.completed_at or sprint.created_at)}: {marker}{forced}: "
                     f"{counts['done']} done, {counts['cancelled']} cancelled, {counts['needs_manual']} left to a "
                     f"person; exit criteria {len(met)}/{len(states)} met; {snapshot.describe()}; tag `{tag}`")
    write_verified(path, "\n".join(lines) + "\n")


# --------------------------------------------------------------------------------------------
# The project
# --------------------------------------------------------------------------------------------


def complete_project(ws: Workspace, report: ObjectiveReport, *, actor: str = "sprint_planner",
                     clock: Clock | None = None) -> Path:
    """Declare the project complete: every success criterion of ``report`` is met (else ``ValueError``).

    The queue's sprint (already ``completed``) becomes ``project_complete``; the completion report
    (each criterion with its evidence, the sprints run, totals) is written to
    ``objectives/PROJECT_COMPLETION_REPORT.md``, verified, committed, and the annotated tag
    ``project-complete`` made on that commit. Returns the report's path. Running it again after it
    succeeded rewrites the report but never moves the tag.
    """
    if not report.criteria or report.met != len(report.criteria):
        raise ValueError(f"the objective is {report.completion_percent:.1f} % met; the project is not complete")
    clock = clock or Clock()
    config = load_config(ws.config_path, ws.agents_dir)
    store = QueueStore.for_workspace(ws, clock=clock)
    with store.transaction(actor) as tx:
        sprint = tx.queue.sprint
        if sprint is None or sprint.status == SprintStatus.IN_PROGRESS:
            raise WorkspaceError("complete the sprint before the project (`oodatcaa sprint complete`)")
        if sprint.status != SprintStatus.PROJECT_COMPLETE:
            sprint.status = SprintStatus.PROJECT_COMPLETE
            tx.log("-", "project complete", f"every success criterion met ({report.met}/{len(report.criteria)})")
    queue = store.read()
    sprints = [a.queue for a in archived_sprints(ws)]
    sprints = [q for q in sprints if not (q.sprint and queue.sprint and q.sprint.id == queue.sprint.id)] + [queue]
    text = render_completion_report(report, sprints, now=clock.now(), tag=PROJECT_TAG)
    verify_completion_report(text, report)
    path = write_verified(ws.objectives_dir / "PROJECT_COMPLETION_REPORT.md", text)
    if queue.sprint is not None:
        archived = ws.sprint_archive_dir(queue.sprint.number) / "SPRINT_QUEUE.json"
        write_verified(archived, store.path.read_text(encoding="utf-8"))
    git = GitRepo.for_workspace(ws, actor, trunk=config.git.trunk)
    commit = git.commit_paths([ws.relative(ws.objectives_dir), ws.relative(ws.archive_dir)],
                              "[docs] project complete: every success criterion met")
    if not git.tag_exists(PROJECT_TAG):
        lines = [f"{c.id} {c.state}: {c.text}" for c in report.criteria]
        git.tag(PROJECT_TAG, "Project complete: every success criterion met\n\n" + "\n".join(lines) + "\n",
                commit or "HEAD")
    _sprint_log(ws).append([LogEntry(clock.now(), actor, queue.sprint.id if queue.sprint else "-", "project complete",
                                     f"{len(report.criteria)}/{len(report.criteria)} success criteria met; "
                                     f"report {ws.relative(path)}; tag {PROJECT_TAG}")])
    return path

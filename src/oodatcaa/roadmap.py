"""The roadmap and ``oodatcaa run --until-objective``: sprint after sprint until the objective is met.

A roadmap is a directory of backlogs, ``.oodatcaa/work/backlogs/``, run in file-name order
(``sprint-01.md``, ``sprint-02.md``, ...). A backlog has run when a sprint of this workspace (current
or archived) was started from it (``Sprint.backlog_source``).

:func:`run_until_objective` acts as the original's Sprint Planner: it runs the current sprint to its
close (the Negotiator), runs the Completion Detector, and then

- when every success criterion of ``OBJECTIVE.md`` is met: the project is complete
  (:func:`oodatcaa.closing.complete_project`: ``project_complete``, the completion report, the
  ``project-complete`` tag) and it returns 0;
- else it starts the next backlog of the roadmap not yet run (``sprint new``) and goes on;
- a sprint that stops stuck (exit 3: stories or exit criteria only a person can settle; or 8: nobody
  acted on what waits for a person) ends the run with that code — unless the objective is already
  met, which is what the roadmap is for: the sprint is then closed as it is (``sprint complete
  --force``) and the project completed;
- when the roadmap runs out first it returns :data:`EXIT_ROADMAP_DONE` naming the unmet criteria.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from oodatcaa.archive import archived_sprints
from oodatcaa.closing import complete_project, complete_sprint, sprint_tag
from oodatcaa.completion import ObjectiveReport, detect_completion, load_objective
from oodatcaa.core.clock import Clock
from oodatcaa.core.config import load_config
from oodatcaa.core.errors import WorkspaceError
from oodatcaa.core.models import Queue
from oodatcaa.core.statuses import SprintStatus
from oodatcaa.core.store import QueueStore
from oodatcaa.core.workspace import Workspace
from oodatcaa.gitops import GitRepo
from oodatcaa.sprints import new_sprint

#: ``run --until-objective``: the roadmap ran out with success criteria still unmet.
EXIT_ROADMAP_DONE = 7
#: The Negotiator's "stuck: a person is needed" (:data:`oodatcaa.roles.negotiator.EXIT_STUCK`).
EXIT_STUCK = 3
#: The Negotiator's "nobody acted on what waits for a person" (:data:`oodatcaa.roles.negotiator.EXIT_PERSON_WAIT`).
EXIT_PERSON_WAIT = 8

SprintRunner = Callable[[float | None], "tuple[int, str]"]


def roadmap_backlogs(ws: Workspace) -> list[Path]:
    """The roadmap's backlog files (``work/backlogs/*.md``) in file-name order; ``[]`` without a roadmap."""
    if not ws.backlogs_dir.is_dir():
        return []
    return sorted((p for p in ws.backlogs_dir.glob("*.md") if p.is_file()), key=lambda p: p.name)


def _resolved(ws: Workspace, source: str) -> Path:
    path = Path(source)
    return (path if path.is_absolute() else ws.root / path).resolve()


def backlogs_run(ws: Workspace, queue: Queue | None = None) -> set[Path]:
    """Resolved paths of the backlogs that sprints of this workspace were started from."""
    sources = [a.backlog_source for a in archived_sprints(ws)]
    if queue is not None and queue.sprint is not None:
        sources.append(queue.sprint.backlog_source)
    return {_resolved(ws, s) for s in sources if s}


def next_backlog(ws: Workspace, queue: Queue | None = None) -> Path | None:
    """The first roadmap backlog no sprint was started from, or ``None`` when every one has run."""
    done = backlogs_run(ws, queue)
    return next((p for p in roadmap_backlogs(ws) if p.resolve() not in done), None)


@dataclass
class SprintRun:
    """One sprint run by :func:`run_until_objective`: its id, wall time (seconds), exit code and message."""

    sprint_id: str
    seconds: float
    code: int
    message: str


@dataclass
class RoadmapOutcome:
    """How ``run --until-objective`` ended: exit code, message, the sprints run, the last objective report."""

    code: int
    message: str
    sprints: list[SprintRun] = field(default_factory=list)
    report: ObjectiveReport | None = None


def _tagged(ws: Workspace, number: int) -> bool:
    trunk = load_config(ws.config_path, ws.agents_dir).git.trunk
    return GitRepo.for_workspace(ws, "sprint_planner", trunk=trunk).tag_exists(sprint_tag(number))


def _objective_met(ws: Workspace, clock: Clock) -> bool:
    _snapshot, report = detect_completion(ws, clock.now())
    return report is not None and bool(report.criteria) and report.met == len(report.criteria)


def _unmet(report: ObjectiveReport) -> str:
    return "; ".join(f"{c.id} {c.state}: {c.text} ({c.reason})" for c in report.criteria if c.state != "met")


def run_until_objective(ws: Workspace, run_sprint: SprintRunner, *, carry_over: bool = False,
                        max_seconds: float | None = None, on_event: Callable[[str], None] | None = None,
                        clock: Clock | None = None) -> RoadmapOutcome:
    """Run sprints until the objective is met or the roadmap runs out (see the module docstring).

    ``run_sprint(seconds_left)`` runs the current sprint to its close and returns the Negotiator's
    ``(exit code, message)``; a non-zero code ends the run with that code. ``carry_over`` is passed
    to every ``sprint new``. ``max_seconds`` bounds the whole run (each sprint gets what is left).
    ``on_event`` receives a plain-text line per step (sprint started, closed, objective).

    Raises :class:`~oodatcaa.core.objective.ObjectiveError` (file, what to write) when
    ``OBJECTIVE.md`` is missing, malformed or has no success criteria — checked before anything
    runs; :class:`WorkspaceError` when there is neither a sprint nor a roadmap backlog to start;
    what ``sprint new`` raises for a bad roadmap backlog.
    """
    say = on_event or (lambda line: None)
    clock = clock or Clock()
    load_objective(ws)
    store = QueueStore.for_workspace(ws, clock=clock)
    started = time.monotonic()
    outcome = RoadmapOutcome(0, "")
    while True:
        queue = store.read() if store.exists() else Queue()
        sprint = queue.sprint
        if sprint is not None and sprint.status == SprintStatus.PROJECT_COMPLETE:
            outcome.code, outcome.message = 0, f"the project is already complete ({sprint.id}); see objectives/"
            return outcome
        if sprint is not None and sprint.status == SprintStatus.IN_PROGRESS:
            left = None if max_seconds is None else max(1.0, max_seconds - (time.monotonic() - started))
            t0 = time.monotonic()
            code, message = run_sprint(left)
            outcome.sprints.append(SprintRun(sprint.id, time.monotonic() - t0, code, message))
            say(f"{sprint.id}: {message} ({time.monotonic() - t0:.0f} s)")
            if code in (EXIT_STUCK, EXIT_PERSON_WAIT) and _objective_met(ws, clock):
                # the objective is what the roadmap is for: a sprint stuck on work a person must judge
                # does not hold a met objective back; it is closed as it is (the retrospective says what was left)
                say(complete_sprint(ws, force=True, clock=clock).describe())
                continue
            if code != 0:
                outcome.code, outcome.message = code, message
                return outcome
            continue
        if sprint is not None and sprint.status == SprintStatus.COMPLETED and not _tagged(ws, sprint.number):
            say(complete_sprint(ws, clock=clock).describe())  # a close killed half-way is finished first
            continue
        snapshot, report = detect_completion(ws, clock.now(), queue=queue)
        if report is None:
            raise WorkspaceError(f"the objective could not be evaluated: {snapshot.error}")
        outcome.report = report
        if store.exists():
            with store.transaction("sprint_planner") as tx:
                tx.queue.objective = snapshot
        say(snapshot.describe())
        if report.criteria and report.met == len(report.criteria) and sprint is not None:
            path = complete_project(ws, report, clock=clock)
            outcome.code = 0
            outcome.message = (f"project complete: {report.met}/{len(report.criteria)} success criteria met after "
                               f"{sprint.number} sprint(s); report {ws.relative(path)}; tagged project-complete")
            return outcome
        backlog = next_backlog(ws, queue)
        if backlog is None:
            if sprint is None:
                raise WorkspaceError(f"nothing to run: no sprint and no backlog in {ws.relative(ws.backlogs_dir)}/ "
                                     "(write sprint-01.md there, or start a sprint with `oodatcaa sprint new --backlog FILE`)")
            outcome.code = EXIT_ROADMAP_DONE
            outcome.message = (f"the roadmap ran out ({len(roadmap_backlogs(ws))} backlog(s) in "
                               f"{ws.relative(ws.backlogs_dir)}/ run) with the objective at "
                               f"{report.completion_percent:.1f} %; unmet: {_unmet(report)}")
            return outcome
        started_sprint = new_sprint(ws, backlog, carry_over=carry_over, clock=clock,
                                    on_warning=lambda w: say(f"warning: {w}"))
        say(f"{started_sprint.id} initiated from {ws.relative(backlog)} (Sprint {started_sprint.number})")

"""The story lifecycle: how a story follows its subtasks, in one place.

Every move of a story that happens *because a subtask moved* is a function here, called by the
role agents inside their fenced transaction (:func:`oodatcaa.core.leases.complete`'s ``apply``)
or by the lease functions themselves. Roles move only the item they hold; the story's next status
is decided here, so the cascades can be read, tested and changed without opening a role module.
The model is rq's ``job_lifecycle``: named transitions with their side effects, not ad-hoc
status writes.

Cascades (story ``T``, builder steps ``B``, tester ``T01``):

- :func:`on_claimed` — a builder step is claimed: ``T ready -> in_progress``; the tester is
  claimed: ``T awaiting_test -> testing``.
- :func:`on_released` — the tester is handed back: ``T testing -> awaiting_test``.
- :func:`on_build_done` — every step built: ``T in_progress -> awaiting_test`` and
  ``T01 blocked -> ready``.
- :func:`on_build_failed` — a step failed: ``T in_progress -> needs_adapt`` with the failure.
  Both record the attempt in the step's ``attempt_history`` (:func:`record_attempt`).
- :func:`on_verdict` — the Tester's decision: ``T testing -> ready_for_integrator | needs_adapt
  | needs_manual``.
- :func:`on_adapted` — the Refiner changed a step: that step and every later one (or all of
  them) ``-> ready``, ``T01 -> blocked`` until they are rebuilt.
- :func:`on_escalated` — no adaptation left: failed steps ``-> needs_manual``.
- :func:`on_start_over` — the Start-Over Gate: open subtasks ``-> cancelled``.
- :func:`on_integrated` — merged and tagged: subtasks ``-> done``, then :func:`unblock_ready`.
- :func:`unblock_ready` — ``planning_complete -> ready | blocked``; ``blocked -> ready`` once
  every dependency is ``done``.
- :func:`on_crashed` — a role agent raised: the story follows the item where the table allows.
"""

from __future__ import annotations

from typing import Any

from oodatcaa.core.failures import Failure
from oodatcaa.core.models import ATTEMPT_HISTORY_LIMIT, AdaptationRecord, AttemptRecord, Item, Subtask, Task
from oodatcaa.core.statuses import TaskStatus, allowed_next
from oodatcaa.core.store import Transaction

S = TaskStatus

#: Tester decisions -> the story's (and the tester subtask's) next status.
VERDICT_STATUS: dict[str, TaskStatus] = {
    "accept": S.READY_FOR_INTEGRATOR,
    "adapt": S.NEEDS_ADAPT,
    "needs_manual": S.NEEDS_MANUAL,
}


def _story(tx: Transaction, item: Item) -> Task:
    return tx.queue.parent(item)


def on_claimed(tx: Transaction, item: Item) -> None:
    """A subtask was just claimed: its story starts following it."""
    if not isinstance(item, Subtask):
        return
    story = _story(tx, item)
    if item.kind == "build" and story.status == S.READY:
        tx.move(story, S.IN_PROGRESS, f"builder step {item.id} started")
    elif item.kind == "test" and story.status == S.AWAITING_TEST:
        tx.move(story, S.TESTING, f"tester {item.id} started")


def on_released(tx: Transaction, item: Item) -> None:
    """A claimed subtask went back to its claimable status (clean stop or reclaimed lease)."""
    if isinstance(item, Subtask) and item.kind == "test":
        story = _story(tx, item)
        if story.status == S.TESTING:
            tx.move(story, S.AWAITING_TEST, f"tester {item.id} handed back")


def record_attempt(tx: Transaction, step: Subtask, result: dict[str, Any] | None, failure: Failure | None,
                   metrics: dict[str, Any] | None = None) -> None:
    """Append the finished attempt (job spec, flat numeric ``metrics``) to ``step.attempt_history``.

    ``metrics`` is :func:`oodatcaa.jobs.registry.numeric_metrics` of the job's summary, computed by the
    Builder (core never imports the job kinds). Earlier attempts' results are overwritten on the step,
    so this is what ``oodatcaa compare`` reads; only the last
    :data:`~oodatcaa.core.models.ATTEMPT_HISTORY_LIMIT` are kept.
    """
    result = result or {}
    rss = result.get("max_rss_gb")
    record = AttemptRecord(
        attempt=int(result.get("attempt") or step.attempts), ok=failure is None,
        job=dict(step.job) if step.job is not None else None, metrics=dict(metrics or {}),
        failure_kind=failure.kind if failure else None,
        max_rss_gb=float(rss) if isinstance(rss, (int, float)) and not isinstance(rss, bool) else None,
        commit=str(result["commit"]) if result.get("commit") else None, finished_at=tx.now)
    step.attempt_history = [*step.attempt_history, record][-ATTEMPT_HISTORY_LIMIT:]


def on_build_done(tx: Transaction, step: Subtask, result: dict[str, Any], metrics: dict[str, Any]) -> None:
    """A builder step built (the step itself is already ``awaiting_test``).

    Records ``result`` on the step (and the attempt in its ``attempt_history``) and ``metrics`` (flat
    ``namespace.key -> value``, every number the job reported) on the story; when every step is built,
    the story awaits its test and the tester becomes ``ready``.
    """
    step.result = result
    step.failure = None
    record_attempt(tx, step, result, None, metrics)
    story = _story(tx, step)
    story.metrics = {**story.metrics, **metrics}
    if all(s.status in (S.AWAITING_TEST, S.DONE) for s in story.builds()):
        if story.status == S.IN_PROGRESS:
            tx.move(story, S.AWAITING_TEST, "all builder steps built")
        tester = story.tester()
        if tester is not None and tester.status == S.BLOCKED:
            tx.move(tester, S.READY, "builder steps done; ready to test")


def on_build_failed(tx: Transaction, step: Subtask, failure: Failure, result: dict[str, Any] | None = None,
                    metrics: dict[str, Any] | None = None) -> None:
    """A builder step failed (the step itself is already ``needs_adapt``): the story needs adapting.

    The attempt (with ``metrics``, the flat numbers the job reported before failing) goes into ``attempt_history``.
    """
    step.result = result if result is not None else step.result
    step.failure = failure
    record_attempt(tx, step, result, failure, metrics)
    story = _story(tx, step)
    story.failure = failure.model_copy(update={"item": step.id})
    if story.status == S.IN_PROGRESS:
        tx.move(story, S.NEEDS_ADAPT, f"builder step {step.id} failed: {failure.short()}"[:300])


def on_verdict(tx: Transaction, tester: Subtask, decision: str, summary: str, failure: Failure | None,
               manual_reason: str | None = None) -> None:
    """The Tester decided (the tester subtask already moved to :data:`VERDICT_STATUS` of ``decision``).

    ``accept`` clears the story's failure; otherwise ``failure`` (kind ``criteria_failed``) is
    stored on the story, and a ``needs_manual`` decision records ``manual_reason``.
    Raises ``KeyError`` for an unknown decision.
    """
    story = _story(tx, tester)
    to = VERDICT_STATUS[decision]
    if decision == "accept":
        story.failure = None
    else:
        story.failure = failure
        if decision == "needs_manual":
            story.manual_reason = manual_reason
    tx.move(story, to, summary)


def on_test_blocked(tx: Transaction, tester: Subtask, failure: Failure) -> None:
    """The Tester could not test (its branch is gone): the story must be adapted."""
    tester.failure = failure
    story = _story(tx, tester)
    story.failure = failure
    tx.move(story, S.NEEDS_ADAPT, failure.short())


def steps_to_rebuild(story: Task, changed_step: str, rebuild_all: bool) -> list[Subtask]:
    """The steps that must run again: the changed one and every later one, or all of them."""
    steps = story.builds()
    if rebuild_all:
        return steps
    index = next((i for i, s in enumerate(steps) if s.id == changed_step), None)
    return [] if index is None else steps[index:]


def on_adapted(tx: Transaction, story: Task, changed_step: str, new_job: dict[str, Any] | None, *,
               rebuild_all: bool, what: str, rule: str = "unnamed", rationale: str = "") -> None:
    """The Refiner adapted ``story`` (already moved ``adapting -> ready``) with ``rule``.

    ``new_job`` replaces the changed step's job spec (``None`` keeps it). Steps to rebuild go back
    to ``ready``; the tester waits (``blocked``) until they are built again. The loop is recorded
    in ``story.adaptations`` (rule, step, the failure kind it answered) for the retrospective.
    """
    story.adaptations.append(AdaptationRecord(
        loop=max(1, story.adapt_loops), rule=rule, step=changed_step,
        failure_kind=story.failure.kind if story.failure else None, rationale=rationale[:500], at=tx.now))
    for step in steps_to_rebuild(story, changed_step, rebuild_all):
        if step.id == changed_step and new_job is not None:
            step.job = new_job
        if step.status in (S.NEEDS_ADAPT, S.AWAITING_TEST):
            tx.move(step, S.READY, what)
    tester = story.tester()
    if tester is not None and tester.status in (S.NEEDS_ADAPT, S.READY_FOR_INTEGRATOR, S.READY):
        tx.move(tester, S.BLOCKED, "waiting for the rebuilt steps")


def on_escalated(tx: Transaction, story: Task, reason: str) -> None:
    """No adaptation is left (story already ``needs_manual``): its failed steps wait for a person too."""
    story.manual_reason = reason
    for step in story.builds():
        if step.status == S.NEEDS_ADAPT:
            tx.move(step, S.NEEDS_MANUAL, reason[:200])


def on_start_over(tx: Transaction, story: Task) -> None:
    """The Start-Over Gate (story already ``needs_plan``): open subtasks are cancelled, loops reset."""
    story.adapt_loops = 0
    for sub in story.subtasks:
        if sub.status not in (S.DONE, S.CANCELLED):
            tx.move(sub, S.CANCELLED, f"Start-Over Gate of {story.id}")


def on_integrated(tx: Transaction, story: Task, merge_commit: str) -> None:
    """Merged and tagged (story already ``done``): its subtasks are done and dependents unblocked."""
    story.merged_commit = merge_commit
    story.finished_at = tx.now
    story.failure = None
    for sub in story.subtasks:
        if sub.status in (S.AWAITING_TEST, S.READY_FOR_INTEGRATOR):
            tx.move(sub, S.DONE, f"integrated in {merge_commit[:10]}")
    unblock_ready(tx)


def unblock_ready(tx: Transaction) -> list[str]:
    """``planning_complete -> ready | blocked`` and ``blocked -> ready`` by dependencies.

    A story is ready when every dependency is ``done``. Returns the IDs moved to ``ready``.
    This is the one place "dependencies done -> ready" is written (the Negotiator's tick and the
    Integrator's completion both call it).
    """
    queue = tx.queue
    moved: list[str] = []
    for task in queue.tasks:
        waiting = [d for d in task.dependencies if queue.task(d).status != S.DONE]
        if task.status == S.PLANNING_COMPLETE:
            if waiting:
                tx.move(task, S.BLOCKED, "planned; waiting for " + ", ".join(waiting))
            else:
                tx.move(task, S.READY, "planned; dependencies done")
                moved.append(task.id)
        elif task.status == S.BLOCKED and not waiting:
            tx.move(task, S.READY, "dependencies done: " + (", ".join(task.dependencies) or "none"))
            moved.append(task.id)
    return moved


def on_crashed(tx: Transaction, item: Item, crash_status: TaskStatus, failure: Failure) -> None:
    """A role agent raised while holding ``item`` (already moved to ``crash_status``).

    The failure is stored on the item; a subtask's story follows it to ``crash_status`` when the
    transition table allows that move from where the story is.
    """
    item.failure = failure
    story = _story(tx, item)
    if story is not item and crash_status in allowed_next(story.item_kind, story.status):
        story.failure = failure.model_copy(update={"item": item.id})
        tx.move(story, crash_status, f"{item.id}: {failure.short()}"[:300])

"""What waits for a person, and a person's decisions: ``approve``, ``reject`` and ``resolve``.

Two things wait for a person:

- a story the Tester accepted (``ready_for_integrator``) that needs a person's approval before it is
  merged — ``**Approval:** required`` on its backlog item (``Task.approval_required``) or
  ``[integrator] require_approval = true`` for every story. The Integrator does not claim it
  (:func:`hold_reason`, applied where claims are chosen, :func:`oodatcaa.core.leases.claim_next`)
  until ``oodatcaa approve TASK``; ``oodatcaa reject TASK --reason TEXT`` sends it to ``needs_adapt``
  with a ``rejected`` failure (or, ``--to-person``, to ``needs_manual``);
- a story in ``needs_manual``: ``oodatcaa resolve TASK`` with ``--retry`` (the failed step back to
  its claimable status, loop count kept), ``--replan`` (the Start-Over Gate: branches back to the
  baseline tag, subtasks cancelled, ``needs_plan`` for plan version +1), ``--cancel --reason TEXT``,
  or ``--accept --reason TEXT`` for a Tester verdict that left the decision to a person (the gray
  zone, unverified criteria): straight to ``ready_for_integrator``.

Every decision is one store transaction (the transition table is checked by ``tx.move``); the
AGENT_LOG row names who decided — the repository's git ``user.name`` and ``user.email``
(:meth:`oodatcaa.gitops.GitRepo.person_identity`) — and approvals and rejections are kept on the
story (:class:`~oodatcaa.core.models.ApprovalRecord`, ``Task.approval``) for the Integrator's
report and tag message (:func:`approval_text`).

:func:`waiting_for_person` lists what waits, with the stories blocked behind each one and the
command that resolves it: ``status`` shows it, and the Negotiator announces it and waits
(``[negotiator] person_wait_minutes``) when nothing else can move.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Literal

from oodatcaa.core import lifecycle
from oodatcaa.core.clock import Clock, utc_stamp
from oodatcaa.core.config import Config, load_config
from oodatcaa.core.errors import InvalidIdError, OodatcaaError
from oodatcaa.core.failures import Failure, FailureKind
from oodatcaa.core.ids import validate_story_id
from oodatcaa.core.models import ApprovalRecord, Item, Queue, Task
from oodatcaa.core.objective import stories_still_moving
from oodatcaa.core.statuses import TERMINAL, Role, TaskStatus
from oodatcaa.core.store import QueueStore, Transaction
from oodatcaa.core.workspace import Workspace
from oodatcaa.gitops import GitRepo

S = TaskStatus

#: The actor of a person's decisions in AGENT_LOG.md (the row's text names who).
ACTOR = "person"

ResolveAction = Literal["retry", "replan", "cancel", "accept"]
RESOLVE_ACTIONS: tuple[ResolveAction, ...] = ("retry", "replan", "cancel", "accept")


class PersonError(OodatcaaError):
    """A person's command that cannot apply: unknown story, or a story not waiting for that decision."""


@dataclass(frozen=True)
class Person:
    """Who decided: git ``user.name`` and ``user.email`` (the email may be empty)."""

    name: str
    email: str = ""

    def who(self) -> str:
        """``Ada <ada@example.org>``, or the name alone."""
        return f"{self.name} <{self.email}>" if self.email else self.name


def person_of(ws: Workspace, config: Config | None = None) -> Person:
    """The person acting in ``ws``: its repository's git identity (:meth:`GitRepo.person_identity`)."""
    trunk = (config or load_config(ws.config_path, ws.agents_dir)).git.trunk
    name, email = GitRepo.for_workspace(ws, ACTOR, trunk=trunk).person_identity()
    return Person(name, email)


# --------------------------------------------------------------------------------------------
# Approval
# --------------------------------------------------------------------------------------------


def approval_required(task: Task, config: Config) -> bool:
    """True when a person approves ``task`` before its merge (its backlog item or ``[integrator]``)."""
    return task.approval_required or config.integrator.require_approval


def tested_commit(task: Task) -> str | None:
    """The Tester's results commit of the story's latest verdict (``None`` before any)."""
    tester = task.tester()
    result = tester.result if tester is not None else None
    commit = (result or {}).get("commit")
    return str(commit) if commit else None


def is_approved(task: Task) -> bool:
    """True when the latest decision is an approval of the work as it was last tested.

    An approval made on another results commit (the story was rebuilt and re-tested since) no
    longer holds: the new work waits for a new approval.
    """
    record = task.approval
    return record is not None and record.decision == "approved" and record.commit == tested_commit(task)


def awaiting_approval(task: Task, config: Config) -> bool:
    """True for an accepted story (``ready_for_integrator``) that needs an approval it does not have."""
    return task.status == S.READY_FOR_INTEGRATOR and approval_required(task, config) and not is_approved(task)


def hold_reason(queue: Queue, item: Item, config: Config, role: str) -> str | None:
    """Why ``role`` must not claim ``item`` now, or ``None``: the Integrator waits for an approval.

    Called for every claimable item where claims are chosen (:func:`oodatcaa.core.leases.claim_next`).
    """
    if role != Role.INTEGRATOR.value or not isinstance(item, Task) or not awaiting_approval(item, config):
        return None
    return f"{item.id} awaits a person's approval (`oodatcaa approve {item.id}`)"


def approval_text(task: Task) -> str | None:
    """One line for the Integrator's report and the tag message: who approved, when, the note.

    ``Approved by Ada <ada@example.org> at 2026-01-02T10:00:00Z: reads well`` — ``None`` when no
    approval holds for the work being merged (:func:`is_approved`).
    """
    record = task.approval
    if record is None or not is_approved(task):
        return None
    note = f": {record.note}" if record.note else ""
    return f"Approved by {record.who()} at {utc_stamp(record.at)}{note}"


# --------------------------------------------------------------------------------------------
# What waits for a person
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Waiting:
    """One story waiting for a person: why, who waits behind it, and the command that resolves it."""

    task_id: str
    status: str
    reason: str
    command: str
    blocked: list[str] = field(default_factory=list)
    awaiting_approval: bool = False

    def describe(self) -> str:
        """``T002 needs_manual: <reason>; blocked behind it: T003; resolve: oodatcaa resolve T002 --retry | ...``."""
        behind = f"; blocked behind it: {', '.join(self.blocked)}" if self.blocked else ""
        what = "awaiting approval" if self.awaiting_approval else self.status
        return f"{self.task_id} {what}: {self.reason}{behind}; resolve: {self.command}"

    def to_json(self) -> dict[str, object]:
        """Plain JSON (``status --json``'s ``waiting_for_person``)."""
        return {"task": self.task_id, "status": self.status, "awaiting_approval": self.awaiting_approval,
                "reason": self.reason, "blocked": list(self.blocked), "command": self.command}


def gray_zone(task: Task) -> bool:
    """True when the Tester's verdict left the decision to a person (gray zone, unverified criteria).

    The story is ``needs_manual`` and so is its tester subtask, with a ``criteria_failed`` failure
    whose ``decision`` is ``needs_manual`` (:func:`oodatcaa.roles.tester.verdict_failure`).
    """
    tester = task.tester()
    failure = task.failure
    return (task.status == S.NEEDS_MANUAL and tester is not None and tester.status == S.NEEDS_MANUAL
            and failure is not None and failure.kind == FailureKind.CRITERIA_FAILED
            and failure.details.get("decision") == "needs_manual")


def resolve_command(task: Task) -> str:
    """The commands that settle a ``needs_manual`` story (``--accept`` only for a Tester's open verdict)."""
    accept = " | --accept --reason TEXT" if gray_zone(task) else ""
    return f"oodatcaa resolve {task.id} --retry | --replan | --cancel --reason TEXT{accept}"


def _blocked_behind(queue: Queue, task_id: str) -> list[str]:
    """Open stories that wait, directly or through other stories, on ``task_id``."""
    dependents: dict[str, list[str]] = {}
    for t in queue.tasks:
        for d in t.dependencies:
            dependents.setdefault(d, []).append(t.id)
    seen: list[str] = []
    todo = list(dependents.get(task_id, []))
    while todo:
        tid = todo.pop(0)
        if tid in seen or tid == task_id:
            continue
        seen.append(tid)
        todo.extend(dependents.get(tid, []))
    open_ids = {t.id for t in queue.tasks if t.status not in TERMINAL}
    return [t.id for t in queue.tasks if t.id in seen and t.id in open_ids]


def waiting_for_person(queue: Queue, config: Config) -> list[Waiting]:
    """Every story waiting for a person, in queue order: ``needs_manual`` ones and those awaiting approval."""
    out: list[Waiting] = []
    for task in queue.tasks:
        if task.status == S.NEEDS_MANUAL:
            reason = task.manual_reason or task.last_error or "see `oodatcaa report " + task.id + "`"
            out.append(Waiting(task.id, task.status.value, reason, resolve_command(task),
                               _blocked_behind(queue, task.id)))
        elif awaiting_approval(task, config):
            why = "**Approval:** required" if task.approval_required else "[integrator] require_approval = true"
            rejected = task.approval is not None and task.approval.decision == "rejected"
            reason = f"accepted by the Tester; a person approves it before the merge ({why})" + (
                " — re-tested since its rejection" if rejected else "")
            out.append(Waiting(task.id, task.status.value, reason,
                               f"oodatcaa approve {task.id} [--note TEXT] | oodatcaa reject {task.id} --reason TEXT",
                               _blocked_behind(queue, task.id), awaiting_approval=True))
    return out


def person_view(queue: Queue, config: Config) -> Queue:
    """``queue`` with each story awaiting approval shown as ``needs_manual`` (a copy; for stuck detection).

    What :func:`oodatcaa.roles.negotiator.nothing_moves` needs: a story only a person can move on
    counts as settled, whichever of the two kinds of waiting it is.
    """
    tasks = [t.model_copy(update={"status": S.NEEDS_MANUAL}) if awaiting_approval(t, config) else t
             for t in queue.tasks]
    return queue.model_copy(update={"tasks": tasks})


def only_person_left(queue: Queue, config: Config) -> bool:
    """True when nothing is claimed, something waits for a person, and no other story can move."""
    if any(i.lease is not None for i in queue.items()):
        return False
    return bool(waiting_for_person(queue, config)) and not stories_still_moving(person_view(queue, config).tasks)


def waiting_text(waiting: list[Waiting]) -> str:
    """The Negotiator's announcement: one clause per waiting story."""
    return "waiting for a person: " + "; ".join(w.describe() for w in waiting)


# --------------------------------------------------------------------------------------------
# Decisions
# --------------------------------------------------------------------------------------------


@contextmanager
def _story_tx(store: QueueStore, task_id: str) -> Iterator[tuple[Transaction, Task]]:
    """A transaction on ``task_id``'s story; :class:`PersonError` naming the known stories when absent."""
    try:
        validate_story_id(task_id)
    except InvalidIdError:
        raise PersonError(f"{task_id!r} is not a story ID: give the story's ID, like T001 (a subtask such as "
                          "T001-B01 is settled through its story)") from None
    with store.transaction(ACTOR) as tx:
        try:
            task = tx.queue.task(task_id)
        except KeyError:
            known = ", ".join(t.id for t in tx.queue.tasks) or "none"
            raise PersonError(f"no story {task_id} in {store.path}; the stories are: {known} "
                              "(see `oodatcaa status`)") from None
        yield tx, task


def _record(tx: Transaction, task: Task, decision: Literal["approved", "rejected"], person: Person,
            note: str) -> ApprovalRecord:
    record = ApprovalRecord(decision=decision, by_name=person.name[:200], by_email=person.email[:200], at=tx.now,
                            note=note[:2000], commit=tested_commit(task))
    task.approval = record
    return record


def _require_awaiting(task: Task, config: Config, command: str) -> None:
    if awaiting_approval(task, config):
        return
    if task.status != S.READY_FOR_INTEGRATOR:
        raise PersonError(f"{task.id} is {task.status.value}, not waiting for an approval: `oodatcaa {command}` "
                          "applies to a story the Tester accepted (ready_for_integrator) that needs one")
    if is_approved(task):
        raise PersonError(f"{task.id} is already approved ({approval_text(task)}); the Integrator merges it")
    raise PersonError(f"{task.id} is ready_for_integrator but needs no approval (no `**Approval:** required` in its "
                      "backlog item, and [integrator] require_approval is false): the Integrator merges it as it is")


def approve(store: QueueStore, task_id: str, person: Person, config: Config, note: str = "") -> Task:
    """Approve an accepted story for integration: the Integrator may claim it now.

    The approval (who, when, the note, the tested commit) is stored on the story and logged.
    Raises :class:`PersonError` for an unknown story or one not awaiting approval (naming its status).
    """
    with _story_tx(store, task_id) as (tx, task):
        _require_awaiting(task, config, "approve")
        _record(tx, task, "approved", person, note)
        tx.log(task.id, "approved", f"by {person.who()}" + (f": {note}" if note else "") + "; the Integrator may merge it")
        return task


def reject(store: QueueStore, task_id: str, person: Person, config: Config, reason: str, *,
           to_person: bool = False) -> Task:
    """Reject an accepted story at review: ``needs_adapt`` with a ``rejected`` failure (``to_person``: ``needs_manual``).

    Raises :class:`PersonError` for an unknown story, one not awaiting approval, or an empty reason.
    """
    if not reason.strip():
        raise PersonError("a rejection needs a reason: `oodatcaa reject TASK --reason TEXT`")
    to = S.NEEDS_MANUAL if to_person else S.NEEDS_ADAPT
    with _story_tx(store, task_id) as (tx, task):
        _require_awaiting(task, config, "reject")
        _record(tx, task, "rejected", person, reason)
        message = f"rejected at review by {person.who()}: {reason}"
        task.failure = Failure.of(FailureKind.REJECTED, message, item=task.id, by=person.name, email=person.email)
        if to_person:
            task.manual_reason = message[:2000]
        tester = task.tester()
        if tester is not None and tester.status == S.READY_FOR_INTEGRATOR:
            tx.move(tester, to, message[:300])
        tx.move(task, to, message[:300])
        return task


def _require_manual(task: Task, action: ResolveAction) -> None:
    if task.status != S.NEEDS_MANUAL:
        raise PersonError(f"{task.id} is {task.status.value}, not needs_manual: `resolve --{action}` settles a story "
                          "waiting for a person (see `oodatcaa status`)")
    if action == "accept" and not gray_zone(task):
        why = task.failure.short(200) if task.failure else (task.manual_reason or "no Tester verdict")
        raise PersonError(f"{task.id} is needs_manual but not on a Tester's open verdict ({why}); `--accept` takes "
                          "a gray-zone or unverified verdict only — use --retry, --replan or --cancel")


def _retry(tx: Transaction, task: Task, what: str) -> TaskStatus:
    """The failed step back to its claimable status; returns where the story went. Loops are kept.

    No live plan -> ``needs_plan``; the Refiner crashed -> ``needs_adapt``; failed builder steps ->
    ``ready`` (the story too, the tester ``blocked``); the Tester's verdict or crash -> tested again
    (``awaiting_test``, tester ``ready``); the Integrator stopped -> ``ready_for_integrator``.
    """
    live = [s for s in task.subtasks if s.status != S.CANCELLED]
    tester = task.tester()
    failed = [s for s in task.builds() if s.status in (S.NEEDS_MANUAL, S.NEEDS_ADAPT)]
    if not live:  # the Planner sent it here (no job block, or a crash while planning)
        return tx.move(task, S.NEEDS_PLAN, what).status
    crash = task.failure if task.failure is not None and task.failure.kind == FailureKind.AGENT_CRASHED else None
    if crash is not None and crash.details.get("role") == Role.REFINER.value:
        # the Refiner itself crashed: its turn again, on the failure it was adapting (kept on the step)
        carriers = [*failed, *([tester] if tester is not None else [])]
        task.failure = next((s.failure for s in carriers if s.failure is not None), None)
        return tx.move(task, S.NEEDS_ADAPT, what).status
    if failed:
        for step in failed:
            tx.move(step, S.READY, what)
        if tester is not None and tester.status in (S.READY, S.NEEDS_ADAPT, S.NEEDS_MANUAL, S.READY_FOR_INTEGRATOR):
            tx.move(tester, S.BLOCKED, "waiting for the retried steps")
        return tx.move(task, S.READY, what).status
    if tester is not None and tester.status in (S.NEEDS_MANUAL, S.NEEDS_ADAPT, S.READY):
        if tester.status != S.READY:
            tx.move(tester, S.READY, what)
        return tx.move(task, S.AWAITING_TEST, what).status
    if tester is not None and tester.status == S.READY_FOR_INTEGRATOR:  # the Integrator stopped (a dirty trunk)
        return tx.move(task, S.READY_FOR_INTEGRATOR, what).status
    return tx.move(task, S.READY, what).status


def reset_to_baseline(git: GitRepo, task: Task) -> list[str]:
    """The Start-Over Gate's branch reset: every builder step's branch back to the story's baseline tag.

    Returns the branches reset (none when the story has no baseline tag, which the Planner then makes).
    The same reset as the Refiner's ``_start_over``.
    """
    if not task.baseline_tag or not git.tag_exists(task.baseline_tag):
        return []
    reset = []
    for step in task.builds():
        if step.branch and git.branch_exists(step.branch):
            git.reset_branch(step.branch, task.baseline_tag)
            reset.append(step.branch)
    return reset


@dataclass
class Resolution:
    """What ``resolve`` did: the story, where it went, and a sentence for the person."""

    task: Task
    status: TaskStatus
    message: str


def resolve(store: QueueStore, task_id: str, action: ResolveAction, person: Person, *, reason: str = "",
            git: GitRepo | None = None) -> Resolution:
    """Settle a ``needs_manual`` story: ``retry``, ``replan``, ``cancel`` or ``accept`` (see the module docstring).

    ``reason`` is required for ``cancel`` and ``accept``; ``git`` for ``replan`` (the branch reset).
    Raises :class:`PersonError` for an unknown story, a story not ``needs_manual``, ``accept`` on a
    story the Tester did not leave to a person, or a missing reason.
    """
    if action not in RESOLVE_ACTIONS:
        raise PersonError(f"unknown resolve action {action!r}; choose one of {', '.join(RESOLVE_ACTIONS)}")
    if action in ("cancel", "accept") and not reason.strip():
        raise PersonError(f"`resolve --{action}` needs a reason: `oodatcaa resolve TASK --{action} --reason TEXT`")
    reset: list[str] = []
    if action == "replan":
        # checked before git moves anything; the transaction checks again under the lock
        current = next((t for t in store.read().tasks if t.id == task_id), None)
        if current is not None:
            _require_manual(current, action)
            if git is not None:
                reset = reset_to_baseline(git, current)
    with _story_tx(store, task_id) as (tx, task):
        _require_manual(task, action)
        what = f"resolve --{action} by {person.who()}" + (f": {reason}" if reason else "")
        task.manual_reason = None
        if action == "retry":
            to = _retry(tx, task, what[:300])
        elif action == "replan":
            to = tx.move(task, S.NEEDS_PLAN, (what + f"; Start-Over Gate, plan v{task.plan_version + 1} next")[:300]).status
            lifecycle.on_start_over(tx, task)
            if reset:
                tx.log(task.id, "branches reset", f"to {task.baseline_tag}: {', '.join(reset)}")
        elif action == "cancel":
            to = tx.move(task, S.CANCELLED, what[:300]).status
            for sub in task.subtasks:
                if sub.status not in TERMINAL:
                    tx.move(sub, S.CANCELLED, f"{task.id} cancelled by a person")
        else:
            tester = task.tester()
            assert tester is not None  # gray_zone() checked it
            tx.move(tester, S.READY_FOR_INTEGRATOR, what[:300])
            task.failure = None
            _record(tx, task, "approved", person, reason)  # accepting is the approval: it does not wait again
            to = tx.move(task, S.READY_FOR_INTEGRATOR, what[:300]).status
        return Resolution(task, to, f"{task.id} -> {to.value} ({what})")


def open_store(ws: Workspace, clock: Clock | None = None) -> QueueStore:
    """The workspace's queue store (the CLI's way in)."""
    return QueueStore.for_workspace(ws, clock=clock)

"""The status vocabulary of DESIGN.md §2 and the transition tables that enforce it.

Three kinds of queue item move through the same vocabulary with their own table:

- ``story``: the backlog item itself (``T001``); claimed by the Planner, Refiner and Integrator.
- ``build``: a Builder step (``T001-B01``); one job block, one feature branch.
- ``test``: the Tester subtask (``T001-T01``).

A change that is not in the table raises :class:`IllegalTransitionError` before anything is
written. ``stale`` is deliberately absent: it is a condition of a lease, not a status.
"""

from __future__ import annotations

from enum import Enum

from oodatcaa.core.errors import IllegalTransitionError


class TaskStatus(str, Enum):
    """Status of a story or subtask (the vocabulary of the hand-run original, enforced)."""

    NEEDS_PLAN = "needs_plan"
    PLANNING = "planning"
    PLANNING_COMPLETE = "planning_complete"
    BLOCKED = "blocked"
    READY = "ready"
    IN_PROGRESS = "in_progress"
    AWAITING_TEST = "awaiting_test"
    TESTING = "testing"
    NEEDS_ADAPT = "needs_adapt"
    ADAPTING = "adapting"
    READY_FOR_INTEGRATOR = "ready_for_integrator"
    INTEGRATING = "integrating"
    DONE = "done"
    CANCELLED = "cancelled"
    NEEDS_MANUAL = "needs_manual"


class SprintStatus(str, Enum):
    """Status of the sprint as a whole."""

    PLANNING = "planning"
    IN_PROGRESS = "in_progress"
    COMPLETED = "completed"
    PROJECT_COMPLETE = "project_complete"


class Role(str, Enum):
    """The OODATCAA roles (DESIGN.md §2). The claiming roles are :data:`AGENT_ROLES`."""

    SPRINT_PLANNER = "sprint_planner"
    NEGOTIATOR = "negotiator"
    PLANNER = "planner"
    BUILDER = "builder"
    TESTER = "tester"
    REFINER = "refiner"
    INTEGRATOR = "integrator"


#: Roles that claim queue items, in loop order; one agent process per unit of wip limit.
AGENT_ROLES: tuple[Role, ...] = (Role.PLANNER, Role.BUILDER, Role.TESTER, Role.REFINER, Role.INTEGRATOR)
#: Roles that run as supervised processes (``oodatcaa agent ROLE``, ``agents start``).
PROCESS_ROLES: tuple[Role, ...] = (*AGENT_ROLES, Role.NEGOTIATOR)


class ItemKind(str, Enum):
    """Which transition table applies to a queue item."""

    STORY = "story"
    BUILD = "build"
    TEST = "test"


S = TaskStatus

#: Statuses from which nothing moves on.
TERMINAL = frozenset({S.DONE, S.CANCELLED})

#: Statuses in which some item is held by an agent (see :func:`claimed_statuses` per kind).
CLAIMED = frozenset({S.PLANNING, S.IN_PROGRESS, S.TESTING, S.ADAPTING, S.INTEGRATING})

_STORY: dict[S, set[S]] = {
    S.NEEDS_PLAN: {S.PLANNING, S.CANCELLED, S.NEEDS_MANUAL},
    # back to needs_plan when the planner's lease is reclaimed
    S.PLANNING: {S.PLANNING_COMPLETE, S.NEEDS_MANUAL, S.NEEDS_PLAN, S.CANCELLED},
    S.PLANNING_COMPLETE: {S.READY, S.BLOCKED, S.CANCELLED},
    S.BLOCKED: {S.READY, S.CANCELLED, S.NEEDS_MANUAL},
    S.READY: {S.IN_PROGRESS, S.BLOCKED, S.CANCELLED},
    # a story stays in_progress while its builder steps run; it follows them
    S.IN_PROGRESS: {S.AWAITING_TEST, S.NEEDS_ADAPT, S.READY, S.CANCELLED},
    S.AWAITING_TEST: {S.TESTING, S.CANCELLED},
    S.TESTING: {S.READY_FOR_INTEGRATOR, S.NEEDS_ADAPT, S.NEEDS_MANUAL, S.AWAITING_TEST, S.CANCELLED},
    S.NEEDS_ADAPT: {S.ADAPTING, S.NEEDS_MANUAL, S.CANCELLED},
    # ready: a builder step re-runs; needs_plan: the Start-Over Gate; needs_adapt: lease reclaimed
    S.ADAPTING: {S.READY, S.NEEDS_PLAN, S.NEEDS_MANUAL, S.NEEDS_ADAPT, S.CANCELLED},
    # needs_adapt / needs_manual: a person rejects it at review (`oodatcaa reject`)
    S.READY_FOR_INTEGRATOR: {S.INTEGRATING, S.NEEDS_ADAPT, S.NEEDS_MANUAL, S.CANCELLED},
    S.INTEGRATING: {S.DONE, S.NEEDS_ADAPT, S.NEEDS_MANUAL, S.READY_FOR_INTEGRATOR, S.CANCELLED},
    # a person resolves needs_manual (`oodatcaa resolve`): re-plan, retry a step, re-test, accept, cancel
    S.NEEDS_MANUAL: {S.NEEDS_PLAN, S.READY, S.AWAITING_TEST, S.NEEDS_ADAPT, S.READY_FOR_INTEGRATOR, S.CANCELLED},
    S.DONE: set(),
    S.CANCELLED: set(),
}

_BUILD: dict[S, set[S]] = {
    S.BLOCKED: {S.READY, S.CANCELLED},
    S.READY: {S.IN_PROGRESS, S.BLOCKED, S.CANCELLED},
    S.IN_PROGRESS: {S.AWAITING_TEST, S.NEEDS_ADAPT, S.READY, S.CANCELLED},
    # ready: the Refiner sends a built step back for another run
    S.AWAITING_TEST: {S.DONE, S.READY, S.CANCELLED},
    S.NEEDS_ADAPT: {S.READY, S.NEEDS_MANUAL, S.CANCELLED},
    S.NEEDS_MANUAL: {S.READY, S.CANCELLED},
    S.DONE: set(),
    S.CANCELLED: set(),
}

_TEST: dict[S, set[S]] = {
    S.BLOCKED: {S.READY, S.CANCELLED},
    S.READY: {S.TESTING, S.BLOCKED, S.CANCELLED},
    S.TESTING: {S.READY_FOR_INTEGRATOR, S.NEEDS_ADAPT, S.NEEDS_MANUAL, S.READY, S.CANCELLED},
    # blocked again: after an adaptation the step must be re-built before it is re-tested
    S.READY_FOR_INTEGRATOR: {S.DONE, S.BLOCKED, S.NEEDS_ADAPT, S.NEEDS_MANUAL, S.CANCELLED},
    # ready: a person retries the test (`resolve --retry`); ready_for_integrator: accepts it (`--accept`)
    S.NEEDS_ADAPT: {S.BLOCKED, S.NEEDS_MANUAL, S.READY, S.CANCELLED},
    S.NEEDS_MANUAL: {S.BLOCKED, S.READY, S.READY_FOR_INTEGRATOR, S.CANCELLED},
    S.DONE: set(),
    S.CANCELLED: set(),
}

TRANSITIONS: dict[ItemKind, dict[S, frozenset[S]]] = {
    ItemKind.STORY: {k: frozenset(v) for k, v in _STORY.items()},
    ItemKind.BUILD: {k: frozenset(v) for k, v in _BUILD.items()},
    ItemKind.TEST: {k: frozenset(v) for k, v in _TEST.items()},
}


#: What each claiming role takes from the queue: role -> (item kind, claimable status, claimed
#: status). The one home of "who claims what"; leases, the role definitions' optional
#: ``consumes`` and the docs all read it.
CLAIMS: dict[Role, tuple[ItemKind, TaskStatus, TaskStatus]] = {
    Role.PLANNER: (ItemKind.STORY, S.NEEDS_PLAN, S.PLANNING),
    Role.BUILDER: (ItemKind.BUILD, S.READY, S.IN_PROGRESS),
    Role.TESTER: (ItemKind.TEST, S.READY, S.TESTING),
    Role.REFINER: (ItemKind.STORY, S.NEEDS_ADAPT, S.ADAPTING),
    Role.INTEGRATOR: (ItemKind.STORY, S.READY_FOR_INTEGRATOR, S.INTEGRATING),
}


def claimed_statuses(kind: ItemKind | str) -> frozenset[TaskStatus]:
    """Statuses in which an item of ``kind`` must hold exactly one live lease.

    Derived from :data:`CLAIMS`: a story that is ``in_progress`` or ``testing`` carries none (its
    builder step or tester subtask holds it).
    """
    kind = ItemKind(kind)
    return frozenset(claimed for k, _claimable, claimed in CLAIMS.values() if k == kind)


def allowed_next(kind: ItemKind, status: TaskStatus) -> frozenset[TaskStatus]:
    """Statuses an item of ``kind`` may move to from ``status`` (empty for terminal ones)."""
    return TRANSITIONS[ItemKind(kind)].get(TaskStatus(status), frozenset())


def valid_statuses(kind: ItemKind) -> frozenset[TaskStatus]:
    """Statuses an item of ``kind`` may ever be in."""
    return frozenset(TRANSITIONS[ItemKind(kind)])


def check_transition(item_id: str, kind: ItemKind, from_status: TaskStatus, to_status: TaskStatus) -> None:
    """Raise :class:`IllegalTransitionError` unless ``from_status -> to_status`` is in the table."""
    kind = ItemKind(kind)
    from_status, to_status = TaskStatus(from_status), TaskStatus(to_status)
    if to_status not in allowed_next(kind, from_status):
        raise IllegalTransitionError(
            item_id,
            kind.value,
            from_status.value,
            to_status.value,
            sorted(s.value for s in allowed_next(kind, from_status)),
        )

"""Claims, heartbeats, fenced completion and reclaiming of queue items.

A claim is atomic under the queue lock: the first eligible item moves to its claimed status and
gets a :class:`~oodatcaa.core.models.Lease` with a fresh ``claim_id``. Every later write by that
agent presents the claim id (fencing, in the manner of fencing tokens for distributed locks);
a write whose claim id no longer holds the lease is refused with :class:`LeaseError`, logged,
and never applied. The Negotiator reclaims expired leases and leases of dead processes.
"""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

from oodatcaa.core import lifecycle
from oodatcaa.core.errors import LeaseError
from oodatcaa.core.eventlog import LogEntry
from oodatcaa.core.models import Item, Lease, Queue
from oodatcaa.core.statuses import CLAIMS, TERMINAL, Role, TaskStatus
from oodatcaa.core.store import QueueStore, Transaction

S = TaskStatus

#: Where each claimable status goes when claimed, per role: (item kind, claimable, claimed).
CLAIM_MOVES: dict[str, tuple[str, TaskStatus, TaskStatus]] = {
    role.value: (kind.value, claimable, claimed) for role, (kind, claimable, claimed) in CLAIMS.items()
}

#: Claimed status -> status it returns to when its lease is released or reclaimed.
RELEASE_TO: dict[tuple[str, TaskStatus], TaskStatus] = {
    (kind, claimed): claimable for kind, claimable, claimed in CLAIM_MOVES.values()
}


@dataclass(frozen=True)
class Claim:
    """What an agent holds: the item, its story, and the fencing token ``claim_id``."""

    item_id: str
    task_id: str
    role: str
    owner: str
    claim_id: str
    ttl_seconds: float


def new_claim_id() -> str:
    """A fresh 128-bit claim id, 32 lowercase hex digits."""
    return uuid.uuid4().hex


def pid_alive(pid: int) -> bool:
    """True if a process with ``pid`` exists on this host (zombies count as dead)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as handle:
            return handle.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def _eligible(queue: Queue, role: str) -> list[Item]:
    """Items ``role`` may claim now, best first (story priority, then ID). One pass over the queue:
    a subtask's dependencies are its siblings, looked up in its own story, never by a queue search."""
    kind, status, _ = CLAIM_MOVES[role]
    out: list[tuple[int, str, Item]] = []
    for task in queue.tasks:
        priority = task.priority if task.priority is not None else 999
        if kind == "story":
            if task.status == status and task.lease is None:
                out.append((priority, task.id, task))
            continue
        if task.status in TERMINAL or task.status == S.NEEDS_MANUAL:
            continue
        if kind == "build" and task.status not in (S.READY, S.IN_PROGRESS):
            continue
        if kind == "test" and task.status != S.AWAITING_TEST:
            continue
        siblings = {sub.id: sub.status for sub in task.subtasks}
        for sub in task.subtasks:
            if sub.kind == kind and sub.status == status and sub.lease is None and all(
                    siblings.get(dep) in (S.AWAITING_TEST, S.DONE) for dep in sub.dependencies):
                out.append((priority, sub.id, sub))
    return [item for _p, _id, item in sorted(out, key=lambda entry: entry[:2])]


def leases_held(queue: Queue, role: str) -> int:
    """How many live leases ``role`` holds across the queue (for the wip limit)."""
    return sum(1 for item in queue.items() if item.lease is not None and item.lease.role == role)


def claimable(queue: Queue, role: str, *, wip_limit: int,
              hold: Callable[[Queue, Item], str | None] | None = None) -> bool:
    """Whether :func:`claim_next` would claim something for ``role`` in ``queue`` (read-only).

    The same rules (wip limit, eligibility, ``hold``) on a snapshot read without the lock, so an idle
    agent looks without locking or writing; a ``True`` can still lose the race to another agent's claim.
    """
    if leases_held(queue, role) >= wip_limit:
        return False
    return any(hold is None or hold(queue, item) is None for item in _eligible(queue, role))


def claim_next(
    store: QueueStore,
    role: str,
    owner: str,
    *,
    ttl_seconds: float,
    wip_limit: int,
    pid: int | None = None,
    host: str | None = None,
    only: str | None = None,
    hold: Callable[[Queue, Item], str | None] | None = None,
) -> Claim | None:
    """Atomically claim the highest-priority eligible item for ``role``; ``None`` if none or at the wip limit.

    ``only`` restricts the claim to one item ID. ``hold(queue, item)`` returns why an eligible item
    must not be claimed now (a story awaiting a person's approval, :func:`oodatcaa.person.hold_reason`)
    or ``None``; held items are skipped. The claimed item (and, for builder and tester subtasks, its
    story) moves to the claimed status with one log entry per change.
    """
    with store.transaction(owner) as tx:
        queue = tx.queue
        if leases_held(queue, role) >= wip_limit:
            return None
        candidates = [i for i in _eligible(queue, role)
                      if (only is None or i.id == only) and (hold is None or hold(queue, i) is None)]
        if not candidates:
            return None
        item = candidates[0]
        now = tx.now
        lease = Lease(
            owner=owner,
            role=Role(role),
            pid=pid or os.getpid(),
            host=host or socket.gethostname(),
            claim_id=new_claim_id(),
            claimed_at=now,
            heartbeat_at=now,
            ttl_seconds=ttl_seconds,
            expires_at=now + timedelta(seconds=ttl_seconds),
        )
        _, _, to = CLAIM_MOVES[role]
        tx.move(item, to, f"claimed (claim {lease.claim_id[:8]}, pid {lease.pid}, attempt {item.attempts + 1})")
        item.lease = lease
        item.attempts += 1
        lifecycle.on_claimed(tx, item)
        return Claim(item.id, queue.parent(item).id, role, owner, lease.claim_id, ttl_seconds)


def _fenced(tx: Transaction, claim: Claim, action: str) -> Item:
    return _holding(tx.queue, claim, action)


def _holding(queue: Queue, claim: Claim, action: str) -> Item:
    """The claimed item when ``claim`` still holds its lease in ``queue``; else :class:`LeaseError`."""
    item = queue.item(claim.item_id)
    if item.lease is None or item.lease.claim_id != claim.claim_id:
        holder = f"now held by {item.lease.owner} (claim {item.lease.claim_id[:8]})" if item.lease else "no longer leased"
        raise LeaseError(
            f"{claim.owner}'s {action} on {claim.item_id} rejected: claim {claim.claim_id[:8]} was superseded; "
            f"the item is {holder} and is {item.status.value}"
        )
    return item


def _reject(store: QueueStore, claim: Claim, exc: LeaseError) -> None:
    store.append_log([LogEntry(store.clock.now(), claim.owner, claim.item_id, "rejected", str(exc))])


def assert_holds(store: QueueStore, claim: Claim, action: str) -> None:
    """Check, before a side effect outside the queue (a git commit, moving the trunk, a tag), that
    ``claim`` still holds its item's lease and the lease has not expired.

    Raises :class:`LeaseError` — logged as a ``rejected`` row like a refused queue write — when the
    claim was superseded (reclaimed, taken over) or its lease expired (the Negotiator may hand the
    item to another agent at any moment): the caller must not act. Reads the queue file without its
    lock, so it may be called while holding the git lock. What it cannot close is the time between
    this check and the side effect; callers hold the git lock across both (docs/guarantees.md,
    "What is fenced").
    """
    try:
        item = _holding(store.peek(), claim, action)
        lease = item.lease
        assert lease is not None
        now = store.clock.now()
        if lease.is_expired(now):
            raise LeaseError(f"{claim.owner}'s {action} on {claim.item_id} rejected: the lease of claim "
                             f"{claim.claim_id[:8]} expired at {lease.expires_at.isoformat()} (no heartbeat since "
                             f"{lease.heartbeat_at.isoformat()}); the item is about to be handed to another agent")
    except LeaseError as exc:
        _reject(store, claim, exc)
        raise


def heartbeat(store: QueueStore, claim: Claim) -> datetime:
    """Extend the lease by its TTL from now; returns the new expiry.

    Raises :class:`LeaseError` (logged) when the claim was superseded: the agent must stop.
    """
    try:
        with store.transaction(claim.owner) as tx:
            item = _fenced(tx, claim, "heartbeat")
            lease = item.lease
            assert lease is not None
            item.lease = lease.model_copy(
                update={"heartbeat_at": tx.now, "expires_at": tx.now + timedelta(seconds=lease.ttl_seconds)}
            )
            return item.lease.expires_at
    except LeaseError as exc:
        _reject(store, claim, exc)
        raise


def complete(
    store: QueueStore,
    claim: Claim,
    to: TaskStatus,
    what: str,
    apply: Callable[[Transaction, Item], None] | None = None,
) -> None:
    """Fenced completion: move the claimed item to ``to``, drop its lease, run ``apply`` in the
    same transaction (story moves, results, new subtasks). All or nothing.

    Raises :class:`LeaseError` (logged, nothing applied) for a superseded claim, and
    :class:`~oodatcaa.core.errors.IllegalTransitionError` for a move the table refuses.
    """
    try:
        with store.transaction(claim.owner) as tx:
            item = _fenced(tx, claim, f"move to {TaskStatus(to).value}")
            item.lease = None
            tx.move(item, to, what)
            if apply is not None:
                apply(tx, item)
    except LeaseError as exc:
        _reject(store, claim, exc)
        raise


def update_claimed(store: QueueStore, claim: Claim, apply: Callable[[Transaction, Item], None]) -> None:
    """Fenced change to the claimed item without a status move (progress, branch name)."""
    try:
        with store.transaction(claim.owner) as tx:
            apply(tx, _fenced(tx, claim, "update"))
    except LeaseError as exc:
        _reject(store, claim, exc)
        raise


def release(store: QueueStore, claim: Claim, reason: str) -> None:
    """Hand the item back to its claimable status (clean shutdown). Superseded claims are ignored."""
    try:
        with store.transaction(claim.owner) as tx:
            item = _fenced(tx, claim, "release")
            _return_item(tx, item, f"released: {reason}")
    except LeaseError as exc:
        _reject(store, claim, exc)


def _return_item(tx: Transaction, item: Item, what: str) -> None:
    kind = item.item_kind.value
    back = RELEASE_TO.get((kind, item.status))
    item.lease = None
    if back is None:
        tx.log(item.id, "lease dropped", what)
        return
    tx.move(item, back, what)
    lifecycle.on_released(tx, item)


def stale_leases(queue: Queue, now: datetime, *, this_host: str | None = None) -> list[tuple[Item, str]]:
    """Items whose lease expired at ``now`` or whose owner pid on this host is gone, each with the reason.

    Read-only: the Negotiator looks with it on a lock-free read before it takes the lock to reclaim.
    """
    host = this_host or socket.gethostname()
    out: list[tuple[Item, str]] = []
    for item in queue.items():
        lease = item.lease
        if lease is None:
            continue
        if lease.is_expired(now):
            out.append((item, f"lease of {lease.owner} expired at {lease.expires_at.isoformat()}"))
        elif lease.host == host and not pid_alive(lease.pid):
            out.append((item, f"owner {lease.owner} (pid {lease.pid}) is no longer running"))
    return out


def reclaim_stale(store: QueueStore, *, this_host: str | None = None, look_first: bool = False) -> list[str]:
    """Negotiator sweep: reclaim items whose lease expired or whose owner process is gone.

    Returns the reclaimed item IDs; each gets a ``takeover`` log entry naming the reason.
    Only pids on this host are checked for liveness. ``look_first``: check a lock-free read with
    :func:`stale_leases` and take the lock only when it finds something (the idle sweep costs a read).
    """
    if look_first and not stale_leases(store.peek(), store.clock.now(), this_host=this_host):
        return []
    reclaimed: list[str] = []
    with store.transaction("negotiator") as tx:
        for item, reason in stale_leases(tx.queue, tx.now, this_host=this_host):
            tx.log(item.id, "takeover", f"{reason}; attempt {item.attempts} reclaimed")
            _return_item(tx, item, f"reclaimed: {reason}")
            reclaimed.append(item.id)
    return reclaimed

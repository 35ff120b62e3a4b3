"""Worker process of tests/test_stress.py: random claim / heartbeat / complete / release traffic.

Run as ``python stress_worker.py ROOT INDEX N_OPS SEED OUT_JSON GO_FILE``. It waits for GO_FILE (so all
workers start together), performs N_OPS random operations through :mod:`oodatcaa.core.leases` on the one
queue of the workspace at ROOT, and writes what it did and every problem it saw to OUT_JSON.

Two independent detectors run in here:

- **occupancy markers**: after every successful claim the worker creates ``ROOT/markers/<ITEM>`` with
  ``O_CREAT | O_EXCL`` and removes it before it completes or releases the item. ``EEXIST`` means two
  processes hold the same item at once (an overlap).
- **a shared counter**: every successful operation also increments ``metrics["stress.counter"]`` of
  story T001 through a queue transaction (some in the same transaction as the operation, some in a
  separate one); the worker counts its increments locally. Lost updates make the stored value fall
  short of the sum of the local counts.

Status changes are counted where they are made (``Transaction.move``, counted only when the call that
made them returned normally, i.e. its transaction was written), so the parent can check that
``AGENT_LOG.md`` has exactly one row per applied change.
"""

from __future__ import annotations

import errno
import json
import os
import random
import sys
import time
import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from oodatcaa.core.errors import IllegalTransitionError, LeaseError
from oodatcaa.core.leases import claim_next, complete, heartbeat, reclaim_stale, release, update_claimed
from oodatcaa.core.statuses import TaskStatus
from oodatcaa.core.store import QueueStore, Transaction, parse_queue
from oodatcaa.core.workspace import Workspace

S = TaskStatus
COUNTER = "stress.counter"
COUNTER_TASK = "T001"
#: the wip limits of the original process (DESIGN.md §2)
WIP = {"planner": 1, "builder": 3, "tester": 2, "refiner": 1, "integrator": 1}
ROLES = tuple(WIP)
#: where a held item goes when the worker completes it: back to its claimable status (so traffic cycles)
CYCLE = {"planner": S.NEEDS_PLAN, "builder": S.READY, "tester": S.READY, "refiner": S.NEEDS_ADAPT,
         "integrator": S.READY_FOR_INTEGRATOR}
#: an illegal target for each role's claimed status (must be refused, nothing applied)
ILLEGAL = {"planner": S.DONE, "builder": S.DONE, "tester": S.DONE, "refiner": S.DONE, "integrator": S.BLOCKED}
#: (kind, status) pairs that must carry a lease, and only they
LEASED = {("story", S.PLANNING), ("story", S.ADAPTING), ("story", S.INTEGRATING),
          ("build", S.IN_PROGRESS), ("test", S.TESTING)}
DEAD_PID_BASE = 2**22 + 1000  # above any pid_max: kill(pid, 0) fails with ESRCH
TTL = 3600.0

# -- counting status changes where they are made --------------------------------------------------
_pending = {"moves": 0, "entries": 0}
_orig_move = Transaction.move
_orig_log = Transaction.log


def _counting_move(self: Transaction, item: Any, to: Any, what: str) -> Any:
    result = _orig_move(self, item, to, what)
    _pending["moves"] += 1
    return result


def _counting_log(self: Transaction, task_id: str, change: str, what: str) -> None:
    _orig_log(self, task_id, change, what)
    _pending["entries"] += 1


@contextmanager
def counting_installed() -> Iterator[None]:
    """Count status changes and log entries made through :class:`Transaction` while active."""
    Transaction.move = _counting_move  # type: ignore[method-assign]
    Transaction.log = _counting_log  # type: ignore[method-assign]
    try:
        yield
    finally:
        Transaction.move = _orig_move  # type: ignore[method-assign]
        Transaction.log = _orig_log  # type: ignore[method-assign]


@contextmanager
def counted(totals: dict[str, int]) -> Iterator[None]:
    """Add the moves and log entries made inside the block to ``totals`` if it exits normally."""
    _pending["moves"] = _pending["entries"] = 0
    try:
        yield
    except BaseException:
        _pending["moves"] = _pending["entries"] = 0
        raise
    totals["moves"] += _pending["moves"]
    totals["entries"] += _pending["entries"]
    _pending["moves"] = _pending["entries"] = 0


# -- invariants seen from a reader -----------------------------------------------------------------
def queue_problems(queue: Any) -> list[str]:
    """Invariants every committed queue must satisfy (checked by readers, without the lock)."""
    out = []
    held: dict[str, int] = {}
    for task in queue.tasks:
        for item in (task, *task.subtasks):
            kind = item.item_kind.value
            leased = (kind, item.status) in LEASED
            if leased and item.lease is None:
                out.append(f"{item.id} is {item.status.value} without a lease")
            if not leased and item.lease is not None:
                out.append(f"{item.id} is {item.status.value} but leased to {item.lease.owner}")
            if item.lease is not None:
                held[item.lease.role] = held.get(item.lease.role, 0) + 1
        tester = task.tester()
        if tester is not None and (task.status == S.TESTING) != (tester.status == S.TESTING):
            out.append(f"{task.id} is {task.status.value} while its tester is {tester.status.value}")
    for role, n in held.items():
        if n > WIP[role]:
            out.append(f"{role} holds {n} leases, over its wip limit {WIP[role]}")
    return out


def marker_path(root: Path, item_id: str) -> Path:
    return root / "markers" / item_id


def occupy(root: Path, item_id: str) -> bool:
    """Create the occupancy marker; False when it already exists (another holder: an overlap)."""
    try:
        fd = os.open(marker_path(root, item_id), os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except OSError as exc:
        if exc.errno == errno.EEXIST:
            return False
        raise
    os.write(fd, f"{os.getpid()}\n".encode())
    os.close(fd)
    return True


def vacate(root: Path, item_id: str) -> None:
    os.unlink(marker_path(root, item_id))


def bump(tx: Transaction) -> None:
    """Increment the shared counter inside ``tx``."""
    metrics = tx.queue.task(COUNTER_TASK).metrics
    metrics[COUNTER] = int(metrics.get(COUNTER, 0)) + 1


def run(root: Path, index: int, n_ops: int, seed: int) -> dict[str, Any]:
    rng = random.Random(seed * 1000 + index)
    store = QueueStore.for_workspace(Workspace(root))
    dead_pid = DEAD_PID_BASE + index
    totals = {"moves": 0, "entries": 0}
    stats: dict[str, Any] = {
        "index": index, "seed": seed, "ops": 0, "by_op": {}, "counter": 0, "writes": 0, "stale_ops": 0,
        "takeovers": 0, "overlaps": [], "problems": [], "claims": 0, "illegal_refused": 0,
    }
    held: list[tuple[str, Any]] = []  # (role, claim) with a marker
    superseded: list[Any] = []  # claims this worker completed or released: must be fenced
    abandoned: set[str] = set()  # claim ids left to a dead pid: must only ever be reclaimed

    def problem(text: str) -> None:
        stats["problems"].append(f"worker {index} op {stats['ops']}: {text}")

    def note(op: str) -> None:
        stats["by_op"][op] = stats["by_op"].get(op, 0) + 1

    def counter_tx() -> None:
        with counted(totals):
            with store.transaction(f"w{index}") as tx:
                bump(tx)
        stats["counter"] += 1
        stats["writes"] += 1

    def drop(role: str, claim: Any, how: str) -> None:
        vacate(root, claim.item_id)
        held.remove((role, claim))
        with counted(totals):
            if how == "complete":
                def apply(tx: Transaction, item: Any) -> None:
                    bump(tx)
                    if role == "tester":
                        story = tx.queue.parent(item)
                        if story.status == S.TESTING:
                            tx.move(story, S.AWAITING_TEST, "stress: tester done, story back to awaiting_test")
                complete(store, claim, CYCLE[role], "stress: cycled", apply)
                stats["counter"] += 1
            else:
                release(store, claim, "stress: released")
        stats["writes"] += 1
        superseded.append(claim)

    for _ in range(n_ops):
        stats["ops"] += 1
        r = rng.random()
        try:
            if held and r < 0.12:
                note("heartbeat")
                role, claim = rng.choice(held)
                with counted(totals):
                    heartbeat(store, claim)
                stats["writes"] += 1
            elif held and r < 0.22:
                note("update")
                role, claim = rng.choice(held)
                with counted(totals):
                    update_claimed(store, claim, lambda tx, item: bump(tx))
                stats["counter"] += 1
                stats["writes"] += 1
            elif held and r < 0.36:
                note("complete")
                role, claim = rng.choice(held)
                if rng.random() < 0.15:  # an illegal target first: refused, nothing applied, still held
                    try:
                        with counted(totals):
                            complete(store, claim, ILLEGAL[role], "stress: illegal")
                        problem(f"illegal move of {claim.item_id} to {ILLEGAL[role].value} was applied")
                    except IllegalTransitionError:
                        stats["illegal_refused"] += 1
                drop(role, claim, "complete")
            elif held and r < 0.44:
                note("release")
                role, claim = rng.choice(held)
                drop(role, claim, "release")
            elif superseded and r < 0.50:
                note("stale")
                claim = rng.choice(superseded)
                action = rng.choice(("heartbeat", "complete", "update", "release"))
                try:
                    with counted(totals):
                        if action == "heartbeat":
                            heartbeat(store, claim)
                        elif action == "complete":
                            complete(store, claim, CYCLE[claim.role], "stress: stale complete")
                        elif action == "update":
                            update_claimed(store, claim, lambda tx, item: bump(tx))
                        else:
                            release(store, claim, "stress: stale release")
                    if action != "release":
                        problem(f"stale {action} with claim {claim.claim_id[:8]} on {claim.item_id} was accepted")
                except LeaseError:
                    pass
                stats["stale_ops"] += 1  # each one writes exactly one `rejected` row
                item_after = store.read().item(claim.item_id)
                if item_after.lease is not None and item_after.lease.claim_id == claim.claim_id:
                    problem(f"superseded claim {claim.claim_id[:8]} holds {claim.item_id} again")
            elif r < 0.58:
                note("counter")
                counter_tx()
            elif r < 0.62:
                note("reclaim")
                with counted(totals):
                    got = reclaim_stale(store)
                if got:
                    stats["writes"] += 1
                    stats["takeovers"] += len(got)
            elif r < 0.64 and len(held) < 2:
                note("abandon")  # a claim whose owner "dies" at once: only a reclaim may free it
                role = rng.choice(ROLES)
                with counted(totals):
                    claim = claim_next(store, role, f"w{index}-dead", ttl_seconds=TTL, wip_limit=WIP[role],
                                       pid=dead_pid)
                if claim is not None:
                    stats["writes"] += 1
                    abandoned.add(claim.claim_id)
            elif len(held) < 2:
                note("claim")
                role = rng.choice(ROLES)
                with counted(totals):
                    claim = claim_next(store, role, f"w{index}-{role}", ttl_seconds=TTL, wip_limit=WIP[role])
                if claim is not None:
                    stats["writes"] += 1
                    stats["claims"] += 1
                    if not occupy(root, claim.item_id):
                        stats["overlaps"].append(f"worker {index} claimed {claim.item_id} ({claim.claim_id[:8]}) "
                                                 f"while {marker_path(root, claim.item_id).read_text().strip()} held it")
                        problem(f"overlap on {claim.item_id}")
                        # keep it (without a marker of our own) so the run goes on; never vacate another's
                        superseded.append(claim)
                        with counted(totals):
                            release(store, claim, "stress: overlap")
                        stats["writes"] += 1
                    else:
                        held.append((role, claim))
            else:
                note("counter")
                counter_tx()
        except LeaseError as exc:
            problem(f"lease lost unexpectedly: {exc}")
        except Exception as exc:  # noqa: BLE001 - every surprise is a finding
            problem(f"{type(exc).__name__}: {exc}\n{traceback.format_exc()}")
        try:
            text = store.path.read_text(encoding="utf-8")
            for p in queue_problems(parse_queue(text, store.path)):
                problem(p)
        except Exception as exc:  # noqa: BLE001 - a torn or invalid queue
            problem(f"queue unreadable: {type(exc).__name__}: {exc}")
    for role, claim in list(held):
        drop(role, claim, "release")
    stats["moves"] = totals["moves"]
    stats["entries"] = totals["entries"]
    return stats


def main(argv: list[str]) -> int:
    root, index, n_ops, seed, out, go = Path(argv[0]), int(argv[1]), int(argv[2]), int(argv[3]), Path(argv[4]), Path(argv[5])
    deadline = time.monotonic() + 60
    while not go.exists():
        if time.monotonic() > deadline:
            raise SystemExit("never got the go signal")
        time.sleep(0.002)
    start = time.monotonic()
    with counting_installed():
        stats = run(root, index, n_ops, seed)
    stats["seconds"] = round(time.monotonic() - start, 2)
    out.write_text(json.dumps(stats, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

"""The queue store: every change to ``SPRINT_QUEUE.json`` is a locked read-modify-write.

A :meth:`QueueStore.transaction` takes the queue's ``filelock`` lock, reads and validates the file,
hands a :class:`Transaction` to the caller, and on a clean exit validates the result, keeps the
previous version in the history directory, writes atomically (temporary file, fsync,
``os.replace``) and appends one ``AGENT_LOG.md`` entry per change while still holding the lock.
A file that fails to parse is never overwritten.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path

from filelock import FileLock

from oodatcaa.core.atomic import atomic_write_text
from oodatcaa.core.clock import Clock
from oodatcaa.core.errors import QueueFileError
from oodatcaa.core.eventlog import EventLog, LogEntry
from oodatcaa.core.invariants import check_invariants
from oodatcaa.core.models import Item, Queue, Task
from oodatcaa.core.queuefile import RESTORE_FIX, format_loc, parse_queue
from oodatcaa.core.statuses import TaskStatus, check_transition
from oodatcaa.core.workspace import Workspace

# the parser moved to queuefile (shared with the invariants without a cycle); re-exported for old imports
__all__ = ["RESTORE_FIX", "QueueStore", "Transaction", "format_loc", "parse_queue"]


class Transaction:
    """Changes made to one queue snapshot under the lock; recorded as log entries."""

    def __init__(self, queue: Queue, actor: str, now: datetime):
        self.queue = queue
        self.actor = actor
        self.now = now
        self.entries: list[LogEntry] = []

    def move(self, item: Item | str, to: TaskStatus, what: str) -> Item:
        """Change an item's status after checking the transition table; logs one entry.

        Raises :class:`~oodatcaa.core.errors.IllegalTransitionError` (nothing is written: the
        whole transaction is abandoned).
        """
        if isinstance(item, str):
            item = self.queue.item(item)
        to = TaskStatus(to)
        kind = item.item_kind
        check_transition(item.id, kind, item.status, to)
        before = item.status
        item.status = to
        if isinstance(item, Task) and to == TaskStatus.PLANNING and item.started_at is None:
            # the story's clock (elapsed against its estimate) starts at its first claim
            item.started_at = self.now
        self.log(item.id, f"{before.value} -> {to.value}", what)
        return item

    def log(self, task_id: str, change: str, what: str) -> None:
        """Record an entry that is not a status change (a takeover, a warning, a rejected write)."""
        self.entries.append(LogEntry(self.now, self.actor, task_id, change, what))

    def task(self, task_id: str) -> Task:
        return self.queue.task(task_id)


class QueueStore:
    """Locked, validated, atomic access to one ``SPRINT_QUEUE.json``."""

    def __init__(
        self,
        path: Path,
        lock_path: Path,
        log: EventLog,
        history_dir: Path,
        clock: Clock | None = None,
        history_keep: int = 20,
        lock_timeout: float = 120.0,
    ):
        self.path = Path(path)
        self.lock = FileLock(str(lock_path), timeout=lock_timeout)
        self.log = log
        self.history_dir = Path(history_dir)
        self.clock = clock or Clock()
        self.history_keep = history_keep

    @classmethod
    def for_workspace(cls, ws: Workspace, clock: Clock | None = None) -> QueueStore:
        """The store of a workspace, with its standard lock, log and history paths."""
        ws.locks_dir.mkdir(parents=True, exist_ok=True)
        log = EventLog(ws.agent_log_path, ws.lock_path("agent_log"))
        return cls(ws.queue_path, ws.lock_path("queue"), log, ws.queue_history_dir, clock=clock)

    def exists(self) -> bool:
        return self.path.exists()

    def read(self) -> Queue:
        """The current queue (no lock needed: the file is only ever replaced atomically).

        Raises :class:`QueueFileError` when the file is missing, not JSON or off-schema.
        """
        try:
            text = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise QueueFileError(self.path, "no queue file; start a sprint first",
                                 fix="run `oodatcaa sprint new --backlog FILE`") from None
        return parse_queue(text, self.path)

    @contextmanager
    def transaction(self, actor: str, *, create: bool = False) -> Iterator[Transaction]:
        """Locked read-modify-write. With ``create=True`` a missing file starts as an empty queue.

        The queue is written only if the block exits normally and something changed.
        """
        with self.lock:
            if create and not self.path.exists():
                original_text = None
                queue = Queue()
            else:
                original_text = self.read_text_or_raise()
                queue = parse_queue(original_text, self.path)
            self._deliver_outbox(queue)
            before = queue.model_dump(mode="json")
            tx = Transaction(queue.model_copy(deep=True), actor, self.clock.now())
            yield tx
            after = tx.queue.model_dump(mode="json")
            if after == before and not tx.entries:
                return
            tx.queue.revision = queue.revision + 1
            tx.queue.outbox = [e.render() for e in tx.entries]
            violations = check_invariants(tx.queue)
            if violations:
                raise QueueFileError(self.path, "refusing to write a queue that breaks its invariants: "
                                     + "; ".join(str(v) for v in violations), field=violations[0].location)
            text = json.dumps(tx.queue.model_dump(mode="json"), indent=2) + "\n"
            parse_queue(text, self.path)  # never write what we could not read back
            if original_text is not None:
                self._keep_history(original_text, queue.revision)
            atomic_write_text(self.path, text)
            self.log.append_rendered(tx.queue.outbox)

    def _deliver_outbox(self, queue: Queue) -> None:
        """Append the latest write's log rows if a crash after ``os.replace`` lost them.

        The queue file carries the rows of its last write (``outbox``); they are appended right
        after the replace. A process killed in between leaves them only in the queue, so every
        transaction first checks the log's tail and appends what is missing — each change gets its
        row exactly once.
        """
        if not queue.outbox:
            return
        tail = self.log.tail_text(max(65536, 4 * sum(len(r) for r in queue.outbox)))
        missing = [row for row in queue.outbox if row not in tail]
        if missing:
            self.log.append_rendered(missing)

    def read_text_or_raise(self) -> str:
        try:
            return self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise QueueFileError(self.path, "no queue file; start a sprint first",
                                 fix="run `oodatcaa sprint new --backlog FILE`") from None

    def append_log(self, entries: list[LogEntry]) -> None:
        """Append entries outside a transaction (for rejected writes, which change nothing)."""
        self.log.append(entries)

    def _keep_history(self, text: str, revision: int) -> None:
        self.history_dir.mkdir(parents=True, exist_ok=True)
        target = self.history_dir / f"SPRINT_QUEUE.r{revision:06d}.json"
        atomic_write_text(target, text)
        versions = sorted(self.history_dir.glob("SPRINT_QUEUE.r*.json"))
        for old in versions[: max(0, len(versions) - self.history_keep)]:
            try:
                os.unlink(old)
            except FileNotFoundError:
                pass

    def history(self) -> list[Path]:
        """Kept previous versions, oldest first (``SPRINT_QUEUE.r<revision>.json``)."""
        return sorted(self.history_dir.glob("SPRINT_QUEUE.r*.json"))

    def history_path(self, revision: int) -> Path:
        """Where revision ``revision`` is kept (it may have been pruned)."""
        return self.history_dir / f"SPRINT_QUEUE.r{revision:06d}.json"

    def restore(self, revision: int, actor: str = "person") -> Queue:
        """Make kept revision ``revision`` the current queue (as a new revision) and log it.

        Works when the current file is corrupt: its bytes are first kept as
        ``SPRINT_QUEUE.unreadable-<n>.json`` in the history directory, so nothing is lost.
        Raises :class:`QueueFileError` when the revision is not kept or does not parse.
        """
        source = self.history_path(revision)
        if not source.exists():
            kept = ", ".join(str(int(p.stem.split(".r")[1])) for p in self.history()) or "none"
            raise QueueFileError(source, f"revision {revision} is not kept", fix=f"choose one of: {kept}")
        restored = parse_queue(source.read_text(encoding="utf-8"), source)
        with self.lock:
            current_rev = restored.revision
            if self.path.exists():
                current_text = self.path.read_text(encoding="utf-8")
                try:
                    current = parse_queue(current_text, self.path)
                    current_rev = max(current_rev, current.revision)
                    self._keep_history(current_text, current.revision)
                except QueueFileError:
                    n = len(list(self.history_dir.glob("SPRINT_QUEUE.unreadable-*.json"))) + 1
                    atomic_write_text(self.history_dir / f"SPRINT_QUEUE.unreadable-{n:03d}.json", current_text)
            restored.revision = current_rev + 1
            atomic_write_text(self.path, json.dumps(restored.model_dump(mode="json"), indent=2) + "\n")
            self.log.append([LogEntry(self.clock.now(), actor, "-", "queue restored",
                                      f"revision {revision} restored as revision {restored.revision}")])
        return restored

    def backup_to(self, target: Path) -> None:
        """Copy the current file (as bytes, unparsed) to ``target``."""
        shutil.copyfile(self.path, target)

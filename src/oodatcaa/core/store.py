"""The queue store: every change to ``SPRINT_QUEUE.json`` is a locked read-modify-write.

A :meth:`QueueStore.transaction` takes the queue's ``filelock`` lock, reads and validates the file
(or reuses the model it wrote, when the bytes on disk are still exactly those), hands a
:class:`Transaction` to the caller, and on a clean exit validates what changed, keeps the previous
version in the history directory (a hard link, no copy), writes atomically (temporary file, one
fsync, ``os.replace``, directory fsync) and appends one ``AGENT_LOG.md`` entry per change while
still holding the lock. A file that fails to parse is never overwritten.
"""

from __future__ import annotations

import gc
import json
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from filelock import FileLock
from pydantic import ValidationError

from oodatcaa.core.atomic import atomic_write_bytes, atomic_write_text
from oodatcaa.core.clock import Clock
from oodatcaa.core.errors import QueueFileError
from oodatcaa.core.eventlog import EventLog, LogEntry
from oodatcaa.core.invariants import check_invariants, check_touched_invariants
from oodatcaa.core.models import Item, Queue, Task
from oodatcaa.core.queuefile import RESTORE_FIX, format_loc, parse_queue
from oodatcaa.core.statuses import TaskStatus, check_transition
from oodatcaa.core.workspace import Workspace

# the parser moved to queuefile (shared with the invariants without a cycle); re-exported for old imports
__all__ = ["RESTORE_FIX", "QueueStore", "Transaction", "format_loc", "parse_queue"]


class Transaction:
    """Changes made to the queue under the lock; recorded as log entries.

    ``queue`` is the store's own model (no copy is made per transaction): change it only inside the
    ``with`` block. Items the block changed are detached from the store when it ends; items it only
    read stay the store's, to be read, not changed, afterwards.
    """

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


@dataclass
class _Loaded:
    """The store's private view of the file as it last read or wrote it (never handed to a reader).

    ``raw``: the file's bytes; ``queue``: the model built from them; ``dumps``: each task as
    ``model_dump()`` (Python values, index-aligned with ``queue.tasks``: comparing them finds what a
    transaction touched at a fifth of the cost of serialising); ``texts``: each task's JSON, indented
    for its place in the file; ``shapes``: each task's IDs and dependencies (what the cross-story
    invariants depend on); ``head``: the queue's JSON without its tasks and derived counters;
    ``delivered``: the outbox rows are known to be in the log; ``checked``: these bytes passed every
    invariant (this store wrote them). Bytes it did not write — another process's write or a
    person's edit — get the full check before the next write.
    """

    raw: bytes
    queue: Queue
    dumps: list[dict[str, Any]]
    texts: list[str]
    shapes: list[_Shape]
    head: str
    delivered: bool = False
    checked: bool = False


#: A task's structure: its ID and dependencies, and each subtask's ID and dependencies.
_Shape = tuple[str, tuple[str, ...], tuple[tuple[str, tuple[str, ...]], ...]]

#: Indentation of a task inside ``"tasks": [...]``.
_TASK_INDENT = "\n    "


def _shape(task: Task) -> _Shape:
    return task.id, tuple(task.dependencies), tuple((s.id, tuple(s.dependencies)) for s in task.subtasks)


def _task_text(task: Task) -> str:
    """One task's JSON (indent 2), indented for its place in the file."""
    return Task.__pydantic_serializer__.to_json(task, indent=2).decode("utf-8").replace("\n", _TASK_INDENT)


def _head(queue: Queue, *, counters: bool = True) -> str:
    """The queue's JSON without its tasks (and without the derived counters when ``counters`` is False)."""
    return queue.model_dump_json(indent=2, exclude={"tasks"} if counters else {"tasks", "counters"})


def _render(head: str, texts: list[str]) -> str:
    """The file's text: the queue's other fields, then ``"tasks"`` joined from the per-task JSON.

    Equal, once parsed, to ``queue.model_dump_json(indent=2)``; tasks come last so a person
    reading the file sees the sprint, the revision and the counters first.
    """
    tasks = '"tasks": [' + _TASK_INDENT + ("," + _TASK_INDENT).join(texts) + "\n  ]" if texts else '"tasks": []'
    return head[:-2] + ",\n  " + tasks + "\n}\n"


@contextmanager
def _collector_paused() -> Iterator[None]:
    """Pause the cyclic garbage collector while the queue is parsed or serialised.

    Both create tens of thousands of short-lived containers; each triggers young-generation passes
    and, now and then, a full pass over every object of the (large) queue model: measured at 1,000
    stories, the first ``model_dump()`` of every task took 120 us per task with the collector and
    14 us without. Nothing here makes reference cycles, so nothing is left for the collector.
    """
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def _set_unchecked(queue: Queue, name: str, value: object) -> None:
    """Set ``revision`` or ``outbox`` without ``validate_assignment``: it would re-run the queue's
    whole-model validators (unique IDs over every item) for two values the store computes itself."""
    queue.__dict__[name] = value


class QueueStore:
    """Locked, validated, atomic access to one ``SPRINT_QUEUE.json``.

    The cost of a transaction is kept to what the file's size forces (serialising and writing it):
    the store keeps the model it last read or wrote and reuses it while the file's bytes are the ones
    it knows (another writer changes them; it then parses again), each task's JSON is compared with
    its previous JSON to find what the transaction touched, and only the touched stories are
    re-validated and re-checked (all of them when IDs or dependencies change). :meth:`peek` is the
    lock-free read for views and idle agents: it parses only when the bytes changed.
    """

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
        self._loaded: _Loaded | None = None
        self._peeked: tuple[bytes, Queue] | None = None

    @classmethod
    def for_workspace(cls, ws: Workspace, clock: Clock | None = None) -> QueueStore:
        """The store of a workspace, with its standard lock, log and history paths."""
        ws.locks_dir.mkdir(parents=True, exist_ok=True)
        log = EventLog(ws.agent_log_path, ws.lock_path("agent_log"))
        return cls(ws.queue_path, ws.lock_path("queue"), log, ws.queue_history_dir, clock=clock)

    def exists(self) -> bool:
        return self.path.exists()

    def read(self) -> Queue:
        """The current queue as a new model the caller may change (no lock needed: the file is only ever
        replaced atomically). Raises :class:`QueueFileError` when the file is missing, not JSON or off-schema.
        """
        return parse_queue(self.read_text_or_raise(), self.path)

    def peek(self) -> Queue:
        """The current queue, parsed only when the file's bytes changed since the last call: a lock-free read.

        The model returned is shared between calls: read it, never change it (change the queue in a
        :meth:`transaction`). Costs one read of the file and a byte comparison when nothing changed.
        Raises :class:`QueueFileError` as :meth:`read` does.
        """
        raw = self._read_bytes()
        if self._peeked is None or self._peeked[0] != raw:
            with _collector_paused():
                self._peeked = (raw, parse_queue(raw.decode("utf-8"), self.path))
        return self._peeked[1]

    def _read_bytes(self) -> bytes:
        try:
            return self.path.read_bytes()
        except FileNotFoundError:
            raise QueueFileError(self.path, "no queue file; start a sprint first",
                                 fix="run `oodatcaa sprint new --backlog FILE`") from None

    def _load(self, create: bool) -> _Loaded | None:
        """The file as a :class:`_Loaded` (reusing the kept one when the bytes are unchanged); None when
        it is missing and ``create``. Called under the lock."""
        if create and not self.path.exists():
            return None
        raw = self._read_bytes()
        kept, self._loaded = self._loaded, None  # dropped while a transaction runs: it changes the model
        if kept is not None and kept.raw == raw:
            return kept
        with _collector_paused():
            queue = parse_queue(raw.decode("utf-8"), self.path)
            return _Loaded(raw, queue, [t.model_dump() for t in queue.tasks], [_task_text(t) for t in queue.tasks],
                           [_shape(t) for t in queue.tasks], _head(queue, counters=False))

    @contextmanager
    def transaction(self, actor: str, *, create: bool = False) -> Iterator[Transaction]:
        """Locked read-modify-write. With ``create=True`` a missing file starts as an empty queue.

        The queue is written only if the block exits normally and something changed; an exception
        in the block leaves the file as it was. Raises :class:`QueueFileError` when the file cannot
        be parsed (it is never overwritten) or the result breaks an invariant (nothing is written).
        """
        with self.lock:
            loaded = self._load(create)
            if loaded is None:
                loaded = _Loaded(b"", Queue(), [], [], [], _head(Queue(), counters=False), delivered=True, checked=True)
            if not loaded.delivered:
                self._deliver_outbox(loaded.queue)
                loaded.delivered = True
            tx = Transaction(loaded.queue, actor, self.clock.now())
            yield tx
            with _collector_paused():
                self._commit(loaded, tx)

    def _commit(self, loaded: _Loaded, tx: Transaction) -> None:
        """Write what ``tx`` changed (nothing when nothing did), validating only the touched stories."""
        queue = tx.queue
        dumps = [t.model_dump() for t in queue.tasks]
        resized = len(dumps) != len(loaded.dumps)
        structure = resized
        touched = list(range(len(dumps))) if resized else [
            i for i, dump in enumerate(dumps) if dump != loaded.dumps[i]]
        shapes = [_shape(t) for t in queue.tasks] if resized else list(loaded.shapes)
        for i in touched if not resized else []:
            shapes[i] = _shape(queue.tasks[i])
            structure = structure or shapes[i] != loaded.shapes[i]
        if not touched and not tx.entries and _head(queue, counters=False) == loaded.head:
            self._loaded = loaded  # the model is unchanged: still what the file says
            return
        revision = queue.revision
        _set_unchecked(queue, "revision", revision + 1)
        _set_unchecked(queue, "outbox", [e.render() for e in tx.entries])
        full = structure or not loaded.checked
        violations = check_invariants(queue) if full else check_touched_invariants(queue, touched)
        if violations:
            raise QueueFileError(self.path, "refusing to write a queue that breaks its invariants: "
                                 + "; ".join(str(v) for v in violations), field=violations[0].location)
        texts = list(loaded.texts)
        if resized:
            texts = [_task_text(t) for t in queue.tasks]
        else:
            for i in touched:
                texts[i] = _task_text(queue.tasks[i])
        head = _head(queue)
        text = _render(head, texts)
        written = self._read_back(text, head, {i: texts[i] for i in touched}, structure)
        if loaded.raw:
            self._keep_history(loaded.raw, revision)
        data = text.encode("utf-8")
        atomic_write_bytes(self.path, data)
        self.log.append_rendered(queue.outbox)
        for i, task in written.items():  # the caller may keep the items it changed: they stay as written, detached
            queue.tasks[i] = task
        self._loaded = _Loaded(data, queue, dumps, texts, shapes, _head(queue, counters=False), delivered=True,
                               checked=True)

    def _read_back(self, text: str, head: str, touched: dict[int, str], structure: bool) -> dict[int, Task]:
        """Never write what could not be read back: the whole text after a change of IDs or
        dependencies, else the queue's other fields and each touched task (``{index: its JSON}``).

        Returns the touched tasks as read back (new models, equal to the ones written).
        """
        if structure:
            parsed = parse_queue(text, self.path)
            return {i: parsed.tasks[i] for i in touched}
        try:
            Queue.model_validate(json.loads(head))
            return {i: Task.model_validate(json.loads(fragment)) for i, fragment in touched.items()}
        except (ValueError, ValidationError) as exc:
            raise QueueFileError(self.path, f"refusing to write a queue that does not read back: {exc}",
                                 fix=RESTORE_FIX) from None

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
        """The file's text; :class:`QueueFileError` (naming the fix) when there is no queue file."""
        return self._read_bytes().decode("utf-8")

    def append_log(self, entries: list[LogEntry]) -> None:
        """Append entries outside a transaction (for rejected writes, which change nothing)."""
        self.log.append(entries)

    def _keep_history(self, raw: bytes, revision: int) -> None:
        """Keep revision ``revision`` (the file about to be replaced) as ``SPRINT_QUEUE.r<revision>.json``.

        A hard link to the current file costs no copy: the replace that follows leaves the old
        bytes reachable only from the history. Where links are refused (another file system) the
        bytes are written. The oldest beyond ``history_keep`` are pruned.
        """
        self.history_dir.mkdir(parents=True, exist_ok=True)
        target = self.history_path(revision)
        try:
            if target.exists():
                target.unlink()  # a restore re-used the number: the newer bytes win
            os.link(self.path, target)
        except OSError:
            atomic_write_bytes(target, raw)
        old = self.history_path(revision - self.history_keep)
        if revision % 50 == 0:  # numbering gaps (restores) leave older files: sweep now and then
            versions = self.history()
            for stale in versions[: max(0, len(versions) - self.history_keep)]:
                stale.unlink(missing_ok=True)
        else:
            old.unlink(missing_ok=True)

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
                    self._keep_history(current_text.encode("utf-8"), current.revision)
                except QueueFileError:
                    n = len(list(self.history_dir.glob("SPRINT_QUEUE.unreadable-*.json"))) + 1
                    atomic_write_text(self.history_dir / f"SPRINT_QUEUE.unreadable-{n:03d}.json", current_text)
            restored.revision = current_rev + 1
            # the row travels in the outbox like a transaction's: a kill after the replace and
            # before the append leaves it for the next write to deliver
            row = LogEntry(self.clock.now(), actor, "-", "queue restored",
                           f"revision {revision} restored as revision {restored.revision}")
            restored.outbox = [row.render()]
            atomic_write_text(self.path, restored.model_dump_json(indent=2) + "\n")
            self.log.append_rendered(restored.outbox)
        return restored

    def backup_to(self, target: Path) -> None:
        """Copy the current file (as bytes, unparsed) to ``target``."""
        shutil.copyfile(self.path, target)

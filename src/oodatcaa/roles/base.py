"""The loop every role agent runs: claim, heartbeat while working, complete with fencing.

An agent is one operating-system process (``oodatcaa agent ROLE --owner NAME``). It reads the
queue without a lock and claims atomically only when something is claimable for its role; while it
works a background thread heartbeats its lease (on its own timer). If the heartbeat learns that the
claim was superseded, the work is cancelled and nothing it would have written is applied (the store
refuses it). An idle agent sleeps until ``SPRINT_QUEUE.json`` changes (:mod:`oodatcaa.core.wake`),
at most ``[agents] poll_seconds``. It exits 9 once the Negotiator it saw running is gone
(:mod:`oodatcaa.core.presence`). SIGTERM stops the agent cleanly: the current job is cancelled and
the item is handed back.
"""

from __future__ import annotations

import logging
import signal
import threading
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field

from oodatcaa.core import lifecycle
from oodatcaa.core.clock import Clock
from oodatcaa.core.config import Config, load_config
from oodatcaa.core.errors import LeaseError, QueueFileError
from oodatcaa.core.eventlog import SPRINT_LOG_HEADER, EventLog, LogEntry
from oodatcaa.core.failures import Failure, FailureKind
from oodatcaa.core.leases import Claim, claim_next, claimable, complete, heartbeat, release
from oodatcaa.core.models import Item, Queue, Subtask, Task
from oodatcaa.core.presence import EXIT_NEGOTIATOR_GONE, SupervisorWatch, presence_path
from oodatcaa.core.statuses import SprintStatus, TaskStatus
from oodatcaa.core.store import QueueStore, Transaction
from oodatcaa.core.wake import FileWatch
from oodatcaa.core.workspace import Workspace
from oodatcaa.gitops import GitRepo
from oodatcaa.person import hold_reason

log = logging.getLogger("oodatcaa.agent")


@dataclass
class AgentContext:
    """Everything an agent needs: workspace, config, store, identity and its stop signal."""

    ws: Workspace
    config: Config
    store: QueueStore
    owner: str
    clock: Clock = field(default_factory=Clock)
    stop: threading.Event = field(default_factory=threading.Event)

    @classmethod
    def open(cls, ws: Workspace, owner: str, clock: Clock | None = None) -> AgentContext:
        config = load_config(ws.config_path, ws.agents_dir)
        clock = clock or Clock()
        return cls(ws, config, QueueStore.for_workspace(ws, clock=clock), owner, clock)

    def sprint_log(self) -> EventLog:
        return EventLog(self.ws.sprint_log_path, self.ws.lock_path("sprint_log"), header=SPRINT_LOG_HEADER)


class Heartbeater:
    """Background thread renewing a lease every ``interval`` seconds until stopped.

    ``lost`` is set when the store refuses a heartbeat (claim superseded) — the work must stop.
    """

    def __init__(self, store: QueueStore, claim: Claim, interval: float):
        self.store, self.claim, self.interval = store, claim, interval
        self.lost = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"heartbeat-{claim.item_id}", daemon=True)

    def __enter__(self) -> Heartbeater:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=30)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                heartbeat(self.store, self.claim)
            except LeaseError:
                self.lost.set()
                return
            except Exception:  # a transient failure must not kill the thread; expiry will tell
                log.exception("heartbeat failed for %s", self.claim.item_id)


class AbortSignal:
    """``is_set()`` is true when any of the given events is set (a ``threading.Event`` look-alike)."""

    def __init__(self, *events: threading.Event | None):
        self._events = [e for e in events if e is not None]

    def is_set(self) -> bool:
        return any(e.is_set() for e in self._events)


class WorkAborted(Exception):
    """Raised inside work when the agent is stopping or its lease was lost."""


class RoleAgent:
    """Base class of the five claiming roles. Subclasses implement :meth:`work`."""

    role: str = ""  # a :class:`~oodatcaa.core.statuses.Role` value
    #: status the claimed item goes to when :meth:`work` raises an unexpected exception
    crash_status: TaskStatus = TaskStatus.NEEDS_MANUAL

    def __init__(self, ctx: AgentContext):
        self.ctx = ctx
        self.definition = ctx.config.roles[self.role]
        self.heartbeater: Heartbeater | None = None

    # -- helpers for subclasses -------------------------------------------------------------
    @property
    def store(self) -> QueueStore:
        return self.ctx.store

    def git(self) -> GitRepo:
        """The workspace's repository, acting as this agent, merging into the configured trunk."""
        return GitRepo.for_workspace(self.ctx.ws, self.ctx.owner, trunk=self.ctx.config.git.trunk)

    def abort_signal(self) -> AbortSignal:
        """Set-like view that is true once the agent must abandon its work (stop or lease lost).

        Read by polling ``is_set()`` (the job runner does every 50 ms); no thread is started, so
        nothing outlives the job.
        """
        return AbortSignal(self.ctx.stop, self.heartbeater.lost if self.heartbeater else None)

    def check_abort(self) -> None:
        if self.ctx.stop.is_set():
            raise WorkAborted("agent stopping")
        if self.heartbeater and self.heartbeater.lost.is_set():
            raise WorkAborted("lease lost")

    def finish(self, claim: Claim, to: TaskStatus, what: str,
               apply: Callable[[Transaction, Item], None] | None = None) -> None:
        """Fenced completion (see :func:`oodatcaa.core.leases.complete`)."""
        complete(self.store, claim, to, what, apply)

    # -- the loop ---------------------------------------------------------------------------
    def claim(self) -> Claim | None:
        cfg = self.ctx.config
        return claim_next(
            self.store,
            self.role,
            self.ctx.owner,
            ttl_seconds=cfg.lease_ttl_seconds(self.role),
            wip_limit=cfg.wip_limit(self.role),
            hold=lambda queue, item: hold_reason(queue, item, cfg, self.role),
        )

    def can_claim(self, queue: Queue) -> bool:
        """Lock-free look: would :meth:`claim` find something in ``queue`` (a snapshot from ``store.read()``)?"""
        cfg = self.ctx.config
        return claimable(queue, self.role, wip_limit=cfg.wip_limit(self.role),
                         hold=lambda q, item: hold_reason(q, item, cfg, self.role))

    def queue_watch(self) -> FileWatch:
        """The idle wait on ``SPRINT_QUEUE.json``; the stat fallback is said once in this agent's log
        and as an ``AGENT_LOG.md`` row."""
        return FileWatch(self.store.path, on_fallback=self._say_fallback)

    def _say_fallback(self, reason: str) -> None:
        what = f"waiting on the queue by stat every 50 ms (no file events: {reason})"
        log.warning("%s: %s", self.ctx.owner, what)
        try:
            self.store.append_log([LogEntry(self.ctx.clock.now(), self.ctx.owner, "-", "stat fallback", what)])
        except Exception:  # the log line above already says it; the agent keeps working
            log.exception("%s could not write the fallback row to AGENT_LOG.md", self.ctx.owner)

    def run(self, *, once: bool = False, exit_when_complete: bool = True) -> int:
        """Read, claim when something is claimable, work; sleep on the queue file when idle. Returns the exit code.

        ``once``: handle at most one item (or none) then return. Exits 0 when the sprint is
        completed (or on a stop signal); 2 when the queue cannot be read (the file is left as it
        is); :data:`~oodatcaa.core.presence.EXIT_NEGOTIATOR_GONE` (9) before its next claim once the
        Negotiator it saw running is gone. An idle look takes no lock and writes nothing.
        """
        cfg = self.ctx.config.agents
        supervisor = SupervisorWatch(presence_path(self.ctx.ws), timeout=cfg.negotiator_timeout_seconds)
        with self.queue_watch() as watch:
            while not self.ctx.stop.is_set():
                try:
                    queue = self.store.peek()  # lock-free, parsed only when the file changed; read, never changed
                except QueueFileError as exc:
                    log.error("%s: stopping: %s", self.ctx.owner, exc)
                    return 2
                if exit_when_complete and _sprint_over(queue):
                    return 0
                gone = None if once else supervisor.gone()
                if gone is not None:
                    log.warning("%s: exiting (%d) without claiming more work: %s; `oodatcaa run` starts "
                                "a Negotiator and its agents again", self.ctx.owner, EXIT_NEGOTIATOR_GONE, gone)
                    return EXIT_NEGOTIATOR_GONE
                claim = self.claim() if self.can_claim(queue) else None
                if claim is None:
                    if once:
                        return 0
                    watch.wait(cfg.poll_seconds, self.ctx.stop)
                    continue
                self.handle(claim)
                if once:
                    return 0
        return 0

    def handle(self, claim: Claim) -> None:
        """Work one claim with a heartbeat; route crashes and stops truthfully."""
        interval = self.ctx.config.agents.heartbeat_seconds
        with Heartbeater(self.store, claim, interval) as hb:
            self.heartbeater = hb
            try:
                self.work(claim)
            except LeaseError as exc:
                log.warning("%s", exc)
            except WorkAborted as exc:
                if not hb.lost.is_set():
                    release(self.store, claim, str(exc))
            except Exception as exc:  # the agent's own failure: recorded, never passed
                detail = f"{type(exc).__name__}: {exc}"
                log.error("%s crashed on %s: %s\n%s", self.ctx.owner, claim.item_id, detail, traceback.format_exc())
                try:
                    self.on_crash(claim, detail)
                except LeaseError:
                    pass
                except Exception:  # recording failed too: hand the item back rather than die
                    log.exception("%s could not record the crash of %s", self.ctx.owner, claim.item_id)
                    release(self.store, claim, f"agent error: {detail}"[:300])
            finally:
                self.heartbeater = None

    def on_crash(self, claim: Claim, detail: str) -> None:
        """Move the item to :attr:`crash_status` with an ``agent_crashed`` failure; the story follows
        where the table allows (:func:`oodatcaa.core.lifecycle.on_crashed`)."""
        failure = Failure.of(FailureKind.AGENT_CRASHED, f"{self.role} crashed: {detail}", item=claim.item_id,
                             role=self.role, exception=detail.split(":", 1)[0])
        self.finish(claim, self.crash_status, failure.message[:300],
                    lambda tx, item: lifecycle.on_crashed(tx, item, self.crash_status, failure))

    def work(self, claim: Claim) -> None:  # pragma: no cover - abstract
        raise NotImplementedError


def _sprint_over(queue: Queue) -> bool:
    return queue.sprint is None or queue.sprint.status in (SprintStatus.COMPLETED, SprintStatus.PROJECT_COMPLETE)


def install_signal_handlers(ctx: AgentContext) -> None:
    """SIGTERM / SIGINT set the stop event: the agent finishes cleanly and hands work back."""

    def handler(signum: int, frame: object) -> None:
        ctx.stop.set()

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)


def as_subtask(item: Item) -> Subtask:
    """``item`` as a :class:`Subtask` (what a builder's or tester's fenced completion hands back)."""
    assert isinstance(item, Subtask), item.id
    return item


def task_of(queue: Queue, claim: Claim) -> Task:
    return queue.task(claim.task_id)

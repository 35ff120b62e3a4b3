"""The Negotiator's presence file, and how an agent tells that its Negotiator is gone.

Without a Negotiator nothing promotes planned stories, reclaims stale leases or completes the sprint,
so an agent left behind would wait for ever. The Negotiator therefore keeps
``state/agents/negotiator.json`` (JSON: ``pid``, ``host``, ``started_at``, ``ended_at``, ``exit``,
``message``): written when its run starts, its modification time renewed every
``[agents] negotiator_timeout_seconds / 4`` seconds by a thread (the heartbeat, on its own timer, so a
long tick does not look like death), and rewritten with ``ended_at`` and the exit code when the run
ends.

An agent that has seen a live Negotiator there (:class:`SupervisorWatch`) treats it as gone when the
file says the run ended, when its pid is no longer running on this host, when its heartbeat is older
than ``negotiator_timeout_seconds`` (a pid on another host, a recycled pid, a frozen process), or when
the file was removed. A new live Negotiator in the file replaces the old one. An agent spawned by a
Negotiator knows it from the start (:data:`SUPERVISOR_ENV`), even if it died before the agent first
looked. An agent that never saw a live Negotiator and was spawned by none (started by hand with
``oodatcaa agent ROLE``) works on its own as before.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from oodatcaa.core.atomic import atomic_write_text
from oodatcaa.core.clock import Clock, utc_stamp
from oodatcaa.core.leases import pid_alive
from oodatcaa.core.workspace import Workspace

#: Exit code of an agent whose Negotiator is gone (it claims nothing more; what it held is handed in).
EXIT_NEGOTIATOR_GONE = 9
#: Environment variable naming the pid of the Negotiator that spawned an agent: the agent is then
#: supervised from its first look, even when that Negotiator died before the agent read the file.
SUPERVISOR_ENV = "OODATCAA_NEGOTIATOR_PID"


def presence_path(ws: Workspace) -> Path:
    """``state/agents/negotiator.json`` of the workspace."""
    return ws.agents_state_dir / "negotiator.json"


@dataclass(frozen=True)
class Presence:
    """What the presence file says; ``heartbeat_age`` is seconds since its modification time."""

    pid: int
    host: str
    started_at: str
    ended_at: str | None
    exit: int | None
    message: str
    heartbeat_age: float

    @property
    def key(self) -> tuple[int, str, str]:
        """Identifies one Negotiator run (a pid alone may be reused)."""
        return (self.pid, self.host, self.started_at)


def read_presence(path: Path) -> Presence | None:
    """The presence file, or ``None`` when it is missing or unreadable (a half-written file cannot
    exist: it is replaced atomically)."""
    try:
        mtime = path.stat().st_mtime
        data = json.loads(path.read_text(encoding="utf-8"))
        return Presence(int(data["pid"]), str(data["host"]), str(data["started_at"]), data.get("ended_at"),
                        data.get("exit"), str(data.get("message") or ""), max(0.0, time.time() - mtime))
    except (OSError, ValueError, KeyError, TypeError):
        return None


def absence_reason(presence: Presence, *, timeout: float, host: str | None = None) -> str | None:
    """Why the Negotiator of ``presence`` is gone, or ``None`` while it looks alive."""
    who = f"the Negotiator (pid {presence.pid}, started {presence.started_at})"
    if presence.ended_at is not None:
        why = f": {presence.message}" if presence.message else ""
        return f"{who} ended at {presence.ended_at} with exit {presence.exit}{why}"
    if presence.host == (host or socket.gethostname()) and not pid_alive(presence.pid):
        return f"{who} is no longer running"
    if presence.heartbeat_age > timeout:
        return (f"{who} has not renewed its heartbeat for {presence.heartbeat_age:.0f} s "
                f"(over [agents] negotiator_timeout_seconds = {timeout:g})")
    return None


class SupervisorWatch:
    """An agent's view of its Negotiator: :meth:`gone` says why it is gone, once one was seen alive.

    ``supervisor_pid`` (from :data:`SUPERVISOR_ENV`, by default) names the Negotiator that spawned
    this agent: it counts as seen from the start.
    """

    def __init__(self, path: Path, *, timeout: float, supervisor_pid: int | None = None):
        self.path = path
        self.timeout = timeout
        self.supervisor_pid = supervisor_pid if supervisor_pid is not None else _env_pid()
        self.seen: tuple[int, str, str] | None = None

    def gone(self) -> str | None:
        """``None`` while the last Negotiator seen alive still is (or none was ever seen); else why not."""
        presence = read_presence(self.path)
        spawner_dead = self.seen is None and self.supervisor_pid is not None and not pid_alive(self.supervisor_pid)
        if presence is None:
            if spawner_dead:
                return f"the Negotiator (pid {self.supervisor_pid}) that started this agent is no longer running"
            return None if self.seen is None else f"the Negotiator's presence file {self.path} was removed"
        reason = absence_reason(presence, timeout=self.timeout)
        if reason is None:
            self.seen = presence.key
            return None
        if self.seen is None and presence.pid == self.supervisor_pid:
            return reason  # the Negotiator that started this agent ended before the agent first looked
        if spawner_dead:  # and the file is an older run's
            return f"the Negotiator (pid {self.supervisor_pid}) that started this agent is no longer running"
        return None if self.seen is None else reason


def _env_pid() -> int | None:
    try:
        return int(os.environ[SUPERVISOR_ENV])
    except (KeyError, ValueError):
        return None


class NegotiatorPresence:
    """Written by a running Negotiator: :meth:`start`, then :meth:`end` (see the module docstring).

    ``interval`` is the heartbeat period in seconds (the mtime is renewed with ``os.utime``, which
    writes no data).
    """

    def __init__(self, path: Path, *, interval: float, clock: Clock | None = None):
        self.path = path
        self.interval = interval
        self.clock = clock or Clock()
        self._record: dict[str, object] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, name="negotiator-presence", daemon=True)

    def start(self) -> None:
        """Write the file for this process and start the heartbeat thread."""
        self._record = {"pid": os.getpid(), "host": socket.gethostname(), "started_at": utc_stamp(self.clock.now()),
                        "ended_at": None, "exit": None, "message": ""}
        self._write()
        self._thread.start()

    def end(self, code: int, message: str) -> None:
        """Stop the heartbeat and record the end of the run (agents that see it exit)."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=10)
        if self._record:
            self._record.update(ended_at=utc_stamp(self.clock.now()), exit=code, message=message[:300])
            self._write()

    def _write(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(self.path, json.dumps(self._record) + "\n")

    def _beat(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                os.utime(self.path)
            except FileNotFoundError:  # removed by hand: write it again
                self._write()
            except OSError:  # a transient failure; the next beat tries again, the timeout is generous
                continue

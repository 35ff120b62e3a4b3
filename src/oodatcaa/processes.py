"""Agent processes: spawn, record (pid files), inspect, stop.

Each agent runs as ``python -m oodatcaa -C ROOT agent ROLE --owner NAME``; its pid file
``state/agents/<owner>.pid`` (JSON: pid, role, owner, start time, log path) and its log
``state/agents/<owner>.log`` live in the git-ignored state dir. Before signalling a pid we check
``/proc/<pid>/cmdline`` still names that agent, so a recycled pid is never killed by mistake.

Supervision (:class:`oodatcaa.roles.negotiator.Negotiator`) is the same for ``oodatcaa run`` and
for ``oodatcaa agents start``: ``run`` spawns the agents as its children; the background Negotiator
adopts the agents ``agents start`` recorded (:func:`adopt_agents`, :class:`AdoptedProcess`, which
looks like a :class:`subprocess.Popen` to it) and restarts any that dies, as its own child. An agent
whose pid file was removed (``agents stop``, which removes it before signalling) was stopped on
purpose and is not restarted (:func:`stopped_on_purpose`).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from oodatcaa.core.atomic import atomic_write_text
from oodatcaa.core.clock import Clock, utc_stamp
from oodatcaa.core.leases import pid_alive
from oodatcaa.core.workspace import Workspace


@dataclass(frozen=True)
class AgentRecord:
    """What a pid file says about one agent."""

    owner: str
    role: str
    pid: int
    started_at: str
    log: str

    def is_running(self) -> bool:
        """True when the pid is alive and still runs this agent (not a recycled pid)."""
        if not pid_alive(self.pid):
            return False
        try:
            cmdline = Path(f"/proc/{self.pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            return True  # no /proc (macOS): trust the pid
        return f"{self.owner}".encode() in cmdline and b"agent" in cmdline


#: What :meth:`AdoptedProcess.poll` returns once the process is gone: it is no child of the
#: supervisor, so its exit status cannot be known (read as "died": restarted unless the sprint closed).
EXIT_UNKNOWN = -256


class AgentProcessLike(Protocol):
    """What the Negotiator needs of an agent process: a :class:`subprocess.Popen` or an :class:`AdoptedProcess`."""

    pid: int

    def poll(self) -> int | None: ...

    def send_signal(self, sig: int) -> None: ...

    def wait(self, timeout: float | None = None) -> int: ...

    def kill(self) -> None: ...


class AdoptedProcess:
    """An agent started by another command (``agents start``), supervised through its pid file's record.

    Looks like :class:`subprocess.Popen` to the Negotiator. ``poll()`` is ``None`` while
    :meth:`AgentRecord.is_running` holds (the pid alive and still that agent), then
    :data:`EXIT_UNKNOWN` for good. Signals go only to a pid that still runs this agent.
    """

    def __init__(self, record: AgentRecord):
        self.record = record
        self.pid = record.pid
        self.returncode: int | None = None

    def poll(self) -> int | None:
        """``None`` while running; :data:`EXIT_UNKNOWN` once gone."""
        if self.returncode is None and not self.record.is_running():
            self.returncode = EXIT_UNKNOWN
        return self.returncode

    def send_signal(self, sig: int) -> None:
        """Signal the agent if it still runs (a recycled pid is never signalled)."""
        if self.poll() is None:
            try:
                os.kill(self.pid, sig)
            except ProcessLookupError:
                pass

    def kill(self) -> None:
        """SIGKILL, as :meth:`subprocess.Popen.kill`."""
        self.send_signal(signal.SIGKILL)

    def wait(self, timeout: float | None = None) -> int:
        """Wait up to ``timeout`` seconds (forever when ``None``) for the process to be gone.

        Raises :class:`subprocess.TimeoutExpired` when it still runs then, as Popen does.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.poll() is None:
            if deadline is not None and time.monotonic() >= deadline:
                raise subprocess.TimeoutExpired(f"agent {self.record.owner}", timeout or 0.0)
            time.sleep(0.05)
        assert self.returncode is not None
        return self.returncode


def adopt_agents(ws: Workspace, roles: tuple[str, ...], known: dict[str, AgentProcessLike | None]) -> list[AgentRecord]:
    """The running agents of ``roles`` recorded in pid files that the supervisor does not watch yet.

    ``known`` maps the owners it supervises to their process (``None`` while one waits to be
    restarted). An owner it knows without a process whose pid file now names a running agent (a
    person started it again meanwhile) is returned too, so the supervisor watches that one instead
    of starting a second.
    """
    out = []
    for record in read_agents(ws):
        if record.role not in roles or not record.is_running():
            continue
        if record.owner not in known or known[record.owner] is None:
            out.append(record)
    return out


def recorded_pid(ws: Workspace, owner: str) -> int | None:
    """The pid in ``owner``'s pid file, or ``None`` when there is none (or it cannot be read)."""
    try:
        return int(json.loads(pid_file(ws, owner).read_text())["pid"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def stopped_on_purpose(ws: Workspace, owner: str, pid: int) -> bool:
    """True when ``owner``'s pid file no longer names ``pid``: removed by ``agents stop`` (or replaced
    by an agent a person started again), so the process that ended is not to be restarted."""
    return recorded_pid(ws, owner) != pid


def pid_file(ws: Workspace, owner: str) -> Path:
    return ws.agents_state_dir / f"{owner}.pid"


def log_file(ws: Workspace, owner: str) -> Path:
    return ws.agents_state_dir / f"{owner}.log"


def spawn_agent(ws: Workspace, role: str, owner: str, *, python: str | None = None, detach: bool = False,
                clock: Clock | None = None, env: dict[str, str] | None = None) -> subprocess.Popen:
    """Start one agent process with its output appended to its log; write its pid file.

    ``detach`` puts it in a new session so it outlives the command that started it. ``env`` adds
    variables to the agent's environment (the Negotiator names itself in ``OODATCAA_NEGOTIATOR_PID``).
    """
    ws.agents_state_dir.mkdir(parents=True, exist_ok=True)
    log_path = log_file(ws, owner)
    cmd = [python or sys.executable, "-m", "oodatcaa", "-C", str(ws.root), "agent", role, "--owner", owner]
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=ws.root,
                                env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}, start_new_session=detach)
    record = {"pid": proc.pid, "role": role, "owner": owner, "started_at": utc_stamp((clock or Clock()).now()),
              "log": str(log_path)}
    atomic_write_text(pid_file(ws, owner), json.dumps(record) + "\n")
    return proc


def read_agents(ws: Workspace) -> list[AgentRecord]:
    """Every agent with a pid file, by owner name. Unreadable pid files are skipped."""
    out = []
    for path in sorted(ws.agents_state_dir.glob("*.pid")):
        try:
            data = json.loads(path.read_text())
            out.append(AgentRecord(data["owner"], data["role"], int(data["pid"]), data.get("started_at", "?"),
                                   data.get("log", "")))
        except (ValueError, KeyError, OSError):
            continue
    return out


def stop_agent(ws: Workspace, record: AgentRecord, grace_seconds: float = 30.0) -> str:
    """Remove the pid file, then SIGTERM, wait up to ``grace_seconds`` for a clean hand-back, then SIGKILL.

    The pid file goes first so that a supervising Negotiator reads the exit as a stop, never as a
    death to restart (:func:`stopped_on_purpose`). Returns ``"stopped"``, ``"killed"`` or ``"not running"``.
    """
    outcome = "not running"
    if recorded_pid(ws, record.owner) == record.pid:
        pid_file(ws, record.owner).unlink(missing_ok=True)
    if record.is_running():
        os.kill(record.pid, signal.SIGTERM)
        deadline = time.monotonic() + grace_seconds
        while time.monotonic() < deadline and pid_alive(record.pid):
            _reap(record.pid)
            time.sleep(0.1)
        if pid_alive(record.pid):
            os.kill(record.pid, signal.SIGKILL)
            outcome = "killed"
        else:
            outcome = "stopped"
        _reap(record.pid)
    return outcome


def _reap(pid: int) -> None:
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass


def next_owner(ws: Workspace, role: str) -> str:
    """The first free owner name ``<role>-<n>`` among running agents' pid files."""
    taken = {r.owner for r in read_agents(ws) if r.is_running()}
    n = 1
    while f"{role}-{n}" in taken:
        n += 1
    return f"{role}-{n}"

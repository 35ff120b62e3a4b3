"""Agent processes: spawn, record (pid files), inspect, stop.

Each agent runs as ``python -m oodatcaa -C ROOT agent ROLE --owner NAME``; its pid file
``state/agents/<owner>.pid`` (JSON: pid, role, owner, start time, log path) and its log
``state/agents/<owner>.log`` live in the git-ignored state dir. Before signalling a pid we check
``/proc/<pid>/cmdline`` still names that agent, so a recycled pid is never killed by mistake.
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
    """SIGTERM, wait up to ``grace_seconds`` for a clean hand-back, then SIGKILL; remove the pid file.

    Returns ``"stopped"``, ``"killed"`` or ``"not running"``.
    """
    outcome = "not running"
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
    pid_file(ws, record.owner).unlink(missing_ok=True)
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

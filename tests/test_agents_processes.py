"""`oodatcaa agents start|status|stop|restart`: background agents, clean hand-back on SIGTERM."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest

from oodatcaa.core.statuses import TaskStatus
from oodatcaa.core.store import QueueStore
from oodatcaa.sprints import new_sprint
from support import configure, one_command_backlog, workspace

S = TaskStatus



def cli(ws, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "oodatcaa", "-C", str(ws.root), *args], capture_output=True,
                          text=True, timeout=120)


def setup(tmp_path, command: str):
    ws = workspace(tmp_path)
    configure(ws.config_path, agents={"poll_seconds": 0.2, "heartbeat_seconds": 1}, negotiator={"tick_seconds": 0.2})
    backlog = tmp_path / "b.md"
    backlog.write_text(one_command_backlog("Background sprint", "A slow command", command))
    new_sprint(ws, backlog)
    return ws


def processes_under(directory) -> list[str]:
    """Live processes whose working directory is inside ``directory`` (scans /proc)."""
    import os
    from pathlib import Path

    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cwd = os.readlink(entry / "cwd")
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if cwd.startswith(str(directory)) and state != "Z":
            found.append(f"{entry.name} {cwd}")
    return found


@pytest.fixture(autouse=True)
def stop_leftover_agents(tmp_path):
    yield
    repo = tmp_path / "repo"
    if (repo / ".oodatcaa").exists():
        subprocess.run([sys.executable, "-m", "oodatcaa", "-C", str(repo), "agents", "stop", "--grace", "5"],
                       capture_output=True, timeout=60)


def wait_for(predicate, timeout: float = 60.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.2)
    return False


@pytest.mark.slow  # seconds of real MLX / agent work: `make test` runs it
def test_background_agents_finish_a_sprint_and_exit(tmp_path):
    ws = setup(tmp_path, "echo done")
    started = cli(ws, "agents", "start")
    assert started.returncode == 0, started.stderr
    assert "started negotiator-1" in started.stdout and "started builder-1" in started.stdout
    store = QueueStore.for_workspace(ws)
    assert wait_for(lambda: store.read().sprint.status.value == "completed", 90), cli(ws, "status").stdout
    assert store.read().task("T001").status == S.DONE

    def all_exited() -> bool:
        rows = json.loads(cli(ws, "agents", "status", "--json").stdout)
        return all(not r["alive"] for r in rows)

    assert wait_for(all_exited, 30)
    stopped = cli(ws, "agents", "stop")
    assert stopped.returncode == 0 and "not running" in stopped.stdout
    assert not list(ws.agents_state_dir.glob("*.pid"))


def test_sigterm_hands_the_task_back_cleanly(tmp_path):
    ws = setup(tmp_path, "sleep 60")
    assert cli(ws, "agents", "start", "planner", "negotiator", "builder", "--count", "1").returncode == 0
    store = QueueStore.for_workspace(ws)
    assert wait_for(lambda: store.read().item("T001-B01").status == S.IN_PROGRESS
                    if any(s.id == "T001-B01" for s in store.read().task("T001").subtasks) else False, 60)
    status = json.loads(cli(ws, "agents", "status", "--json").stdout)
    builder = next(r for r in status if r["role"] == "builder")
    assert builder["alive"] and builder["task"] == "T001-B01" and builder["last_heartbeat"]
    out = cli(ws, "agents", "stop", "builder", "--grace", "20")
    assert "builder-1" in out.stdout and "stopped" in out.stdout, out.stdout + out.stderr
    q = store.read()
    assert q.item("T001-B01").status == S.READY and q.item("T001-B01").lease is None
    assert "released: agent stopping" in ws.agent_log_path.read_text()
    # no orphaned job process: nothing is left running inside this workspace's worktrees
    assert processes_under(ws.state_dir) == []

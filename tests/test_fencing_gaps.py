"""Issue 11, part 5: background agents are supervised like `run`'s, and git side effects are fenced.

- `agents start` runs a Negotiator that adopts the agents it started and restarts one that dies
  (the same `check_agents` path as `run`); `agents stop` is a stop, not a death.
- Each attempt of a builder step has its own worktree; a reclaimed step's new attempt leaves the old
  process's checkout alone, and the old process can no longer commit on the branch.
- An integrator whose lease was taken over neither moves the trunk nor tags.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from oodatcaa.core.clock import FakeClock
from oodatcaa.core.errors import LeaseError, WorkspaceError
from oodatcaa.core.leases import Claim, assert_holds, claim_next, reclaim_stale
from oodatcaa.core.statuses import TaskStatus
from oodatcaa.core.store import QueueStore
from oodatcaa.core.workspace import worktree_owner_path
from oodatcaa.processes import read_agents, stop_agent
from oodatcaa.roles import tester as tester_role
from oodatcaa.roles.base import AgentContext
from oodatcaa.roles.builder import Builder, clean_attempt_worktrees
from oodatcaa.roles.integrator import Integrator
from oodatcaa.roles.negotiator import Negotiator, promote
from oodatcaa.roles.planner import Planner
from oodatcaa.sprints import new_sprint
from support import add_steps, configure, git, one_command_backlog, process_alive, sample_queue, store_with, wait_dead, workspace

S = TaskStatus



def sprint_ws(tmp_path, command: str = "mkdir -p out && echo hello > out/marker.txt"):
    ws = workspace(tmp_path)
    backlog = tmp_path / "b.md"
    backlog.write_text(one_command_backlog("Fencing sprint", "Write a marker file", command))
    new_sprint(ws, backlog)
    return ws


def dead_pid() -> int:
    """The pid of a process that has exited and been reaped (a crashed agent's)."""
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


def sleeper() -> subprocess.Popen:
    """A live process standing for an old agent that still runs."""
    return subprocess.Popen(["sleep", "60"])


def plan_and_promote(ws) -> None:
    assert Planner(AgentContext.open(ws, "planner-t")).run(once=True, exit_when_complete=False) == 0
    store = QueueStore.for_workspace(ws)
    with store.transaction("negotiator") as tx:
        promote(tx)


def take_over(ws, role: str, old_owner: str, new_owner: str, item: str) -> tuple[Claim, Claim]:
    """``old_owner`` claims ``item`` with a pid that is gone; the Negotiator reclaims it; ``new_owner`` claims it."""
    store = QueueStore.for_workspace(ws)
    old = claim_next(store, role, old_owner, ttl_seconds=600, wip_limit=5, pid=dead_pid(), only=item)
    assert old is not None
    assert reclaim_stale(store) == [item]
    new = claim_next(store, role, new_owner, ttl_seconds=600, wip_limit=5, only=item)
    assert new is not None and new.claim_id != old.claim_id
    return old, new


def rejected_rows(ws) -> list[str]:
    return [line for line in ws.agent_log_path.read_text().splitlines() if "| rejected |" in line]


# -- claim checks ---------------------------------------------------------------------------------


def test_assert_holds_passes_for_the_live_claim_and_refuses_a_superseded_or_expired_one(tmp_path):
    clock = FakeClock()
    ws = workspace(tmp_path)
    queue = sample_queue(1)
    add_steps(queue.tasks[0])
    store = store_with(ws, queue, clock)
    with store.transaction("test") as tx:
        tx.queue.tasks[0].status = S.READY
    claim = claim_next(store, "builder", "builder-1", ttl_seconds=60, wip_limit=1)
    assert claim is not None
    assert_holds(store, claim, "commit")  # the live claim: no error, nothing logged
    assert rejected_rows(ws) == []
    clock.advance(61)  # no heartbeat for longer than the TTL: about to be handed over
    with pytest.raises(LeaseError, match="expired"):
        assert_holds(store, claim, "commit on feat/x")
    reclaim_stale(store)
    with pytest.raises(LeaseError, match="superseded"):
        assert_holds(store, claim, "landing on main")
    rows = rejected_rows(ws)
    assert len(rows) == 2 and "commit on feat/x" in rows[0] and "landing on main" in rows[1]


def test_attempt_worktree_paths_are_per_attempt_and_validated(tmp_path):
    ws = workspace(tmp_path)
    assert ws.step_worktree_dir("T001-B01", 1).name == "T001-B01.a1"
    assert ws.step_run_dir("T001-B01", 2) == ws.step_worktree_dir("T001-B01", 2) / ".oodatcaa/runs/T001-B01"
    for bad in (0, -1, True):
        with pytest.raises(WorkspaceError, match="counted from 1"):
            ws.step_worktree_dir("T001-B01", bad)
    ws.step_worktree_dir("T001-B01", 3).mkdir(parents=True)
    worktree_owner_path(ws.step_worktree_dir("T001-B01", 4)).write_text("{}")  # killed before its checkout
    (ws.state_dir / "worktrees" / "T001-B01.a1x").mkdir()  # not an attempt worktree
    assert sorted(ws.step_worktrees("T001-B01")) == [3, 4]


# -- builder: a fresh worktree per attempt, no commit after a takeover ------------------------------


def test_a_reclaimed_step_gets_a_fresh_worktree_and_the_old_process_cannot_commit(tmp_path):
    ws = sprint_ws(tmp_path)
    plan_and_promote(ws)
    store = QueueStore.for_workspace(ws)
    branch = store.read().item("T001-B01").branch
    old_claim = claim_next(store, "builder", "builder-old", ttl_seconds=600, wip_limit=2, pid=dead_pid())
    assert old_claim is not None
    old_builder = Builder(AgentContext.open(ws, "builder-old"))
    old_git = old_builder.git()
    queue = store.read()
    old_run = old_builder.prepare(old_git, queue.task("T001"), queue.item("T001-B01"), old_claim)
    assert old_run.worktree == ws.step_worktree_dir("T001-B01", 1) and old_run.attempt == 1
    result = old_builder.run_step(old_claim, old_run)  # the old job ran to its end...
    assert result.ok, result.error
    (old_run.run_dir / "still-writing.txt").write_text("the old job is not done")
    # ...while its lease was reclaimed (the old agent stalled); its process still lives
    old_process = sleeper()
    try:
        owner = worktree_owner_path(old_run.worktree)
        owner.write_text(json.dumps({**json.loads(owner.read_text()), "pid": old_process.pid}))
        assert reclaim_stale(store) == ["T001-B01"]
        new_claim = claim_next(store, "builder", "builder-new", ttl_seconds=600, wip_limit=2)
        assert new_claim is not None
        new_builder = Builder(AgentContext.open(ws, "builder-new"))
        queue = store.read()
        new_run = new_builder.prepare(new_builder.git(), queue.task("T001"), queue.item("T001-B01"), new_claim)
        assert new_run.worktree == ws.step_worktree_dir("T001-B01", 2) and new_run.attempt == 2
        assert not (new_run.run_dir / "still-writing.txt").exists()  # a fresh checkout, not the old one
        # the old process's checkout is untouched: its files, its checkout and its owner file are all there
        assert (old_run.run_dir / "still-writing.txt").read_text() == "the old job is not done"
        assert (old_run.run_dir / "summary.json").is_file() and (old_run.worktree / ".git").exists()
        assert owner.exists()
        tip = git(ws.root, "rev-parse", branch)
        with pytest.raises(LeaseError, match="commit on"):
            old_builder.record(old_git, old_run, result, old_claim)
        assert git(ws.root, "rev-parse", branch) == tip  # nothing reached the branch
        assert not (ws.report_dir("T001") / "builder_T001-B01.md").exists()
        assert any("builder-old" in row and "commit on" in row for row in rejected_rows(ws))
        # a live process's worktree survives every cleanup; once it is gone, the next cleanup removes it
        assert clean_attempt_worktrees(ws, new_builder.git(), "T001-B01", keep=2) == []
        assert old_run.worktree.exists()
    finally:
        old_process.kill()
        old_process.wait()
    assert clean_attempt_worktrees(ws, new_builder.git(), "T001-B01", keep=2) == [old_run.worktree]
    assert not old_run.worktree.exists() and not worktree_owner_path(old_run.worktree).exists()
    assert new_run.worktree.exists()
    assert str(old_run.worktree) not in git(ws.root, "worktree", "list")


def test_a_builder_attempt_removes_its_own_worktree_and_commits_the_run_at_the_same_path(tmp_path):
    ws = sprint_ws(tmp_path)
    plan_and_promote(ws)
    # a killed earlier attempt (dead owner) and the pre-attempt layout, both left behind
    left = ws.step_worktree_dir("T001-B01", 7)
    left.mkdir(parents=True)
    worktree_owner_path(left).write_text(json.dumps({"pid": dead_pid(), "host": socket.gethostname(),
                                                     "owner": "builder-x", "claim_id": "0" * 32}))
    ws.worktree_dir("T001-B01").mkdir(parents=True)
    assert Builder(AgentContext.open(ws, "builder-1")).run(once=True, exit_when_complete=False) == 0
    step = QueueStore.for_workspace(ws).read().item("T001-B01")
    assert step.status == S.AWAITING_TEST, step.last_error
    assert step.result["run_dir"] == ".oodatcaa/runs/T001-B01"  # the committed path is unchanged
    assert ".oodatcaa/runs/T001-B01/summary.json" in git(ws.root, "ls-tree", "-r", "--name-only", step.branch)
    assert ws.step_worktrees("T001-B01") == {} and not ws.worktree_dir("T001-B01").exists()


# -- integrator: no landing, no tag after a takeover ---------------------------------------------------


def story_ready_to_merge(tmp_path):
    ws = sprint_ws(tmp_path)
    plan_and_promote(ws)
    assert Builder(AgentContext.open(ws, "builder-1")).run(once=True, exit_when_complete=False) == 0
    assert tester_role.Tester(AgentContext.open(ws, "tester-1")).run(once=True, exit_when_complete=False) == 0
    assert QueueStore.for_workspace(ws).read().task("T001").status == S.READY_FOR_INTEGRATOR
    return ws


def test_an_integrator_whose_lease_was_taken_over_does_not_move_the_trunk(tmp_path):
    ws = story_ready_to_merge(tmp_path)
    trunk = git(ws.root, "rev-parse", "main")
    old, new = take_over(ws, "integrator", "integrator-old", "integrator-new", "T001")
    integrator = Integrator(AgentContext.open(ws, "integrator-old"))
    with pytest.raises(LeaseError, match="landing on main"):
        integrator.work(old)  # builds and gates the merge result, then the claim check refuses
    assert git(ws.root, "rev-parse", "main") == trunk
    assert "T001-complete" not in git(ws.root, "tag")
    assert not (ws.state_dir / "integration" / "integrator-old").exists()
    assert any("integrator-old" in row and "landing on main" in row for row in rejected_rows(ws))
    store = QueueStore.for_workspace(ws)
    assert store.read().task("T001").lease.claim_id == new.claim_id  # the new holder's claim stands
    Integrator(AgentContext.open(ws, "integrator-new")).work(new)
    assert store.read().task("T001").status == S.DONE
    assert git(ws.root, "rev-parse", "main") != trunk and "T001-complete" in git(ws.root, "tag")


def test_an_integrator_whose_lease_was_taken_over_after_the_landing_does_not_tag(tmp_path):
    ws = story_ready_to_merge(tmp_path)
    branch = QueueStore.for_workspace(ws).read().task("T001").builds()[-1].branch
    # a predecessor landed the story, then stalled before its tag: the branch is merged, no tag yet
    git(ws.root, "merge", "-q", "--no-ff", "-m", f"[impl] T001: merge {branch}", branch)
    landed = git(ws.root, "rev-parse", "main")
    old, new = take_over(ws, "integrator", "integrator-old", "integrator-new", "T001")
    with pytest.raises(LeaseError, match="tag T001-complete"):
        Integrator(AgentContext.open(ws, "integrator-old")).work(old)
    assert "T001-complete" not in git(ws.root, "tag") and git(ws.root, "rev-parse", "main") == landed
    Integrator(AgentContext.open(ws, "integrator-new")).work(new)  # the successor tags and finishes
    assert git(ws.root, "rev-list", "-n1", "T001-complete") == landed
    assert QueueStore.for_workspace(ws).read().task("T001").status == S.DONE


# -- supervision of background agents -----------------------------------------------------------------


def fake_python(tmp_path: Path) -> str:
    """A stand-in for `python` in `python -m oodatcaa ... agent ROLE --owner NAME`: a process whose command
    line names the agent (what `AgentRecord.is_running` checks), sleeping instead of working."""
    script = tmp_path / "fake-python"
    script.write_text(f"#!/bin/sh\nexec {sys.executable} -c 'import time; time.sleep(60)' \"$@\"\n")
    script.chmod(0o755)
    return str(script)


def test_the_background_negotiator_adopts_restarts_a_dead_agent_and_leaves_a_stopped_one(tmp_path):
    ws = workspace(tmp_path)
    store_with(ws, sample_queue(1))  # a sprint in progress: a death is restarted, not read as the end
    configure(ws.config_path, negotiator={"restart_backoff_seconds": 0})
    python = fake_python(tmp_path)
    from oodatcaa.processes import spawn_agent

    first = spawn_agent(ws, "builder", "builder-1", python=python)  # as `agents start` does
    spawned = [first]
    try:
        negotiator = Negotiator(AgentContext.open(ws, "negotiator"), spawn_agents=False, python=python)
        assert negotiator.check_agents() is None
        assert [a.owner for a in negotiator.agents] == ["builder-1"]  # adopted from its pid file
        first.send_signal(signal.SIGKILL)
        first.wait()
        assert negotiator.check_agents() is None  # the death is seen: restart scheduled (backoff 0 s)
        assert negotiator.check_agents() is None  # ... and done
        agent = negotiator.agents[0]
        assert agent.restarts == 1 and agent.process is not None and agent.process.pid != first.pid
        spawned.append(agent.process)  # type: ignore[arg-type]
        (record,) = read_agents(ws)
        assert record.owner == "builder-1" and record.pid == agent.process.pid and record.is_running()
        log = ws.sprint_log_path.read_text()
        assert "supervising builder-1" in log and "builder-1 exited (exit code unknown" in log
        # `agents stop` removes the pid file before signalling: a stop, never restarted
        assert stop_agent(ws, record, grace_seconds=5) == "stopped"
        assert negotiator.check_agents() is None and negotiator.check_agents() is None
        assert negotiator.agents == [] and read_agents(ws) == []
        assert "builder-1 was stopped (its pid file is gone): not restarted" in ws.sprint_log_path.read_text()
    finally:
        for proc in spawned:
            if proc.poll() is None:
                proc.kill()
            proc.wait()


def cli(ws, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "oodatcaa", "-C", str(ws.root), *args], capture_output=True,
                          text=True, timeout=60)


def wait_for(predicate, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.1)
    return False


@pytest.mark.slow  # real background agent processes (about 10 s)
def test_agents_start_restarts_a_killed_background_agent(tmp_path):
    ws = sprint_ws(tmp_path, command="sleep 60")
    configure(ws.config_path, agents={"poll_seconds": 0.2, "heartbeat_seconds": 1},
              negotiator={"tick_seconds": 0.2, "restart_backoff_seconds": 0.2})
    store = QueueStore.for_workspace(ws)
    try:
        started = cli(ws, "agents", "start", "planner", "builder", "negotiator", "--count", "1")
        assert started.returncode == 0, started.stderr

        def building() -> bool:
            q = store.read()
            return any(s.id == "T001-B01" and s.status == S.IN_PROGRESS for s in q.task("T001").subtasks)

        assert wait_for(building, 15), cli(ws, "status").stdout
        killed = next(r for r in read_agents(ws) if r.owner == "builder-1")
        os.kill(killed.pid, signal.SIGKILL)
        assert wait_dead(killed.pid)

        def restarted() -> bool:
            now = next((r for r in read_agents(ws) if r.owner == "builder-1"), None)
            return now is not None and now.pid != killed.pid and now.is_running()

        assert wait_for(restarted, 10), ws.sprint_log_path.read_text()
        # the restarted builder takes the reclaimed step again, in a fresh worktree of attempt 2;
        # the killed one's worktree (its process gone) is cleaned up
        assert wait_for(lambda: store.read().item("T001-B01").attempts == 2 and building(), 10), cli(ws, "status").stdout
        assert wait_for(lambda: sorted(ws.step_worktrees("T001-B01")) == [2], 5), ws.step_worktrees("T001-B01")
        assert "builder-1 exited (exit code unknown" in ws.sprint_log_path.read_text()
    finally:
        cli(ws, "agents", "stop", "--grace", "5")
    assert not any(process_alive(r.pid) for r in read_agents(ws))

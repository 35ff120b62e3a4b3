"""The Negotiator: promotion, stuck detection, agents that keep dying — real processes, no MLX."""

import subprocess
import sys

import pytest

from oodatcaa.core.statuses import TaskStatus
from oodatcaa.core.store import QueueStore
from oodatcaa.roles.base import AgentContext
from oodatcaa.roles.negotiator import EXIT_AGENT_DIED, EXIT_PERSON_WAIT, Negotiator, promote
from oodatcaa.sprints import new_sprint
from support import add_steps, configure, sample_queue, store_with, workspace

S = TaskStatus

PROSE_ONLY = """\
# Prose sprint

### T001: Decide the roadmap
**Type:** Story  **Complexity:** S  **Priority:** 1  **Dependencies:** None
**Description:** Needs people, not machines.

**Acceptance Criteria:**
- [ ] the team agrees on a roadmap
"""


def fast_config(ws):
    configure(ws.config_path, agents={"poll_seconds": 0.2},
              negotiator={"tick_seconds": 0.2, "restart_backoff_seconds": 0.0, "max_restarts": 1,
                          "person_wait_minutes": 0.02})


def test_promote_respects_dependencies(tmp_path):
    q = sample_queue(2)
    q.tasks[1].dependencies = ["T001"]
    for t in q.tasks:
        add_steps(t)
        t.status = S.PLANNING_COMPLETE
    store = store_with(workspace(tmp_path), q)
    with store.transaction("negotiator") as tx:
        promote(tx)
    q = store.read()
    assert q.task("T001").status == S.READY and q.task("T002").status == S.BLOCKED


@pytest.mark.slow  # a real `run` (~5 s)
def test_run_exits_non_zero_naming_what_a_person_must_do(tmp_path):
    ws = workspace(tmp_path)
    fast_config(ws)
    backlog = tmp_path / "b.md"
    backlog.write_text(PROSE_ONLY)
    new_sprint(ws, backlog)
    run = subprocess.run([sys.executable, "-m", "oodatcaa", "-C", str(ws.root), "run", "--max-seconds", "60"],
                         capture_output=True, text=True, timeout=120)
    # only a person can move it: announced at once, then, nobody acting, exit 8 with the same list
    assert run.returncode == EXIT_PERSON_WAIT, run.stdout + run.stderr
    assert "T001 needs_manual: no job block" in run.stderr and "oodatcaa resolve T001 --retry" in run.stderr
    assert "waiting for a person: T001 needs_manual" in run.stdout
    assert QueueStore.for_workspace(ws).read().task("T001").status == S.NEEDS_MANUAL
    assert "exit 8" in ws.sprint_log_path.read_text() and "waiting for a person" in ws.sprint_log_path.read_text()
    assert not list(ws.agents_state_dir.glob("*.pid"))


def test_an_agent_that_keeps_dying_stops_the_run_with_its_log(tmp_path):
    ws = workspace(tmp_path)
    fast_config(ws)
    backlog = tmp_path / "b.md"
    backlog.write_text(PROSE_ONLY)
    new_sprint(ws, backlog)
    ctx = AgentContext.open(ws, "negotiator")
    code, message = Negotiator(ctx, python="/bin/false", max_seconds=30).run()
    assert code == EXIT_AGENT_DIED
    assert "died 2 times" in message and "giving up" in message


def test_a_task_held_over_twice_its_estimate_gets_one_warning(tmp_path):
    from oodatcaa.core.clock import FakeClock
    from oodatcaa.core.config import load_config
    from oodatcaa.core.leases import claim_next

    ws = workspace(tmp_path)
    q = sample_queue(1)
    task = add_steps(q.tasks[0])
    task.status, task.complexity = S.READY, "S"
    clock = FakeClock()
    store = store_with(ws, q, clock)
    claim_next(store, "builder", "builder-1", ttl_seconds=900 * 60, wip_limit=3, pid=2**22 + 7, host="elsewhere")
    ctx = AgentContext(ws, load_config(ws.config_path), store, "negotiator", clock)
    negotiator = Negotiator(ctx)
    # no estimate in the queue (written before estimates): S by complexity is 30-120 min
    clock.advance(239 * 60)
    negotiator.tick()
    assert not [e for e in store.log.entries() if e.change == "warning"]
    clock.advance(2 * 60)
    negotiator.tick()
    negotiator.tick()
    warnings = [e for e in store.log.entries() if e.change == "warning"]
    assert len(warnings) == 1 and "over twice its estimate (30-120 min by complexity for T001)" in warnings[0].what


def test_the_warning_uses_the_story_estimate_high_end(tmp_path):
    from oodatcaa.core.clock import FakeClock
    from oodatcaa.core.config import load_config
    from oodatcaa.core.leases import claim_next
    from oodatcaa.core.models import Estimate

    ws = workspace(tmp_path)
    q = sample_queue(1)
    task = add_steps(q.tasks[0])
    task.status, task.complexity = S.READY, "L"  # the backlog's Estimated Time wins over the complexity
    task.estimate = Estimate(low_minutes=30, high_minutes=45, source="backlog", text="30-45 min")
    clock = FakeClock()
    store = store_with(ws, q, clock)
    claim_next(store, "builder", "builder-1", ttl_seconds=900 * 60, wip_limit=3, pid=2**22 + 7, host="elsewhere")
    negotiator = Negotiator(AgentContext(ws, load_config(ws.config_path), store, "negotiator", clock))
    clock.advance(89 * 60)
    negotiator.tick()
    assert not [e for e in store.log.entries() if e.change == "warning"]
    clock.advance(2 * 60)
    negotiator.tick()
    [warning] = [e for e in store.log.entries() if e.change == "warning"]
    assert "held by builder-1 for 91 min, over twice its estimate (30-45 min for T001)" in warning.what


COMMAND_AND_PROSE = """\
# Mixed sprint

## Exit Criteria

- [ ] T001 is merged
EXTRA
### T001: Write a marker
**Type:** Story  **Complexity:** S  **Priority:** 1  **Dependencies:** None

```job
kind: command
run: "echo ok"
```

**Acceptance Criteria:**
- [ ] it runs `metric: command.returncode == 0` (critical)

### T002: Decide the roadmap
**Type:** Story  **Complexity:** S  **Priority:** 2  **Dependencies:** None

**Acceptance Criteria:**
- [ ] the team agrees on a roadmap
"""


def _run(ws, extra_exit: str = "") -> subprocess.CompletedProcess:
    fast_config(ws)
    backlog = ws.root.parent / "b.md"
    backlog.write_text(COMMAND_AND_PROSE.replace("EXTRA\n", extra_exit))
    new_sprint(ws, backlog)
    return subprocess.run([sys.executable, "-m", "oodatcaa", "-C", str(ws.root), "run", "--max-seconds", "90"],
                          capture_output=True, text=True, timeout=150)


@pytest.mark.slow
def test_the_sprint_completes_on_its_exit_criteria_with_a_story_left_to_a_person(tmp_path):
    ws = workspace(tmp_path)
    run = _run(ws)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "completed: 1/1 exit criteria met" in run.stdout
    queue = QueueStore.for_workspace(ws).read()
    assert queue.task("T001").status == S.DONE and queue.task("T002").status == S.NEEDS_MANUAL
    # kept for `watch`: the board shows them without running a check itself
    assert [(c.id, c.state) for c in queue.sprint.exit_states] == [("EC1", "met")] and queue.sprint.exit_checked_at
    retro = (ws.sprint_archive_dir(1) / "RETROSPECTIVE.md").read_text()
    assert "### Left to a person" in retro and "T002 Decide the roadmap" in retro


@pytest.mark.slow
def test_an_exit_criterion_only_a_person_can_judge_stops_the_run_saying_how_to_close(tmp_path):
    ws = workspace(tmp_path)
    run = _run(ws, "- [ ] the roadmap reads well\n")
    # T002 (prose) waits for a person too: the run waits for them, then says both
    assert run.returncode == EXIT_PERSON_WAIT, run.stdout + run.stderr
    assert "T002 needs_manual" in run.stderr
    assert "EC2 needs_manual: the roadmap reads well" in run.stderr and "sprint complete --force" in run.stderr
    sprint = QueueStore.for_workspace(ws).read().sprint
    assert sprint.status.value == "in_progress"
    assert [(c.id, c.state) for c in sprint.exit_states] == [("EC1", "met"), ("EC2", "needs_manual")]

"""Estimates where people see them: per-step shares in AGENT_PLAN.md and elapsed-against-estimate in the heartbeat."""

from __future__ import annotations

from datetime import timedelta

from oodatcaa.core.config import EstimatesSection
from oodatcaa.core.models import Estimate
from oodatcaa.core.statuses import TaskStatus as S
from oodatcaa.roles.negotiator import heartbeat_text
from oodatcaa.roles.planner import render_agent_plan, step_estimates
from support import add_steps, sample_queue

BACKLOG_ESTIMATE = Estimate(low_minutes=120, high_minutes=180, source="backlog", text="120-180 minutes")


def test_step_estimates_split_the_story_evenly():
    shares = step_estimates(BACKLOG_ESTIMATE, 3)
    assert [(e.low_minutes, e.high_minutes) for e in shares] == [(40, 60)] * 3
    assert sum(e.high_minutes for e in shares) == BACKLOG_ESTIMATE.high_minutes
    assert step_estimates(None, 2) == [None, None] and step_estimates(BACKLOG_ESTIMATE, 0) == []


def test_agent_plan_shows_story_and_step_estimates():
    task = add_steps(sample_queue(1).tasks[0], n_builds=2)
    task.estimate = BACKLOG_ESTIMATE
    plan = render_agent_plan(task, task.subtasks, "pre/T001-20260101T000000Z", 1)
    assert "- **Estimate:** 120-180 min (from its Estimated Time)" in plan
    assert plan.count("- **Estimate:** 60-90 min (1/2 of the story's 120-180 min)") == 2
    task.estimate = None
    assert "- **Estimate:** none" in render_agent_plan(task, task.subtasks, None, 1)


def test_heartbeat_shows_elapsed_against_estimate_per_running_story():
    q = sample_queue(3)
    now = q.sprint.created_at + timedelta(hours=2)
    t1, t2, t3 = q.tasks
    t1.status, t1.started_at, t1.estimate = S.IN_PROGRESS, now - timedelta(minutes=35), BACKLOG_ESTIMATE
    t2.status, t2.started_at, t2.complexity = S.TESTING, now - timedelta(minutes=12), "M"  # no estimate in the queue
    t3.status = S.NEEDS_PLAN  # not started: not running
    text = heartbeat_text(q, now, EstimatesSection())
    assert "T001 in_progress 35 min of 120-180 min" in text
    assert "T002 testing 12 min of 144-288 min by complexity" in text
    assert "T003" not in text.split(";", 1)[1]
    t2.complexity = None
    assert "T002 testing 12 min (no estimate)" in heartbeat_text(q, now, EstimatesSection())


def test_a_story_clock_starts_at_its_first_claim(tmp_path):
    from oodatcaa.core.clock import FakeClock
    from oodatcaa.core.leases import claim_next, release
    from support import store_with, workspace

    clock = FakeClock()
    store = store_with(workspace(tmp_path), sample_queue(1), clock)
    assert store.read().tasks[0].started_at is None
    claim = claim_next(store, "planner", "planner-1", ttl_seconds=600, wip_limit=1, pid=2**22 + 7, host="elsewhere")
    first = store.read().tasks[0].started_at
    assert first == clock.now()
    clock.advance(60)
    release(store, claim, "handed back")
    claim_next(store, "planner", "planner-1", ttl_seconds=600, wip_limit=1, pid=2**22 + 7, host="elsewhere")
    assert store.read().tasks[0].started_at == first  # a second claim does not restart it

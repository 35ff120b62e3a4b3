"""Each story-lifecycle cascade of ``core/lifecycle.py`` on its own, inside a real transaction."""

from __future__ import annotations

import pytest

from oodatcaa.core import lifecycle
from oodatcaa.core.failures import Failure, FailureKind
from oodatcaa.core.leases import claim_next, release
from oodatcaa.core.statuses import TaskStatus
from support import add_steps, sample_queue, store_with, workspace

S = TaskStatus


@pytest.fixture()
def ws(tmp_path):
    return workspace(tmp_path)


def _store(ws, *statuses, builds=2):
    """One story T001 in ``statuses[0]`` with ``builds`` steps in ``statuses[1]`` and its tester in ``statuses[2]``."""
    story_status, build_status, test_status = statuses
    q = sample_queue(1)
    task = add_steps(q.tasks[0], builds, status=build_status)
    task.status = story_status
    task.tester().status = test_status
    return store_with(ws, q)


def test_claiming_a_builder_step_starts_the_story_and_releasing_a_tester_hands_it_back(ws):
    store = _store(ws, S.READY, S.READY, S.BLOCKED)
    claim = claim_next(store, "builder", "b1", ttl_seconds=60, wip_limit=3)
    assert claim is not None and store.read().task("T001").status == S.IN_PROGRESS
    with store.transaction("test") as tx:
        task = tx.queue.task("T001")
        task.status = S.AWAITING_TEST
        for step in task.builds():
            step.status, step.lease = S.AWAITING_TEST, None
        task.tester().status = S.READY
    claim = claim_next(store, "tester", "t1", ttl_seconds=60, wip_limit=2)
    assert claim is not None and store.read().task("T001").status == S.TESTING
    release(store, claim, "stopping")
    assert store.read().task("T001").status == S.AWAITING_TEST


def test_build_done_waits_for_every_step_then_readies_the_tester(ws):
    store = _store(ws, S.IN_PROGRESS, S.AWAITING_TEST, S.BLOCKED)
    with store.transaction("test") as tx:
        first, second = tx.queue.task("T001").builds()
        second.status = S.IN_PROGRESS  # a transaction may pass through states the invariants forbid at rest
        lifecycle.on_build_done(tx, first, {"commit": "a"}, {"train.final_loss": 1.5})
        task = tx.queue.task("T001")
        assert task.status == S.IN_PROGRESS and task.tester().status == S.BLOCKED
        assert task.metrics == {"train.final_loss": 1.5}
        second.status = S.AWAITING_TEST
        lifecycle.on_build_done(tx, second, {"commit": "b"}, {"train.final_loss": 1.2})
        assert task.status == S.AWAITING_TEST and task.tester().status == S.READY
        assert task.metrics["train.final_loss"] == 1.2 and second.result == {"commit": "b"}


def test_build_failed_moves_the_story_with_the_typed_failure(ws):
    store = _store(ws, S.IN_PROGRESS, S.AWAITING_TEST, S.BLOCKED)
    failure = Failure.of(FailureKind.OOM, "out of memory", item="T001-B01", peak_gb=3.0)
    with store.transaction("test") as tx:
        step = tx.queue.task("T001").builds()[0]
        step.status = S.NEEDS_ADAPT
        lifecycle.on_build_failed(tx, step, failure)
    task = store.read().task("T001")
    assert task.status == S.NEEDS_ADAPT
    assert task.failure.kind == FailureKind.OOM and task.failure.item == "T001-B01"
    assert task.builds()[0].failure.details == {"peak_gb": 3.0}


@pytest.mark.parametrize("decision,expected", [("accept", S.READY_FOR_INTEGRATOR), ("adapt", S.NEEDS_ADAPT),
                                               ("needs_manual", S.NEEDS_MANUAL)])
def test_verdict_decides_the_story_status(ws, decision, expected):
    store = _store(ws, S.AWAITING_TEST, S.AWAITING_TEST, S.READY)
    assert claim_next(store, "tester", "t1", ttl_seconds=60, wip_limit=2) is not None
    failure = None if decision == "accept" else Failure.of(FailureKind.CRITERIA_FAILED, "AC1 failed", failed_metrics=["x"])
    with store.transaction("test") as tx:
        task = tx.queue.task("T001")
        task.failure = Failure.of(FailureKind.JOB_ERROR, "an earlier failure")
        tester = task.tester()
        tester.status, tester.lease = lifecycle.VERDICT_STATUS[decision], None
        lifecycle.on_verdict(tx, tester, decision, "summary", failure, manual_reason="a person must look")
    task = store.read().task("T001")
    assert task.status == expected
    assert task.failure == failure
    assert task.manual_reason == ("a person must look" if decision == "needs_manual" else None)


def test_adapted_rebuilds_from_the_changed_step_and_blocks_the_tester(ws):
    store = _store(ws, S.NEEDS_ADAPT, S.AWAITING_TEST, S.NEEDS_ADAPT)
    assert claim_next(store, "refiner", "r1", ttl_seconds=60, wip_limit=1) is not None
    with store.transaction("test") as tx:
        task = tx.queue.task("T001")
        task.status = S.READY  # the Refiner's own move
        task.lease = None
        lifecycle.on_adapted(tx, task, "T001-B02", {"kind": "command", "run": "false"}, rebuild_all=False, what="x")
    task = store.read().task("T001")
    first, second = task.builds()
    assert first.status == S.AWAITING_TEST and second.status == S.READY
    assert second.job == {"kind": "command", "run": "false"} and first.job == {"kind": "command", "run": "true"}
    assert task.tester().status == S.BLOCKED


def test_adapted_with_rebuild_all_sends_every_step_back(ws):
    steps = lifecycle.steps_to_rebuild(add_steps(sample_queue(1).tasks[0], 3), "T001-B01", rebuild_all=True)
    assert [s.id for s in steps] == ["T001-B01", "T001-B02", "T001-B03"]
    later = lifecycle.steps_to_rebuild(add_steps(sample_queue(1).tasks[0], 3), "T001-B02", rebuild_all=False)
    assert [s.id for s in later] == ["T001-B02", "T001-B03"]


def test_escalated_parks_the_failed_steps_with_the_story(ws):
    store = _store(ws, S.NEEDS_MANUAL, S.NEEDS_ADAPT, S.BLOCKED)
    with store.transaction("test") as tx:
        lifecycle.on_escalated(tx, tx.queue.task("T001"), "limit reached")
    task = store.read().task("T001")
    assert [s.status for s in task.builds()] == [S.NEEDS_MANUAL, S.NEEDS_MANUAL]
    assert task.manual_reason == "limit reached"


def test_start_over_cancels_open_subtasks_and_resets_the_loops(ws):
    store = _store(ws, S.NEEDS_PLAN, S.NEEDS_ADAPT, S.BLOCKED)
    with store.transaction("test") as tx:
        task = tx.queue.task("T001")
        task.adapt_loops = 3
        lifecycle.on_start_over(tx, task)
    task = store.read().task("T001")
    assert task.adapt_loops == 0 and all(s.status == S.CANCELLED for s in task.subtasks)


def test_integrated_closes_subtasks_and_unblocks_dependents(ws):
    q = sample_queue(3)
    add_steps(q.tasks[0], 1, status=S.AWAITING_TEST)
    q.tasks[0].tester().status = S.READY_FOR_INTEGRATOR
    q.tasks[1].dependencies = ["T001"]
    q.tasks[1].status = S.BLOCKED
    q.tasks[2].dependencies = ["T001", "T002"]
    q.tasks[2].status = S.BLOCKED
    q.tasks[0].status = S.READY_FOR_INTEGRATOR
    store = store_with(ws, q)
    assert claim_next(store, "integrator", "i1", ttl_seconds=60, wip_limit=1) is not None
    with store.transaction("test") as tx:
        task = tx.queue.task("T001")
        task.status, task.lease = S.DONE, None
        lifecycle.on_integrated(tx, task, "abc1234567")
    queue = store.read()
    assert all(s.status == S.DONE for s in queue.task("T001").subtasks)
    assert queue.task("T001").merged_commit == "abc1234567"
    assert queue.task("T002").status == S.READY and queue.task("T003").status == S.BLOCKED


def test_unblock_ready_is_the_one_dependency_rule(ws):
    q = sample_queue(3)
    q.tasks[0].status = S.PLANNING_COMPLETE
    q.tasks[1].status = S.PLANNING_COMPLETE
    q.tasks[1].dependencies = ["T001"]
    q.tasks[2].status = S.DONE
    store = store_with(ws, q)
    with store.transaction("test") as tx:
        assert lifecycle.unblock_ready(tx) == ["T001"]
    queue = store.read()
    assert queue.task("T001").status == S.READY and queue.task("T002").status == S.BLOCKED


def test_crashed_subtask_takes_its_story_along_where_the_table_allows(ws):
    store = _store(ws, S.AWAITING_TEST, S.AWAITING_TEST, S.READY)
    assert claim_next(store, "tester", "t1", ttl_seconds=60, wip_limit=2) is not None
    failure = Failure.of(FailureKind.AGENT_CRASHED, "tester crashed: OSError: disk full", role="tester")
    with store.transaction("test") as tx:
        tester = tx.queue.task("T001").tester()
        tester.status, tester.lease = S.NEEDS_MANUAL, None
        lifecycle.on_crashed(tx, tester, S.NEEDS_MANUAL, failure)
    task = store.read().task("T001")
    assert task.status == S.NEEDS_MANUAL and task.failure.item == "T001-T01"
    assert task.tester().failure.kind == FailureKind.AGENT_CRASHED

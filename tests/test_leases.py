"""Claims, wip limits, heartbeats, fencing and reclaiming, on a fake clock."""

import pytest

from oodatcaa.core.clock import FakeClock
from oodatcaa.core.errors import LeaseError
from oodatcaa.core.leases import claim_next, complete, heartbeat, reclaim_stale, release
from oodatcaa.core.statuses import TaskStatus
from support import add_steps, sample_queue, store_with, workspace

S = TaskStatus


@pytest.fixture
def clock():
    return FakeClock()


@pytest.fixture
def store(tmp_path, clock):
    return store_with(workspace(tmp_path), sample_queue(3), clock)


def test_claim_moves_status_and_records_a_full_lease(store, clock):
    claim = claim_next(store, "planner", "planner-1", ttl_seconds=60, wip_limit=1)
    assert claim is not None and claim.item_id == "T001"
    task = store.read().task("T001")
    assert task.status == S.PLANNING and task.attempts == 1
    lease = task.lease
    assert lease.owner == "planner-1" and lease.claim_id == claim.claim_id and lease.pid > 0 and lease.host
    assert (lease.expires_at - lease.heartbeat_at).total_seconds() == 60


def test_wip_limit_is_enforced_under_the_lock(store):
    assert claim_next(store, "planner", "p1", ttl_seconds=60, wip_limit=1)
    assert claim_next(store, "planner", "p2", ttl_seconds=60, wip_limit=1) is None
    assert claim_next(store, "planner", "p2", ttl_seconds=60, wip_limit=2).item_id == "T002"


def test_priority_orders_claims(tmp_path, clock):
    q = sample_queue(3)
    q.tasks[2].priority = 1
    store = store_with(workspace(tmp_path), q, clock)
    assert claim_next(store, "planner", "p", ttl_seconds=60, wip_limit=3).item_id == "T003"


def test_heartbeat_extends_expiry(store, clock):
    claim = claim_next(store, "planner", "p", ttl_seconds=60, wip_limit=1)
    clock.advance(50)
    expiry = heartbeat(store, claim)
    assert (expiry - clock.now()).total_seconds() == 60


def test_expired_lease_is_reclaimed_and_logged_then_old_claim_is_fenced(store, clock):
    claim = claim_next(store, "planner", "p-old", ttl_seconds=60, wip_limit=1)
    clock.advance(61)
    assert reclaim_stale(store) == ["T001"]
    task = store.read().task("T001")
    assert task.status == S.NEEDS_PLAN and task.lease is None
    entries = store.log.entries()
    assert any(e.change == "takeover" and "expired" in e.what for e in entries)
    new = claim_next(store, "planner", "p-new", ttl_seconds=60, wip_limit=1)
    assert new.item_id == "T001" and store.read().task("T001").attempts == 2
    with pytest.raises(LeaseError, match="superseded"):
        complete(store, claim, S.PLANNING_COMPLETE, "late write")
    with pytest.raises(LeaseError):
        heartbeat(store, claim)
    assert store.read().task("T001").status == S.PLANNING
    assert store.read().task("T001").lease.owner == "p-new"
    assert any(e.change == "rejected" and "p-old" in e.what for e in store.log.entries())


def test_dead_owner_process_is_reclaimed(store):
    claim_next(store, "planner", "p", ttl_seconds=3600, wip_limit=1, pid=2**22 + 12345)
    assert reclaim_stale(store) == ["T001"]
    assert any("no longer running" in e.what for e in store.log.entries())


def test_live_owner_on_another_host_is_left_alone(store):
    claim_next(store, "planner", "p", ttl_seconds=3600, wip_limit=1, pid=2**22 + 1, host="elsewhere")
    assert reclaim_stale(store) == []


def test_release_hands_back(store):
    claim = claim_next(store, "planner", "p", ttl_seconds=60, wip_limit=1)
    release(store, claim, "stopping")
    assert store.read().task("T001").status == S.NEEDS_PLAN


def test_builder_claims_only_when_story_ready_and_previous_step_built(tmp_path, clock):
    q = sample_queue(1)
    task = add_steps(q.tasks[0], n_builds=2)
    task.status = S.PLANNING_COMPLETE
    store = store_with(workspace(tmp_path), q, clock)
    assert claim_next(store, "builder", "b", ttl_seconds=60, wip_limit=3) is None  # story not ready
    with store.transaction("t") as tx:
        tx.move("T001", S.READY, "promote")
    c1 = claim_next(store, "builder", "b1", ttl_seconds=60, wip_limit=3)
    assert c1.item_id == "T001-B01" and store.read().task("T001").status == S.IN_PROGRESS
    assert claim_next(store, "builder", "b2", ttl_seconds=60, wip_limit=3) is None  # B02 waits for B01
    complete(store, c1, S.AWAITING_TEST, "built")
    assert claim_next(store, "builder", "b2", ttl_seconds=60, wip_limit=3).item_id == "T001-B02"


def test_tester_claim_moves_story_to_testing_and_release_moves_it_back(tmp_path, clock):
    q = sample_queue(1)
    task = add_steps(q.tasks[0], n_builds=1, status=S.AWAITING_TEST)
    task.status = S.AWAITING_TEST
    task.subtasks[-1].status = S.READY
    store = store_with(workspace(tmp_path), q, clock)
    c = claim_next(store, "tester", "t", ttl_seconds=60, wip_limit=1)
    assert c.item_id == "T001-T01" and store.read().task("T001").status == S.TESTING
    clock.advance(120)
    reclaim_stale(store)
    q = store.read()
    assert q.task("T001").status == S.AWAITING_TEST and q.item("T001-T01").status == S.READY

"""Agents that sleep until the queue changes (core/wake.py), and agents that notice a dead Negotiator (core/presence.py).

Wake latencies are measured on real file writes; the assertions are generous (< 1 s) because CI is
noisy; the design figure (~60 ms with inotify, <= 50 ms with the stat fallback) is in docs/guarantees.md.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from oodatcaa.core import wake
from oodatcaa.core.leases import claim_next, claimable
from oodatcaa.core.presence import (
    EXIT_NEGOTIATOR_GONE,
    NegotiatorPresence,
    SupervisorWatch,
    presence_path,
    read_presence,
)
from oodatcaa.core.statuses import TaskStatus
from oodatcaa.core.store import QueueStore
from oodatcaa.core.wake import FileWatch
from oodatcaa.roles import AGENT_CLASSES
from oodatcaa.roles.base import AgentContext
from support import add_steps, configure, process_alive, sample_queue, store_with, workspace

S = TaskStatus


def replace_file(path: Path, text: str) -> float:
    """Write ``text`` to ``path`` as the store does (temporary file, ``os.replace``); the monotonic time of the replace."""
    tmp = path.with_name(f".{path.name}.test.tmp")
    tmp.write_text(text, encoding="utf-8")
    at = time.monotonic()
    os.replace(tmp, path)
    return at


def later(seconds: float, action) -> threading.Thread:
    thread = threading.Thread(target=lambda: (time.sleep(seconds), action()), daemon=True)
    thread.start()
    return thread


def broken_factory(directory: Path):
    raise OSError(28, "inotify watch limit reached")


# -- FileWatch ----------------------------------------------------------------------------------
@pytest.mark.parametrize("mode", ["inotify", "stat"])
def test_a_replaced_file_wakes_the_waiter_quickly(tmp_path, mode):
    target = tmp_path / "SPRINT_QUEUE.json"
    target.write_text("{}")
    kwargs = {} if mode == "inotify" else {"notifier_factory": broken_factory}
    with FileWatch(target, **kwargs) as watch:
        assert watch.wait(5) == "changed"  # the first wait starts watching and returns at once
        assert watch.mode == mode
        written: list[float] = []
        later(0.3, lambda: written.append(replace_file(target, '{"a": 1}')))
        outcome = watch.wait(10)
        latency = time.monotonic() - written[0]
    assert outcome == "changed"
    assert latency < 1.0, f"woke {latency * 1000:.0f} ms after the write"


def test_an_edit_in_place_wakes_it_and_other_files_do_not(tmp_path):
    target = tmp_path / "SPRINT_QUEUE.json"
    target.write_text("{}")
    with FileWatch(target) as watch:
        watch.wait(1)
        (tmp_path / "AGENT_LOG.md").write_text("| a row |\n")  # same directory, another file
        started = time.monotonic()
        assert watch.wait(0.6) == "timeout"
        assert 0.5 <= time.monotonic() - started < 3.0  # the timeout bounds the sleep
        edited: list[float] = []
        later(0.2, lambda: (edited.append(time.monotonic()), target.write_text('{"b": 2}')))
        assert watch.wait(10) == "changed"
        assert time.monotonic() - edited[0] < 1.0


def test_the_stop_event_ends_the_wait(tmp_path):
    target = tmp_path / "q.json"
    target.write_text("{}")
    stop = threading.Event()
    with FileWatch(target) as watch:
        watch.wait(1)
        later(0.2, stop.set)
        started = time.monotonic()
        assert watch.wait(30, stop) == "stopped"
        assert time.monotonic() - started < 5.0


def test_a_watcher_that_raises_falls_back_on_stat_and_says_so_once(tmp_path):
    target = tmp_path / "q.json"
    target.write_text("{}")
    said: list[str] = []
    with FileWatch(target, on_fallback=said.append, notifier_factory=broken_factory) as watch:
        watch.wait(1)
        assert watch.mode == "stat" and len(said) == 1 and "inotify watch limit reached" in said[0]
        later(0.2, lambda: replace_file(target, "[]"))
        assert watch.wait(10) == "changed"
        assert watch.wait(0.2) == "timeout"
    assert len(said) == 1


class FailingNotifier:
    def watch(self, debounce_ms, step_ms, timeout_ms, stop_event):
        raise RuntimeError("notify backend died")

    def close(self):
        pass


def test_a_watcher_failing_while_waiting_falls_back_too(tmp_path):
    target = tmp_path / "q.json"
    target.write_text("{}")
    said: list[str] = []
    with FileWatch(target, on_fallback=said.append, notifier_factory=lambda d: FailingNotifier()) as watch:
        watch.wait(1)
        assert watch.mode == "inotify"
        later(0.3, lambda: replace_file(target, "[1]"))
        assert watch.wait(10) == "changed"
        assert watch.mode == "stat" and "notify backend died" in said[0]


# -- the lock-free look -------------------------------------------------------------------------
def test_claimable_agrees_with_claim_next(tmp_path):
    ws = workspace(tmp_path)
    queue = sample_queue(2)
    add_steps(queue.tasks[0])
    queue.tasks[0].status = S.READY
    store = store_with(ws, queue)
    snapshot = store.read()
    assert claimable(snapshot, "builder", wip_limit=1)
    assert not claimable(snapshot, "builder", wip_limit=0)
    assert not claimable(snapshot, "tester", wip_limit=1)  # its test step waits on the build step
    assert not claimable(snapshot, "builder", wip_limit=1, hold=lambda q, item: "held")
    claim = claim_next(store, "builder", "builder-1", ttl_seconds=60, wip_limit=2)
    assert claim is not None and claim.item_id == "T001-B01"
    after = store.read()
    assert not claimable(after, "builder", wip_limit=2)  # nothing else is eligible
    assert claim_next(store, "builder", "builder-2", ttl_seconds=60, wip_limit=2) is None
    assert claimable(after, "planner", wip_limit=1)  # T002 still needs a plan


# -- agents -------------------------------------------------------------------------------------
def idle_builder(tmp_path, *, poll: float = 30.0):
    """A workspace whose queue has nothing for a builder, and a builder agent on it."""
    ws = workspace(tmp_path)
    configure(ws.config_path, agents={"poll_seconds": poll})
    store_with(ws, sample_queue(2))
    agent = AGENT_CLASSES["builder"](AgentContext.open(ws, "builder-1"))
    return ws, agent.store, agent


def start(agent) -> tuple[threading.Thread, dict]:
    result: dict = {}
    thread = threading.Thread(target=lambda: result.setdefault("code", agent.run()), daemon=True)
    thread.start()
    return thread, result


def stop(agent, thread: threading.Thread) -> None:
    agent.ctx.stop.set()
    thread.join(10)
    assert not thread.is_alive()


def files_under(directory: Path) -> dict[str, tuple[int, bytes]]:
    """Every file below ``directory``: modification time (ns) and content (lock files included)."""
    return {str(p.relative_to(directory)): (p.stat().st_mtime_ns, p.read_bytes())
            for p in sorted(directory.rglob("*")) if p.is_file()}


def test_an_idle_agent_takes_no_lock_and_writes_nothing(tmp_path, monkeypatch):
    ws, store, agent = idle_builder(tmp_path, poll=0.1)  # it looks ten times a second
    transactions: list[str] = []
    original = QueueStore.transaction
    monkeypatch.setattr(QueueStore, "transaction",
                        lambda self, actor, **kw: (transactions.append(actor), original(self, actor, **kw))[1])
    before = files_under(ws.dir)
    reads: list[int] = []
    real_peek = store.peek
    monkeypatch.setattr(store, "peek", lambda: (reads.append(1), real_peek())[1])
    thread, _ = start(agent)
    time.sleep(1.0)
    stop(agent, thread)
    assert len(reads) >= 5  # it did look, repeatedly
    assert transactions == []
    assert files_under(ws.dir) == before  # the queue, the logs, the history: not a byte, not a timestamp


def test_an_idle_agent_wakes_on_a_write_long_before_its_poll(tmp_path, monkeypatch):
    ws, store, agent = idle_builder(tmp_path, poll=30.0)
    claimed_at: list[float] = []

    def claim():
        claimed_at.append(time.monotonic())
        agent.ctx.stop.set()
        return None

    monkeypatch.setattr(agent, "claim", claim)
    thread, _ = start(agent)
    time.sleep(0.5)  # asleep by now
    with store.transaction("planner-1") as tx:
        add_steps(tx.queue.tasks[0])
        tx.queue.tasks[0].status = S.READY
        written = time.monotonic()
    thread.join(10)
    assert claimed_at, "the builder never tried to claim the new step"
    assert claimed_at[0] - written < 1.0, f"woke {claimed_at[0] - written:.2f} s after the write (poll is 30 s)"


def test_a_hand_edit_is_seen_within_a_second(tmp_path, monkeypatch):
    ws, store, agent = idle_builder(tmp_path, poll=30.0)
    seen: list[tuple[float, str]] = []
    real_peek = store.peek  # the agent's lock-free look

    def peek():
        queue = real_peek()
        seen.append((time.monotonic(), queue.task("T001").status.value))
        return queue

    monkeypatch.setattr(store, "peek", peek)
    thread, _ = start(agent)
    time.sleep(0.5)
    data = json.loads(store.path.read_text())
    data["tasks"][0]["status"] = "cancelled"  # a person cancels T001 by hand: valid, changed
    edited = replace_file(store.path, json.dumps(data, indent=2))
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and not any(status == "cancelled" for _, status in seen):
        time.sleep(0.02)
    stop(agent, thread)
    first = next(at for at, status in seen if status == "cancelled")
    assert first - edited < 1.0


@pytest.mark.parametrize("damage", ["cut short", "off-schema"])
def test_a_broken_file_written_while_it_sleeps_stops_it_and_is_never_overwritten(tmp_path, caplog, damage):
    ws, store, agent = idle_builder(tmp_path, poll=30.0)
    thread, result = start(agent)
    time.sleep(0.5)
    if damage == "cut short":  # an editor's save interrupted
        broken = b'{"sprint": {"id": "SPRINT-2026-001"}, "tasks": [ {"id": "T001", '
    else:  # valid JSON, a status no story can have
        data = json.loads(store.path.read_text())
        data["tasks"][1]["status"] = "finished"
        broken = json.dumps(data, indent=2).encode()
    tmp = store.path.with_name(".hand.tmp")
    tmp.write_bytes(broken)
    edited = time.monotonic()
    os.replace(tmp, store.path)
    with caplog.at_level(logging.ERROR, logger="oodatcaa.agent"):
        thread.join(10)
    assert not thread.is_alive() and result["code"] == 2
    assert time.monotonic() - edited < 5.0
    assert store.path.read_bytes() == broken
    said = [r.getMessage() for r in caplog.records if "stopping" in r.getMessage()]
    assert said and "SPRINT_QUEUE.json" in said[0]
    if damage == "off-schema":
        assert "tasks[1].status" in said[0]


def test_without_inotify_the_agent_uses_stat_and_says_so_in_its_logs(tmp_path, monkeypatch, caplog):
    monkeypatch.setattr(wake, "open_notifier", broken_factory)
    ws, store, agent = idle_builder(tmp_path, poll=30.0)
    claimed_at: list[float] = []
    monkeypatch.setattr(agent, "claim", lambda: (claimed_at.append(time.monotonic()), agent.ctx.stop.set())[1] and None)
    with caplog.at_level(logging.WARNING, logger="oodatcaa.agent"):
        thread, _ = start(agent)
        time.sleep(0.5)
        with store.transaction("planner-1") as tx:
            add_steps(tx.queue.tasks[0])
            tx.queue.tasks[0].status = S.READY
            written = time.monotonic()
        thread.join(10)
    assert claimed_at and claimed_at[0] - written < 1.0
    said = [r.getMessage() for r in caplog.records if "stat" in r.getMessage()]
    assert len(said) == 1 and "inotify watch limit reached" in said[0]
    rows = [line for line in ws.agent_log_path.read_text().splitlines() if "stat fallback" in line]
    assert len(rows) == 1 and "builder-1" in rows[0]


# -- the Negotiator's presence ------------------------------------------------------------------
@pytest.fixture
def sleeper():
    proc = subprocess.Popen(["sleep", "60"])
    yield proc
    proc.kill()
    proc.wait()


def write_presence(path: Path, pid: int, **extra) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    record = {"pid": pid, "host": os.uname().nodename, "started_at": "2026-12-02T10:00:00Z", "ended_at": None,
              "exit": None, "message": "", **extra}
    path.write_text(json.dumps(record))


def test_supervisor_watch(tmp_path, sleeper):
    import socket

    assert socket.gethostname() == os.uname().nodename
    path = tmp_path / "negotiator.json"
    watch = SupervisorWatch(path, timeout=60)
    assert watch.gone() is None  # no Negotiator ever seen: the agent works on its own
    write_presence(path, 999_999_999)  # a dead pid, never seen alive
    assert watch.gone() is None
    write_presence(path, sleeper.pid)
    assert watch.gone() is None and watch.seen is not None
    old = time.time() - 120
    os.utime(path, (old, old))
    assert "has not renewed its heartbeat for 12" in watch.gone()
    write_presence(path, sleeper.pid, ended_at="2026-12-02T10:05:00Z", exit=3, message="sprint stuck")
    assert "ended at 2026-12-02T10:05:00Z with exit 3: sprint stuck" in watch.gone()
    write_presence(path, sleeper.pid, started_at="2026-12-02T11:00:00Z")  # a new run replaced it
    assert watch.gone() is None
    sleeper.kill()
    sleeper.wait()
    assert "is no longer running" in watch.gone()
    path.unlink()
    assert "was removed" in watch.gone()


def test_an_agent_spawned_by_a_negotiator_that_died_before_it_looked(tmp_path, sleeper):
    path = tmp_path / "negotiator.json"
    sleeper.kill()
    sleeper.wait()
    reason = SupervisorWatch(path, timeout=60, supervisor_pid=sleeper.pid).gone()
    assert f"(pid {sleeper.pid}) that started this agent is no longer running" in reason
    write_presence(path, sleeper.pid)  # it wrote its file, then died
    assert "is no longer running" in SupervisorWatch(path, timeout=60, supervisor_pid=sleeper.pid).gone()
    write_presence(path, 999_999_999, ended_at="2026-12-01T10:00:00Z", exit=0)  # an older run's file
    assert "that started this agent" in SupervisorWatch(path, timeout=60, supervisor_pid=sleeper.pid).gone()
    write_presence(path, os.getpid())  # a live Negotiator took over meanwhile
    assert SupervisorWatch(path, timeout=60, supervisor_pid=sleeper.pid).gone() is None


def test_negotiator_presence_beats_and_records_the_end(tmp_path):
    path = tmp_path / "state" / "negotiator.json"
    presence = NegotiatorPresence(path, interval=0.05)
    presence.start()
    first = read_presence(path)
    assert first is not None and first.pid == os.getpid() and first.ended_at is None
    old = time.time() - 100
    os.utime(path, (old, old))
    time.sleep(0.3)
    assert read_presence(path).heartbeat_age < 5  # renewed by the thread
    presence.end(6, "time limit of 1 s reached")
    last = read_presence(path)
    assert last.ended_at is not None and last.exit == 6 and last.message == "time limit of 1 s reached"


def test_an_idle_agent_exits_9_when_its_negotiator_dies(tmp_path, sleeper, caplog):
    ws, store, agent = idle_builder(tmp_path, poll=0.2)
    write_presence(presence_path(ws), sleeper.pid)
    with caplog.at_level(logging.WARNING, logger="oodatcaa.agent"):
        thread, result = start(agent)
        time.sleep(0.6)
        assert thread.is_alive()  # a live Negotiator: it sleeps
        sleeper.kill()
        sleeper.wait()
        killed = time.monotonic()
        thread.join(10)
    assert result.get("code") == EXIT_NEGOTIATOR_GONE
    assert time.monotonic() - killed < 5.0
    assert any("is no longer running" in r.getMessage() for r in caplog.records)
    assert store.read().task("T001").status == S.NEEDS_PLAN  # nothing claimed, nothing written


def test_an_agent_that_never_saw_a_negotiator_keeps_working(tmp_path):
    ws, store, agent = idle_builder(tmp_path, poll=0.1)
    write_presence(presence_path(ws), 999_999_999, ended_at="2026-12-01T10:00:00Z", exit=0)  # an old run's file
    thread, result = start(agent)
    time.sleep(0.8)
    assert thread.is_alive()
    stop(agent, thread)
    assert result["code"] == 0


# -- real processes -----------------------------------------------------------------------------
BACKLOG = """\
# Negotiator killed

### T001: A quick command
**Type:** Story  **Complexity:** S  **Priority:** 1  **Dependencies:** None

```job
kind: command
run: "sleep 1"
```

**Acceptance Criteria:**
- [ ] it succeeds `metric: command.returncode == 0` (critical)

### T002: After it
**Type:** Story  **Complexity:** S  **Priority:** 2  **Dependencies:** T001

```job
kind: command
run: "true"
```

**Acceptance Criteria:**
- [ ] it succeeds `metric: command.returncode == 0` (critical)
"""


def agent_pids(ws) -> dict[str, int]:
    out = {}
    for path in ws.agents_state_dir.glob("*.pid"):
        data = json.loads(path.read_text())
        out[data["owner"]] = int(data["pid"])
    return out


@pytest.mark.slow  # starts `oodatcaa run` and its five agents as real processes (~10-20 s on 2 cores)
def test_agents_exit_when_the_negotiator_is_killed(tmp_path):
    from oodatcaa.sprints import new_sprint

    ws = workspace(tmp_path)
    configure(ws.config_path, agents={"poll_seconds": 0.5, "heartbeat_seconds": 1}, negotiator={"tick_seconds": 0.2})
    backlog = tmp_path / "b.md"
    backlog.write_text(BACKLOG)
    new_sprint(ws, backlog)
    negotiator = subprocess.Popen([sys.executable, "-m", "oodatcaa", "-C", str(ws.root), "run"],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    pids: dict[str, int] = {}
    try:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:  # every agent started and has looked at the queue
            pids = agent_pids(ws)
            logs = [ws.agents_state_dir / f"{owner}.log" for owner in pids]
            if len(pids) >= 5 and all(p.exists() for p in logs) and \
                    QueueStore.for_workspace(ws).read().task("T001").status != S.NEEDS_PLAN:
                break
            time.sleep(0.2)
        assert len(pids) >= 5, pids
        negotiator.kill()
        negotiator.wait()
        killed = time.monotonic()
        deadline = killed + 60
        while time.monotonic() < deadline and any(process_alive(pid) for pid in pids.values()):
            time.sleep(0.2)
        alive = {owner: pid for owner, pid in pids.items() if process_alive(pid)}
        tails = {owner: (ws.agents_state_dir / f"{owner}.log").read_text()[-600:] for owner in alive}
        assert not alive, f"still running {time.monotonic() - killed:.0f} s after the Negotiator was killed: {tails}"
        for owner in pids:
            text = (ws.agents_state_dir / f"{owner}.log").read_text()
            assert "is no longer running" in text and "exiting (9)" in text, f"{owner}: {text[-800:]}"
        queue = QueueStore.for_workspace(ws).read()
        assert not any(item.lease for item in queue.items())  # whatever was held was handed in
        assert queue.sprint.status.value == "in_progress"  # nobody completed it: `oodatcaa run` again does
    finally:
        if negotiator.poll() is None:
            negotiator.kill()
        for pid in pids.values():
            if process_alive(pid):
                os.kill(pid, 9)


def test_the_negotiators_reclaim_sweep_looks_before_it_locks(tmp_path, monkeypatch):
    from oodatcaa.core.clock import FakeClock
    from oodatcaa.core.leases import reclaim_stale, stale_leases

    ws = workspace(tmp_path)
    clock = FakeClock()
    store = store_with(ws, sample_queue(1), clock)
    claim = claim_next(store, "planner", "planner-1", ttl_seconds=60, wip_limit=1)
    assert claim is not None
    transactions: list[str] = []
    original = QueueStore.transaction
    monkeypatch.setattr(QueueStore, "transaction",
                        lambda self, actor, **kw: (transactions.append(actor), original(self, actor, **kw))[1])
    assert reclaim_stale(store, look_first=True) == [] and transactions == []  # a live lease: no lock taken
    clock.advance(61)
    assert [item.id for item, _ in stale_leases(store.read(), clock.now())] == ["T001"]
    assert reclaim_stale(store, look_first=True) == ["T001"] and transactions == ["negotiator"]
    assert store.read().task("T001").lease is None


def test_a_negotiator_run_keeps_its_presence_file_and_records_its_end(tmp_path):
    from oodatcaa.roles.negotiator import EXIT_TIMEOUT, Negotiator
    from oodatcaa.sprints import new_sprint

    ws = workspace(tmp_path)
    configure(ws.config_path, negotiator={"tick_seconds": 0.1})
    backlog = tmp_path / "b.md"
    backlog.write_text(BACKLOG)
    new_sprint(ws, backlog)
    seen: list = []
    negotiator = Negotiator(AgentContext.open(ws, "negotiator"), spawn_agents=False, max_seconds=1.0)
    original_tick = negotiator.tick
    negotiator.tick = lambda: (seen.append(read_presence(presence_path(ws))), original_tick())[1]
    code, message = negotiator.run()
    assert code == EXIT_TIMEOUT
    assert seen and seen[0].pid == os.getpid() and seen[0].ended_at is None
    last = read_presence(presence_path(ws))
    assert last.ended_at is not None and last.exit == EXIT_TIMEOUT and "time limit" in last.message

"""The queue store: locked read-modify-write, atomic replace, errors that name file and field."""

import json
import os
from unittest import mock

import pytest

from oodatcaa.core.errors import IllegalTransitionError, QueueFileError
from oodatcaa.core.eventlog import LogEntry
from oodatcaa.core.models import Queue, queue_json_schema
from oodatcaa.core.statuses import TaskStatus
from oodatcaa.core.store import QueueStore
from support import sample_queue, store_with, workspace

S = TaskStatus


@pytest.fixture
def ws(tmp_path):
    return workspace(tmp_path)


def test_not_json_names_the_file_and_leaves_it_untouched(ws):
    ws.queue_path.write_text("{not json")
    store = QueueStore.for_workspace(ws)
    with pytest.raises(QueueFileError) as info:
        with store.transaction("t") as tx:
            tx.log("T001", "x", "y")
    assert str(ws.queue_path) in str(info.value) and "not valid JSON" in str(info.value)
    assert ws.queue_path.read_text() == "{not json"


def test_schema_violation_names_the_field(ws):
    store = store_with(ws, sample_queue())
    data = json.loads(ws.queue_path.read_text())
    data["tasks"][1]["status"] = "finished"
    bad = json.dumps(data)
    ws.queue_path.write_text(bad)
    with pytest.raises(QueueFileError) as info:
        store.read()
    assert info.value.field == "tasks[1].status"
    assert "tasks[1].status" in str(info.value) and "fix:" in str(info.value)
    with pytest.raises(QueueFileError):
        with store.transaction("t"):
            pass
    assert ws.queue_path.read_text() == bad


def test_illegal_transition_writes_nothing(ws):
    store = store_with(ws, sample_queue())
    before = ws.queue_path.read_bytes()
    log_before = ws.agent_log_path.read_text() if ws.agent_log_path.exists() else ""
    with pytest.raises(IllegalTransitionError) as info:
        with store.transaction("t") as tx:
            tx.move("T001", S.PLANNING, "legal")
            tx.move("T002", S.DONE, "illegal")
    assert "needs_plan -> done" in str(info.value)
    assert ws.queue_path.read_bytes() == before
    assert (ws.agent_log_path.read_text() if ws.agent_log_path.exists() else "") == log_before


def test_each_change_is_one_log_entry_and_revision_increments(ws):
    store = store_with(ws, sample_queue())
    rev = store.read().revision
    with store.transaction("agent-x") as tx:
        tx.move("T001", S.NEEDS_MANUAL, "a person must look")
    entries = store.log.entries()
    assert entries[-1].agent == "agent-x" and entries[-1].change == "needs_plan -> needs_manual"
    assert store.read().revision == rev + 1


def test_no_change_no_write(ws):
    store = store_with(ws, sample_queue())
    mtime = os.stat(ws.queue_path).st_mtime_ns
    with store.transaction("t"):
        pass
    assert os.stat(ws.queue_path).st_mtime_ns == mtime


def test_counters_are_derived_and_stored_ones_ignored(ws):
    store = store_with(ws, sample_queue(3))
    data = json.loads(ws.queue_path.read_text())
    assert data["counters"]["stories"] == {"needs_plan": 3}
    data["counters"] = {"stories": {"done": 99}}
    ws.queue_path.write_text(json.dumps(data))
    assert store.read().counters["stories"] == {"needs_plan": 3}


def test_torn_write_before_replace_leaves_previous_file_intact(ws):
    store = store_with(ws, sample_queue())
    before = ws.queue_path.read_bytes()
    with mock.patch("oodatcaa.core.atomic.os.replace", side_effect=OSError("killed before replace")):
        with pytest.raises(OSError):
            with store.transaction("t") as tx:
                tx.move("T001", S.NEEDS_MANUAL, "x")
    assert ws.queue_path.read_bytes() == before
    assert not [p for p in ws.queue_path.parent.iterdir() if p.name.endswith(".tmp")]
    store.read()


def test_history_keeps_previous_versions(ws):
    store = store_with(ws, sample_queue())
    store.history_keep = 3
    for task in ("T001", "T002", "T003"):
        with store.transaction("t") as tx:
            tx.move(task, S.NEEDS_MANUAL, "x")
        with store.transaction("t") as tx:
            tx.move(task, S.NEEDS_PLAN, "back")
    versions = store.history()
    assert len(versions) == 3
    Queue.model_validate_json(versions[-1].read_text())


def test_duplicate_ids_are_refused(ws):
    store = store_with(ws, sample_queue())
    data = json.loads(ws.queue_path.read_text())
    data["tasks"].append(data["tasks"][0])
    ws.queue_path.write_text(json.dumps(data))
    with pytest.raises(QueueFileError, match="duplicate task ID T001"):
        store.read()


def test_missing_queue_names_the_fix(ws):
    with pytest.raises(QueueFileError, match="sprint new"):
        QueueStore.for_workspace(ws).read()


def test_committed_schema_matches_the_models():
    from pathlib import Path

    committed = Path(__file__).parents[1] / "src/oodatcaa/schemas/sprint_queue.schema.json"
    assert json.loads(committed.read_text()) == queue_json_schema(), (
        "schema drifted: regenerate with `oodatcaa schema > src/oodatcaa/schemas/sprint_queue.schema.json`")


def test_written_queue_validates_against_the_json_schema(ws):
    import jsonschema

    store_with(ws, sample_queue())
    jsonschema.validate(json.loads(ws.queue_path.read_text()), queue_json_schema())


def test_log_entries_round_trip_and_escape_pipes():
    from datetime import datetime

    e = LogEntry(datetime(2026, 1, 1, 12, 0, 0), "a|b", "T001", "x -> y", "multi\nline | text")
    parsed = LogEntry.parse(e.render())
    assert parsed is not None and parsed.agent == "a|b" and parsed.what == "multi line | text"
    assert e.render().count("\n") == 1


def test_a_write_that_breaks_an_invariant_is_refused(ws):
    store = store_with(ws, sample_queue())
    before = ws.queue_path.read_bytes()
    with pytest.raises(QueueFileError, match="T001 is planning but has no lease"):
        with store.transaction("t") as tx:
            tx.move("T001", S.PLANNING, "claimed without a lease")
    assert ws.queue_path.read_bytes() == before


def test_a_queue_written_by_the_previous_version_still_loads():
    from oodatcaa.core.failures import FailureKind
    from oodatcaa.core.models import Queue

    old = {"schema_version": 1, "tasks": [
        {"id": "T001", "title": "t", "status": "needs_adapt", "estimate_minutes": 90, "last_error": "boom",
         "subtasks": [{"id": "T001-B01", "kind": "build", "status": "needs_adapt", "title": "s", "step": 1,
                       "last_error": "step boom", "estimate_minutes": None}]},
        {"id": "T002", "title": "u", "estimate_minutes": None, "last_error": None}]}
    queue = Queue.model_validate(old)
    first = queue.task("T001")
    assert first.failure.kind == FailureKind.JOB_ERROR and first.last_error == "boom"
    assert first.estimate.low_minutes == first.estimate.high_minutes == 90
    assert first.builds()[0].last_error == "step boom"
    assert queue.task("T002").failure is None and queue.task("T002").estimate is None

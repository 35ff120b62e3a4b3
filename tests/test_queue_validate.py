"""`oodatcaa queue validate` lists every problem of a hand-edited queue in one run, and never writes.

Schema violations name their location and the offending value; the invariants (cycles, missing
dependencies, duplicate IDs, leases) are checked even when the schema check failed.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from oodatcaa.cli.main import main
from oodatcaa.core.invariants import queue_schema, schema_violations, validate_queue_file
from oodatcaa.core.models import queue_json_schema
from support import add_steps, sample_queue


@pytest.fixture
def queue_data() -> dict:
    """A sound queue as JSON data: T001 planned (one build step and the tester), T002 and T003 not."""
    q = sample_queue(3)
    add_steps(q.tasks[0])
    return q.model_dump(mode="json")


def write(tmp_path: Path, data: dict | str) -> Path:
    path = tmp_path / "SPRINT_QUEUE.json"
    path.write_text(data if isinstance(data, str) else json.dumps(data, indent=2), encoding="utf-8")
    return path


def validate(path: Path, capsys) -> tuple[int, str, str]:
    """Run the CLI on ``path``; the exit code, stdout and stderr. Asserts the file is unchanged."""
    before = path.read_bytes()
    code = main(["queue", "validate", str(path)])
    out = capsys.readouterr()
    assert path.read_bytes() == before, "queue validate changed the file"
    return code, out.out, out.err


@pytest.fixture(autouse=True)
def wide(monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")


def test_bad_status_and_a_cycle_are_both_reported_in_one_run(tmp_path, queue_data, capsys):
    queue_data["tasks"][0]["status"] = "teleported"
    queue_data["tasks"][0]["dependencies"] = ["T002"]
    queue_data["tasks"][1]["dependencies"] = ["T001"]
    code, _, err = validate(write(tmp_path, queue_data), capsys)
    assert code == 1
    assert "tasks[0].status: 'teleported' is not one of 'needs_plan', 'planning'," in err
    assert "dependency cycle T001 -> T002 -> T001" in err
    assert "2 problem(s)" in err


def test_several_bad_values_are_all_named_with_their_location(tmp_path, queue_data, capsys):
    t = queue_data["tasks"]
    queue_data["schema_version"] = 2
    queue_data["sprint"]["status"] = "sleeping"
    t[0]["subtasks"][0]["failure"] = {"kind": "exploded", "message": "boom"}
    t[1]["priority"] = "high"
    t[1]["colour"] = "red"
    t[1]["acceptance_criteria"][0]["check"]["op"] = "~="
    t[2]["plan_version"] = -1
    t[2]["lease"] = 5
    t[2]["dependencies"] = ["T009"]
    code, _, err = validate(write(tmp_path, queue_data), capsys)
    assert code == 1
    expected = [
        "schema_version: 2 is not 1",
        "sprint.status: 'sleeping' is not one of 'planning', 'in_progress', 'completed', 'project_complete'",
        "tasks[0].subtasks[0].failure.kind: 'exploded' is not one of 'job_error',",
        "tasks[1]: unexpected field 'colour'",
        "tasks[1].acceptance_criteria[0].check.op: '~=' is not one of '<', '<=',",
        "tasks[1].priority: 'high' is not of type 'integer' or 'null'",
        "tasks[2].lease: 5 is not of type 'object' or 'null'",
        "tasks[2].plan_version: -1 is less than the minimum of 0",
        "tasks[2].dependencies: T003 depends on T009, which is not in the queue",
    ]
    for needle in expected:
        assert needle in err, (needle, err)
    # sorted by location, the invariants after the schema
    positions = [err.index(n) for n in expected]
    assert positions == sorted(positions)
    assert f"{len(expected)} problem(s)" in err


def test_model_rules_and_duplicates_are_reported_next_to_schema_errors(tmp_path, queue_data):
    t = queue_data["tasks"]
    t[0]["status"] = "teleported"
    t[2]["id"] = "../x"  # passes the schema (a string); the model's ID rule rejects it
    t.append(dict(t[1]))  # a second T002
    problems = validate_queue_file(write(tmp_path, queue_data))
    text = [str(p) for p in problems]
    assert any(p.startswith("tasks[0].status: 'teleported'") for p in text), text
    assert any(p.startswith("tasks[2].id: invalid story ID '../x'") for p in text), text
    assert any(p.startswith("tasks[3].id: duplicate task ID T002") for p in text), text
    # each problem once: the model's own copy of the status error is not repeated
    assert len([p for p in problems if p.location == "tasks[0].status"]) == 1
    assert len(problems) == 3


def test_raw_checks_cover_subtask_cycles_and_leases(tmp_path, queue_data):
    t = queue_data["tasks"]
    t[1]["priority"] = "high"  # the model cannot be built, so the raw checks run
    build, tester = t[0]["subtasks"]
    build["dependencies"] = [tester["id"]]
    tester["dependencies"] = [build["id"]]
    t[2]["status"] = "planning"  # a claimed status with no lease
    locations = {p.location: p.message for p in validate_queue_file(write(tmp_path, queue_data))}
    assert "dependency cycle" in locations["tasks[0].subtasks"]
    assert locations["tasks[2].lease"] == "T003 is planning but has no lease"
    assert "tasks[1].priority" in locations


def test_a_valid_file_exits_0(tmp_path, queue_data, capsys):
    path = write(tmp_path, queue_data)
    code, out, err = validate(path, capsys)
    assert (code, err) == (0, "")
    assert "valid (schema and invariants)" in out


def test_what_the_loader_accepts_is_not_reported(tmp_path, queue_data):
    # counters are derived (our own fix for stale ones says to delete them), and queues written
    # before typed failures carry last_error, which the loader migrates
    del queue_data["counters"]
    for task in queue_data["tasks"]:
        task["last_error"] = None
        for sub in task["subtasks"]:
            sub["last_error"] = "an old failure"
    assert validate_queue_file(write(tmp_path, queue_data)) == []


def test_not_json(tmp_path, capsys):
    path = write(tmp_path, '{"tasks": [')
    code, _, err = validate(path, capsys)
    assert code == 1
    assert "not valid JSON" in err and "line 1" in err


def test_missing_file(tmp_path, capsys):
    assert main(["queue", "validate", str(tmp_path / "nope.json")]) == 1
    assert "file does not exist" in capsys.readouterr().err


@pytest.mark.parametrize("data", [[], "just a string", {"tasks": {"T001": {}}}])
def test_json_of_the_wrong_shape(tmp_path, data, capsys):
    code, _, err = validate(write(tmp_path, json.dumps(data)), capsys)
    assert code == 1 and "is not of type" in err


def test_long_values_are_shortened_in_messages(queue_data):
    queue_data["tasks"][0]["subtasks"][0]["failure"] = {"kind": "oom", "message": "x" * 5000}
    (problem,) = schema_violations(queue_data)
    assert problem.location == "tasks[0].subtasks[0].failure.message"
    assert "is too long" in problem.message and len(problem.message) < 120


def test_the_schema_is_read_from_the_package_and_is_the_models():
    assert queue_schema() == queue_json_schema()

"""The bad-input catalogue: each bad input gets an error naming the file, the field and the fix,
and nothing is lost (the file on disk is unchanged)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from oodatcaa.core.errors import BacklogError, InvalidIdError, QueueFileError, WorkspaceError
from oodatcaa.core.invariants import validate_queue_file
from oodatcaa.core.store import QueueStore
from oodatcaa.jobs.spec import JobSpecError, parse_job_spec
from oodatcaa.sprints import new_sprint
from support import add_steps, sample_queue, store_with, workspace


@pytest.fixture
def ws(tmp_path):
    ws = workspace(tmp_path)
    q = sample_queue(3)
    add_steps(q.tasks[0])
    store_with(ws, q)
    return ws


def rewrite(ws, change) -> str:
    data = json.loads(ws.queue_path.read_text())
    change(data)
    text = json.dumps(data, indent=2)
    ws.queue_path.write_text(text)
    return text


def validate_cli(path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "oodatcaa", "queue", "validate", str(path)], capture_output=True,
                          text=True, timeout=60)


def assert_refused(ws, text: str, *needles: str) -> None:
    """Loading fails naming the file and each needle; validate exits 1 listing them; file untouched."""
    with pytest.raises(QueueFileError) as info:
        with QueueStore.for_workspace(ws).transaction("t") as tx:
            tx.log("-", "x", "y")
    message = str(info.value)
    assert str(ws.queue_path) in message and "fix:" in message
    out = validate_cli(ws.queue_path)
    assert out.returncode == 1
    for needle in needles:
        assert needle in message or needle in out.stderr, (needle, message, out.stderr)
    assert ws.queue_path.read_text() == text


def test_not_json(ws):
    ws.queue_path.write_text('{"tasks": [')
    assert_refused(ws, '{"tasks": [', "not valid JSON", "line 1")


def test_valid_json_wrong_schema(ws):
    text = rewrite(ws, lambda d: d.update(tasks={"T001": {}}))
    assert_refused(ws, text, "tasks", "valid list")


def test_unknown_status(ws):
    text = rewrite(ws, lambda d: d["tasks"][0].update(status="finished"))
    assert_refused(ws, text, "tasks[0].status", "needs_plan")


def test_illegal_status_pair_written_by_hand(ws):
    def change(d):
        d["tasks"][0]["status"] = "done"
        d["tasks"][0]["subtasks"][0]["status"] = "in_progress"
    text = rewrite(ws, change)
    assert_refused(ws, text, "T001 is done but T001-B01 is in_progress", "tasks[0].subtasks[0]")


def test_duplicate_task_ids(ws):
    text = rewrite(ws, lambda d: d["tasks"].append(dict(d["tasks"][1])))
    assert_refused(ws, text, "duplicate task ID T002")


def test_dependency_on_a_missing_task(ws):
    text = rewrite(ws, lambda d: d["tasks"][1].update(dependencies=["T009"]))
    assert_refused(ws, text, "tasks[1].dependencies", "T009, which is not in the queue")


def test_dependency_cycle(ws):
    def change(d):
        d["tasks"][1]["dependencies"] = ["T003"]
        d["tasks"][2]["dependencies"] = ["T002"]
    text = rewrite(ws, change)
    assert_refused(ws, text, "dependency cycle T002 -> T003 -> T002")


@pytest.mark.parametrize("bad_id", ["../x", "T1:2", "T001/..", "T00~1", "T001.lock"])
def test_id_with_path_traversal_or_git_forbidden_characters(ws, bad_id):
    text = rewrite(ws, lambda d: d["tasks"][2].update(id=bad_id))
    assert_refused(ws, text, "tasks[2].id", "invalid story ID")


def test_lease_with_negative_ttl(ws):
    lease = {"owner": "b", "role": "planner", "pid": 1, "host": "h", "claim_id": "0" * 32,
             "claimed_at": "2026-01-01T00:00:00Z", "heartbeat_at": "2026-01-01T00:00:00Z", "ttl_seconds": -5,
             "expires_at": "2026-01-01T00:00:00Z"}
    def change(d):
        d["tasks"][1]["status"] = "planning"
        d["tasks"][1]["lease"] = lease
    text = rewrite(ws, change)
    assert_refused(ws, text, "tasks[1].lease.ttl_seconds", "greater than 0")


def test_stored_counters_that_disagree_are_reported_by_validate(ws):
    rewrite(ws, lambda d: d.update(counters={"stories": {"done": 7}}))
    problems = validate_queue_file(ws.queue_path)
    assert any(p.location == "counters" and "derived" in p.fix for p in problems)


def test_every_schema_problem_is_listed_not_just_the_first(ws):
    def change(d):
        d["tasks"][0]["status"] = "nope"
        d["tasks"][2]["priority"] = "high"
    rewrite(ws, change)
    locations = {p.location for p in validate_queue_file(ws.queue_path)}
    assert {"tasks[0].status", "tasks[2].priority"} <= locations


def test_backlog_job_block_that_is_not_yaml(tmp_path):
    ws = workspace(tmp_path)
    bad = tmp_path / "b.md"
    bad.write_text("# S\n\n### T001: x\n**Type:** Story\n\n```job\nkind: command\nrun: [unclosed\n```\n")
    with pytest.raises(BacklogError) as info:
        new_sprint(ws, bad)
    assert "b.md:8" in str(info.value) and "YAML" in str(info.value)
    assert not ws.queue_path.exists()


@pytest.mark.parametrize("spec, field", [
    ({"kind": "lora_trian", "data": "d"}, "kind"),
    ({"kind": "lora_train", "data": "d", "learning_rate": -1}, "learning_rate"),
])
def test_job_spec_unknown_kind_or_negative_learning_rate(spec, field):
    with pytest.raises(JobSpecError) as info:
        parse_job_spec(spec, source="backlog.md:12")
    assert "backlog.md:12" in str(info.value) and field in str(info.value)


def test_workspace_whose_main_has_uncommitted_changes(tmp_path):
    from oodatcaa.roles.base import AgentContext
    from oodatcaa.roles.negotiator import Negotiator

    ws = workspace(tmp_path)
    (ws.root / "train.py").write_text("print(1)\n")
    subprocess.run(["git", "-C", str(ws.root), "add", "train.py"], check=True)
    subprocess.run(["git", "-C", str(ws.root), "commit", "-qm", "[docs] x: add"], check=True)
    (ws.root / "train.py").write_text("print(2)\n")
    store_with(ws, sample_queue(1))
    with pytest.raises(WorkspaceError, match="uncommitted changes in train.py; commit or stash"):
        Negotiator(AgentContext.open(ws, "negotiator")).run()
    assert (ws.root / "train.py").read_text() == "print(2)\n"


def planned_and_built(tmp_path):
    """A workspace whose T001 (from test_roles.BACKLOG) is planned and built, not yet tested."""
    from test_roles import BACKLOG, negotiate, run_agent

    ws = workspace(tmp_path)
    backlog = tmp_path / "b.md"
    backlog.write_text(BACKLOG)
    new_sprint(ws, backlog)
    run_agent(ws, "planner")
    negotiate(ws)
    run_agent(ws, "builder")
    return ws


def test_feature_branch_deleted_by_hand_mid_sprint(tmp_path):
    from test_roles import git, queue, run_agent

    ws = planned_and_built(tmp_path)
    branch = queue(ws).item("T001-B01").branch
    git(ws, "branch", "-D", branch)
    run_agent(ws, "tester")
    task = queue(ws).task("T001")
    assert task.status.value == "needs_adapt" and f"branch {branch} does not exist" in task.last_error
    run_agent(ws, "refiner")
    q = queue(ws)
    assert q.task("T001").status.value == "ready" and q.item("T001-B01").status.value == "ready"
    run_agent(ws, "builder")
    assert branch in git(ws, "branch")
    run_agent(ws, "tester")
    run_agent(ws, "integrator")
    assert queue(ws).task("T001").status.value == "done"


def test_queue_restore_recovers_a_corrupt_queue_and_keeps_the_bad_bytes(ws):
    store = QueueStore.for_workspace(ws)
    with store.transaction("t") as tx:
        tx.move("T002", "needs_manual", "x")
    kept = store.history()[-1]
    revision = int(kept.stem.split(".r")[1])
    ws.queue_path.write_text("garbage{")
    restored = store.restore(revision)
    assert restored.revision > revision and store.read().task("T002").status.value == "needs_plan"
    unreadable = list(store.history_dir.glob("SPRINT_QUEUE.unreadable-*.json"))
    assert unreadable and unreadable[0].read_text() == "garbage{"
    assert any(e.change == "queue restored" for e in store.log.entries())
    with pytest.raises(QueueFileError, match="is not kept"):
        store.restore(99999)


def test_invalid_ids_never_reach_paths(ws):
    for bad in ("../x", "T1:2"):
        with pytest.raises(InvalidIdError):
            ws.report_dir(bad)
        with pytest.raises(InvalidIdError):
            ws.worktree_dir(bad)


def leave_conflicted_merge(ws, merge_args: list[str]) -> None:
    """Commit f.txt differently on a side branch and on main, then start a merge that conflicts."""
    from test_roles import git

    for branch, text in (("side", "side"), ("main", "main")):
        git(ws, "checkout", "-q", *(["-b"] if branch == "side" else []), branch)
        (ws.root / "f.txt").write_text(text + "\n")
        git(ws, "add", "f.txt")
        git(ws, "commit", "-qm", f"[docs] x: {text}")
    subprocess.run(["git", "-C", str(ws.root), "merge", *merge_args, "side"], capture_output=True)
    assert (ws.root / ".git" / "MERGE_HEAD").exists()


def test_half_merge_left_by_a_killed_integrator_is_aborted_not_committed(tmp_path):
    from test_roles import git, queue, run_agent

    ws = planned_and_built(tmp_path)
    run_agent(ws, "tester")
    # leave a conflicted oodatcaa merge in the main checkout, as a SIGKILL mid-merge would
    leave_conflicted_merge(ws, ["-m", "[impl] T009: merge feat/T009-step-01-x"])
    assert (ws.root / ".git" / "MERGE_HEAD").exists()
    run_agent(ws, "integrator")
    assert queue(ws).task("T001").status.value == "done"
    assert not (ws.root / ".git" / "MERGE_HEAD").exists()
    assert "side" not in git(ws, "log", "--format=%s", "main").split("\n")[0]
    assert git(ws, "log", "main", "--format=%s").count("[docs] x: side") == 0


def test_a_persons_merge_in_progress_is_never_aborted(tmp_path):
    from test_roles import queue, run_agent

    ws = planned_and_built(tmp_path)
    run_agent(ws, "tester")
    leave_conflicted_merge(ws, [])
    run_agent(ws, "integrator")
    task = queue(ws).task("T001")
    assert task.status.value == "needs_manual" and "f.txt" in task.manual_reason
    assert (ws.root / ".git" / "MERGE_HEAD").exists()

"""Each role's decisions, driven through real agents (``run(once=True)``) on a real git repo."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from oodatcaa.core.failures import Failure, FailureKind
from oodatcaa.core.statuses import TaskStatus
from oodatcaa.core.store import QueueStore
from oodatcaa.roles import AGENT_CLASSES
from oodatcaa.roles.base import AgentContext
from oodatcaa.roles.negotiator import promote, stuck_reason
from oodatcaa.roles.refiner import choose_adaptation
from oodatcaa.sprints import new_sprint
from support import add_steps, sample_queue, workspace

S = TaskStatus

BACKLOG = """\
# Test sprint

**Sprint Goal:** exercise the roles.

### T001: Write a marker file
**Type:** Story  **Complexity:** S  **Priority:** 1  **Dependencies:** None
**Description:** A command job that writes a file.

```job
kind: command
run: "mkdir -p out && echo hello > out/marker.txt"
```

**Acceptance Criteria:**
- [ ] the command succeeds `metric: command.returncode == 0` (critical)
- [ ] the marker exists `file: out/marker.txt`

### T002: Think about it
**Type:** Story  **Complexity:** S  **Priority:** 2  **Dependencies:** T001
**Description:** Prose only: no job block.

**Acceptance Criteria:**
- [ ] a person agrees
"""


def run_agent(ws, role: str, owner: str | None = None) -> int:
    ctx = AgentContext.open(ws, owner or f"{role}-t")
    return AGENT_CLASSES[role](ctx).run(once=True, exit_when_complete=False)


def negotiate(ws) -> None:
    store = QueueStore.for_workspace(ws)
    with store.transaction("negotiator") as tx:
        promote(tx)


def git(ws, *args: str) -> str:
    return subprocess.run(["git", "-C", str(ws.root), *args], check=True, capture_output=True, text=True).stdout


@pytest.fixture
def ws(tmp_path):
    ws = workspace(tmp_path)
    backlog = tmp_path / "backlog.md"
    backlog.write_text(BACKLOG)
    new_sprint(ws, backlog)
    return ws


def queue(ws):
    return QueueStore.for_workspace(ws).read()


def test_planner_writes_one_plan_per_task_and_subtasks(ws):
    assert run_agent(ws, "planner") == 0
    task = queue(ws).task("T001")
    assert task.status == S.PLANNING_COMPLETE and task.plan_version == 1
    assert [s.id for s in task.subtasks] == ["T001-B01", "T001-T01"]
    assert task.subtasks[0].branch.startswith("feat/T001-step-01-")
    assert task.subtasks[1].dependencies == ["T001-B01"] and task.subtasks[1].status == S.BLOCKED
    plan = (ws.plan_dir("T001") / "AGENT_PLAN.md").read_text()
    assert "AC1" in plan and task.subtasks[0].branch in plan and "T002" not in plan.split("Dependencies")[0]
    assert "command.returncode == 0" in (ws.plan_dir("T001") / "TEST_PLAN.md").read_text()
    assert task.baseline_tag and task.baseline_tag in git(ws, "tag")
    assert ":" not in task.baseline_tag
    assert (ws.report_dir("T001") / "planner.md").exists()
    assert "planner" in ws.reports_index_path.read_text()


def test_item_without_job_block_goes_to_a_person_never_passes(ws):
    run_agent(ws, "planner")
    run_agent(ws, "planner")
    task = queue(ws).task("T002")
    assert task.status == S.NEEDS_MANUAL and "no job block" in task.manual_reason
    assert task.subtasks == []


def test_full_loop_for_one_task_through_every_role(ws):
    run_agent(ws, "planner")
    negotiate(ws)
    assert queue(ws).task("T001").status == S.READY
    import threading

    threads_before = threading.active_count()
    run_agent(ws, "builder")
    assert threading.active_count() <= threads_before  # no watcher or heartbeat thread outlives the job
    q = queue(ws)
    step = q.item("T001-B01")
    assert step.status == S.AWAITING_TEST, step.last_error
    assert q.task("T001").status == S.AWAITING_TEST and q.item("T001-T01").status == S.READY
    branch_files = git(ws, "ls-tree", "-r", "--name-only", step.branch).split()
    assert ".oodatcaa/runs/T001-B01/summary.json" in branch_files
    assert not any(f.endswith(("SPRINT_QUEUE.json", "AGENT_LOG.md", "SPRINT_LOG.md")) for f in branch_files)
    assert git(ws, "log", "-1", "--format=%s", step.branch).startswith("[impl] T001: command step 01 ok")
    run_agent(ws, "tester")
    q = queue(ws)
    assert q.task("T001").status == S.READY_FOR_INTEGRATOR
    report = (ws.report_dir("T001") / "tester_T001-T01.md").read_text()
    assert "| AC1 |" in report and "PASS" in report
    run_agent(ws, "integrator")
    q = queue(ws)
    assert q.task("T001").status == S.DONE
    assert all(s.status == S.DONE for s in q.task("T001").subtasks)
    assert q.task("T002").status == S.NEEDS_PLAN  # not planned yet; dependents unblock only when blocked
    assert "T001-complete" in git(ws, "tag")
    assert "Merge" not in git(ws, "log", "-1", "--format=%s", "main")
    assert git(ws, "log", "--merges", "--format=%s", "main").startswith("[impl] T001: merge feat/T001-step-01")
    assert "command.returncode" in git(ws, "tag", "-n20", "T001-complete")
    changelog = (ws.root / "CHANGELOG.md").read_text()
    assert "## [Sprint 1]" in changelog and "**T001**" in changelog
    tracked = git(ws, "ls-files").split()
    assert ".oodatcaa/work/plans/T001/AGENT_PLAN.md" in tracked
    assert ".oodatcaa/work/reports/T001/integrator.md" in tracked
    assert not git(ws, "status", "--porcelain", "--untracked-files=no").strip()


def test_failed_job_goes_to_needs_adapt_with_the_message_and_agent_keeps_running(ws, tmp_path):
    run_agent(ws, "planner")
    negotiate(ws)
    store = QueueStore.for_workspace(ws)
    with store.transaction("test") as tx:
        tx.queue.item("T001-B01").job = {"kind": "model_check", "model": str(tmp_path / "no-such-model")}
    assert run_agent(ws, "builder") == 0
    q = queue(ws)
    assert q.item("T001-B01").status == S.NEEDS_ADAPT
    assert "model path does not exist" in q.item("T001-B01").last_error
    assert q.task("T001").status == S.NEEDS_ADAPT
    # no Refiner policy handles a missing model: a person is asked, with the reason
    run_agent(ws, "refiner")
    task = queue(ws).task("T001")
    assert task.status == S.NEEDS_MANUAL and "model path does not exist" in task.manual_reason
    assert stuck_reason(queue(ws)) is None  # T002 can still be planned
    run_agent(ws, "planner")
    reason = stuck_reason(queue(ws))
    assert "T001 needs_manual: no Refiner policy applies" in reason and "T002 needs_manual: no job block" in reason


def test_merge_conflict_sends_task_to_adapt_and_leaves_main_untouched(ws):
    store = QueueStore.for_workspace(ws)
    with store.transaction("test") as tx:
        run = "mkdir -p out && echo hi > out/marker.txt && echo branch > shared.txt"
        tx.queue.item("T001").jobs = [{"kind": "command", "run": run}]
    run_agent(ws, "planner")
    negotiate(ws)
    run_agent(ws, "builder")
    branch = queue(ws).item("T001-B01").branch
    # the builder committed shared.txt on the branch; main gets a different one
    assert "shared.txt" in git(ws, "ls-tree", "-r", "--name-only", branch)
    (ws.root / "shared.txt").write_text("main\n")
    subprocess.run(["git", "-C", str(ws.root), "add", "shared.txt"], check=True)
    subprocess.run(["git", "-C", str(ws.root), "commit", "-qm", "main side"], check=True)
    main_before = git(ws, "rev-parse", "main")
    run_agent(ws, "tester")
    run_agent(ws, "integrator")
    task = queue(ws).task("T001")
    assert task.status == S.NEEDS_ADAPT and "shared.txt" in task.last_error
    assert git(ws, "rev-parse", "main") == main_before
    assert not (Path(ws.root) / ".git" / "MERGE_HEAD").exists()
    assert (ws.root / "shared.txt").read_text() == "main\n"


LOSS_FAILED = Failure.of(FailureKind.CRITERIA_FAILED, "AC2 FAIL", item="T001-T01",
                         failed_metrics=["train.final_loss", "train.first_loss"])


def _lora_task(peak_target: float = 1.0, batch_size: int = 4):
    from oodatcaa.core.criteria import parse_criterion_line

    q = sample_queue(1)
    task = add_steps(q.tasks[0], 1, status=S.AWAITING_TEST)
    task.subtasks[0].job = {"kind": "lora_train", "data": "d", "batch_size": batch_size, "iters": 10}
    task.acceptance_criteria = [
        parse_criterion_line(f"peak `metric: train.peak_memory_gb <= {peak_target}` (critical)", index=1, source="b", line=1),
        parse_criterion_line("loss `metric: train.final_loss < train.first_loss`", index=2, source="b", line=2),
    ]
    return task


def test_refiner_memory_rule_keeps_the_effective_batch():
    task = _lora_task()
    task.subtasks[0].job["grad_checkpoint"] = True  # the first rung has nothing to do
    task.failure = Failure.of(FailureKind.CRITERIA_FAILED, "AC1 FAIL", item="T001-T01", failed_metrics=["train.peak_memory_gb"])
    adaptation = choose_adaptation(task)
    assert adaptation.rule == "memory.halve_batch"
    assert adaptation.after["batch_size"] == 2 and adaptation.after["grad_accumulation_steps"] == 2
    assert adaptation.before["batch_size"] == 4


def test_refiner_loss_rule_and_no_rule():
    task = _lora_task()
    task.failure = LOSS_FAILED
    adaptation = choose_adaptation(task)
    assert adaptation.rule == "loss.more_iterations" and adaptation.after["iters"] == 20
    task.failure = Failure.of(FailureKind.JOB_ERROR, "something nobody planned for")
    assert choose_adaptation(task) is None


def test_refiner_counts_loops_and_escalates_after_three(tmp_path):
    from support import store_with

    ws = workspace(tmp_path)
    task = _lora_task(batch_size=16)
    task.status = S.NEEDS_ADAPT
    task.subtasks[-1].status = S.NEEDS_ADAPT
    task.failure = Failure.of(FailureKind.CRITERIA_FAILED, "AC1 FAIL", item="T001-T01", failed_metrics=["train.peak_memory_gb"])
    q = sample_queue(1)
    q.tasks = [task]
    store = store_with(ws, q)
    for loop in (1, 2, 3):
        assert run_agent(ws, "refiner") == 0
        t = store.read().task("T001")
        assert t.adapt_loops == loop and t.status == S.READY
        assert (ws.report_dir("T001") / f"refiner_{loop}.md").exists()
        with store.transaction("test") as tx:  # the next attempt fails the same way
            tx.queue.task("T001").status = S.NEEDS_ADAPT
            tx.queue.item("T001-B01").status = S.AWAITING_TEST
            tx.queue.item("T001-T01").status = S.NEEDS_ADAPT
    report = (ws.report_dir("T001") / "refiner_2.md").read_text()  # loop 1 turned grad checkpointing on
    assert "-batch_size: 16" in report and "+batch_size: 8" in report and "memory.halve_batch" in report
    assert any(e.change == "warning" for e in store.log.entries())
    run_agent(ws, "refiner")
    t = store.read().task("T001")
    assert t.status == S.NEEDS_MANUAL and "adaptation limit" in t.manual_reason


def test_sprint_new_reports_a_malformed_job_with_its_line(tmp_path):
    from oodatcaa.core.errors import BacklogError

    ws = workspace(tmp_path)
    bad = tmp_path / "bad.md"
    bad.write_text(BACKLOG.replace('kind: command\nrun: "mkdir', 'kind: lora_train\nlearning_rate: -1\nrun: "mkdir'))
    with pytest.raises(BacklogError) as info:
        new_sprint(ws, bad)
    assert "bad.md:9:" in str(info.value) and "learning_rate" in str(info.value)
    assert not ws.queue_path.exists()


def test_sprint_new_refuses_while_a_sprint_runs(ws, tmp_path):
    from oodatcaa.core.errors import WorkspaceError

    with pytest.raises(WorkspaceError, match="still in_progress"):
        new_sprint(ws, tmp_path / "backlog.md")
    data = json.loads(ws.queue_path.read_text())
    assert data["sprint"]["id"].startswith("SPRINT-") and len(data["tasks"]) == 2


def test_refiner_memory_rule_runs_out_of_moves_and_says_so():
    from oodatcaa.roles.policies import Escalation, decide

    task = _lora_task(batch_size=1)
    task.subtasks[0].job.update(grad_checkpoint=True, num_layers=1, quantize=4)
    task.failure = Failure.of(FailureKind.CRITERIA_FAILED, "AC1 FAIL", item="T001-T01", failed_metrics=["train.peak_memory_gb"])
    assert choose_adaptation(task) is None
    decision = decide(task)
    assert isinstance(decision, Escalation) and decision.policy == "memory"
    assert "no rung left" in decision.reason and "qlora (cannot help this spec)" in decision.reason


CHAINED = """\
# Chained steps

### T001: Train then use the adapter
**Type:** Story  **Complexity:** M  **Priority:** 1  **Dependencies:** None

```job
kind: lora_train
model: {model}
data: data/tiny
iters: 4
batch_size: 2
steps_per_report: 2
```

```job
kind: inference_bench
model: {model}
adapter: adapters
prompts: ["What color is the sky?"]
max_tokens: 4
```

**Acceptance Criteria:**
- [ ] adapter saved `file: adapters/adapter_config.json` (critical)
- [ ] generation runs `metric: inference.generated_tokens >= 1` (critical)
"""


@pytest.mark.slow
def test_a_later_step_uses_an_earlier_steps_adapter(tmp_path, tiny_model):
    from conftest import write_tiny_dataset

    ws = workspace(tmp_path)
    write_tiny_dataset(ws.root / "data" / "tiny")
    git(ws, "add", "-A")
    git(ws, "commit", "-qm", "[docs] test: data")
    backlog = tmp_path / "b.md"
    backlog.write_text(CHAINED.format(model=tiny_model))
    new_sprint(ws, backlog)
    run_agent(ws, "planner")
    negotiate(ws)
    run_agent(ws, "builder")
    run_agent(ws, "builder")
    q = queue(ws)
    step2 = q.item("T001-B02")
    assert step2.status == S.AWAITING_TEST, step2.last_error
    first_artifacts = q.item("T001-B01").result["artifacts_dir"]
    config = json.loads(git(ws, "show", f"{step2.branch}:.oodatcaa/runs/T001-B02/config.json"))
    assert json.dumps(config).count(first_artifacts + "/adapters") >= 1
    assert git(ws, "merge-base", "--is-ancestor", q.item("T001-B01").branch, step2.branch) == ""
    run_agent(ws, "tester")
    assert queue(ws).task("T001").status == S.READY_FOR_INTEGRATOR


def test_start_over_gate_resets_branches_and_replans(tmp_path):
    from support import configure, store_with

    ws = workspace(tmp_path)
    configure(ws.config_path, loop={"on_limit": "start_over"})
    git(ws, "tag", "-a", "pre/T001-20260101T000000Z", "-m", "baseline")
    task = _lora_task(batch_size=16)
    branch = task.subtasks[0].branch
    git(ws, "branch", branch)
    git(ws, "commit", "--allow-empty", "-qm", "[impl] T001: main moves on")
    git(ws, "branch", "-f", branch, "main")
    task.status, task.adapt_loops, task.plan_version = S.NEEDS_ADAPT, 3, 1
    task.baseline_tag = "pre/T001-20260101T000000Z"
    task.subtasks[-1].status = S.NEEDS_ADAPT
    q = sample_queue(1)
    q.tasks = [task]
    store = store_with(ws, q)
    run_agent(ws, "refiner")
    t = store.read().task("T001")
    assert t.status == S.NEEDS_PLAN and t.adapt_loops == 0
    assert all(s.status == S.CANCELLED for s in t.subtasks)
    assert git(ws, "rev-parse", branch) == git(ws, "rev-parse", "pre/T001-20260101T000000Z^{commit}")
    report = (ws.report_dir("T001") / "refiner_start_over_1.md").read_text()
    assert "Start-Over Gate (plan v1 -> v2)" in report and "Post-mortem" in report
    run_agent(ws, "planner")
    t = store.read().task("T001")
    assert t.plan_version == 2 and t.status == S.PLANNING_COMPLETE
    assert [s.status for s in t.subtasks] == [S.READY, S.BLOCKED]
    # a second exhaustion goes to a person (max_start_overs = 1)
    with store.transaction("test") as tx:
        tx.queue.task("T001").status = S.NEEDS_ADAPT
        tx.queue.task("T001").adapt_loops = 3
    run_agent(ws, "refiner")
    assert store.read().task("T001").status == S.NEEDS_MANUAL


def test_a_rerun_training_step_resumes_from_the_killed_attempts_checkpoints(tmp_path):
    from oodatcaa.roles.builder import resume_from_earlier_attempt

    job = {"kind": "lora_train", "data": "d"}
    step_dir = tmp_path / "T001-B01"
    assert resume_from_earlier_attempt(job, step_dir, 1) == job
    (step_dir / "attempt-01" / "checkpoints" / "step-000010").mkdir(parents=True)
    assert resume_from_earlier_attempt(job, step_dir, 3)["resume_from"] == str(step_dir / "attempt-01")
    assert "resume_from" not in resume_from_earlier_attempt({**job, "resume": False}, step_dir, 2)
    assert "resume_from" not in resume_from_earlier_attempt({"kind": "command", "run": "x"}, step_dir, 2)


def test_loss_rule_doubles_what_the_profile_really_used():
    task = _lora_task()
    task.subtasks[0].job = {"kind": "lora_train", "data": "d", "profile": "max_quality"}
    task.failure = LOSS_FAILED
    adaptation = choose_adaptation(task)
    assert adaptation.after["epochs"] == 6 and "learning_rate" not in adaptation.after
    assert "iters" not in adaptation.after
    from oodatcaa.jobs.spec import parse_job_spec

    parse_job_spec(adaptation.after)  # the adapted spec is valid


def test_conflict_and_deleted_branch_rules_rebuild_every_step():
    task = _lora_task()
    task.failure = Failure.of(FailureKind.MERGE_CONFLICT, "conflicts", item="T001", files=["a.txt"])
    conflict = choose_adaptation(task)
    assert conflict.rule == "merge_conflict.rebase_on_trunk" and conflict.rebuild_all and conflict.reset_to_trunk
    assert "a.txt" in conflict.rationale
    task.failure = Failure.of(FailureKind.BRANCH_MISSING, "gone", item="T001-T01", branch="feat/T001-step-01-x")
    deleted = choose_adaptation(task)
    assert deleted.rule == "branch_missing.rebuild" and deleted.rebuild_all and not deleted.reset_to_trunk
    assert deleted.before == deleted.after == task.subtasks[0].job

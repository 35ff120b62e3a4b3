"""Every Refiner policy and every rung of its ladder, as pure functions of (story, failure, job spec).

Each ladder is climbed one rung per loop: the test records the applied rung on the story (as the
Refiner does through ``lifecycle.on_adapted``) and asks again, until the ladder ends at a person.
Every adapted spec must pass ``parse_job_spec``.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from oodatcaa.core.failures import Failure, FailureKind
from oodatcaa.core.models import AdaptationRecord, Task
from oodatcaa.core.statuses import TaskStatus
from oodatcaa.jobs.spec import parse_job_spec
from oodatcaa.roles.policies import POLICIES, Adaptation, Escalation, decide, evidence
from support import add_steps, sample_queue

S = TaskStatus
K = FailureKind
AT = datetime(2026, 1, 1, tzinfo=UTC)
LORA = {"kind": "lora_train", "data": "data/chat", "batch_size": 4, "iters": 100, "learning_rate": 2e-4}


def story(*jobs: dict[str, Any], failure: Failure | None = None) -> Task:
    """T001 with one builder step per job (the last one waiting in needs_adapt) and ``failure``."""
    task = add_steps(sample_queue(1).tasks[0], len(jobs), status=S.AWAITING_TEST)
    for step, job in zip(task.builds(), jobs, strict=True):
        step.job = dict(job)
    task.builds()[-1].status = S.NEEDS_ADAPT
    task.status = S.NEEDS_ADAPT
    task.failure = failure
    return task


def criteria(*metrics: str, **observed: float) -> Failure:
    failed = [{"id": f"AC{i}", "outcome": "FAIL", "observed": observed.get(m.replace(".", "_")), "expected": None}
              for i, m in enumerate(metrics, 1)]
    return Failure.of(K.CRITERIA_FAILED, "tester: failed", item="T001-T01", failed_metrics=list(metrics), failed=failed)


def apply(task: Task, decision: Adaptation) -> None:
    """What the Refiner does with an adaptation: the step gets the new spec and the loop is recorded."""
    step = next(s for s in task.builds() if s.id == decision.step_id)
    step.job = decision.after
    task.adapt_loops += 1
    task.adaptations.append(AdaptationRecord(loop=task.adapt_loops, rule=decision.rule, step=step.id, at=AT))


def climb(task: Task, order=None) -> tuple[list[Adaptation], Escalation | None]:
    """Apply rungs until the ladder escalates (or nothing applies); every adapted spec must validate."""
    applied: list[Adaptation] = []
    for _ in range(10):
        decision = decide(task) if order is None else decide(task, order)
        if not isinstance(decision, Adaptation):
            return applied, decision
        assert decision.validation_error() is None, decision.validation_error()
        parse_job_spec(decision.after)
        applied.append(decision)
        apply(task, decision)
    raise AssertionError("a ladder never ends")


def rules(applied: list[Adaptation]) -> list[str]:
    return [a.rule for a in applied]


# ---------------------------------------------------------------- memory


def test_memory_ladder_in_order_one_rung_per_loop():
    task = story({**LORA, "num_layers": 8}, failure=criteria("train.peak_memory_gb", train_peak_memory_gb=3.2))
    applied, end = climb(task)
    assert rules(applied) == ["memory.grad_checkpoint", "memory.halve_batch", "memory.fewer_layers", "memory.qlora"]
    checkpointing, halve, layers, qlora = applied
    assert checkpointing.after["grad_checkpoint"] is True and checkpointing.after["batch_size"] == 4
    assert halve.after["batch_size"] == 2 and halve.after["grad_accumulation_steps"] == 2
    assert "effective batch 4 -> 4" in halve.rationale
    assert layers.after["num_layers"] == 4 and qlora.after["quantize"] == 4
    assert isinstance(end, Escalation) and end.policy == "memory"
    assert "shorter_sequences (cannot help this spec)" in end.reason  # no dataset statistics
    assert "observed 3.2" in " ".join(checkpointing.evidence)


def test_memory_halving_repeats_only_through_the_ladder_once():
    job = {**LORA, "grad_checkpoint": True, "batch_size": 8, "grad_accumulation_steps": 2, "num_layers": 2}
    applied, _ = climb(story(job, failure=Failure.of(K.OOM, "bad_alloc", item="T001-B01")))
    assert rules(applied)[0] == "memory.halve_batch"
    assert applied[0].after["batch_size"] == 4 and applied[0].after["grad_accumulation_steps"] == 4


def _with_dataset_stats(task: Task, tokens_longest: int, counter: str = "tokenizer:/models/x") -> Task:
    dataset = task.builds()[0]
    dataset.result = {"summary": {"dataset": {"tokens_longest": tokens_longest, "token_counter": counter}}}
    return task


def test_shorter_sequences_only_when_the_statistics_say_no_row_is_cut():
    job = {**LORA, "grad_checkpoint": True, "batch_size": 1, "max_seq_length": 512}
    failure = criteria("train.peak_memory_gb")
    task = _with_dataset_stats(story({"kind": "dataset", "data": "data/chat"}, job, failure=failure), 200)
    decision = decide(task)
    assert decision.rule == "memory.shorter_sequences" and decision.after["max_seq_length"] == 201
    assert "longest row at 200 tokens" in decision.rationale and "no row is cut" in decision.rationale
    # whitespace words are no token counts; a longer longest row cuts nothing by shortening: no change
    words = _with_dataset_stats(story({"kind": "dataset", "data": "data/chat"}, job, failure=failure), 200, "whitespace")
    assert decide(words).rule != "memory.shorter_sequences"
    long_rows = _with_dataset_stats(story({"kind": "dataset", "data": "data/chat"}, job, failure=failure), 600)
    assert decide(long_rows).rule != "memory.shorter_sequences"
    other_data = _with_dataset_stats(story({"kind": "dataset", "data": "data/other"}, job, failure=failure), 200)
    assert decide(other_data).rule != "memory.shorter_sequences"


def test_fewer_layers_reads_the_measured_layer_count_when_the_spec_leaves_it_default():
    task = story({**LORA, "grad_checkpoint": True, "batch_size": 1}, failure=criteria("train.peak_memory_gb"))
    assert decide(task).rule == "memory.qlora"  # layer count unknown: that rung cannot help
    task.builds()[0].result = {"summary": {"train": {"num_layers": 30}}}
    decision = decide(task)
    assert decision.rule == "memory.fewer_layers" and decision.after["num_layers"] == 15


def test_qlora_is_skipped_for_full_fine_tuning_and_a_quantized_base():
    job = {**LORA, "grad_checkpoint": True, "batch_size": 1, "num_layers": 1}
    assert isinstance(decide(story({**job, "fine_tune_type": "full"}, failure=criteria("train.peak_memory_gb"))),
                      Escalation)
    task = story(job, failure=criteria("train.peak_memory_gb"))
    task.metrics["train.quantize_bits"] = 4
    assert isinstance(decide(task), Escalation)


def test_an_eval_memory_failure_changes_the_evaluate_step_never_the_training_batch():
    evaluate = {"kind": "evaluate", "data": "data/chat", "adapter": "adapters", "batch_size": 8}
    task = story(LORA, evaluate, failure=criteria("eval.peak_memory_gb"))
    task.builds()[0].status = S.AWAITING_TEST
    decision = decide(task)
    assert decision.step_id == "T001-B02" and decision.rule == "memory.halve_batch"
    assert decision.after["batch_size"] == 4 and "grad_accumulation_steps" not in decision.after
    assert task.builds()[0].job["batch_size"] == 4  # the training step is untouched
    # and a train.* metric names the training step, whichever step failed last
    train = decide(story(LORA, evaluate, failure=criteria("train.peak_memory_gb")))
    assert train.step_id == "T001-B01" and train.rule == "memory.grad_checkpoint"


def test_memory_profile_target_is_its_own_step():
    profile = {"kind": "memory_profile", "batch_size": 4, "target_gb": 1.0}
    decision = decide(story(profile, LORA, failure=criteria("memory.peak_memory_gb")))
    assert decision.step_id == "T001-B01" and decision.rule == "memory.grad_checkpoint"


# ---------------------------------------------------------------- divergence


def test_divergence_ladder_lowers_the_rate_adds_warmup_and_clipping_then_a_person():
    failure = Failure.of(K.DIVERGED, "x", item="T001-B01", iteration=5, loss=5.07, initial_loss=0.82, reason="loss_ratio")
    applied, end = climb(story(LORA, failure=failure))
    assert rules(applied) == ["divergence.lower_lr_warmup", "divergence.lower_lr_again"]
    first, second = applied
    assert first.after["learning_rate"] == pytest.approx(2e-5) and first.after["max_grad_norm"] == 1.0
    assert first.after["lr_schedule"] == {"name": "linear_schedule", "warmup": 10, "arguments": [2e-5, 2e-5, 1]}
    assert second.after["learning_rate"] == pytest.approx(2e-6)
    assert second.after["lr_schedule"]["arguments"][:2] == [pytest.approx(2e-6), pytest.approx(2e-6)]
    assert "at iteration 5" in first.rationale and "10 warm-up updates" in first.rationale
    assert "initial_loss: 0.82" in "\n".join(first.evidence) and "reason: 'loss_ratio'" in "\n".join(first.evidence)
    assert isinstance(end, Escalation) and end.policy == "divergence"


def test_divergence_keeps_an_existing_schedule_and_adds_its_warmup():
    job = {**LORA, "lr_schedule": {"name": "cosine_decay", "end_lr": 0.0}}
    decision = decide(story(job, failure=Failure.of(K.DIVERGED, "x", item="T001-B01")))
    assert decision.after["lr_schedule"] == {"name": "cosine_decay", "end_lr": 0.0, "warmup": 10}
    explicit = {**LORA, "lr_schedule": {"name": "cosine_decay", "arguments": [1e-3, 100, 1e-5], "warmup": 5}}
    scaled = decide(story(explicit, failure=Failure.of(K.DIVERGED, "x", item="T001-B01")))
    assert scaled.after["lr_schedule"]["arguments"] == [pytest.approx(1e-4), 100, pytest.approx(1e-6)]
    assert scaled.after["lr_schedule"]["warmup"] == 5


# ---------------------------------------------------------------- loss not going down


def test_loss_ladder_more_iterations_then_a_higher_learning_rate():
    applied, end = climb(story(LORA, failure=criteria("train.final_val_loss", "train.first_val_loss")))
    assert rules(applied) == ["loss.more_iterations", "loss.higher_lr"]
    assert applied[0].after["iters"] == 200 and applied[1].after["learning_rate"] == pytest.approx(4e-4)
    assert isinstance(end, Escalation) and end.policy == "loss"


def test_an_eval_loss_failure_adapts_the_training_step():
    evaluate = {"kind": "evaluate", "data": "data/chat", "adapter": "adapters"}
    decision = decide(story(LORA, evaluate, failure=criteria("eval.loss", "eval.base_loss")))
    assert decision.step_id == "T001-B01" and decision.rule == "loss.more_iterations"


def test_loss_more_epochs_for_an_epoch_spec():
    decision = decide(story({"kind": "lora_train", "data": "d", "epochs": 1.5}, failure=criteria("train.final_loss")))
    assert decision.after["epochs"] == 3 and "iters" not in decision.after


# ---------------------------------------------------------------- interrupted


def test_timeout_resumes_with_denser_checkpoints_then_runs_fewer_steps():
    task = story({**LORA, "save_every": 100, "resume": False},
                 failure=Failure.of(K.TIMEOUT, "timed out", item="T001-B01", timeout_s=60.0))
    task.builds()[0].result = {"summary": {"train": {"iterations_done": 40}}}
    applied, end = climb(task)
    assert rules(applied) == ["interrupted.resume", "interrupted.fewer_steps"]
    resume, fewer = applied
    assert resume.after["resume"] == "auto" and resume.after["save_every"] == 10
    assert "timed out after 60 s" in resume.rationale and "iteration 40" in resume.rationale
    assert fewer.after["iters"] == 50
    assert isinstance(end, Escalation)


def test_a_killed_job_of_another_kind_runs_again_but_a_timed_out_one_does_not():
    command = {"kind": "command", "run": "sleep 100"}
    killed = decide(story(command, failure=Failure.of(K.JOB_KILLED, "SIGKILL", item="T001-B01", signal=9)))
    assert killed.rule == "interrupted.resume" and killed.after == killed.before
    timed_out = decide(story(command, failure=Failure.of(K.TIMEOUT, "t", item="T001-B01")))
    assert isinstance(timed_out, Escalation)
    profile = decide(story({"kind": "memory_profile", "steps": 6}, failure=Failure.of(K.TIMEOUT, "t", item="T001-B01")))
    assert profile.rule == "interrupted.fewer_steps" and profile.after["steps"] == 3


# ---------------------------------------------------------------- throughput


def test_throughput_ladder_fewer_layers_then_qlora():
    applied, end = climb(story({**LORA, "num_layers": 16}, failure=criteria("train.tokens_per_second")))
    assert rules(applied) == ["throughput.fewer_layers", "throughput.qlora"]
    assert applied[0].after["num_layers"] == 8 and applied[1].after["quantize"] == 4
    assert isinstance(end, Escalation) and end.policy == "throughput"


def test_a_slow_inference_bench_is_no_training_change():
    bench = {"kind": "inference_bench"}
    assert decide(story(bench, failure=criteria("inference.generation_tps"))) is None


# ---------------------------------------------------------------- dataset


def test_rows_too_long_raise_max_tokens_to_the_measured_maximum():
    job = {"kind": "dataset", "data": "data/chat", "max_tokens": 128, "strict": True}
    failure = Failure.of(K.JOB_ERROR, "3 rows too long", item="T001-B01", rows_too_long=3, tokens_longest=300)
    decision = decide(story(job, failure=failure))
    assert decision.rule == "dataset.raise_max_tokens" and decision.after["max_tokens"] == 300
    by_criterion = story(job, failure=criteria("dataset.rows_too_long"))
    by_criterion.builds()[0].result = {"summary": {"dataset": {"rows_too_long": 2, "tokens_longest": 260}}}
    assert decide(by_criterion).after["max_tokens"] == 260
    # a job_error of a dataset step with no such details is no dataset problem
    assert decide(story(job, failure=Failure.of(K.JOB_ERROR, "rows too long", item="T001-B01"))) is None


def test_near_copies_across_splits_resplit_grouped_for_a_source_split_only():
    job = {"kind": "dataset", "source": "raw.jsonl", "output": "data/chat"}
    decision = decide(story(job, failure=criteria("dataset.cross_split_duplicates")))
    assert decision.rule == "dataset.group_near_copies" and decision.after["near_duplicate_threshold"] == 0.8
    validate_only = decide(story({"kind": "dataset", "data": "data/chat"}, failure=criteria("dataset.cross_split_duplicates")))
    assert isinstance(validate_only, Escalation) and "group_near_copies (cannot help" in validate_only.reason


# ---------------------------------------------------------------- git, order, evidence


def test_a_start_over_starts_every_ladder_again():
    task = story(LORA, failure=criteria("train.peak_memory_gb"))
    apply(task, decide(task))
    assert decide(task).rule == "memory.halve_batch"
    task.adapt_loops = 0  # the Start-Over Gate: the backlog's job again, the records kept for the retrospective
    task.builds()[0].job = dict(LORA)
    assert decide(task).rule == "memory.grad_checkpoint" and len(task.adaptations) == 1


def test_git_policies_are_repeatable():
    task = story(LORA, failure=Failure.of(K.MERGE_CONFLICT, "c", item="T001", files=["a.txt"]))
    first = decide(task)
    apply(task, first)
    again = decide(task)
    assert first.rule == again.rule == "merge_conflict.rebase_on_trunk" and again.reset_to_trunk


def test_order_decides_between_policies_and_a_left_out_policy_is_off():
    failure = criteria("train.peak_memory_gb", "train.tokens_per_second", "train.final_loss")
    task = story({**LORA, "num_layers": 8}, failure=failure)
    assert decide(task).rule == "memory.grad_checkpoint"
    assert decide(task, ["loss", "memory"]).rule == "loss.more_iterations"
    assert decide(task, ["throughput"]).rule == "throughput.fewer_layers"
    assert decide(task, ["divergence"]) is None


def test_policies_never_read_the_message():
    for policy in POLICIES.values():
        for rung in policy.rungs:
            assert "message" not in rung.adapt.__code__.co_names, (policy.name, rung.name)


def test_evidence_lists_observed_values_and_details():
    lines = evidence(criteria("train.peak_memory_gb", train_peak_memory_gb=3.2))
    assert lines[0] == "kind: criteria_failed" and "AC1 FAIL: observed 3.2, expected None" in lines
    assert any(line.startswith("failed_metrics:") for line in lines)


def test_an_adaptation_that_does_not_validate_says_why():
    bad = Adaptation("memory.halve_batch", "T001-B01", LORA, {**LORA, "batch_size": 0}, "x")
    assert "batch_size" in (bad.validation_error() or "")
    assert Adaptation("x", "T001-B01", LORA, LORA, "x").validation_error() is None


def test_no_failure_no_decision():
    assert decide(story(LORA)) is None


# ---------------------------------------------------------------- config and the agent


def test_config_lists_every_policy_in_the_documented_order_by_default(tmp_path):
    from oodatcaa.core.config import REFINER_POLICY_ORDER, default_config_toml, load_config
    from support import workspace

    ws = workspace(tmp_path)
    assert tuple(load_config(ws.config_path, ws.agents_dir).refiner.policies) == REFINER_POLICY_ORDER == tuple(POLICIES)
    text = default_config_toml()
    assert "[refiner]" in text and '# policies = ["branch_missing", "merge_conflict",' in text
    assert text.index("[loop]") < text.index("[refiner]") < text.index("[check]")


def test_config_orders_and_disables_policies_and_names_an_unknown_one(tmp_path):
    from oodatcaa.core.config import load_config
    from oodatcaa.core.errors import ConfigError
    from support import configure, workspace

    ws = workspace(tmp_path)
    configure(ws.config_path, refiner={"policies": ["loss", "memory"]})
    assert load_config(ws.config_path, ws.agents_dir).refiner.policies == ["loss", "memory"]
    configure(ws.config_path, refiner={"policies": ["memory", "lossy"]})
    with pytest.raises(ConfigError) as info:
        load_config(ws.config_path, ws.agents_dir)
    message = str(info.value)
    assert "refiner.policies" in message and "'lossy'" in message and "known policies: branch_missing" in message
    configure(ws.config_path, refiner={"policies": ["memory", "memory"]})
    with pytest.raises(ConfigError, match="listed twice"):
        load_config(ws.config_path, ws.agents_dir)


def _run_refiner(tmp_path, task: Task, policies: list[str] | None = None):
    from oodatcaa.roles import AGENT_CLASSES
    from oodatcaa.roles.base import AgentContext
    from support import configure, store_with, workspace

    ws = workspace(tmp_path)
    if policies is not None:
        configure(ws.config_path, refiner={"policies": policies})
    queue = sample_queue(1)
    queue.tasks = [task]
    store = store_with(ws, queue)
    assert AGENT_CLASSES["refiner"](AgentContext.open(ws, "refiner-t")).run(once=True, exit_when_complete=False) == 0
    return ws, store.read().task("T001")


def test_the_agent_writes_the_rule_rationale_evidence_and_a_spec_diff(tmp_path):
    task = story({**LORA, "num_layers": 8}, failure=criteria("train.peak_memory_gb", train_peak_memory_gb=3.2))
    ws, after = _run_refiner(tmp_path, task)
    assert after.status == S.READY and after.adaptations[-1].rule == "memory.grad_checkpoint"
    assert after.builds()[0].job["grad_checkpoint"] is True
    report = (ws.report_dir("T001") / "refiner_1.md").read_text()
    for part in ("**Rule:** `memory.grad_checkpoint`", "**Rationale:** gradient checkpointing on", "### Evidence",
                 "AC1 FAIL: observed 3.2", "```diff", "+grad_checkpoint: true", "--- T001-B01 job (before)"):
        assert part in report, part


def test_a_disabled_policy_sends_its_failures_to_a_person(tmp_path):
    task = story(LORA, failure=criteria("train.peak_memory_gb"))
    ws, after = _run_refiner(tmp_path, task, policies=["loss", "divergence"])
    assert after.status == S.NEEDS_MANUAL and "no Refiner policy applies" in (after.manual_reason or "")


def test_an_adapted_spec_that_does_not_validate_is_not_written(tmp_path, monkeypatch):
    from oodatcaa.roles import policies

    def broken(task: Task, failure: Failure, job: dict[str, Any]) -> policies.Change:
        return policies.Change({**job, "grad_checkpoint": True, "batch_size": 0}, "a buggy rung")

    rungs = (policies.Rung("grad_checkpoint", broken), *policies.POLICIES["memory"].rungs[1:])
    monkeypatch.setitem(policies.POLICIES, "memory", policies.Policy(
        "memory", policies.POLICIES["memory"].handles, policies.POLICIES["memory"].target, rungs))
    task = story(LORA, failure=criteria("train.peak_memory_gb"))
    ws, after = _run_refiner(tmp_path, task)
    assert after.status == S.NEEDS_MANUAL and "does not validate" in (after.manual_reason or "")
    assert after.builds()[0].job == LORA and after.adaptations == []  # nothing written
    report = (ws.report_dir("T001") / "refiner_1.md").read_text()
    assert "Job spec (current, kept)" in report and "batch_size: 4" in report
    assert "(invalid, not written)" in report and "batch_size: 0" in report and "batch_size must be >= 1" in report


def test_a_spent_ladder_escalates_with_the_rungs_tried(tmp_path):
    job = {**LORA, "grad_checkpoint": True, "batch_size": 1, "num_layers": 1, "quantize": 4}
    ws, after = _run_refiner(tmp_path, story(job, failure=Failure.of(K.OOM, "bad_alloc", item="T001-B01")))
    assert after.status == S.NEEDS_MANUAL and "memory ladder has no rung left" in (after.manual_reason or "")
    assert "### Evidence" in (ws.report_dir("T001") / "refiner_1.md").read_text()

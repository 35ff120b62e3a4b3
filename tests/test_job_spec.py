"""Job spec validation: one bad spec per validated field, defaults, and the error messages."""

from __future__ import annotations

import subprocess
import sys

import pytest

from oodatcaa.jobs.spec import (
    JOB_KINDS,
    CommandJob,
    InferenceBenchJob,
    JobSpecError,
    LoraTrainJob,
    ModelCheckJob,
    job_spec_json_schema,
    parse_job_spec,
)

LORA = {"kind": "lora_train", "data": "data/chat"}
BENCH = {"kind": "inference_bench"}
CMD = {"kind": "command", "run": "echo hi"}

# (spec, dotted field, text the message must contain)
BAD_SPECS = [
    # every kind: model
    ({"kind": "model_check", "model": ""}, "model", "model must not be empty"),
    ({**BENCH, "model": 3}, "model", "model must be a string"),
    # inference_bench
    ({**BENCH, "prompts": []}, "prompts", "at least 1"),
    ({**BENCH, "prompts": ["ok", ""]}, "prompts[1]", "must not be empty"),
    ({**BENCH, "prompts": "one prompt"}, "prompts", "must be a list"),
    ({**BENCH, "max_tokens": 0}, "max_tokens", "max_tokens must be >= 1, got 0"),
    ({**BENCH, "max_tokens": True}, "max_tokens", "must be an integer"),
    ({**BENCH, "trials": 0}, "trials", "trials must be >= 1, got 0"),
    ({**BENCH, "warmup": "sometimes"}, "warmup", "must be true or false"),
    ({**BENCH, "adapter": ""}, "adapter", "adapter must not be empty"),
    ({**BENCH, "temperature": -0.5}, "temperature", "temperature must be >= 0, got -0.5"),
    ({**BENCH, "seed": -1}, "seed", "seed must be >= 0, got -1"),
    # lora_train
    ({"kind": "lora_train"}, "data", "data is required"),
    ({**LORA, "data": ""}, "data", "data must not be empty"),
    ({**LORA, "iters": 0}, "iters", "iters must be >= 1, got 0"),
    ({**LORA, "iters": "many"}, "iters", "iters must be an integer"),
    ({**LORA, "batch_size": 0}, "batch_size", "batch_size must be >= 1, got 0"),
    ({**LORA, "lora": {"rank": 0}}, "lora.rank", "rank must be >= 1, got 0"),
    ({**LORA, "lora": {"alpha": 0}}, "lora.alpha", "alpha must be > 0, got 0"),
    ({**LORA, "lora": {"dropout": 1.0}}, "lora.dropout", "dropout must be < 1, got 1"),
    ({**LORA, "lora": {"rnak": 4}}, "lora.rnak", "did you mean 'rank'"),
    ({**LORA, "lora": 8}, "lora", "must be a mapping"),
    ({**LORA, "num_layers": 0}, "num_layers", "num_layers must be >= 1 or -1"),
    ({**LORA, "learning_rate": -1}, "learning_rate", "learning_rate must be > 0, got -1"),
    ({**LORA, "learning_rate": False}, "learning_rate", "must be a number"),
    ({**LORA, "max_seq_length": 4}, "max_seq_length", "max_seq_length must be >= 8, got 4"),
    ({**LORA, "grad_checkpoint": "yes please"}, "grad_checkpoint", "must be true or false"),
    ({**LORA, "grad_accumulation_steps": 0}, "grad_accumulation_steps", "must be >= 1, got 0"),
    ({**LORA, "steps_per_report": 0}, "steps_per_report", "steps_per_report must be >= 1, got 0"),
    ({**LORA, "steps_per_eval": 0}, "steps_per_eval", "steps_per_eval must be >= 1, got 0"),
    ({**LORA, "val_batches": 0}, "val_batches", "val_batches must be >= 1 or -1"),
    ({**LORA, "mask_prompt": "maybe"}, "mask_prompt", "must be true or false"),
    ({**LORA, "seed": -3}, "seed", "seed must be >= 0, got -3"),
    ({**LORA, "learning_rat": 0.1}, "learning_rat", "did you mean 'learning_rate'"),
    # lora_train: profiles, fine-tune type, QLoRA, schedule, checkpoints, resume, best, early stopping
    ({**LORA, "profile": "fastdev"}, "profile", "did you mean 'fast_dev'"),
    ({**LORA, "iters": 10, "epochs": 1}, "epochs", "either iters or epochs"),
    ({**LORA, "epochs": 0}, "epochs", "epochs must be > 0, got 0"),
    ({**LORA, "fine_tune_type": "qlora"}, "fine_tune_type", "must be one of lora, dora, full"),
    ({**LORA, "fine_tune_type": "full", "lora": {"rank": 4}}, "lora", "not full"),
    ({**LORA, "quantize": 7}, "quantize", "must be one of 2, 3, 4, 5, 6, 8, got 7"),
    ({**LORA, "fine_tune_type": "full", "quantize": 4}, "quantize", "needs fine_tune_type lora or dora"),
    ({**LORA, "quantize_group_size": 16}, "quantize_group_size", "must be one of 32, 64, 128"),
    ({**LORA, "lr_schedule": {"name": "cosine"}}, "lr_schedule.name", "did you mean 'cosine_decay'"),
    ({**LORA, "lr_schedule": "cosine_decay"}, "lr_schedule", "must be a mapping"),
    ({**LORA, "lr_schedule": {"name": "cosine_decay", "warmup": -1}}, "lr_schedule.warmup", "warmup must be >= 0"),
    ({**LORA, "lr_schedule": {"name": "cosine_decay", "warmup_init": -1}}, "lr_schedule.warmup_init", "must be >= 0"),
    ({**LORA, "lr_schedule": {"name": "cosine_decay", "end_lr": -1}}, "lr_schedule.end_lr", "must be >= 0"),
    ({**LORA, "lr_schedule": {"name": "step_decay"}}, "lr_schedule.arguments", "arguments is required for step_decay"),
    ({**LORA, "lr_schedule": {"name": "cosine_decay", "arguments": [1e-3]}}, "lr_schedule.arguments", "takes 2 or 3 values"),
    ({**LORA, "lr_schedule": {"name": "cosine_decay", "arguments": [0, 10]}}, "lr_schedule.arguments", "must be > 0"),
    ({**LORA, "lr_schedule": {"name": "cosine_decay", "decay": 3}}, "lr_schedule.decay", "unknown field 'decay'"),
    ({**LORA, "save_every": 0}, "save_every", "save_every must be >= 1, got 0"),
    ({**LORA, "resume": "yes"}, "resume", "resume must be true, false or 'auto'"),
    ({**LORA, "resume_from": ""}, "resume_from", "must not be empty"),
    ({**LORA, "resume": False, "resume_from": "runs/x"}, "resume_from", "needs resume true or auto"),
    ({**LORA, "keep_best": "best"}, "keep_best", "must be true or false"),
    ({**LORA, "early_stopping": {"patience": 0}}, "early_stopping.patience", "patience must be >= 1, got 0"),
    ({**LORA, "early_stopping": {}}, "early_stopping.patience", "patience is required"),
    ({**LORA, "early_stopping": {"patience": 2, "min_delta": -0.1}}, "early_stopping.min_delta", "min_delta must be >= 0"),
    # memory_profile
    ({"kind": "memory_profile", "steps": 0}, "steps", "steps must be >= 1, got 0"),
    ({"kind": "memory_profile", "target_gb": 0}, "target_gb", "target_gb must be > 0, got 0"),
    ({"kind": "memory_profile", "data": ""}, "data", "data must not be empty"),
    ({"kind": "memory_profile", "prompt": ""}, "prompt", "prompt must not be empty"),
    ({"kind": "memory_profile", "max_tokens": 0}, "max_tokens", "max_tokens must be >= 1, got 0"),
    ({"kind": "memory_profile", "batch_size": 0}, "batch_size", "batch_size must be >= 1, got 0"),
    ({"kind": "memory_profile", "grad_accumulation_steps": 0}, "grad_accumulation_steps", "must be >= 1, got 0"),
    ({"kind": "memory_profile", "grad_checkpoint": "maybe"}, "grad_checkpoint", "must be true or false"),
    ({"kind": "memory_profile", "iters": 3}, "iters", "unknown field 'iters'"),
    ({"kind": "memory_profile", "fine_tune_type": "full", "quantize": 4}, "quantize", "needs fine_tune_type lora or dora"),
    ({"kind": "memory_profile", "quantize_group_size": 100}, "quantize_group_size", "must be one of 32, 64, 128"),
    # evaluate
    ({"kind": "evaluate"}, "data", "data is required"),
    ({"kind": "evaluate", "data": "d", "split": "dev"}, "split", "must be one of train, valid, test"),
    ({"kind": "evaluate", "data": "d", "adapter": ""}, "adapter", "adapter must not be empty"),
    ({"kind": "evaluate", "data": "d", "batch_size": 0}, "batch_size", "batch_size must be >= 1, got 0"),
    ({"kind": "evaluate", "data": "d", "max_seq_length": 4}, "max_seq_length", "must be >= 8, got 4"),
    ({"kind": "evaluate", "data": "d", "max_batches": 0}, "max_batches", "max_batches must be >= 1 or -1"),
    ({"kind": "evaluate", "data": "d", "prompts": []}, "prompts", "at least 1"),
    ({"kind": "evaluate", "data": "d", "prompts": [""]}, "prompts[0]", "must not be empty"),
    ({"kind": "evaluate", "data": "d", "mask_prompt": "maybe"}, "mask_prompt", "must be true or false"),
    ({"kind": "evaluate", "data": "d", "model": ""}, "model", "model must not be empty"),
    ({"kind": "evaluate", "data": "d", "num_prompts": -1}, "num_prompts", "num_prompts must be >= 0"),
    ({"kind": "evaluate", "data": "d", "max_tokens": 0}, "max_tokens", "max_tokens must be >= 1"),
    ({"kind": "evaluate", "data": "d", "temperature": -1}, "temperature", "temperature must be >= 0"),
    ({"kind": "evaluate", "data": "d", "compare_base": "maybe"}, "compare_base", "must be true or false"),
    ({"kind": "evaluate", "data": "d", "seed": -1}, "seed", "seed must be >= 0"),
    # dataset
    ({"kind": "dataset"}, "data", "either data"),
    ({"kind": "dataset", "data": "d", "source": "x.jsonl"}, "data", "either data"),
    ({"kind": "dataset", "source": "x.jsonl"}, "output", "output is required with source"),
    ({"kind": "dataset", "data": "d", "output": "o"}, "output", "output goes with source"),
    ({"kind": "dataset", "data": "d", "split": {"train": 0.5, "valid": 0.1, "test": 0.1}}, "split", "must sum to 1"),
    ({"kind": "dataset", "data": "d", "split": {"train": 0, "valid": 0.5, "test": 0.5}}, "split.train", "train must be > 0"),
    ({"kind": "dataset", "data": "d", "split": {"train": 0.9, "valid": -0.1, "test": 0.2}}, "split.valid", "valid must be >= 0"),
    ({"kind": "dataset", "data": "d", "split": {"train": 0.9, "valid": 0.1, "test": 1.5}}, "split.test", "test must be <= 1"),
    ({"kind": "dataset", "data": "d", "model": ""}, "model", "model must not be empty"),
    ({"kind": "dataset", "data": "d", "max_tokens": 0}, "max_tokens", "max_tokens must be >= 1"),
    ({"kind": "dataset", "data": "d", "near_duplicate_threshold": 0}, "near_duplicate_threshold", "must be > 0"),
    ({"kind": "dataset", "data": "d", "dedupe": "x"}, "dedupe", "must be true or false"),
    ({"kind": "dataset", "data": "d", "strict": "x"}, "strict", "must be true or false"),
    ({"kind": "dataset", "data": "d", "seed": -2}, "seed", "seed must be >= 0"),
    # quantize, fuse
    ({"kind": "quantize", "bits": 7}, "bits", "must be one of 2, 3, 4, 5, 6, 8"),
    ({"kind": "quantize", "group_size": 48}, "group_size", "must be one of 32, 64, 128"),
    ({"kind": "quantize", "output": "x"}, "output", "unknown field 'output'"),
    ({"kind": "fuse"}, "adapter", "adapter is required"),
    ({"kind": "fuse", "adapter": "a", "dequantize": "x"}, "dequantize", "must be true or false"),
    ({"kind": "fuse", "adapter": "a", "export_gguf": "x"}, "export_gguf", "must be true or false"),
    ({"kind": "fuse", "adapter": "a", "gguf_name": "../x.gguf"}, "gguf_name", "plain file name ending in .gguf"),
    ({"kind": "fuse", "adapter": "a", "gguf_name": "model.bin"}, "gguf_name", "plain file name ending in .gguf"),
    # command
    ({"kind": "command"}, "run", "run is required"),
    ({**CMD, "run": "   "}, "run", "non-empty command line"),
    ({**CMD, "run": []}, "run", "non-empty argv list"),
    ({**CMD, "run": ["ls", ""]}, "run", "run[1] must be a non-empty string"),
    ({**CMD, "run": 5}, "run", "a command line (string) or an argv list"),
    ({**CMD, "timeout_s": 0}, "timeout_s", "timeout_s must be > 0, got 0"),
    ({**CMD, "model": "x"}, "model", "unknown field 'model'"),
    # kind
    ({"model": "default"}, "kind", "kind is required"),
    ({"kind": "lora_trian"}, "kind", "did you mean 'lora_train'"),
]


@pytest.mark.parametrize(("data", "field", "text"), BAD_SPECS,
                         ids=[f"{d.get('kind', '-')}:{f}:{i}" for i, (d, f, _) in enumerate(BAD_SPECS)])
def test_bad_spec_names_source_field_and_fix(data: dict, field: str, text: str) -> None:
    with pytest.raises(JobSpecError) as info:
        parse_job_spec(data, source="backlog.yaml#jobs[3]")
    err = info.value
    assert err.source == "backlog.yaml#jobs[3]"
    assert err.field == field
    assert text in err.message
    rendered = str(err)
    assert rendered.startswith("backlog.yaml#jobs[3]: ")
    assert field in rendered and text in rendered
    assert isinstance(err, ValueError)


def test_unknown_kind_lists_known_kinds() -> None:
    with pytest.raises(JobSpecError) as info:
        parse_job_spec({"kind": "train_everything"}, source="x.yaml")
    for kind in JOB_KINDS:
        assert kind in str(info.value)
    assert info.value.field == "kind"


def test_not_a_mapping() -> None:
    with pytest.raises(JobSpecError, match="must be a mapping"):
        parse_job_spec(["kind", "command"])  # type: ignore[arg-type]


def test_several_problems_are_all_reported() -> None:
    with pytest.raises(JobSpecError) as info:
        parse_job_spec({**LORA, "iters": 0, "batch_size": 0})
    fields = [f for f, _ in info.value.errors]
    assert sorted(fields) == ["batch_size", "iters"]
    assert "iters must be >= 1" in str(info.value) and "batch_size must be >= 1" in str(info.value)


def test_defaults() -> None:
    assert parse_job_spec({"kind": "model_check"}) == ModelCheckJob(kind="model_check", model="default")

    bench = parse_job_spec(BENCH)
    assert isinstance(bench, InferenceBenchJob)
    assert (bench.max_tokens, bench.trials, bench.warmup, bench.adapter, bench.temperature, bench.seed) == (
        64, 1, True, None, 0.0, 0)
    assert bench.prompts

    lora = parse_job_spec(LORA)
    assert isinstance(lora, LoraTrainJob)
    assert (lora.iters, lora.batch_size, lora.learning_rate, lora.max_seq_length) == (60, 4, 2e-4, 512)
    assert (lora.lora.rank, lora.lora.alpha, lora.lora.dropout, lora.lora.scale) == (8, 16.0, 0.0, 2.0)
    assert lora.num_layers is None and lora.grad_checkpoint is False and lora.grad_accumulation_steps == 1
    assert lora.steps_per_report == 10 and lora.steps_per_eval == 60 and lora.val_batches == -1
    assert parse_job_spec({**LORA, "iters": 30}).steps_per_eval == 30

    cmd = parse_job_spec(CMD)
    assert isinstance(cmd, CommandJob) and cmd.timeout_s == 600.0
    assert parse_job_spec({**CMD, "run": ["echo", "a b"]}).run == ["echo", "a b"]


def test_profiles_fill_defaults_and_the_spec_overrides_them() -> None:
    fast = parse_job_spec({**LORA, "profile": "fast_dev"})
    assert (fast.lora.rank, fast.lora.alpha, fast.iters, fast.epochs, fast.learning_rate) == (8, 16.0, 60, None, 2e-4)
    balanced = parse_job_spec({**LORA, "profile": "balanced"})
    assert (balanced.lora.rank, balanced.lora.alpha, balanced.iters, balanced.epochs) == (16, 16.0, None, 1.0)
    assert balanced.steps_per_eval is None  # resolved from the epoch size at run time
    best = parse_job_spec({**LORA, "profile": "max_quality"})
    assert (best.lora.rank, best.lora.alpha, best.epochs, best.learning_rate) == (128, 256.0, 3.0, 1e-4)
    assert best.lora.scale == 2.0
    # any field overrides; lora key by key; iters replaces the profile's epochs and vice versa
    mixed = parse_job_spec({**LORA, "profile": "max_quality", "lora": {"rank": 64}, "iters": 10, "learning_rate": 5e-5})
    assert (mixed.lora.rank, mixed.lora.alpha, mixed.iters, mixed.epochs, mixed.learning_rate) == (64, 256.0, 10, None, 5e-5)
    assert parse_job_spec({**LORA, "profile": "fast_dev", "epochs": 2}).iters is None
    for spec in (fast, balanced, best, mixed):
        assert parse_job_spec(spec.model_dump(mode="json")) == spec  # the runner's round trip


def test_new_kind_defaults() -> None:
    lora = parse_job_spec(LORA)
    assert (lora.fine_tune_type, lora.quantize, lora.quantize_group_size, lora.lr_schedule) == ("lora", None, 64, None)
    assert (lora.save_every, lora.resume, lora.resume_from, lora.keep_best, lora.early_stopping) == (
        100, "auto", None, False, None)
    assert parse_job_spec({**LORA, "early_stopping": {"patience": 3}}).early_stopping.min_delta == 0.0
    sched = parse_job_spec({**LORA, "lr_schedule": {"name": "cosine_decay", "warmup": 5}}).lr_schedule
    assert (sched.warmup, sched.warmup_init, sched.end_lr, sched.arguments) == (5, 0.0, 0.0, None)
    mem = parse_job_spec({"kind": "memory_profile"})
    assert (mem.steps, mem.target_gb, mem.data, mem.batch_size, mem.max_seq_length, mem.max_tokens) == (3, None, None, 4, 512, 32)
    ev = parse_job_spec({"kind": "evaluate", "data": "d"})
    assert (ev.split, ev.adapter, ev.batch_size, ev.max_batches, ev.num_prompts, ev.compare_base) == (
        "test", None, 4, -1, 3, True)
    ds = parse_job_spec({"kind": "dataset", "source": "raw.jsonl", "output": "data"})
    assert (ds.split.train, ds.split.valid, ds.split.test, ds.model, ds.dedupe, ds.strict) == (0.8, 0.1, 0.1, None, True, False)
    q = parse_job_spec({"kind": "quantize"})
    assert (q.bits, q.group_size, q.model) == (4, 64, "default")
    f = parse_job_spec({"kind": "fuse", "adapter": "a"})
    assert (f.dequantize, f.export_gguf, f.gguf_name) == (False, False, "ggml-model-f16.gguf")


def test_lenient_numbers_from_yaml() -> None:
    # PyYAML reads "2e-4" as a string; numeric strings and ints for floats are accepted.
    spec = parse_job_spec({**LORA, "learning_rate": "2e-4", "lora": {"alpha": 32}})
    assert spec.learning_rate == pytest.approx(2e-4)
    assert spec.lora.alpha == 32.0 and spec.lora.scale == 4.0


def test_roundtrip_and_model_passthrough() -> None:
    spec = parse_job_spec({**LORA, "num_layers": -1})
    again = parse_job_spec(spec.model_dump(mode="json"))
    assert again == spec
    assert parse_job_spec(spec) is spec


def test_json_schema_has_every_kind() -> None:
    text = str(job_spec_json_schema())
    for kind in JOB_KINDS:
        assert kind in text


def test_spec_module_imports_no_heavy_modules() -> None:
    code = (
        "import sys, oodatcaa.jobs.spec, oodatcaa.jobs.runner, oodatcaa.jobs.cpu_fastpath; "
        "heavy = [m for m in sys.modules if m.split('.')[0] in ('mlx', 'mlx_lm', 'numpy', 'transformers', 'git', 'yaml')]; "
        "print(heavy); sys.exit(1 if heavy else 0)"
    )
    import os
    from pathlib import Path

    import oodatcaa

    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(Path(oodatcaa.__file__).parent.parent), env.get("PYTHONPATH", "")])
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert out.returncode == 0, out.stdout + out.stderr

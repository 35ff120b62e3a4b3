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


@pytest.mark.parametrize(("data", "field", "text"), BAD_SPECS, ids=[f"{d.get('kind', '-')}:{f}:{i}" for i, (d, f, _) in enumerate(BAD_SPECS)])
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
    assert fields == ["iters", "batch_size"]
    assert "iters must be >= 1" in str(info.value) and "batch_size must be >= 1" in str(info.value)


def test_defaults() -> None:
    assert parse_job_spec({"kind": "model_check"}) == ModelCheckJob(kind="model_check", model="default")

    bench = parse_job_spec(BENCH)
    assert isinstance(bench, InferenceBenchJob)
    assert (bench.max_tokens, bench.trials, bench.warmup, bench.adapter, bench.temperature, bench.seed) == (64, 1, True, None, 0.0, 0)
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

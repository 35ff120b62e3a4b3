"""Divergence is detected, not only NaN: ``train.initial_loss``, the validation loss and the uniform level.

The pure check (:func:`oodatcaa.jobs.lora_train.check_diverged`) is tested on summaries, including the
numbers of the run that used to pass (validation 4.56 -> 10.80 = ln 49,152, first report window
25.7); the tiny-model tests train a low-loss base first (the random tiny model starts above the
uniform level and is too robust to diverge), fuse it, then fine-tune it with a learning rate far too
high.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest

from conftest import write_tiny_dataset
from oodatcaa.core.failures import FailureKind
from oodatcaa.jobs._common import DivergedError
from oodatcaa.jobs.lora_train import check_diverged
from oodatcaa.jobs.spec import JobSpecError, parse_job_spec

HEALTHY = {"initial_loss": 4.5, "first_loss": 4.2, "final_loss": 2.0, "first_val_loss": 4.56,
           "final_val_loss": 2.1, "vocab_size": 49152}


def _spec(**divergence: Any) -> Any:
    return parse_job_spec({"kind": "lora_train", "data": "d", **({"divergence": divergence} if divergence else {})})


def _check(summary: dict[str, Any], detected: dict[str, Any] | None = None, **divergence: Any) -> DivergedError | None:
    try:
        check_diverged(dict(summary), _spec(**divergence), detected, 60, {"train": dict(summary)})
    except DivergedError as exc:
        return exc
    return None


def test_a_healthy_run_passes():
    assert _check(HEALTHY) is None


def test_the_run_that_used_to_pass_is_diverged():
    # first report window 25.7 (already diverged), final 10.8 lower: "final_loss < first_loss" passed
    collapsed = {**HEALTHY, "first_loss": 25.7, "final_loss": 10.8, "final_val_loss": 10.80}
    exc = _check(collapsed)
    assert exc is not None and exc.kind == FailureKind.DIVERGED
    assert exc.details["reason"] == "val_increase" and exc.details["first_val_loss"] == 4.56
    assert exc.summary == {"train": collapsed}  # kept for the report
    uniform = _check(collapsed, max_val_increase=None)
    assert uniform is not None and uniform.details["reason"] == "uniform"
    assert uniform.details["uniform_loss"] == pytest.approx(math.log(49152), abs=1e-6)
    assert "uniform distribution" in str(uniform)


def test_the_loop_detection_is_reported_with_its_numbers():
    detected = {"reason": "loss_ratio", "iteration": 5, "loss": 25.7, "max_loss_ratio": 2.0, "ratio": 5.64,
                "reference_loss": 4.56}
    exc = _check(HEALTHY, detected)
    assert "over 2.0 x the loss before training 4.56" in str(exc)
    assert exc is not None and exc.details["reason"] == "loss_ratio" and exc.details["iteration"] == 5
    assert exc.details["loss"] == 25.7 and exc.details["initial_loss"] == 4.5 and exc.details["ratio"] == 5.64


def test_a_non_finite_loss_is_diverged():
    exc = _check({**HEALTHY, "final_loss": float("nan")})
    assert exc is not None and exc.details["reason"] == "non_finite" and math.isnan(exc.details["loss"])
    assert exc.details["what"] == "final_loss"


def test_a_random_model_that_falls_to_the_uniform_level_is_not_diverged():
    # the tiny random model: 6.47 before training (above ln 384 = 5.95), 5.94 after a huge rate
    assert _check({**HEALTHY, "first_val_loss": 6.47, "final_val_loss": 5.94, "vocab_size": 384}) is None


def test_each_check_can_be_turned_off_and_limits_are_validated():
    worse = {**HEALTHY, "final_val_loss": 5.2}
    assert _check(worse) is not None
    assert _check(worse, max_val_increase=None) is None
    assert _check(worse, max_val_increase=1.0) is None
    for bad, field in (({"max_loss_ratio": 1.0}, "max_loss_ratio"), ({"uniform_tolerance": 1.0}, "uniform_tolerance"),
                       ({"max_val_increase": -0.1}, "max_val_increase"), ({"patience": 2}, "patience")):
        with pytest.raises(JobSpecError) as info:
            _spec(**bad)
        assert f"divergence.{field}" in str(info.value)
    with pytest.raises(JobSpecError, match="max_grad_norm"):
        parse_job_spec({"kind": "lora_train", "data": "d", "max_grad_norm": 0})


# ---------------------------------------------------------------- on the tiny model


@pytest.fixture(scope="module")
def trained_base(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(a fused tiny model trained to a low loss, its workdir with ``data/``)."""
    from oodatcaa.jobs.runner import run_job

    base = tmp_path_factory.mktemp("trained-base")
    write_tiny_dataset(base / "data")
    spec = {"kind": "lora_train", "model": str(tiny_model), "data": "data", "iters": 40, "learning_rate": 1e-3}
    trained = run_job(spec, workdir=base, run_dir=base / "t" / "run", artifacts_dir=base / "t" / "artifacts")
    assert trained.ok, trained.error
    fuse = {"kind": "fuse", "model": str(tiny_model), "adapter": str(base / "t" / "artifacts" / "adapters")}
    fused = run_job(fuse, workdir=base, run_dir=base / "f" / "run", artifacts_dir=base / "f" / "artifacts")
    assert fused.ok, fused.error
    return base / "f" / "artifacts" / "fused", base


def _train(trained_base: tuple[Path, Path], name: str, **fields: Any):
    from oodatcaa.jobs.runner import run_job

    model, base = trained_base
    spec = {"kind": "lora_train", "model": str(model), "data": "data", "iters": 30, "steps_per_report": 5,
            "steps_per_eval": 10, **fields}
    return run_job(spec, workdir=base, run_dir=base / name / "run", artifacts_dir=base / name / "artifacts")


@pytest.mark.slow
def test_a_rate_far_too_high_is_caught_at_the_first_report(trained_base):
    result = _train(trained_base, "high", learning_rate=0.3)
    assert not result.ok and result.failure is not None and result.failure.kind == FailureKind.DIVERGED
    details = result.failure.details
    assert details["reason"] == "loss_ratio" and details["iteration"] == 5
    # the reference is the larger of the first batch's loss and the step-0 validation loss
    assert details["reference_loss"] == pytest.approx(max(details["initial_loss"], details["first_val_loss"]), abs=1e-5)
    assert details["loss"] > 2 * details["reference_loss"]
    train = result.summary["train"]
    assert train["initial_loss"] == pytest.approx(details["initial_loss"])
    assert train["iterations_done"] == 5  # the loop stopped there
    # with the ratio check off, the run goes on and its validation loss ends far above where it started
    result = _train(trained_base, "high-noratio", learning_rate=0.3, divergence={"max_loss_ratio": None})
    assert not result.ok and result.failure.details["reason"] in ("val_increase", "uniform")
    assert result.failure.details["final_val_loss"] > result.failure.details["first_val_loss"] + 0.5


@pytest.mark.slow
def test_a_sane_rate_passes_and_records_the_initial_loss(trained_base):
    result = _train(trained_base, "sane", learning_rate=1e-4, max_grad_norm=1.0)
    assert result.ok, result.error
    train = result.summary["train"]
    assert train["initial_loss"] is not None and train["final_val_loss"] <= train["first_val_loss"]
    assert train["max_grad_norm"] == 1.0 and train["vocab_size"] == 384


def _update_norm(tiny_model: Path, data: Path, max_grad_norm: float | None) -> float:
    """The global norm of one plain-SGD update (learning rate 1) of the tiny model's LoRA weights."""
    import mlx.core as mx
    import mlx.optimizers as optim
    from mlx.utils import tree_flatten

    from oodatcaa.jobs import _training as T

    mx.random.seed(0)
    loaded = T.load_for_training(tiny_model)
    model = loaded.model
    T.setup_fine_tune(model, "lora", 2, 4, 2.0, 0.0)
    train, _valid, _test = T.load_splits(data, loaded.tokenizer, False)
    tokens, lengths, _ = T.make_batch(train, [0, 1, 2, 3], 512)
    before = {k: mx.array(v) for k, v in tree_flatten(model.trainable_parameters())}
    optimizer = optim.SGD(learning_rate=1.0)
    runner = T.StepRunner(model, optimizer, 1, False, max_grad_norm)
    runner.step((tokens, lengths), None, True)
    mx.eval(runner.state)
    after = dict(tree_flatten(model.trainable_parameters()))
    return math.sqrt(sum(float(mx.sum((after[k] - before[k]) ** 2).item()) for k in before))


def test_max_grad_norm_clips_the_update(tiny_model: Path, tmp_path: Path):
    data = write_tiny_dataset(tmp_path / "data")
    free = _update_norm(tiny_model, data, None)
    clipped = _update_norm(tiny_model, data, 1e-3)
    assert free > 1e-2 and clipped == pytest.approx(1e-3, rel=1e-2)

"""lora_train beyond the basics (resume, QLoRA/DoRA/full, schedules, best checkpoint, early stopping,
profiles, loss curve), memory_profile and the progress bar. Every job runs in a real child process on
the tiny model; no timing assertions."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest

from conftest import write_tiny_dataset
from job_hooks.sitecustomize import arm as arm_kill_after_checkpoint
from job_hooks.sitecustomize import disarm as disarm_kill_after_checkpoint
from oodatcaa.jobs.runner import JobResult, run_job

#: Resumed and uninterrupted loss curves must agree within this (nats/token). Measured: 0.0 on CPU
#: (bit-identical), see docs/jobs.md.
RESUME_TOLERANCE = 1e-6


def _run(spec: dict, base: Path, name: str, **kwargs) -> JobResult:
    return run_job(spec, workdir=base, run_dir=base / name / "run", artifacts_dir=base / name / "artifacts", **kwargs)


def _metrics(result: JobResult) -> list[dict]:
    return [json.loads(line) for line in (result.run_dir / "metrics.jsonl").read_text().splitlines()]


def _curve(result: JobResult, event: str, key: str) -> dict[int, float]:
    return {m["iteration"]: m[key] for m in _metrics(result) if m["event"] == event}


@pytest.fixture()
def data_dir(tmp_path: Path) -> Path:
    return write_tiny_dataset(tmp_path / "data")


# ---------------------------------------------------------------- resume


RESUME_SPEC = {
    "kind": "lora_train", "data": "data", "iters": 24, "batch_size": 4, "learning_rate": 1e-3,
    "steps_per_report": 3, "steps_per_eval": 4, "save_every": 5, "grad_accumulation_steps": 2,
    "lora": {"rank": 4, "alpha": 8, "dropout": 0.1}, "lr_schedule": {"name": "cosine_decay", "warmup": 2},
    "keep_best": True,
}


@pytest.mark.slow
def test_killed_run_resumes_with_the_same_loss_curve(tiny_model: Path, data_dir: Path, tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    spec = {**RESUME_SPEC, "model": str(tiny_model)}
    full = _run(spec, tmp_path, "full")
    assert full.ok, full.error

    # Killed (SIGKILL, no clean-up) right after the checkpoint of iteration 15 -- mid report window,
    # mid gradient accumulation (15 is odd), mid epoch (8 batches per epoch).
    arm_kill_after_checkpoint(monkeypatch, 15)
    killed = _run(spec, tmp_path, "resumed")
    assert not killed.ok and killed.returncode == -9
    disarm_kill_after_checkpoint(monkeypatch)
    assert (tmp_path / "resumed" / "artifacts" / "checkpoints" / "step-0000015" / "optimizer.safetensors").is_file()
    assert (tmp_path / "resumed" / "artifacts" / "checkpoints" / "step-0000015" / "grad_accum.safetensors").is_file()

    resumed = _run(spec, tmp_path, "resumed")  # resume: auto finds the checkpoint
    assert resumed.ok, resumed.error
    assert resumed.summary["train"]["resumed_at_iteration"] == 15
    assert full.summary["train"]["resumed_at_iteration"] == 0
    diffs = []
    for event, key in (("train", "train_loss"), ("val", "val_loss"), ("train", "learning_rate")):
        a, b = _curve(full, event, key), _curve(resumed, event, key)
        assert a.keys() == b.keys() and len(a) > 5
        diffs += [abs(a[i] - b[i]) for i in a]
    assert max(diffs) <= RESUME_TOLERANCE, max(diffs)
    for key in ("final_loss", "final_val_loss", "best_val_loss", "best_iteration", "trained_tokens", "first_loss"):
        assert resumed.summary["train"][key] == pytest.approx(full.summary["train"][key], abs=RESUME_TOLERANCE)
    restored = [m for m in _metrics(resumed) if m.get("restored")]
    assert restored and max(m["iteration"] for m in restored) <= 15
    for rel in ("adapters/adapters.safetensors", "adapters_last/adapters.safetensors"):
        a = (tmp_path / "full" / "artifacts" / rel).read_bytes()
        b = (tmp_path / "resumed" / "artifacts" / rel).read_bytes()
        assert a == b, rel


@pytest.mark.slow
def test_resume_rules(tiny_model: Path, data_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    spec = {"kind": "lora_train", "model": str(tiny_model), "data": "data", "iters": 6, "save_every": 2, "steps_per_report": 2}
    # resume: true without any checkpoint is an error
    result = _run({**spec, "resume": True}, tmp_path, "a")
    assert not result.ok and "no checkpoint" in (result.error or "")

    arm_kill_after_checkpoint(monkeypatch, 4)
    killed = _run(spec, tmp_path, "b")
    assert not killed.ok and killed.returncode == -9
    disarm_kill_after_checkpoint(monkeypatch)
    # another set-up: explicit resume refuses and names what differs; auto starts over
    result = _run({**spec, "resume": True, "learning_rate": 1e-3}, tmp_path, "b")
    assert not result.ok and "learning_rate differ" in (result.error or "")
    # resume_from another run's artifacts dir; with auto a checkpoint that does not fit is ignored
    other = str(tmp_path / "b" / "artifacts")
    result = _run({**spec, "resume_from": other, "batch_size": 2}, tmp_path, "d")
    assert result.ok and result.summary["train"]["resumed_at_iteration"] == 0
    result = _run({**spec, "resume_from": other, "batch_size": 2, "resume": True}, tmp_path, "e")
    assert not result.ok and "batch_size differ" in (result.error or "")
    result = _run({**spec, "resume_from": other}, tmp_path, "c")
    assert result.ok, result.error
    assert result.summary["train"]["resumed_at_iteration"] == 4
    result = _run({**spec, "learning_rate": 1e-3}, tmp_path, "b")
    assert result.ok and result.summary["train"]["resumed_at_iteration"] == 0
    # a completed run is not resumed by auto, and refused by resume: true
    assert _run(spec, tmp_path, "b").summary["train"]["resumed_at_iteration"] == 0
    result = _run({**spec, "resume": True}, tmp_path, "b")
    assert not result.ok and "already completed" in (result.error or "")


# ---------------------------------------------------------------- fine-tune types, QLoRA, schedules


@pytest.mark.slow
def test_qlora_on_a_base_quantized_by_the_job(tiny_model: Path, data_dir: Path, tmp_path: Path) -> None:
    spec = {"kind": "lora_train", "model": str(tiny_model), "data": "data", "iters": 8, "learning_rate": 1e-3,
            "quantize": 4, "quantize_group_size": 64, "steps_per_report": 4}
    result = _run(spec, tmp_path, "q")
    assert result.ok, result.error
    train = result.summary["train"]
    assert train["quantize_bits"] == 4 and train["fine_tune_type"] == "lora"
    assert train["final_val_loss"] < train["first_val_loss"]
    adapters = tmp_path / "q" / "artifacts" / "adapters"
    config = json.loads((adapters / "adapter_config.json").read_text())
    assert config["base_quantization"] == {"bits": 4, "group_size": 64, "mode": "affine"}
    # the adapter is applied to a base quantized the same way (inference_bench, evaluate, fuse)
    bench = _run({"kind": "inference_bench", "model": str(tiny_model), "adapter": str(adapters), "max_tokens": 4,
                  "prompts": ["Say hello."], "warmup": False}, tmp_path, "bench")
    assert bench.ok, bench.error


@pytest.mark.slow
def test_dora_and_full_fine_tuning(tiny_model: Path, data_dir: Path, tmp_path: Path) -> None:
    base = {"kind": "lora_train", "model": str(tiny_model), "data": "data", "iters": 6, "steps_per_report": 3}
    dora = _run({**base, "fine_tune_type": "dora", "learning_rate": 1e-3}, tmp_path, "dora")
    full = _run({**base, "fine_tune_type": "full", "learning_rate": 1e-4, "num_layers": 1}, tmp_path, "full")
    lora = _run({**base, "learning_rate": 1e-3}, tmp_path, "lora")
    for result in (dora, full, lora):
        assert result.ok, result.error
        assert result.summary["train"]["final_val_loss"] < result.summary["train"]["first_val_loss"]
    assert dora.summary["train"]["trainable_parameters"] > lora.summary["train"]["trainable_parameters"]  # + magnitudes
    assert full.summary["train"]["trainable_parameters"] > 4 * lora.summary["train"]["trainable_parameters"]  # 1 whole block
    for name in ("dora", "full"):
        config = json.loads((tmp_path / name / "artifacts" / "adapters" / "adapter_config.json").read_text())
        assert config["fine_tune_type"] == name
        bench = _run({"kind": "inference_bench", "model": str(tiny_model), "max_tokens": 4, "warmup": False,
                      "adapter": str(tmp_path / name / "artifacts" / "adapters"), "prompts": ["Say hello."]},
                     tmp_path, f"b-{name}")
        assert bench.ok, bench.error


@pytest.mark.slow  # seconds of real MLX / agent work: `make test` runs it
def test_warmup_schedule_and_epochs_from_profile(tiny_model: Path, data_dir: Path, tmp_path: Path) -> None:
    # 32 train records, batch 4 -> 8 batches per epoch; profile balanced = 1 epoch, rank 16, alpha 16
    spec = {"kind": "lora_train", "model": str(tiny_model), "data": "data", "profile": "balanced", "steps_per_report": 1,
            "learning_rate": 1e-3, "lr_schedule": {"name": "linear_schedule", "warmup": 2, "end_lr": 1e-4}}
    result = _run(spec, tmp_path, "sched")
    assert result.ok, result.error
    train = result.summary["train"]
    assert (train["iters"], train["epochs"], train["rank"], train["alpha"], train["profile"]) == (8, 1.0, 16, 16.0, "balanced")
    lrs = _curve(result, "train", "learning_rate")
    # the rate each update used: warm-up 0 -> 5e-4 -> 1e-3 (mlx-lm holds the peak one more update),
    # then linear decay to end_lr at the last update
    assert lrs[1] == 0.0 and lrs[2] == pytest.approx(5e-4, rel=1e-5)
    assert lrs[3] == pytest.approx(1e-3, rel=1e-5) and lrs[4] == pytest.approx(1e-3, rel=1e-5)
    assert all(lrs[i + 1] < lrs[i] for i in range(4, 8))
    assert lrs[8] == pytest.approx(1e-4, rel=1e-4)
    assert train["final_learning_rate"] == pytest.approx(1e-4, rel=1e-4)
    config = json.loads((result.run_dir / "config.json").read_text())
    assert config["resolved"]["iters"] == 8 and config["resolved"]["profile"] == "balanced"
    assert config["spec"]["lr_schedule"]["name"] == "linear_schedule"


@pytest.mark.slow
def test_early_stopping_keeps_the_best_weights(tiny_model: Path, data_dir: Path, tmp_path: Path) -> None:
    # A learning rate this high overshoots after a few steps: validation loss stops improving.
    spec = {"kind": "lora_train", "model": str(tiny_model), "data": "data", "iters": 60, "learning_rate": 3e-2,
            "steps_per_eval": 2, "steps_per_report": 2, "keep_best": True,
            "early_stopping": {"patience": 2, "min_delta": 0.0}}
    result = _run(spec, tmp_path, "es")
    assert result.ok, result.error
    train = result.summary["train"]
    assert train["stopped_early"] == 1 and train["iterations_done"] < 60
    vals = _curve(result, "val", "val_loss")
    assert train["best_val_loss"] == min(vals.values()) and vals[train["best_iteration"]] == train["best_val_loss"]
    assert train["iterations_done"] - train["best_iteration"] == 2 * 2  # patience x steps_per_eval
    assert train["adapters_selected"] == "best"
    art = tmp_path / "es" / "artifacts"
    assert (art / "adapters_last" / "adapter_config.json").is_file()
    best = (art / "checkpoints" / "best" / "adapters.safetensors").read_bytes()
    assert (art / "adapters" / "adapters.safetensors").read_bytes() == best
    events = [m["event"] for m in _metrics(result)]
    assert "early_stop" in events
    # the best adapters really have the best validation loss
    ev = _run({"kind": "evaluate", "model": str(tiny_model), "data": "data", "split": "valid", "adapter": str(art / "adapters"),
               "compare_base": False, "num_prompts": 0}, tmp_path, "ev")
    assert ev.ok, ev.error
    assert ev.summary["eval"]["loss"] == pytest.approx(train["best_val_loss"], abs=1e-5)


@pytest.mark.slow  # seconds of real MLX / agent work: `make test` runs it
def test_loss_curve_png_and_metrics_fields(tiny_model: Path, data_dir: Path, tmp_path: Path) -> None:
    result = _run({"kind": "lora_train", "model": str(tiny_model), "data": "data", "iters": 6, "steps_per_report": 2},
                  tmp_path, "png")
    assert result.ok, result.error
    png = result.run_dir / "loss_curve.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size < 100_000
    assert result.summary["train"]["loss_curve_png"] == 1
    start = next(m for m in _metrics(result) if m["event"] == "start")
    assert start["total_iterations"] == 6 and start["start_iteration"] == 0
    for m in _metrics(result):
        if m["event"] == "train":
            assert {"iteration", "train_loss", "learning_rate", "tokens_per_second", "peak_memory_gb"} <= set(m)


@pytest.mark.slow
def test_already_quantized_base_with_quantize_fails(tiny_model: Path, data_dir: Path, tmp_path: Path) -> None:
    quantized = _run({"kind": "quantize", "model": str(tiny_model)}, tmp_path, "qm")
    assert quantized.ok, quantized.error
    qdir = tmp_path / "qm" / "artifacts" / "quantized"
    result = _run({"kind": "lora_train", "model": str(qdir), "data": "data", "iters": 2, "quantize": 4}, tmp_path, "x")
    assert not result.ok and "already quantized" in (result.error or "")
    # LoRA on the quantized base is QLoRA without `quantize`
    result = _run({"kind": "lora_train", "model": str(qdir), "data": "data", "iters": 2}, tmp_path, "y")
    assert result.ok, result.error
    assert result.summary["train"]["quantize_bits"] == 4


# ---------------------------------------------------------------- memory_profile


@pytest.mark.slow  # seconds of real MLX / agent work: `make test` runs it
def test_memory_profile(tiny_model: Path, data_dir: Path, tmp_path: Path) -> None:
    spec = {"kind": "memory_profile", "model": str(tiny_model), "data": "data", "steps": 2, "target_gb": 0.001,
            "batch_size": 4, "grad_accumulation_steps": 2, "grad_checkpoint": True, "max_tokens": 8}
    result = _run(spec, tmp_path, "mem")
    assert result.ok, result.error
    mem = result.summary["memory"]
    assert mem["inference_peak_gb"] > 0 and mem["train_peak_gb"] > 0
    assert mem["peak_memory_gb"] == max(mem["inference_peak_gb"], mem["train_peak_gb"])
    assert mem["target_gb"] == 0.001
    assert mem["headroom_gb"] == pytest.approx(0.001 - mem["peak_memory_gb"], abs=1e-6) and mem["within_target"] == 0
    assert mem["max_rss_gb"] > mem["peak_memory_gb"]
    assert mem["rss_minus_mlx_gb"] == pytest.approx(mem["max_rss_gb"] - mem["peak_memory_gb"], abs=1e-5)
    assert (mem["grad_checkpoint"], mem["batch_size"], mem["grad_accumulation_steps"], mem["steps"]) == (1, 4, 2, 2)
    assert result.max_rss_gb is not None and result.max_rss_gb >= mem["max_rss_gb"] * 0.99

    synthetic = _run({"kind": "memory_profile", "model": str(tiny_model), "max_seq_length": 64, "batch_size": 2},
                     tmp_path, "mem2")
    assert synthetic.ok, synthetic.error
    assert synthetic.summary["memory"]["data"] == "synthetic"
    assert synthetic.summary["memory"]["tokens_per_step"] == 2 * 63  # every position but the first is a target
    assert synthetic.summary["memory"]["headroom_gb"] is None


# ---------------------------------------------------------------- progress bar


def test_progress_bar_renders_steps_loss_and_eta() -> None:
    from rich.console import Console

    from oodatcaa.jobs.progress import JobProgress

    out = io.StringIO()
    with JobProgress("lora_train", console=Console(file=out, force_terminal=True, width=200)) as bar:
        bar({"event": "start", "total_iterations": 20, "start_iteration": 0})
        bar({"event": "val", "iteration": 0, "val_loss": 6.5})
        for it in (10, 20):
            bar({"event": "train", "iteration": it, "train_loss": 1.2345, "tokens_per_second": 1234.5})
        bar({"event": "something else"})
    text = out.getvalue()
    assert "20/20" in text and "loss 1.234" in text and "1,234 tok/s" in text and "val 6.500" in text and "ETA" in text


def test_run_job_with_progress_bar(tiny_model: Path, data_dir: Path, tmp_path: Path) -> None:
    seen: list[dict] = []
    result = _run({"kind": "lora_train", "model": str(tiny_model), "data": "data", "iters": 4, "steps_per_report": 2},
                  tmp_path, "bar", progress=True, on_progress=seen.append)
    assert result.ok, result.error
    assert [m["event"] for m in seen] == [m["event"] for m in _metrics(result)]

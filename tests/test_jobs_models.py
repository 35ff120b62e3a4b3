"""evaluate, quantize and fuse jobs on the tiny model and a trained tiny adapter (real child processes)."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest

from oodatcaa.jobs.registry import key_metrics
from oodatcaa.jobs.runner import JobResult, run_job


def _run(spec: dict, base: Path, name: str) -> JobResult:
    return run_job(spec, workdir=base, run_dir=base / name / "run", artifacts_dir=base / name / "artifacts")


# ---------------------------------------------------------------- evaluate


@pytest.mark.slow  # seconds of MLX work each: `make test` runs it, `make test-fast` skips it
def test_evaluate_base_vs_adapted(tiny_model: Path, tiny_adapter: Path, tmp_path: Path) -> None:
    data = tiny_adapter.parent.parent / "data"
    spec = {"kind": "evaluate", "model": str(tiny_model), "data": str(data), "adapter": str(tiny_adapter), "max_tokens": 16}
    result = _run(spec, tmp_path, "ev")
    assert result.ok, result.error
    ev = result.summary["eval"]
    assert ev["split"] == "test" and ev["examples"] == 8 and ev["adapter"] == 1 and ev["prompts"] == 3
    assert ev["perplexity"] == pytest.approx(math.exp(ev["loss"]), rel=1e-9)
    assert ev["base_perplexity"] == pytest.approx(math.exp(ev["base_loss"]), rel=1e-9)
    assert ev["loss"] < ev["base_loss"] and ev["loss_delta"] == pytest.approx(ev["loss"] - ev["base_loss"])
    assert ev["tokens"] > 0 and ev["batches"] == 2
    # MLX's peak over the phases (GB = 1e9 bytes): at least the resident weights, far below a real model
    assert isinstance(ev["peak_memory_gb"], float) and 0 < ev["peak_memory_gb"] < 1
    assert key_metrics(result.summary)["eval.peak_memory_gb"] == round(ev["peak_memory_gb"], 4)  # on the story
    outputs = json.loads((result.run_dir / "outputs.json").read_text())
    assert outputs["split"] == "test" and len(outputs["outputs"]) == 3
    for row in outputs["outputs"]:
        assert set(row) == {"prompt", "base", "adapted"}
    assert outputs["outputs"][0]["prompt"] == "What color is the sky?"  # the split's first user turn
    config = json.loads((result.run_dir / "config.json").read_text())
    assert "test.jsonl" in config["dataset"]

    # the base alone, on fixed prompts, loss on the answers only
    base = _run({"kind": "evaluate", "model": str(tiny_model), "data": str(data), "split": "valid", "prompts": ["Say hello."],
                 "max_tokens": 4, "mask_prompt": True, "max_batches": 1}, tmp_path, "base")
    assert base.ok, base.error
    assert base.summary["eval"]["adapter"] == 0 and base.summary["eval"]["base_loss"] == base.summary["eval"]["loss"]
    assert base.summary["eval"]["batches"] == 1 and base.summary["eval"]["tokens"] < ev["tokens"]
    assert isinstance(base.summary["eval"]["peak_memory_gb"], float) and base.summary["eval"]["peak_memory_gb"] > 0
    assert json.loads((base.run_dir / "outputs.json").read_text())["outputs"][0].keys() == {"prompt", "base"}


def test_evaluate_missing_split(tiny_model: Path, tmp_path: Path) -> None:
    (tmp_path / "d").mkdir()
    result = _run({"kind": "evaluate", "model": str(tiny_model), "data": "d"}, tmp_path, "x")
    assert not result.ok and "has no test.jsonl" in (result.error or "")


# ---------------------------------------------------------------- quantize


@pytest.mark.slow  # seconds of MLX work each: `make test` runs it, `make test-fast` skips it
def test_quantize(tiny_model: Path, tmp_path: Path) -> None:
    result = _run({"kind": "quantize", "model": str(tiny_model), "bits": 8, "group_size": 32}, tmp_path, "q")
    assert result.ok, result.error
    q = result.summary["quantize"]
    assert (q["bits"], q["group_size"]) == (8, 32)
    assert 8 < q["bits_per_weight"] < 16 and q["compression_ratio"] > 2
    assert q["size_gb_after"] < q["size_gb_before"]
    assert 0.9 <= q["top1_agreement"] <= 1.0  # 8 bits barely changes the predictions
    out = tmp_path / "q" / "artifacts" / "quantized"
    config = json.loads((out / "config.json").read_text())
    assert config["quantization"]["bits"] == 8 and config["quantization"]["group_size"] == 32
    check = _run({"kind": "model_check", "model": str(out)}, tmp_path, "check")
    assert check.ok and check.summary["model"]["quantization"] == "affine 8-bit group 32"
    again = _run({"kind": "quantize", "model": str(out)}, tmp_path, "again")
    assert not again.ok and "already quantized" in (again.error or "")


# ---------------------------------------------------------------- fuse


@pytest.mark.slow  # seconds of MLX work each: `make test` runs it, `make test-fast` skips it
def test_fuse_with_gguf_export(tiny_model: Path, tiny_adapter: Path, tmp_path: Path) -> None:
    result = _run({"kind": "fuse", "model": str(tiny_model), "adapter": str(tiny_adapter), "export_gguf": True}, tmp_path, "f")
    assert result.ok, result.error
    fuse = result.summary["fuse"]
    assert fuse["fused_modules"] == 14 and fuse["gguf"] == 1 and fuse["gguf_size_gb"] > 0
    assert fuse["max_abs_logit_diff"] < 1e-3 and fuse["top1_agreement"] == 1.0
    out = tmp_path / "f" / "artifacts" / "fused"
    assert (out / "ggml-model-f16.gguf").read_bytes()[:4] == b"GGUF"
    assert "fused/ggml-model-f16.gguf" in result.artifacts
    # the fused model generates what base + adapter generates
    prompts = ["What color is the sky?"]
    fused = _run({"kind": "inference_bench", "model": str(out), "prompts": prompts, "max_tokens": 8, "warmup": False},
                 tmp_path, "b1")
    adapted = _run({"kind": "inference_bench", "model": str(tiny_model), "adapter": str(tiny_adapter), "prompts": prompts,
                    "max_tokens": 8, "warmup": False}, tmp_path, "b2")
    assert fused.ok and adapted.ok
    texts = [json.loads((r.run_dir / "outputs.json").read_text())["outputs"][0]["output"] for r in (fused, adapted)]
    assert texts[0] == texts[1]


def test_fuse_gguf_unsupported_architecture_fails_before_any_work(tiny_model: Path, tiny_adapter: Path, tmp_path: Path) -> None:
    other = tmp_path / "other-model"
    shutil.copytree(tiny_model, other)
    config = json.loads((other / "config.json").read_text())
    config["model_type"] = "qwen2"
    (other / "config.json").write_text(json.dumps(config))
    result = _run({"kind": "fuse", "model": str(other), "adapter": str(tiny_adapter), "export_gguf": True}, tmp_path, "f")
    assert not result.ok
    assert "only for model types llama, mistral, mixtral" in (result.error or "") and "'qwen2'" in (result.error or "")
    assert not (tmp_path / "f" / "artifacts" / "fused").exists() and result.artifacts == {}
    missing = _run({"kind": "fuse", "model": str(tiny_model), "adapter": "nowhere"}, tmp_path, "g")
    assert not missing.ok and "adapter path does not exist" in (missing.error or "")

"""Job kind ``quantize``: quantize a model with ``mlx_lm.convert.convert`` (job process only).

Writes ``artifacts_dir/quantized`` (replaced when it exists): affine quantization to ``bits`` bits with
``group_size`` weights per scale/bias pair (layers whose input size is not a multiple of the group
size stay in float, mlx-lm's rule). Then compares the quantized model with the original on a fixed
text: the share of positions where both predict the same next token, and the mean absolute logit
difference.

Summary namespace ``quantize``: ``bits``, ``group_size``, ``bits_per_weight`` (stored bits / parameters,
``mlx_lm.utils.compute_bits_per_weight``), ``size_gb_before`` / ``size_gb_after`` (safetensors bytes / 1e9),
``compression_ratio`` (before / after), ``top1_agreement`` (0..1), ``mean_abs_logit_diff``, ``output``,
``seconds``.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Any

from oodatcaa.jobs._common import JobContext, JobFailure
from oodatcaa.jobs._mlx import real_item
from oodatcaa.jobs.spec import QuantizeJob

#: The text whose next-token predictions are compared before and after quantization / fusing.
REFERENCE_TEXT = (
    "The quick brown fox jumps over the lazy dog. Paris is the capital of France, and the sky is blue. "
    "A language model predicts the next token given the previous tokens."
)


def safetensors_gb(directory: Path) -> float:
    """Total size of ``*.safetensors`` in ``directory`` in GB (1e9 bytes)."""
    return sum(p.stat().st_size for p in directory.glob("*.safetensors")) / 1e9


def reference_logits(model: Any, tokenizer: Any) -> Any:
    """Float32 logits of ``model`` on :data:`REFERENCE_TEXT` (shape [tokens, vocab])."""
    import mlx.core as mx

    ids = tokenizer.encode(REFERENCE_TEXT)[:128]
    logits = model(mx.array([ids]))[0].astype(mx.float32)
    mx.eval(logits)
    return logits


def compare_logits(a: Any, b: Any) -> dict[str, float]:
    """``top1_agreement`` (share of equal argmax) and ``mean_abs_logit_diff`` / ``max_abs_logit_diff``."""
    import mlx.core as mx

    diff = mx.abs(a - b)
    return {
        "top1_agreement": float(real_item(mx.mean(mx.argmax(a, axis=-1) == mx.argmax(b, axis=-1)))),
        "mean_abs_logit_diff": float(real_item(mx.mean(diff))),
        "max_abs_logit_diff": float(real_item(mx.max(diff))),
    }


def run(spec: QuantizeJob, ctx: JobContext) -> dict[str, dict[str, Any]]:
    """Run a ``quantize`` job; returns ``{"quantize": {...}}`` (see the module docstring).

    Raises:
        JobFailure: the model is already quantized, or mlx-lm fails to convert it.
    """
    import json

    model_path = ctx.resolve_model(spec.model)
    config = json.loads((model_path / "config.json").read_text(encoding="utf-8"))
    from oodatcaa.jobs.model_check import describe_quantization

    if describe_quantization(config) != "none":
        raise JobFailure(f"model {model_path} is already quantized ({describe_quantization(config)}); quantize a float model")
    out = ctx.artifacts_dir / "quantized"
    ctx.config_extra.update({"model_path": str(model_path), "output": str(out)})

    from mlx_lm.convert import convert
    from mlx_lm.utils import compute_bits_per_weight

    from oodatcaa.jobs.model_check import load_model

    if out.exists():
        shutil.rmtree(out)
    start = time.perf_counter()
    try:
        convert(str(model_path), mlx_path=str(out), quantize=True, q_group_size=spec.group_size, q_bits=spec.bits)
    except Exception as exc:  # noqa: BLE001 - surface mlx-lm's error
        raise JobFailure(f"mlx-lm could not quantize {model_path}: {type(exc).__name__}: {exc}") from exc
    seconds = time.perf_counter() - start
    original, tokenizer, _c, _s = load_model(str(model_path))
    before_logits = reference_logits(original, tokenizer)
    del original
    quantized, _t, _qc, _s = load_model(str(out))
    quality = compare_logits(before_logits, reference_logits(quantized, tokenizer))
    before, after = safetensors_gb(model_path), safetensors_gb(out)
    summary = {
        "bits": spec.bits,
        "group_size": spec.group_size,
        "bits_per_weight": round(float(compute_bits_per_weight(quantized)), 4),
        "size_gb_before": round(before, 6),
        "size_gb_after": round(after, 6),
        "compression_ratio": round(before / after, 4) if after > 0 else None,
        "top1_agreement": round(quality["top1_agreement"], 4),
        "mean_abs_logit_diff": quality["mean_abs_logit_diff"],
        "output": str(out),
        "seconds": round(seconds, 4),
    }
    ctx.log(f"quantized to {spec.bits} bits (group {spec.group_size}): {before:.4f} GB -> {after:.4f} GB, "
            f"top-1 agreement {quality['top1_agreement']:.3f}")
    return {"quantize": summary}

"""Job kind ``fuse``: fuse an adapter into its base model; optionally export GGUF (job process only).

As ``mlx_lm.fuse``: loads the base with the adapter (a QLoRA adapter trained with ``quantize:`` gets
its base quantized the same way), replaces every LoRA/DoRA layer by its ``fuse()`` result
(W + scale * B^T A^T, re-quantized on a quantized base unless ``dequantize``), and saves the model
with ``mlx_lm.utils.save`` into ``artifacts_dir/fused`` (replaced when it exists). A ``full``
fine-tuning adapter holds whole layers: they are loaded and saved as they are.

``export_gguf`` also writes ``artifacts_dir/fused/<gguf_name>`` (float16) with
``mlx_lm.gguf.convert_to_gguf``, which supports the ``llama``, ``mistral`` and ``mixtral`` model types
and float weights only; both are checked *before* anything is loaded or written.

The fused model's logits on a fixed text are compared with the adapted (unfused) model's:
``max_abs_logit_diff`` should be at float rounding level for a float base.

Summary namespace ``fuse``: ``fused_modules``, ``fine_tune_type``, ``dequantized`` (1/0), ``quantization``,
``size_gb`` (safetensors bytes / 1e9), ``gguf`` (1/0), ``gguf_size_gb``, ``max_abs_logit_diff``,
``top1_agreement``, ``output``, ``seconds``.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Any

from oodatcaa.jobs._common import JobContext, JobFailure
from oodatcaa.jobs.spec import FuseJob

#: Model types ``mlx_lm.gguf.convert_to_gguf`` supports (``mlx_lm.fuse`` checks the same list).
GGUF_MODEL_TYPES = ("llama", "mistral", "mixtral")


def _read_json(path: Path, what: str) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise JobFailure(f"cannot read {what} {path}: {exc}") from None
    if not isinstance(data, dict):
        raise JobFailure(f"{what} {path} is not a JSON object")
    return data


def check_gguf_export(model_config: dict[str, Any], adapter_config: dict[str, Any], dequantize: bool) -> None:
    """Raise before any work when the GGUF export cannot succeed.

    Raises:
        JobFailure: unsupported ``model_type``, or quantized weights without ``dequantize: true``.
    """
    model_type = model_config.get("model_type")
    if model_type not in GGUF_MODEL_TYPES:
        raise JobFailure(
            f"export_gguf: mlx-lm exports GGUF only for model types {', '.join(GGUF_MODEL_TYPES)}; this model is "
            f"{model_type!r}. Nothing was written; remove export_gguf (the fused MLX model still works)"
        )
    quantized = bool(model_config.get("quantization") or model_config.get("quantization_config")
                     or adapter_config.get("base_quantization"))
    if quantized and not dequantize:
        raise JobFailure("export_gguf: mlx-lm exports GGUF from float weights only and this base is quantized; "
                         "set dequantize: true. Nothing was written")


def run(spec: FuseJob, ctx: JobContext) -> dict[str, dict[str, Any]]:
    """Run a ``fuse`` job; returns ``{"fuse": {...}}`` (see the module docstring).

    Raises:
        JobFailure: missing adapter, unsupported GGUF export (before any work), or a load/save error.
    """
    model_path = ctx.resolve_model(spec.model)
    adapter = ctx.resolve_adapter(spec.adapter)
    assert adapter is not None  # required by the spec
    model_config = _read_json(model_path / "config.json", "model config")
    adapter_cfg = _read_json(adapter / "adapter_config.json", "adapter config")
    if spec.export_gguf:
        check_gguf_export(model_config, adapter_cfg, spec.dequantize)
    out = ctx.artifacts_dir / "fused"
    ctx.config_extra.update({"model_path": str(model_path), "adapter_path": str(adapter), "output": str(out)})

    from mlx.utils import tree_flatten, tree_unflatten
    from mlx_lm.utils import dequantize_model, save

    from oodatcaa.jobs.model_check import describe_quantization, load_model
    from oodatcaa.jobs.quantize import compare_logits, reference_logits, safetensors_gb

    start = time.perf_counter()
    model, tokenizer, config, load_seconds = load_model(str(model_path), str(adapter))
    adapted = reference_logits(model, tokenizer)
    fused = [(name, module.fuse(dequantize=spec.dequantize)) for name, module in model.named_modules() if hasattr(module, "fuse")]
    if fused:
        model.update_modules(tree_unflatten(fused))
    if spec.dequantize:
        model = dequantize_model(model)
        config.pop("quantization", None)
        config.pop("quantization_config", None)
    quality = compare_logits(adapted, reference_logits(model, tokenizer))
    if out.exists():
        shutil.rmtree(out)
    try:
        save(out, str(model_path), model, tokenizer, config, donate_model=False)
    except Exception as exc:  # noqa: BLE001
        raise JobFailure(f"could not save the fused model to {out}: {type(exc).__name__}: {exc}") from exc
    gguf_path = None
    if spec.export_gguf:
        from mlx_lm.gguf import convert_to_gguf

        gguf_path = out / spec.gguf_name
        try:
            convert_to_gguf(out, dict(tree_flatten(model.parameters())), config, str(gguf_path))
        except Exception as exc:  # noqa: BLE001
            raise JobFailure(f"GGUF export failed: {type(exc).__name__}: {exc}") from exc
    seconds = time.perf_counter() - start
    summary = {
        "fused_modules": len(fused),
        "fine_tune_type": adapter_cfg.get("fine_tune_type", "lora"),
        "dequantized": int(spec.dequantize),
        "quantization": describe_quantization(config),
        "size_gb": round(safetensors_gb(out), 6),
        "gguf": int(gguf_path is not None),
        "gguf_size_gb": round(gguf_path.stat().st_size / 1e9, 6) if gguf_path is not None else None,
        "max_abs_logit_diff": quality["max_abs_logit_diff"],
        "top1_agreement": round(quality["top1_agreement"], 4),
        "output": str(out),
        "seconds": round(seconds, 4),
        "load_seconds": round(load_seconds, 4),
    }
    ctx.log(f"fused {len(fused)} modules into {out}" + (f"; GGUF {gguf_path.name}" if gguf_path else ""))
    return {"fuse": summary}

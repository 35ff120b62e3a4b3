"""Job kind ``model_check``: load a model with mlx-lm and report what it is (runs in the job process).

Summary namespace ``model``:

- ``parameters_total`` (count; quantized weights counted as unpacked values, as mlx-lm does),
  ``parameters_millions`` (= parameters_total / 1e6);
- ``dtype`` (most common floating dtype of the parameters by element count, e.g. ``"float32"``),
  ``quantization`` (``"none"`` or e.g. ``"affine 4-bit group 32"``);
- ``load_seconds`` (wall seconds for ``mlx_lm.load``);
- ``tokenizer_roundtrip`` (1 if decode(encode(text)) == text for a fixed ASCII sentence, else 0),
  ``chat_template`` (1 if the tokenizer has one, else 0), ``forward_ok`` (1 if one forward pass gives
  finite logits);
- ``device`` (``"cpu"``/``"gpu"``), ``blas`` (see :func:`oodatcaa.jobs.cpu_fastpath.describe_blas`),
  ``mlx_version``, ``mlx_lm_version``; plus ``model_type``, ``num_layers``, ``hidden_size``, ``vocab_size``.
"""

from __future__ import annotations

import time
from typing import Any

from oodatcaa.jobs._common import JobContext, JobFailure, device_name
from oodatcaa.jobs._mlx import flat_tree, load_with_config, parameter_count
from oodatcaa.jobs.spec import ModelCheckJob

ROUNDTRIP_TEXT = "Hello, world! The quick brown fox jumps over 13 lazy dogs."


def describe_quantization(config: dict[str, Any]) -> str:
    """``"none"`` or ``"<mode> <bits>-bit group <group_size>"`` from an mlx-lm config's ``quantization``."""
    q = config.get("quantization") or config.get("quantization_config")
    if not isinstance(q, dict) or "bits" not in q:
        return "none"
    return f"{q.get('mode', 'affine')} {q['bits']}-bit group {q.get('group_size', '?')}"


def main_dtype(model: Any) -> str:
    """Most common floating-point dtype among the model's parameters, weighted by element count."""
    counts: dict[str, int] = {}
    for _, value in flat_tree(model.parameters()):
        name = str(value.dtype).replace("mlx.core.", "")
        if "float" in name:
            counts[name] = counts.get(name, 0) + int(value.size)
    return max(counts, key=lambda k: counts[k]) if counts else "unknown"


def load_model(path: str, adapter_path: str | None = None) -> tuple[Any, Any, dict[str, Any], float]:
    """``mlx_lm.load`` with timing: (model, tokenizer, config, load_seconds).

    An adapter whose ``adapter_config.json`` has ``base_quantization`` (QLoRA trained by ``lora_train``
    with ``quantize:``) is applied to the base quantized the same way first (``mlx_lm.utils.quantize_model``),
    so the adapted model is the one that was trained; the returned config then carries the quantization.

    Raises:
        JobFailure: the model or the adapter does not load.
    """
    start = time.perf_counter()
    try:
        quant = _adapter_base_quantization(adapter_path)
        # quant is None whenever adapter_path is; testing both narrows adapter_path to str below
        if quant is None or adapter_path is None:
            model, tokenizer, config = load_with_config(path, adapter_path)
        else:
            from mlx_lm.tuner.utils import load_adapters
            from mlx_lm.utils import quantize_model

            model, tokenizer, config = load_with_config(path)
            if not (config.get("quantization") or config.get("quantization_config")):
                model, config = quantize_model(model, config, quant["group_size"], quant["bits"])
            load_adapters(model, adapter_path)
            model.eval()
    except Exception as exc:  # noqa: BLE001 - surface any loader error as a job failure
        what = f"with adapter {adapter_path}" if adapter_path else ""
        raise JobFailure(f"could not load model {path} {what}: {type(exc).__name__}: {exc}".replace("  ", " ")) from exc
    return model, tokenizer, config, time.perf_counter() - start


def _adapter_base_quantization(adapter_path: str | None) -> dict[str, Any] | None:
    if not adapter_path:
        return None
    import json
    from pathlib import Path

    try:
        config = json.loads((Path(adapter_path) / "adapter_config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None  # mlx-lm's loader reports the problem
    quant = config.get("base_quantization") if isinstance(config, dict) else None
    return quant if isinstance(quant, dict) and "bits" in quant else None


def run(spec: ModelCheckJob, ctx: JobContext) -> dict[str, dict[str, Any]]:
    """Run a ``model_check`` job; returns ``{"model": {...}}`` (see module docstring)."""
    model_path = ctx.resolve_model(spec.model)
    ctx.config_extra["model_path"] = str(model_path)

    import importlib.metadata

    import mlx.core as mx
    from mlx_lm.utils import get_total_parameters

    from oodatcaa.jobs.cpu_fastpath import describe_blas

    model, tokenizer, config, load_seconds = load_model(str(model_path))
    ctx.log(f"loaded {model_path} in {load_seconds:.2f} s")
    total = int(get_total_parameters(model))
    # as loaded: a fresh model is fully trainable (quantized weights are frozen by mlx);
    # lora_train reports the count of its adapter's trainable parameters
    trainable = parameter_count(model.trainable_parameters())

    ids = tokenizer.encode(ROUNDTRIP_TEXT, add_special_tokens=False)
    roundtrip = int(tokenizer.decode(ids) == ROUNDTRIP_TEXT)
    logits = model(mx.array([ids[:64] or [0]]))
    forward_ok = int(bool(mx.all(mx.isfinite(logits)).item()))

    blas = describe_blas()
    ctx.config_extra["blas"] = blas
    summary = {
        "parameters_total": total,
        "parameters_millions": round(total / 1e6, 4),
        "parameters_trainable": trainable,
        "dtype": main_dtype(model),
        "quantization": describe_quantization(config),
        "load_seconds": round(load_seconds, 4),
        "tokenizer_roundtrip": roundtrip,
        "chat_template": int(bool(getattr(tokenizer, "has_chat_template", False))),
        "forward_ok": forward_ok,
        "device": device_name(),
        "blas": blas,
        "mlx_version": importlib.metadata.version("mlx"),
        "mlx_lm_version": importlib.metadata.version("mlx-lm"),
        "model_type": config.get("model_type"),
        "num_layers": len(getattr(model, "layers", [])),
        "hidden_size": config.get("hidden_size"),
        "vocab_size": config.get("vocab_size"),
    }
    ctx.metric("model_check", **summary)
    return {"model": summary}

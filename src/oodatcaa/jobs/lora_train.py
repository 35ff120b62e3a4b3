"""Job kind ``lora_train``: LoRA fine-tuning through mlx-lm's Python API (job process only).

What it does, step by step (mirrors ``mlx_lm/lora.py``, which cannot take our callback through ``run``):

1. checks ``data`` (train.jsonl and valid.jsonl, one JSON object per line, all in the same mlx-lm
   format: ``{"messages": [...]}``, ``{"prompt", "completion"}`` or ``{"text"}``) and records their sha256;
2. seeds Python, numpy and ``mx.random`` with ``seed``; loads the model with ``mlx_lm.load``;
3. ``model.freeze()``, then ``linear_to_lora_layers(model, num_layers, {"rank", "scale", "dropout"})``
   with ``scale = alpha / rank`` (Hu et al. 2021); ``num_layers`` defaults to all layers capped at 16;
4. writes ``artifacts_dir/adapters/adapter_config.json`` in mlx-lm's format, so that
   ``mlx_lm.load(model, adapter_path=artifacts_dir/"adapters")`` works;
5. ``mx.reset_peak_memory()``, then ``mlx_lm.tuner.trainer.train`` (Adam, constant learning rate) with
   a callback that appends every report to ``metrics.jsonl``:
   ``{"event": "train", iteration, train_loss, learning_rate, tokens_per_second, iterations_per_second,
   trained_tokens, peak_memory_gb, window_seconds}`` and ``{"event": "val", iteration, val_loss,
   val_seconds}``. mlx-lm validates before step 1 (reported as iteration 0), every ``steps_per_eval``
   steps and before the last step; this job adds one validation after the last step (iteration = iters);
6. saves ``adapters.safetensors`` (LoRA weights only) next to the config.

Summary namespace ``train``: ``first_loss`` / ``final_loss`` (mean train loss over the first / last
report window), ``first_val_loss`` (before training) / ``final_val_loss`` (after the last step),
``tokens_per_second`` (trained tokens / train_seconds), ``iterations_per_second`` (iters /
train_seconds), ``train_seconds`` (time in training steps, validation excluded), ``wall_seconds``
(training including validation), ``peak_memory_gb`` (``mx.get_peak_memory()`` / 1e9 since after
loading), ``iters``, ``trained_tokens``, ``rank``, ``alpha``, ``scale``, ``batch_size``,
``grad_accumulation_steps``, ``grad_checkpoint`` (1/0), ``num_layers``, ``trainable_parameters``,
``learning_rate``, ``train_examples``, ``valid_examples``, ``load_seconds``.

The iterations/s that mlx-lm reports assumes every window has ``steps_per_report`` steps; the last
window may be shorter, so this job recomputes it from the window's real step count.
"""

from __future__ import annotations

import json
import math
import time
import types
from pathlib import Path
from typing import Any

from oodatcaa.jobs._common import JobContext, JobFailure, finite, seed_everything, sha256_file
from oodatcaa.jobs.model_check import load_model
from oodatcaa.jobs.spec import MAX_DEFAULT_LORA_LAYERS

def _record_format(record: dict[str, Any]) -> str | None:
    # Same precedence as mlx_lm.tuner.datasets.create_dataset.
    if "prompt" in record and "completion" in record:
        return "prompt/completion"
    if "messages" in record:
        return "messages"
    if "text" in record:
        return "text"
    return None


def check_jsonl(path: Path) -> int:
    """Validate an mlx-lm JSONL file; returns the number of records.

    Raises:
        JobFailure: unreadable file, a line that is not a JSON object, a record in no supported format,
            or records in mixed formats (mlx-lm picks the format from the first record), or no records.
    """
    expected: str | None = None
    count = 0
    try:
        with open(path, encoding="utf-8") as fh:
            for lineno, line in enumerate(fh, 1):
                if not line.strip():
                    raise JobFailure(f"{path.name} line {lineno} is empty (mlx-lm reads every line as JSON)")
                try:
                    record = json.loads(line)
                except ValueError as exc:
                    raise JobFailure(f"{path.name} line {lineno} is not valid JSON: {exc}") from None
                if not isinstance(record, dict):
                    raise JobFailure(f"{path.name} line {lineno} must be a JSON object")
                fmt = _record_format(record)
                if fmt is None:
                    raise JobFailure(
                        f"{path.name} line {lineno} has none of the mlx-lm keys "
                        '"messages", "prompt"+"completion" or "text"'
                    )
                if expected is None:
                    expected = fmt
                elif fmt != expected:
                    raise JobFailure(f"{path.name} line {lineno} is in the {fmt} format but line 1 is in the {expected} format")
                count += 1
    except OSError as exc:
        raise JobFailure(f"cannot read {path}: {exc}") from None
    if count == 0:
        raise JobFailure(f"{path.name} has no records")
    return count


def resolve_num_layers(requested: int | None, available: int) -> int:
    """LoRA layer count: None -> min(available, 16); -1 -> available; else requested (must be <= available)."""
    if requested is None:
        return min(available, MAX_DEFAULT_LORA_LAYERS)
    if requested == -1:
        return available
    if requested > available:
        raise JobFailure(f"num_layers={requested} but the model has only {available} layers; use at most {available} or -1 for all")
    return requested


def _make_reporter(ctx: JobContext, steps_per_report: int) -> Any:
    from mlx_lm.tuner.trainer import TrainingCallback

    class Reporter(TrainingCallback):
        """Writes mlx-lm's train/val reports to metrics.jsonl and keeps them for the summary."""

        def __init__(self) -> None:
            self.train: list[dict[str, Any]] = []
            self.val: list[dict[str, Any]] = []
            self.last_iteration = 0
            self.train_seconds = 0.0

        def on_train_loss_report(self, info: dict[str, Any]) -> None:
            iteration = int(info["iteration"])
            steps = iteration - self.last_iteration
            self.last_iteration = iteration
            reported_its = float(info["iterations_per_second"])
            # mlx-lm: iterations_per_second = steps_per_report / window_time (even for a short last window)
            window_s = steps_per_report / reported_its if reported_its > 0 else 0.0
            self.train_seconds += window_s
            record = {
                "iteration": iteration,
                "train_loss": float(info["train_loss"]),
                "learning_rate": float(info["learning_rate"]),
                "tokens_per_second": float(info["tokens_per_second"]),
                "iterations_per_second": steps / window_s if window_s > 0 else float("nan"),
                "trained_tokens": int(info["trained_tokens"]),
                "peak_memory_gb": float(info["peak_memory"]),
                "window_seconds": window_s,
            }
            self.train.append(record)
            ctx.metric("train", **record)

        def on_val_loss_report(self, info: dict[str, Any]) -> None:
            record = {
                "iteration": int(info["iteration"]),
                "val_loss": float(info["val_loss"]),
                "val_seconds": float(info.get("val_time", 0.0)),
            }
            self.val.append(record)
            ctx.metric("val", **record)

    return Reporter()


def run(spec: Any, ctx: JobContext) -> dict[str, dict[str, Any]]:
    """Run a ``lora_train`` job; returns ``{"train": {...}}`` (see module docstring)."""
    model_path = ctx.resolve_model(spec.model)
    data_dir = ctx.resolve(spec.data)
    if not data_dir.is_dir():
        raise JobFailure(f"data directory does not exist: {data_dir}")
    counts: dict[str, int] = {}
    dataset_info: dict[str, Any] = {"dir": str(data_dir)}
    for name in ("train.jsonl", "valid.jsonl"):
        path = data_dir / name
        if not path.is_file():
            raise JobFailure(f"data directory {data_dir} has no {name} (lora_train needs train.jsonl and valid.jsonl)")
        counts[name] = check_jsonl(path)
        dataset_info[name] = {"sha256": sha256_file(path), "records": counts[name]}
    ctx.config_extra.update({"model_path": str(model_path), "dataset": dataset_info})
    for name in ("train.jsonl", "valid.jsonl"):
        if counts[name] < spec.batch_size:
            raise JobFailure(f"{name} has {counts[name]} records, fewer than batch_size={spec.batch_size}")

    import mlx.core as mx
    import mlx.optimizers as optim
    from mlx.utils import tree_flatten
    from mlx_lm.tuner.datasets import CacheDataset, load_local_dataset
    from mlx_lm.tuner.trainer import TrainingArgs, evaluate, train
    from mlx_lm.tuner.utils import linear_to_lora_layers
    from mlx_lm.utils import save_config

    from oodatcaa.jobs.cpu_fastpath import describe_blas

    ctx.config_extra["blas"] = describe_blas()
    seed_everything(spec.seed)
    model, tokenizer, _config, load_seconds = load_model(str(model_path))
    ctx.log(f"loaded {model_path} in {load_seconds:.2f} s")

    try:
        train_set, valid_set, _test = load_local_dataset(
            data_dir, tokenizer, types.SimpleNamespace(mask_prompt=spec.mask_prompt)
        )
    except (ValueError, KeyError, TypeError) as exc:
        raise JobFailure(f"cannot load dataset {data_dir}: {type(exc).__name__}: {exc}") from exc

    layers = len(model.layers)
    num_layers = resolve_num_layers(spec.num_layers, layers)
    rank, alpha, dropout = spec.lora.rank, spec.lora.alpha, spec.lora.dropout
    scale = alpha / rank  # Hu et al. 2021: the LoRA update is scaled by alpha / r
    model.freeze()
    linear_to_lora_layers(model, num_layers, {"rank": rank, "scale": scale, "dropout": dropout})
    trainable = int(sum(v.size for _, v in tree_flatten(model.trainable_parameters())))
    ctx.log(f"LoRA rank {rank} alpha {alpha:g} (scale {scale:g}) on the last {num_layers}/{layers} layers: {trainable} trainable parameters")

    adapters_dir = ctx.artifacts_dir / "adapters"
    adapters_dir.mkdir(parents=True, exist_ok=True)
    adapter_file = adapters_dir / "adapters.safetensors"
    adapter_config = {
        "fine_tune_type": "lora",
        "num_layers": num_layers,
        "lora_parameters": {"rank": rank, "scale": scale, "dropout": dropout},
        "lora_alpha": alpha,
        "model": str(model_path),
        "data": str(data_dir),
        "adapter_path": str(adapters_dir),
        "optimizer": "adam",
        "iters": spec.iters,
        "batch_size": spec.batch_size,
        "learning_rate": spec.learning_rate,
        "max_seq_length": spec.max_seq_length,
        "grad_checkpoint": spec.grad_checkpoint,
        "grad_accumulation_steps": spec.grad_accumulation_steps,
        "steps_per_report": spec.steps_per_report,
        "steps_per_eval": spec.steps_per_eval,
        "val_batches": spec.val_batches,
        "mask_prompt": spec.mask_prompt,
        "seed": spec.seed,
    }
    save_config(dict(adapter_config), adapters_dir / "adapter_config.json")
    ctx.config_extra["lora"] = {"num_layers": num_layers, "scale": scale, "trainable_parameters": trainable}

    args = TrainingArgs(
        batch_size=spec.batch_size,
        iters=spec.iters,
        val_batches=spec.val_batches,
        steps_per_report=spec.steps_per_report,
        steps_per_eval=spec.steps_per_eval,
        steps_per_save=spec.iters + 1,  # only the final save: no intermediate checkpoint files
        max_seq_length=spec.max_seq_length,
        adapter_file=str(adapter_file),
        grad_checkpoint=spec.grad_checkpoint,
        grad_accumulation_steps=spec.grad_accumulation_steps,
    )
    optimizer = optim.Adam(learning_rate=spec.learning_rate)
    reporter = _make_reporter(ctx, spec.steps_per_report)
    train_data, valid_data = CacheDataset(train_set), CacheDataset(valid_set)

    mx.reset_peak_memory()
    start = time.perf_counter()
    train(
        model=model,
        optimizer=optimizer,
        train_dataset=train_data,
        val_dataset=valid_data,
        args=args,
        training_callback=reporter,
    )
    # mlx-lm's last validation runs before the last step; validate the final weights too.
    val_start = time.perf_counter()
    final_val = evaluate(
        model=model,
        dataset=valid_data,
        batch_size=spec.batch_size,
        num_batches=spec.val_batches,
        max_seq_length=spec.max_seq_length,
    )
    reporter.on_val_loss_report(
        {"iteration": spec.iters, "val_loss": final_val, "val_time": time.perf_counter() - val_start}
    )
    wall = time.perf_counter() - start
    peak_gb = mx.get_peak_memory() / 1e9
    if not adapter_file.is_file():
        raise JobFailure(f"training finished but wrote no adapter file at {adapter_file}")

    if not reporter.train:
        raise JobFailure("training produced no loss report")
    trained_tokens = reporter.train[-1]["trained_tokens"]
    train_seconds = reporter.train_seconds
    summary = {
        "first_loss": reporter.train[0]["train_loss"],
        "final_loss": reporter.train[-1]["train_loss"],
        "first_val_loss": reporter.val[0]["val_loss"] if reporter.val else None,
        "final_val_loss": reporter.val[-1]["val_loss"] if reporter.val else None,
        "tokens_per_second": trained_tokens / train_seconds if train_seconds > 0 else None,
        "iterations_per_second": spec.iters / train_seconds if train_seconds > 0 else None,
        "peak_memory_gb": round(peak_gb, 6),
        "iters": spec.iters,
        "trained_tokens": trained_tokens,
        "train_seconds": round(train_seconds, 4),
        "wall_seconds": round(wall, 4),
        "load_seconds": round(load_seconds, 4),
        "rank": rank,
        "alpha": alpha,
        "scale": scale,
        "dropout": dropout,
        "batch_size": spec.batch_size,
        "grad_accumulation_steps": spec.grad_accumulation_steps,
        "grad_checkpoint": int(spec.grad_checkpoint),
        "num_layers": num_layers,
        "trainable_parameters": trainable,
        "learning_rate": spec.learning_rate,
        "train_examples": counts["train.jsonl"],
        "valid_examples": counts["valid.jsonl"],
    }
    result = {"train": summary}
    for key in ("final_loss", "final_val_loss"):
        value = summary[key]
        if value is not None and not finite(value):
            raise JobFailure(f"training diverged: {key} is {value} (try a lower learning_rate)", summary=result)
    if summary["final_val_loss"] is not None and math.isfinite(summary["final_val_loss"]):
        ctx.log(f"final train loss {summary['final_loss']:.4f}, val loss {summary['final_val_loss']:.4f}")
    return result

"""Training building blocks shared by ``lora_train``, ``memory_profile`` and ``evaluate`` (job process only).

Built from mlx-lm pieces (``mlx_lm.tuner``): ``linear_to_lora_layers``, ``default_loss``,
``grad_checkpoint``, ``build_schedule``, ``load_local_dataset`` / ``CacheDataset`` and
``mlx_lm.utils.quantize_model``. What we add, and why we do not call ``mlx_lm.tuner.trainer.train``:

- a batch stream whose position (epoch, batch index) is part of a checkpoint: mlx-lm's
  ``iterate_batches`` draws its per-epoch permutation from numpy's global generator (which its own
  validation also consumes), so its position cannot be restored. Ours draws the permutation of
  epoch ``e`` from ``numpy.random.default_rng([seed, e])``; batches are formed exactly as mlx-lm forms
  them (sorted by length, consecutive groups of ``batch_size``, the remainder dropped, padded to
  1 + a multiple of 32 tokens, truncated to ``max_seq_length``);
- dropout randomness that depends only on (seed, step): ``mx.random.seed`` is re-seeded before every
  step, so a resumed run draws the same dropout masks as an uninterrupted one;
- the step function is mlx-lm's (value_and_grad of ``default_loss``, gradient accumulation, the
  same ``mx.compile`` state capture), so speed and numerics match ``trainer.train``;
- validation in a fixed order that includes the last partial batch (mlx-lm drops it and shuffles
  with the global generator), so validation losses are reproducible and cover every record.

mlx is imported inside the functions: this module is imported only in job processes.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import types
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

from oodatcaa.jobs._common import JobFailure, write_json
from oodatcaa.jobs._mlx import flat_tree, load_arrays, parameter_count, real_item

#: mlx-lm pads each batch to 1 + a multiple of this many tokens (``iterate_batches``).
PAD_TO = 32
#: Step directories kept under ``checkpoints/`` (older ones are deleted after a new one is written).
KEEP_CHECKPOINTS = 2
#: Checkpoint format version written to ``state.json``.
CHECKPOINT_FORMAT = 1


# ---------------------------------------------------------------- model set-up


@dataclass
class LoadedModel:
    """A model ready for fine-tuning or evaluation."""

    model: Any
    tokenizer: Any
    config: dict[str, Any]
    load_seconds: float
    #: ``{"bits", "group_size", "mode"}`` of the base, ``None`` for a float base.
    quantization: dict[str, Any] | None = None
    #: True when this job quantized the base (``quantize:`` in the spec), False when it came quantized.
    quantized_here: bool = False


def base_quantization(config: dict[str, Any]) -> dict[str, Any] | None:
    """The global ``{"bits", "group_size", "mode"}`` of an mlx-lm config's ``quantization``, or None."""
    q = config.get("quantization") or config.get("quantization_config")
    if not isinstance(q, dict) or "bits" not in q:
        return None
    return {"bits": int(q["bits"]), "group_size": int(q.get("group_size", 64)), "mode": q.get("mode", "affine")}


def quantize_in_place(model: Any, config: dict[str, Any], bits: int, group_size: int) -> dict[str, Any]:
    """Quantize ``model`` with ``mlx_lm.utils.quantize_model`` (affine); returns the new config.

    Layers whose input size is not a multiple of ``group_size`` stay in float (mlx-lm's rule).
    """
    from mlx_lm.utils import quantize_model

    _model, new_config = quantize_model(model, config, group_size, bits)
    return new_config


def load_for_training(model_path: Path, *, quantize: int | None = None, group_size: int = 64) -> LoadedModel:
    """Load ``model_path`` with mlx-lm; quantize it first when ``quantize`` bits are given (QLoRA).

    Raises:
        JobFailure: the model does not load, or ``quantize`` is given for an already quantized model.
    """
    from oodatcaa.jobs.model_check import describe_quantization, load_model

    model, tokenizer, config, load_seconds = load_model(str(model_path))
    existing = base_quantization(config)
    if quantize is not None:
        if existing is not None:
            raise JobFailure(
                f"model {model_path} is already quantized ({describe_quantization(config)}); remove quantize "
                "(LoRA on a quantized base is QLoRA already)"
            )
        config = quantize_in_place(model, config, quantize, group_size)
        return LoadedModel(model, tokenizer, config, load_seconds, base_quantization(config), True)
    return LoadedModel(model, tokenizer, config, load_seconds, existing, False)


def resolve_num_layers(requested: int | None, available: int, cap: int = 16) -> int:
    """Layer count: None -> min(available, cap); -1 -> available; else requested (must be <= available).

    Raises:
        JobFailure: ``requested`` is more than the model has.
    """
    if requested is None:
        return min(available, cap)
    if requested == -1:
        return available
    if requested > available:
        raise JobFailure(
            f"num_layers={requested} but the model has only {available} layers; use at most {available} or -1 for all"
        )
    return requested


def setup_fine_tune(model: Any, fine_tune_type: str, num_layers: int, rank: int, scale: float, dropout: float) -> int:
    """Freeze the model and make the last ``num_layers`` blocks trainable; returns the trainable parameter count.

    ``lora`` / ``dora``: ``mlx_lm.tuner.utils.linear_to_lora_layers`` (``use_dora`` for DoRA, Liu et al.
    2024) with ``{"rank", "scale", "dropout"}``; ``full``: those blocks are unfrozen (as ``mlx_lm.lora``).

    Raises:
        JobFailure: full fine-tuning of a quantized model (its packed weights cannot be trained).
    """
    import mlx.nn as nn
    from mlx_lm.tuner.utils import linear_to_lora_layers

    model.freeze()
    if fine_tune_type == "full":
        if any(isinstance(m, (nn.QuantizedLinear, nn.QuantizedEmbedding)) for _, m in model.named_modules()):
            raise JobFailure("fine_tune_type full cannot train a quantized model; use lora or dora (QLoRA)")
        for layer in model.layers[-max(num_layers, 0):]:
            layer.unfreeze()
    else:
        linear_to_lora_layers(
            model, num_layers, {"rank": rank, "scale": scale, "dropout": dropout}, use_dora=fine_tune_type == "dora"
        )
    return parameter_count(model.trainable_parameters())


def adapter_config(spec: Any, *, model_path: Path, data_dir: Path | None, adapters_dir: Path, num_layers: int,
                   quantization: dict[str, Any] | None, quantized_here: bool, iters: int) -> dict[str, Any]:
    """The ``adapter_config.json`` content: mlx-lm's keys (``mlx_lm.load(adapter_path=...)`` works) plus
    ``lora_alpha`` and, for QLoRA on a base this job quantized, ``base_quantization`` (our loader
    quantizes the base the same way before applying the adapter)."""
    lora = spec.lora
    config: dict[str, Any] = {
        "fine_tune_type": spec.fine_tune_type,
        "num_layers": num_layers,
        "lora_parameters": {"rank": lora.rank, "scale": lora.alpha / lora.rank, "dropout": lora.dropout},
        "lora_alpha": lora.alpha,
        "model": str(model_path),
        "data": str(data_dir) if data_dir else None,
        "adapter_path": str(adapters_dir),
        "optimizer": "adam",
        "iters": iters,
        "batch_size": spec.batch_size,
        "learning_rate": spec.learning_rate,
        "max_seq_length": spec.max_seq_length,
        "grad_checkpoint": spec.grad_checkpoint,
        "grad_accumulation_steps": spec.grad_accumulation_steps,
        "mask_prompt": spec.mask_prompt,
        "seed": spec.seed,
    }
    if getattr(spec, "lr_schedule", None) is not None:
        config["lr_schedule"] = spec.lr_schedule.model_dump(mode="json")
    if quantized_here and quantization is not None:
        config["base_quantization"] = dict(quantization)
    return config


def build_learning_rate(spec: Any, total_updates: int) -> Any:
    """A float (constant) or an mlx schedule from ``spec.lr_schedule`` via ``mlx_lm.tuner.utils.build_schedule``.

    Schedules count optimizer updates (``iters // grad_accumulation_steps``), not batches. Derived
    arguments: cosine_decay ``[lr, D, end_lr]``; linear_schedule ``[lr, end_lr, D]`` with
    D = max(1, updates - 1 - (warmup + 1 if warmup else 0)), so that the last update uses ``end_lr``
    (mlx-lm's warm-up holds the peak rate for one extra update: ``join_schedules`` at warmup + 1).
    """
    sched = getattr(spec, "lr_schedule", None)
    if sched is None:
        return spec.learning_rate
    from mlx_lm.tuner.utils import build_schedule

    # Update k (0-based) uses schedule(k); with warm-up, mlx-lm's join_schedules starts the main
    # schedule at k = warmup + 1. Derived decay steps make the last update use end_lr.
    steps = max(1, total_updates - 1 - (sched.warmup + 1 if sched.warmup else 0))
    if sched.arguments is not None:
        arguments = list(sched.arguments)
    elif sched.name == "cosine_decay":
        arguments = [spec.learning_rate, steps, sched.end_lr]
    else:  # linear_schedule (the others need explicit arguments, checked by the spec)
        arguments = [spec.learning_rate, sched.end_lr, steps]
    if sched.name in ("cosine_decay", "linear_schedule", "step_decay"):
        index = {"cosine_decay": 1, "linear_schedule": 2, "step_decay": 2}[sched.name]
        arguments[index] = int(arguments[index])
    config = {"name": sched.name, "arguments": arguments, "warmup": sched.warmup, "warmup_init": sched.warmup_init}
    return build_schedule(config)


# ---------------------------------------------------------------- data


def load_splits(data_dir: Path, tokenizer: Any, mask_prompt: bool) -> tuple[Any, Any, Any]:
    """(train, valid, test) mlx-lm datasets wrapped in ``CacheDataset`` (an absent file gives an empty list).

    Raises:
        JobFailure: mlx-lm cannot build the dataset (unsupported format, masking a text dataset, ...).
    """
    from mlx_lm.tuner.datasets import CacheDataset, load_local_dataset

    try:
        splits = load_local_dataset(data_dir, tokenizer, types.SimpleNamespace(mask_prompt=mask_prompt))
    except (ValueError, KeyError, TypeError) as exc:
        raise JobFailure(f"cannot load dataset {data_dir}: {type(exc).__name__}: {exc}") from exc
    return tuple(CacheDataset(s) if len(s) else s for s in splits)  # type: ignore[return-value]


def make_batch(dataset: Any, indices: list[int], max_seq_length: int) -> tuple[Any, Any, int]:
    """One padded batch as mlx-lm's ``iterate_batches`` builds it: ``(tokens [B, L], lengths [B, 2], truncated)``.

    ``lengths[i] = (offset, length)``: the loss covers target positions offset+1..length (prompt
    masking). L = min(1 + 32 * ceil(max length / 32), max_seq_length); longer sequences are truncated
    (``truncated`` counts them).
    """
    import mlx.core as mx
    import numpy as np

    items = [dataset[j] for j in indices]
    seqs: Sequence[Any]  # token id lists
    offsets: Sequence[int]  # where each sequence's loss starts (0 without prompt masking)
    if isinstance(items[0], tuple) and len(items[0]) == 2:
        seqs, offsets = zip(*items, strict=True)
    else:
        seqs, offsets = items, [0] * len(items)
    lengths = [len(x) for x in seqs]
    width = min(1 + PAD_TO * ((max(lengths) + PAD_TO - 1) // PAD_TO), max_seq_length)
    arr = np.zeros((len(seqs), width), np.int32)
    truncated = 0
    for j, seq in enumerate(seqs):
        n = min(lengths[j], max_seq_length)
        truncated += lengths[j] > max_seq_length
        arr[j, :n] = seq[:n]
        lengths[j] = n
    return mx.array(arr), mx.array(list(zip(offsets, lengths, strict=True))), truncated


def _length_sorted(dataset: Any) -> list[int]:
    len_fn = dataset.itemlen if hasattr(dataset, "itemlen") else (lambda i: len(dataset[i][0]))
    return sorted(range(len(dataset)), key=len_fn)


class BatchStream:
    """Endless training batches with a restorable position (see the module docstring).

    ``position()`` is ``{"epoch", "index"}`` of the next batch; ``BatchStream(..., start=position)``
    continues from there. One epoch = ``len(dataset) // batch_size`` batches (the remainder is dropped,
    as in mlx-lm).
    """

    def __init__(self, dataset: Any, batch_size: int, max_seq_length: int, seed: int, start: dict[str, int] | None = None):
        if len(dataset) < batch_size:
            raise JobFailure(f"the training set has {len(dataset)} records, fewer than batch_size={batch_size}")
        idx = _length_sorted(dataset)
        self.groups = [idx[i : i + batch_size] for i in range(0, len(idx) - batch_size + 1, batch_size)]
        self.dataset, self.max_seq_length, self.seed = dataset, max_seq_length, seed
        self.epoch = int((start or {}).get("epoch", 0))
        self.index = int((start or {}).get("index", 0))
        self.truncated = 0
        self._order = self._permutation(self.epoch)

    @property
    def batches_per_epoch(self) -> int:
        return len(self.groups)

    def _permutation(self, epoch: int) -> list[int]:
        import numpy as np

        return [int(i) for i in np.random.default_rng([self.seed, epoch]).permutation(len(self.groups))]

    def position(self) -> dict[str, int]:
        return {"epoch": self.epoch, "index": self.index}

    def next(self) -> tuple[Any, Any]:
        """The next ``(tokens, lengths)`` batch."""
        if self.index >= len(self._order):
            self.epoch, self.index = self.epoch + 1, 0
            self._order = self._permutation(self.epoch)
        group = self.groups[self._order[self.index]]
        self.index += 1
        tokens, lengths, truncated = make_batch(self.dataset, group, self.max_seq_length)
        self.truncated += truncated
        return tokens, lengths


def eval_groups(dataset: Any, batch_size: int, num_batches: int = -1) -> list[list[int]]:
    """Batches for evaluation: length-sorted groups of ``batch_size`` including the last partial one,
    in a fixed shuffled order (``default_rng(0)``); the first ``num_batches`` of them (-1 = all)."""
    import numpy as np

    idx = _length_sorted(dataset)
    groups = [idx[i : i + batch_size] for i in range(0, len(idx), batch_size)]
    order = np.random.default_rng(0).permutation(len(groups))
    groups = [groups[int(i)] for i in order]
    return groups if num_batches == -1 else groups[:num_batches]


def evaluate_loss(model: Any, dataset: Any, batch_size: int, max_seq_length: int, num_batches: int = -1) -> tuple[float, int]:
    """Token-weighted mean cross-entropy (nats/token) of ``model`` on ``dataset`` and the token count.

    Uses mlx-lm's ``default_loss`` (mean over the unmasked target tokens of a batch), weighted by each
    batch's token count, so the result is sum(token losses) / sum(tokens). Leaves the model in eval mode.
    """
    import mlx.core as mx
    from mlx_lm.tuner.trainer import default_loss

    model.eval()
    total = mx.array(0.0)
    ntokens = mx.array(0)
    for group in eval_groups(dataset, batch_size, num_batches):
        tokens, lengths, _ = make_batch(dataset, group, max_seq_length)
        loss, toks = default_loss(model, tokens, lengths)
        total += loss * toks
        ntokens += toks
        mx.eval(total, ntokens)
    n = int(real_item(ntokens))
    return (float(real_item(total)) / n if n else float("nan")), n


# ---------------------------------------------------------------- the step


def step_seed(seed: int, iteration: int) -> int:
    """The ``mx.random`` seed used before training step ``iteration`` (dropout masks)."""
    return (seed * 1_000_003 + iteration) % (2**63)


class StepRunner:
    """mlx-lm's training step (``mlx_lm.tuner.trainer.train``): value_and_grad of ``default_loss``,
    gradients summed over ``grad_accumulation_steps`` micro-batches and averaged before
    ``optimizer.update`` (its global norm clipped to ``max_grad_norm`` first when given); compiled
    with the model, optimizer and random state captured (a no-op with ``MLX_DISABLE_COMPILE=1``).
    Build it after restoring the optimizer state (the capture list holds the optimizer's state dict)."""

    def __init__(self, model: Any, optimizer: Any, grad_accumulation_steps: int, grad_checkpoint: bool,
                 max_grad_norm: float | None = None):
        import mlx.core as mx
        import mlx.nn as nn
        import mlx.optimizers as optim
        from mlx.nn.utils import average_gradients
        from mlx.utils import tree_map
        from mlx_lm.tuner.trainer import default_loss
        from mlx_lm.tuner.trainer import grad_checkpoint as patch_grad_checkpoint

        if grad_checkpoint:
            patch_grad_checkpoint(model.layers[0])  # patches the block class for this process
        loss_value_and_grad = nn.value_and_grad(model, default_loss)
        self.state = [model.state, optimizer.state, mx.random.state]
        accum = grad_accumulation_steps

        @partial(mx.compile, inputs=self.state, outputs=self.state)
        def step(batch: Any, prev_grad: Any, do_update: bool) -> Any:
            (lvalue, toks), grad = loss_value_and_grad(model, *batch)
            if prev_grad is not None:
                grad = tree_map(lambda x, y: x + y, grad, prev_grad)
            if do_update:
                grad = average_gradients(grad)
                if accum > 1:
                    grad = tree_map(lambda x: x / accum, grad)
                if max_grad_norm is not None:  # clipping of the averaged gradient, as torch's clip_grad_norm_
                    grad, _norm = optim.clip_grad_norm(grad, max_grad_norm)
                optimizer.update(model, grad)
                grad = None
            return lvalue, toks, grad

        self.step = step


# ---------------------------------------------------------------- checkpoints


@dataclass
class Checkpoint:
    """A loaded checkpoint: ``state`` is state.json; the arrays are flat name -> mx.array dicts."""

    path: Path
    state: dict[str, Any]
    adapters: dict[str, Any] = field(default_factory=dict)
    optimizer: dict[str, Any] = field(default_factory=dict)
    grad_accum: dict[str, Any] | None = None


def _save_safetensors(path: Path, arrays: dict[str, Any]) -> None:
    import mlx.core as mx

    mx.save_safetensors(str(path), arrays)


def save_checkpoint(root: Path, iteration: int, *, model: Any, optimizer: Any, grad_accum: Any, state: dict[str, Any],
                    extra_files: dict[str, Path] | None = None) -> Path:
    """Write ``root/step-<iteration>/`` (adapters, optimizer state, pending accumulated gradient,
    state.json, and copies of ``extra_files`` that exist, under their given names) atomically (a temp
    dir renamed into place), point ``root/latest.json`` at it and delete all but the newest
    :data:`KEEP_CHECKPOINTS` step dirs. Returns the checkpoint dir."""
    import mlx.core as mx
    from mlx.utils import tree_flatten

    root.mkdir(parents=True, exist_ok=True)
    name = f"step-{iteration:07d}"
    final = root / name
    tmp = root / f".{name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    adapters = dict(tree_flatten(model.trainable_parameters()))
    opt = dict(tree_flatten(optimizer.state))
    mx.eval(adapters, opt)
    _save_safetensors(tmp / "adapters.safetensors", adapters)
    _save_safetensors(tmp / "optimizer.safetensors", opt)
    if grad_accum is not None:
        _save_safetensors(tmp / "grad_accum.safetensors", dict(tree_flatten(grad_accum)))
    for name, source in (extra_files or {}).items():
        if source.is_file():
            shutil.copyfile(source, tmp / name)
    write_json(tmp / "state.json", {"format": CHECKPOINT_FORMAT, "iteration": iteration, **state})
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    write_json(root / "latest.json", {"dir": name, "iteration": iteration})
    steps = sorted(p for p in root.glob("step-*") if p.is_dir())
    for old in steps[:-KEEP_CHECKPOINTS]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def find_checkpoint(root: Path) -> Path | None:
    """The latest complete checkpoint dir under ``root`` (via latest.json, else the newest step dir), or None."""
    if not root.is_dir():
        return None
    try:
        latest = json.loads((root / "latest.json").read_text(encoding="utf-8"))
        path = root / str(latest["dir"])
        if (path / "state.json").is_file():
            return path
    except (OSError, ValueError, KeyError, TypeError):
        pass
    steps = sorted((p for p in root.glob("step-*") if (p / "state.json").is_file()), reverse=True)
    return steps[0] if steps else None


def load_checkpoint(path: Path) -> Checkpoint:
    """Read a checkpoint dir written by :func:`save_checkpoint`.

    Raises:
        JobFailure: missing or unreadable files, or an unknown format version.
    """
    import mlx.core as mx

    try:
        state = json.loads((path / "state.json").read_text(encoding="utf-8"))
        if state.get("format") != CHECKPOINT_FORMAT:
            raise JobFailure(f"checkpoint {path} has format {state.get('format')!r}, expected {CHECKPOINT_FORMAT}")
        adapters = load_arrays(path / "adapters.safetensors")
        optimizer = load_arrays(path / "optimizer.safetensors")
        grad_file = path / "grad_accum.safetensors"
        grad = load_arrays(grad_file) if grad_file.is_file() else None
        mx.eval(adapters, optimizer, grad or {})  # read now: older step dirs may be pruned later
    except JobFailure:
        raise
    except Exception as exc:  # noqa: BLE001 - any unreadable file
        raise JobFailure(f"cannot read checkpoint {path}: {type(exc).__name__}: {exc}") from exc
    return Checkpoint(path, state, adapters, optimizer, grad)


def restore_tree(template: Any, flat: dict[str, Any], what: str) -> Any:
    """``template`` (a parameter/state tree) with every leaf replaced by ``flat[path]``.

    Raises:
        JobFailure: the names differ (the checkpoint was written for another model set-up).
    """
    from mlx.utils import tree_map_with_path

    names = {k for k, _ in flat_tree(template)}
    if names != set(flat):
        missing, extra = sorted(names - set(flat))[:3], sorted(set(flat) - names)[:3]
        raise JobFailure(f"checkpoint {what} does not match this model set-up (missing {missing}, unexpected {extra})")
    return tree_map_with_path(lambda path, _x: flat[path], template)


def differences(a: dict[str, Any], b: dict[str, Any]) -> list[str]:
    """Keys whose values differ between two fingerprints (either side missing counts)."""
    return sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))


def finite(x: Any) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x)

"""Job kind ``memory_profile``: peak memory of inference and of training steps (job process only).

1. loads the model (quantized first with ``quantize: N``, as ``lora_train`` does);
2. inference: ``mx.clear_cache()``, ``mx.reset_peak_memory()``, one ``mlx_lm.stream_generate`` of
   ``max_tokens`` tokens from ``prompt`` (chat template applied) -> ``inference_peak_gb``;
3. training: adds the LoRA/DoRA layers (or unfreezes blocks for ``full``) exactly as ``lora_train``,
   clears the cache, resets the peak and runs ``steps`` training steps (same step function, gradient
   checkpointing and accumulation) on batches of ``batch_size`` x ``max_seq_length`` tokens:
   real batches from ``data``/train.jsonl, or random token ids (every sequence exactly
   ``max_seq_length`` long, the worst case) without ``data`` -> ``train_peak_gb``;
4. cross-checks with the process's peak resident set size (``resource.getrusage``; ``ru_maxrss`` is
   KiB on Linux, bytes on macOS).

MLX's counters are exact on CPU (process RSS ~ MLX active memory + ~80 MB of Python and libraries);
both peaks include the model weights. GB = 1e9 bytes.

Summary namespace ``memory``: ``inference_peak_gb``, ``train_peak_gb``, ``peak_memory_gb`` (the larger of
the two; the Refiner's memory rule matches metrics ending in ``peak_memory_gb``), ``target_gb``,
``headroom_gb`` (target - peak), ``within_target`` (1/0), ``max_rss_gb``, ``rss_minus_mlx_gb``
(max_rss_gb - peak_memory_gb), ``weights_gb`` (active memory after loading), ``steps``,
``tokens_per_step``, ``batch_size``, ``max_seq_length``, ``grad_checkpoint``, ``grad_accumulation_steps``,
``fine_tune_type``, ``rank``, ``num_layers``, ``trainable_parameters``, ``quantize_bits``, ``data``
(``"synthetic"`` or the train.jsonl path), ``load_seconds``.
"""

from __future__ import annotations

import resource
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from oodatcaa.jobs import _training as T
from oodatcaa.jobs._common import JobContext, JobFailure, seed_everything, sha256_file
from oodatcaa.jobs.spec import MAX_DEFAULT_LORA_LAYERS, MemoryProfileJob


def max_rss_gb() -> float:
    """Peak resident set size of this process in GB (1e9 bytes), from ``getrusage(RUSAGE_SELF)``."""
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss * (1 if sys.platform == "darwin" else 1024) / 1e9


class _SyntheticBatches:
    """Random token batches of exactly ``max_seq_length`` tokens (loss on every position)."""

    def __init__(self, vocab_size: int, batch_size: int, max_seq_length: int, seed: int) -> None:
        self.vocab_size, self.batch_size, self.length, self.seed = vocab_size, batch_size, max_seq_length, seed
        self.index = 0

    def next(self) -> tuple[Any, Any]:
        import mlx.core as mx
        import numpy as np

        rng = np.random.default_rng([self.seed, self.index])
        self.index += 1
        tokens = rng.integers(0, self.vocab_size, size=(self.batch_size, self.length), dtype=np.int32)
        lengths = np.array([[0, self.length]] * self.batch_size, dtype=np.int32)
        return mx.array(tokens), mx.array(lengths)


@dataclass(frozen=True)
class _Inputs:
    """The model directory and, with ``data``, the directory and its train.jsonl (checked to exist)."""

    model_path: Path
    data_dir: Path | None  # None: synthetic batches
    train_file: Path | None  # data_dir / "train.jsonl"


@dataclass(frozen=True)
class _InferencePeak:
    """The measured generation: peak memory in GB (1e9 bytes) and the tokens it generated."""

    peak_gb: float
    generated: int


@dataclass(frozen=True)
class _TrainingPeak:
    """The measured training steps: peak memory in GB, tokens trained over all steps, wall seconds of the
    steps, and the fine-tune set-up (layers adapted, trainable parameters)."""

    peak_gb: float
    tokens: int
    seconds: float
    num_layers: int
    trainable: int


def run(spec: MemoryProfileJob, ctx: JobContext) -> dict[str, dict[str, Any]]:
    """Run a ``memory_profile`` job; returns ``{"memory": {...}}`` (see the module docstring).

    Phases: inputs, load, inference peak, training peak (the model is adapted for training after
    inference, so the inference peak is of the plain model), summary.

    Raises:
        JobFailure: the model or data cannot be loaded, or too many layers are requested.
    """
    inputs = _inputs(spec, ctx)

    import mlx.core as mx

    from oodatcaa.jobs.cpu_fastpath import describe_blas

    ctx.config_extra["blas"] = describe_blas()
    seed_everything(spec.seed)
    loaded = T.load_for_training(inputs.model_path, quantize=spec.quantize, group_size=spec.quantize_group_size)
    mx.eval(loaded.model.parameters())
    weights_gb = mx.get_active_memory() / 1e9
    ctx.metric("start", total_steps=spec.steps, phase="inference")
    inference = _measure_inference(spec, ctx, loaded)
    training = _measure_training(spec, ctx, loaded, inputs)
    rss = max_rss_gb()
    summary = _summary(spec, inputs, loaded, weights_gb, inference, training, rss)
    verdict = ""
    if spec.target_gb is not None:
        verdict = f"; target {spec.target_gb:g} GB, headroom {summary['headroom_gb']:.3f} GB"
    ctx.log(f"peak memory: inference {inference.peak_gb:.3f} GB, training {training.peak_gb:.3f} GB, "
            f"max RSS {rss:.3f} GB{verdict}")
    return {"memory": summary}


def _inputs(spec: MemoryProfileJob, ctx: JobContext) -> _Inputs:
    """Resolve the model and ``data``; records them (and train.jsonl's sha256) in the config.

    Raises:
        JobFailure: ``data`` has no train.jsonl (or the model cannot be resolved).
    """
    model_path = ctx.resolve_model(spec.model)
    data_dir = ctx.resolve(spec.data) if spec.data else None
    train_file = None
    if data_dir is not None:
        train_file = data_dir / "train.jsonl"
        if not train_file.is_file():
            raise JobFailure(f"data directory {data_dir} has no train.jsonl")
        ctx.config_extra["dataset"] = {"dir": str(data_dir), "train.jsonl": {"sha256": sha256_file(train_file)}}
    ctx.config_extra["model_path"] = str(model_path)
    return _Inputs(model_path, data_dir, train_file)


def _measure_inference(spec: MemoryProfileJob, ctx: JobContext, loaded: T.LoadedModel) -> _InferencePeak:
    """Peak memory of one greedy ``stream_generate`` of ``max_tokens`` from ``prompt`` (cache cleared,
    peak reset first); emits the ``inference`` metric."""
    import mlx.core as mx
    from mlx_lm.generate import stream_generate
    from mlx_lm.sample_utils import make_sampler

    from oodatcaa.jobs.inference_bench import _prompt_tokens

    model, tokenizer = loaded.model, loaded.tokenizer
    mx.clear_cache()
    mx.reset_peak_memory()
    last = None
    for response in stream_generate(model, tokenizer, _prompt_tokens(tokenizer, spec.prompt), max_tokens=spec.max_tokens,
                                    sampler=make_sampler(temp=0.0)):
        last = response  # only the last response's counters matter
    peak = mx.get_peak_memory() / 1e9
    generated = last.generation_tokens if last is not None else 0
    ctx.metric("inference", peak_memory_gb=peak, generation_tokens=generated,
               generation_tps=last.generation_tps if last is not None else None)
    return _InferencePeak(peak, generated)


def _measure_training(spec: MemoryProfileJob, ctx: JobContext, loaded: T.LoadedModel, inputs: _Inputs) -> _TrainingPeak:
    """Adapt the model as ``lora_train`` does and measure the peak memory of ``steps`` training steps
    (cache cleared, peak reset after the set-up); emits a ``train`` metric per step.

    Raises:
        JobFailure: too many layers requested, or full fine-tuning of a quantized model.
    """
    import mlx.core as mx
    import mlx.optimizers as optim

    model, tokenizer = loaded.model, loaded.tokenizer
    num_layers = T.resolve_num_layers(spec.num_layers, len(model.layers), MAX_DEFAULT_LORA_LAYERS)
    trainable = T.setup_fine_tune(model, spec.fine_tune_type, num_layers, spec.lora.rank,
                                  spec.lora.alpha / spec.lora.rank, spec.lora.dropout)
    batches: T.BatchStream | _SyntheticBatches
    if inputs.data_dir is not None:
        train_set, _valid, _test = T.load_splits(inputs.data_dir, tokenizer, spec.mask_prompt)
        batches = T.BatchStream(train_set, spec.batch_size, spec.max_seq_length, spec.seed)
    else:
        vocab = int(loaded.config.get("vocab_size") or tokenizer.vocab_size)
        batches = _SyntheticBatches(vocab, spec.batch_size, spec.max_seq_length, spec.seed)
    optimizer = optim.Adam(learning_rate=spec.learning_rate)
    runner = T.StepRunner(model, optimizer, spec.grad_accumulation_steps, spec.grad_checkpoint)
    model.train()
    mx.clear_cache()
    mx.reset_peak_memory()
    grad = None
    tokens = 0
    start = time.perf_counter()
    for step in range(1, spec.steps + 1):
        batch = batches.next()
        mx.random.seed(T.step_seed(spec.seed, step))
        loss, toks, grad = runner.step(batch, grad, step % spec.grad_accumulation_steps == 0)
        mx.eval(runner.state, loss, toks, grad)
        tokens += int(toks.item())
        ctx.metric("train", iteration=step, train_loss=float(loss.item()), peak_memory_gb=mx.get_peak_memory() / 1e9,
                   tokens=int(toks.item()))
    seconds = time.perf_counter() - start
    return _TrainingPeak(mx.get_peak_memory() / 1e9, tokens, seconds, num_layers, trainable)


def _summary(spec: MemoryProfileJob, inputs: _Inputs, loaded: T.LoadedModel, weights_gb: float,
             inference: _InferencePeak, training: _TrainingPeak, rss: float) -> dict[str, Any]:
    """The ``memory`` namespace of the summary (the module docstring lists the keys; GB = 1e9 bytes;
    ``rss`` is :func:`max_rss_gb` after the training steps)."""
    peak = max(inference.peak_gb, training.peak_gb)
    return {
        "inference_peak_gb": round(inference.peak_gb, 6),
        "train_peak_gb": round(training.peak_gb, 6),
        "peak_memory_gb": round(peak, 6),
        "target_gb": spec.target_gb,
        "headroom_gb": round(spec.target_gb - peak, 6) if spec.target_gb is not None else None,
        "within_target": int(peak <= spec.target_gb) if spec.target_gb is not None else None,
        "max_rss_gb": round(rss, 6),
        "rss_minus_mlx_gb": round(rss - peak, 6),
        "weights_gb": round(weights_gb, 6),
        "steps": spec.steps,
        "tokens_per_step": round(training.tokens / spec.steps, 2),
        "train_seconds": round(training.seconds, 4),
        "batch_size": spec.batch_size,
        "max_seq_length": spec.max_seq_length,
        "grad_checkpoint": int(spec.grad_checkpoint),
        "grad_accumulation_steps": spec.grad_accumulation_steps,
        "fine_tune_type": spec.fine_tune_type,
        "rank": spec.lora.rank,
        "num_layers": training.num_layers,
        "trainable_parameters": training.trainable,
        "quantize_bits": loaded.quantization["bits"] if loaded.quantization else None,
        "generation_tokens": inference.generated,
        "data": str(inputs.train_file) if inputs.train_file else "synthetic",
        "load_seconds": round(loaded.load_seconds, 4),
    }

"""Job kind ``evaluate``: loss and perplexity on a split; base vs adapted generations (job process only).

1. loads ``data/<split>.jsonl`` with mlx-lm's dataset classes (chat template applied as in training;
   ``mask_prompt`` restricts the loss to the completion / last assistant turn);
2. loss = sum of token cross-entropies / number of target tokens (nats/token) over every record
   (length-sorted batches of ``batch_size``, the last partial batch included; at most
   ``max_batches`` batches in a fixed order), with mlx-lm's ``default_loss``;
   perplexity = exp(loss) (Jelinek et al. 1977; as ``mlx_lm.lora --test`` reports it);
3. generates greedily (``temperature`` 0 by default, ``mx.random`` seeded with ``seed``) up to
   ``max_tokens`` from each prompt: the given ``prompts`` or the first ``num_prompts`` prompts of the
   split (the last user turn, or the ``prompt`` field; text records have none);
4. with an ``adapter``: all of the above for the base model first (``compare_base``), then the adapter
   is applied to the same loaded model (``mlx_lm.tuner.utils.load_adapters``; a QLoRA adapter trained
   with ``quantize:`` gets a base quantized the same way, for both) and evaluated again.

``outputs.json`` in the run dir: ``{"model", "adapter", "split", "outputs": [{"prompt", "base", "adapted"}]}``
(``adapted`` only with an adapter; ``base`` only without one or with ``compare_base``).

Summary namespace ``eval``: ``loss``, ``perplexity`` (of the adapted model when there is an adapter,
else of the base), ``base_loss``, ``base_perplexity``, ``loss_delta`` (loss - base_loss; negative =
the adapter helps), ``tokens``, ``examples``, ``batches``, ``split``, ``prompts``, ``adapter`` (1/0),
``eval_seconds``, ``load_seconds``, ``peak_memory_gb`` (``mx.get_peak_memory()`` in GB = 1e9 bytes, reset
after loading the model, read after the last phase: the resident weights plus the largest evaluation
batch or generation of any phase, the adapter's weights included).
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from oodatcaa.jobs import _training as T
from oodatcaa.jobs._common import JobContext, JobFailure, sha256_file, write_json
from oodatcaa.jobs.spec import EvaluateJob


def prompts_from_split(path: Path, limit: int) -> list[str]:
    """Up to ``limit`` prompts from an mlx-lm JSONL file: the ``prompt`` field, or the content of the
    last user message before the final assistant turn of ``messages``; text records are skipped."""
    out: list[str] = []
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            if len(out) >= limit:
                break
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if not isinstance(record, dict):
                continue
            if isinstance(record.get("prompt"), str) and record["prompt"].strip():
                out.append(record["prompt"])
            elif isinstance(record.get("messages"), list):
                users = [m.get("content") for m in record["messages"] if isinstance(m, dict) and m.get("role") == "user"]
                if users and isinstance(users[-1], str) and users[-1].strip():
                    out.append(users[-1])
    return out


def _generate(model: Any, tokenizer: Any, prompts: list[str], spec: EvaluateJob) -> list[str]:
    import mlx.core as mx
    from mlx_lm.generate import stream_generate
    from mlx_lm.sample_utils import make_sampler

    from oodatcaa.jobs.inference_bench import _prompt_tokens

    sampler = make_sampler(temp=spec.temperature)
    texts = []
    for prompt in prompts:
        mx.random.seed(spec.seed)
        pieces = [r.text for r in stream_generate(model, tokenizer, _prompt_tokens(tokenizer, prompt),
                                                   max_tokens=spec.max_tokens, sampler=sampler)]
        texts.append("".join(pieces))
    return texts


@dataclass(frozen=True)
class _Inputs:
    """The checked inputs: model, data directory, the split's file and record count, the adapter (or None)."""

    model_path: Path
    data_dir: Path
    split_file: Path
    examples: int
    adapter: Path | None


@dataclass(frozen=True)
class _Loaded:
    """The loaded base (quantized as the adapter's base was, if it was) and what every phase evaluates."""

    model: Any
    tokenizer: Any
    load_seconds: float
    dataset: Any  # the split as mlx-lm's dataset classes read it (chat template applied)
    prompts: list[str]
    batches: int  # evaluation batches per phase


@dataclass(frozen=True)
class _PhaseResult:
    """One phase (``base`` or ``adapted``): loss in nats/token, perplexity = exp(loss), target tokens, generations."""

    loss: float
    perplexity: float
    tokens: int
    texts: list[str]


def run(spec: EvaluateJob, ctx: JobContext) -> dict[str, dict[str, Any]]:
    """Run an ``evaluate`` job; returns ``{"eval": {...}}`` (see the module docstring).

    Phases: inputs, load, then per model (``base`` and/or ``adapted``) loss + generations, outputs.json
    and the summary. MLX's peak memory is reset after the load and read after the last phase
    (``peak_memory_gb``, GB = 1e9 bytes), as ``lora_train`` and ``inference_bench`` measure theirs.

    Raises:
        JobFailure: missing split file, model or adapter that does not load, or an empty split.
    """
    import mlx.core as mx

    inputs = _inputs(spec, ctx)
    loaded = _load(spec, ctx, inputs)
    mx.reset_peak_memory()
    start = time.perf_counter()
    phases: list[str] = []
    if inputs.adapter is None or spec.compare_base:
        phases.append("base")
    if inputs.adapter is not None:
        phases.append("adapted")
    ctx.metric("start", total_steps=len(phases), split=spec.split, examples=inputs.examples, batches=loaded.batches,
               prompts=len(loaded.prompts))
    results = {phase: _evaluate(spec, ctx, loaded, phase, inputs.adapter) for phase in phases}
    seconds = time.perf_counter() - start
    peak_memory_gb = mx.get_peak_memory() / 1e9

    outputs = []
    for i, prompt in enumerate(loaded.prompts):
        row: dict[str, Any] = {"prompt": prompt}
        for phase in phases:
            row[phase] = results[phase].texts[i]
        outputs.append(row)
    adapter = inputs.adapter
    write_json(ctx.run_dir / "outputs.json", {"model": str(inputs.model_path), "adapter": str(adapter) if adapter else None,
                                               "split": spec.split, "outputs": outputs})
    return {"eval": _summary(spec, inputs, loaded, results, seconds, peak_memory_gb)}


def _inputs(spec: EvaluateJob, ctx: JobContext) -> _Inputs:
    """Resolve and check the model, the split file (:func:`check_jsonl`) and the adapter; records them in the config.

    Raises:
        JobFailure: the split file is missing or invalid, or the adapter does not exist.
    """
    from oodatcaa.jobs.lora_train import check_jsonl

    model_path = ctx.resolve_model(spec.model)
    data_dir = ctx.resolve(spec.data)
    split_file = data_dir / f"{spec.split}.jsonl"
    if not split_file.is_file():
        raise JobFailure(f"data directory {data_dir} has no {spec.split}.jsonl (split: {spec.split})")
    examples = check_jsonl(split_file)
    adapter = ctx.resolve_adapter(spec.adapter)
    ctx.config_extra.update({
        "model_path": str(model_path), "adapter_path": str(adapter) if adapter else None,
        "dataset": {"dir": str(data_dir), f"{spec.split}.jsonl": {"sha256": sha256_file(split_file), "records": examples}},
    })
    return _Inputs(model_path, data_dir, split_file, examples, adapter)


def _load(spec: EvaluateJob, ctx: JobContext, inputs: _Inputs) -> _Loaded:
    """Seed, load the base model (quantized the same way first when the adapter is a QLoRA one that
    ``lora_train`` trained with ``quantize:`` on this float base), read the split and pick the prompts.

    Raises:
        JobFailure: the model does not load.
    """
    from oodatcaa.jobs._common import seed_everything
    from oodatcaa.jobs.cpu_fastpath import describe_blas
    from oodatcaa.jobs.model_check import _adapter_base_quantization, load_model

    ctx.config_extra["blas"] = describe_blas()
    seed_everything(spec.seed)
    model, tokenizer, config, load_seconds = load_model(str(inputs.model_path))
    quant = _adapter_base_quantization(str(inputs.adapter)) if inputs.adapter else None
    if quant is not None and T.base_quantization(config) is None:
        config = T.quantize_in_place(model, config, quant["bits"], quant["group_size"])
        ctx.log(f"base quantized to {quant['bits']} bits (group {quant['group_size']}) as the adapter was trained")
    splits = T.load_splits(inputs.data_dir, tokenizer, spec.mask_prompt)
    dataset = splits[("train", "valid", "test").index(spec.split)]
    prompts = list(spec.prompts) if spec.prompts is not None else prompts_from_split(inputs.split_file, spec.num_prompts)
    batches = len(T.eval_groups(dataset, spec.batch_size, spec.max_batches))
    return _Loaded(model, tokenizer, load_seconds, dataset, prompts, batches)


def _evaluate(spec: EvaluateJob, ctx: JobContext, loaded: _Loaded, phase: str, adapter: Path | None) -> _PhaseResult:
    """Loss and generations of one phase; ``adapted`` first applies the adapter to the loaded model
    (so it must come after ``base``). Emits the ``eval`` metric.

    Raises:
        JobFailure: the adapter does not load, or the split has no target tokens.
    """
    model = loaded.model
    if phase == "adapted":
        from mlx_lm.tuner.utils import load_adapters

        try:
            load_adapters(model, str(adapter))
        except Exception as exc:  # noqa: BLE001 - any loader error
            raise JobFailure(f"could not load adapter {adapter}: {type(exc).__name__}: {exc}") from exc
    loss, tokens = T.evaluate_loss(model, loaded.dataset, spec.batch_size, spec.max_seq_length, spec.max_batches)
    if tokens == 0:
        raise JobFailure(f"{spec.split}.jsonl gave no target tokens to evaluate (all masked or empty)")
    texts = _generate(model, loaded.tokenizer, loaded.prompts, spec)
    perplexity = math.exp(loss) if loss < 700 else float("inf")  # exp overflows a float past ~709
    ctx.metric("eval", phase=phase, loss=loss, perplexity=perplexity, tokens=tokens)
    ctx.log(f"{phase}: loss {loss:.4f} nats/token, perplexity {perplexity:.3f} on {tokens} tokens")
    return _PhaseResult(loss, perplexity, tokens, texts)


def _summary(spec: EvaluateJob, inputs: _Inputs, loaded: _Loaded, results: dict[str, _PhaseResult],
             seconds: float, peak_memory_gb: float) -> dict[str, Any]:
    """The ``eval`` namespace of the summary (the module docstring lists the keys); ``seconds`` is the
    wall time of the phases, ``peak_memory_gb`` MLX's peak over them in GB (1e9 bytes)."""
    adapter = inputs.adapter
    main = results["adapted" if adapter is not None else "base"]
    base = results.get("base")
    return {
        "loss": main.loss,
        "perplexity": main.perplexity,
        "base_loss": base.loss if base else None,
        "base_perplexity": base.perplexity if base else None,
        "loss_delta": (main.loss - base.loss) if base and adapter is not None else None,
        "tokens": main.tokens,
        "examples": inputs.examples,
        "batches": loaded.batches,
        "split": spec.split,
        "prompts": len(loaded.prompts),
        "adapter": int(adapter is not None),
        "eval_seconds": round(seconds, 4),
        "load_seconds": round(loaded.load_seconds, 4),
        "peak_memory_gb": round(peak_memory_gb, 6),
    }

"""Job kind ``inference_bench``: generation throughput with ``mlx_lm.stream_generate`` (job process only).

For each prompt (wrapped in the tokenizer's chat template as a single user turn when it has one) the
model generates up to ``max_tokens`` tokens with a sampler of the given ``temperature`` (0 = greedy),
re-seeding ``mx.random`` with ``seed`` before every generation so that trials are identical work.
An optional warm-up generation (8 tokens of the first prompt) runs first and is not measured; peak
memory is reset after it.

Per trial, over all prompts (token-weighted, from mlx-lm's per-generation numbers):

- ``prompt_tps``  = sum(prompt tokens) / sum(prompt processing seconds)  [tokens/s]
- ``generation_tps`` = sum(generated tokens) / sum(generation seconds)     [tokens/s]
  (mlx-lm times generation from the first generated token, so it excludes prompt processing)
- ``time_to_first_token_s`` = mean over prompts of prompt tokens / prompt_tps  [s]

The summary (namespace ``inference``) holds the median of each over ``trials``, plus
``peak_memory_gb`` (``mx.get_peak_memory()`` after all trials, GB = 1e9 bytes), ``generated_tokens``
(tokens generated in one trial, all prompts), ``prompt_tokens`` (likewise), ``trials``, ``load_seconds``.
``outputs.json`` in the run directory has each prompt with its output text (first trial).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from oodatcaa.jobs._common import JobContext, JobFailure, median, write_json
from oodatcaa.jobs.model_check import load_model
from oodatcaa.jobs.spec import InferenceBenchJob

WARMUP_TOKENS = 8


def _prompt_tokens(tokenizer: Any, prompt: str) -> list[int]:
    if getattr(tokenizer, "has_chat_template", False):
        ids = tokenizer.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True)
        if isinstance(ids, dict):  # some transformers versions return a BatchEncoding
            ids = ids["input_ids"]
        return list(ids)
    return list(tokenizer.encode(prompt))


def _spread(values: list[float]) -> float:
    """Relative spread of trial values: (max − min) / median; 0.0 for one value or a zero median."""
    mid = median(values)
    return (max(values) - min(values)) / mid if mid else 0.0


@dataclass(frozen=True)
class _Bench:
    """What every trial uses: the loaded model, the prompts' token ids (as generated from) and the sampler."""

    model: Any
    tokenizer: Any
    prompts: list[list[int]]
    sampler: Any
    load_seconds: float


@dataclass(frozen=True)
class _Generation:
    """One measured generation: mlx-lm's counters of its last response, our wall clock and the text."""

    prompt_tokens: int
    generation_tokens: int
    prompt_tps: float  # tokens/s
    generation_tps: float  # tokens/s, timed from the first generated token
    time_to_first_token_s: float  # prompt_tokens / prompt_tps (NaN when prompt_tps is 0)
    generation_seconds: float  # generation_tokens / generation_tps (0 when generation_tps is 0)
    total_seconds: float
    peak_memory_gb: float
    finish_reason: str | None
    text: str


@dataclass(frozen=True)
class _Trial:
    """One trial over all prompts, token-weighted (see the module docstring)."""

    prompt_tps: float
    generation_tps: float
    time_to_first_token_s: float
    generated_tokens: int
    prompt_tokens: int


def run(spec: InferenceBenchJob, ctx: JobContext) -> dict[str, dict[str, Any]]:
    """Run an ``inference_bench`` job; returns ``{"inference": {...}}`` (see module docstring).

    Phases: load, warm-up, ``trials`` measured trials, outputs.json and the summary of medians.

    Raises:
        JobFailure: the model or adapter does not load.
    """
    model_path = ctx.resolve_model(spec.model)
    adapter = ctx.resolve_adapter(spec.adapter)
    ctx.config_extra.update({"model_path": str(model_path), "adapter_path": str(adapter) if adapter else None})

    import mlx.core as mx

    bench = _load(spec, ctx, model_path, adapter)
    if spec.warmup:
        _warm_up(spec, bench)
    mx.reset_peak_memory()

    trials: list[_Trial] = []
    outputs: list[dict[str, Any]] = []
    for trial in range(spec.trials):
        generations = [_generate(spec, ctx, bench, ids, trial, index) for index, ids in enumerate(bench.prompts)]
        trials.append(_totals(generations))
        if trial == 0:
            outputs = [{"prompt": text_prompt, "output": g.text, "prompt_tokens": g.prompt_tokens,
                        "generation_tokens": g.generation_tokens, "finish_reason": g.finish_reason}
                       for text_prompt, g in zip(spec.prompts, generations, strict=True)]

    write_json(ctx.run_dir / "outputs.json",
               {"model": str(model_path), "adapter": str(adapter) if adapter else None, "outputs": outputs})
    return {"inference": _summary(spec, trials, mx.get_peak_memory() / 1e9, bench.load_seconds)}


def _load(spec: InferenceBenchJob, ctx: JobContext, model_path: Path, adapter: Path | None) -> _Bench:
    """Load the model (with the adapter), tokenize the prompts (chat template) and build the sampler.

    Raises:
        JobFailure: the model or adapter does not load.
    """
    from mlx_lm.sample_utils import make_sampler

    from oodatcaa.jobs.cpu_fastpath import describe_blas

    ctx.config_extra["blas"] = describe_blas()
    model, tokenizer, _config, load_seconds = load_model(str(model_path), str(adapter) if adapter else None)
    ctx.log(f"loaded {model_path} in {load_seconds:.2f} s")
    prompts = [_prompt_tokens(tokenizer, p) for p in spec.prompts]
    return _Bench(model, tokenizer, prompts, make_sampler(temp=spec.temperature), load_seconds)


def _warm_up(spec: InferenceBenchJob, bench: _Bench) -> None:
    """One unmeasured generation of :data:`WARMUP_TOKENS` (at most ``max_tokens``) from the first prompt."""
    import mlx.core as mx
    from mlx_lm.generate import stream_generate

    mx.random.seed(spec.seed)
    for _ in stream_generate(bench.model, bench.tokenizer, bench.prompts[0], max_tokens=min(WARMUP_TOKENS, spec.max_tokens),
                             sampler=bench.sampler):
        pass


def _generate(spec: InferenceBenchJob, ctx: JobContext, bench: _Bench, ids: list[int], trial: int,
              index: int) -> _Generation:
    """Generate from prompt ``index`` (``mx.random`` re-seeded with ``seed``) and emit its ``generation`` metric.

    Raises:
        JobFailure: ``stream_generate`` yielded nothing.
    """
    import mlx.core as mx
    from mlx_lm.generate import stream_generate

    mx.random.seed(spec.seed)
    pieces: list[str] = []
    last = None
    start = time.perf_counter()
    for response in stream_generate(bench.model, bench.tokenizer, ids, max_tokens=spec.max_tokens, sampler=bench.sampler):
        pieces.append(response.text)
        last = response
    total_s = time.perf_counter() - start
    if last is None:  # pragma: no cover - stream_generate always yields at least once
        raise JobFailure("generation produced no response")
    ttft = last.prompt_tokens / last.prompt_tps if last.prompt_tps > 0 else float("nan")
    gen_s = last.generation_tokens / last.generation_tps if last.generation_tps > 0 else 0.0
    ctx.metric(
        "generation",
        trial=trial,
        prompt_index=index,
        prompt_tokens=last.prompt_tokens,
        generation_tokens=last.generation_tokens,
        prompt_tps=last.prompt_tps,
        generation_tps=last.generation_tps,
        time_to_first_token_s=ttft,
        total_seconds=total_s,
        peak_memory_gb=last.peak_memory,
        finish_reason=last.finish_reason,
    )
    return _Generation(last.prompt_tokens, last.generation_tokens, last.prompt_tps, last.generation_tps, ttft, gen_s,
                       total_s, last.peak_memory, last.finish_reason, "".join(pieces))


def _totals(generations: list[_Generation]) -> _Trial:
    """A trial's token-weighted rates over its generations (NaN for a rate with no time measured)."""
    prompt_tokens = generated = 0
    prompt_seconds = generation_seconds = 0.0
    for g in generations:
        prompt_tokens += g.prompt_tokens
        generated += g.generation_tokens
        prompt_seconds += g.time_to_first_token_s
        generation_seconds += g.generation_seconds
    ttfts = [g.time_to_first_token_s for g in generations]
    return _Trial(
        prompt_tps=prompt_tokens / prompt_seconds if prompt_seconds > 0 else float("nan"),
        generation_tps=generated / generation_seconds if generation_seconds > 0 else float("nan"),
        time_to_first_token_s=sum(ttfts) / len(ttfts),
        generated_tokens=generated,
        prompt_tokens=prompt_tokens,
    )


def _summary(spec: InferenceBenchJob, trials: list[_Trial], peak_memory_gb: float, load_seconds: float) -> dict[str, Any]:
    """The ``inference`` namespace of the summary: medians over the trials (see the module docstring)."""
    prompt_tps = [t.prompt_tps for t in trials]
    generation_tps = [t.generation_tps for t in trials]
    return {
        "prompt_tps": round(median(prompt_tps), 3),
        "generation_tps": round(median(generation_tps), 3),
        "time_to_first_token_s": round(median([t.time_to_first_token_s for t in trials]), 6),
        # spread over trials: (max - min) / median, 0 with one trial
        "prompt_tps_spread": round(_spread(prompt_tps), 4),
        "generation_tps_spread": round(_spread(generation_tps), 4),
        "peak_memory_gb": round(peak_memory_gb, 6),
        "generated_tokens": trials[0].generated_tokens,
        "prompt_tokens": trials[0].prompt_tokens,
        "trials": spec.trials,
        "load_seconds": round(load_seconds, 4),
    }

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


def run(spec: InferenceBenchJob, ctx: JobContext) -> dict[str, dict[str, Any]]:
    """Run an ``inference_bench`` job; returns ``{"inference": {...}}`` (see module docstring)."""
    model_path = ctx.resolve_model(spec.model)
    adapter = ctx.resolve_adapter(spec.adapter)
    ctx.config_extra.update({"model_path": str(model_path), "adapter_path": str(adapter) if adapter else None})

    import mlx.core as mx
    from mlx_lm.generate import stream_generate
    from mlx_lm.sample_utils import make_sampler

    from oodatcaa.jobs.cpu_fastpath import describe_blas

    ctx.config_extra["blas"] = describe_blas()
    model, tokenizer, _config, load_seconds = load_model(str(model_path), str(adapter) if adapter else None)
    ctx.log(f"loaded {model_path} in {load_seconds:.2f} s")
    prompts = [_prompt_tokens(tokenizer, p) for p in spec.prompts]
    sampler = make_sampler(temp=spec.temperature)

    if spec.warmup:
        mx.random.seed(spec.seed)
        for _ in stream_generate(model, tokenizer, prompts[0], max_tokens=min(WARMUP_TOKENS, spec.max_tokens), sampler=sampler):
            pass
    mx.reset_peak_memory()

    per_trial: list[dict[str, float]] = []
    outputs: list[dict[str, Any]] = []
    for trial in range(spec.trials):
        prompt_tokens = generated = 0
        prompt_seconds = generation_seconds = 0.0
        ttfts: list[float] = []
        for index, (text_prompt, ids) in enumerate(zip(spec.prompts, prompts, strict=True)):
            mx.random.seed(spec.seed)
            pieces: list[str] = []
            last = None
            start = time.perf_counter()
            for response in stream_generate(model, tokenizer, ids, max_tokens=spec.max_tokens, sampler=sampler):
                pieces.append(response.text)
                last = response
            total_s = time.perf_counter() - start
            if last is None:  # pragma: no cover - stream_generate always yields at least once
                raise JobFailure("generation produced no response")
            ttft = last.prompt_tokens / last.prompt_tps if last.prompt_tps > 0 else float("nan")
            gen_s = last.generation_tokens / last.generation_tps if last.generation_tps > 0 else 0.0
            prompt_tokens += last.prompt_tokens
            generated += last.generation_tokens
            prompt_seconds += ttft
            generation_seconds += gen_s
            ttfts.append(ttft)
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
            if trial == 0:
                outputs.append(
                    {
                        "prompt": text_prompt,
                        "output": "".join(pieces),
                        "prompt_tokens": last.prompt_tokens,
                        "generation_tokens": last.generation_tokens,
                        "finish_reason": last.finish_reason,
                    }
                )
        per_trial.append(
            {
                "prompt_tps": prompt_tokens / prompt_seconds if prompt_seconds > 0 else float("nan"),
                "generation_tps": generated / generation_seconds if generation_seconds > 0 else float("nan"),
                "time_to_first_token_s": sum(ttfts) / len(ttfts),
                "generated_tokens": generated,
                "prompt_tokens": prompt_tokens,
            }
        )

    write_json(ctx.run_dir / "outputs.json",
               {"model": str(model_path), "adapter": str(adapter) if adapter else None, "outputs": outputs})
    summary = {
        "prompt_tps": round(median([t["prompt_tps"] for t in per_trial]), 3),
        "generation_tps": round(median([t["generation_tps"] for t in per_trial]), 3),
        "time_to_first_token_s": round(median([t["time_to_first_token_s"] for t in per_trial]), 6),
        # spread over trials: (max - min) / median, 0 with one trial
        "prompt_tps_spread": round(_spread([t["prompt_tps"] for t in per_trial]), 4),
        "generation_tps_spread": round(_spread([t["generation_tps"] for t in per_trial]), 4),
        "peak_memory_gb": round(mx.get_peak_memory() / 1e9, 6),
        "generated_tokens": int(per_trial[0]["generated_tokens"]),
        "prompt_tokens": int(per_trial[0]["prompt_tokens"]),
        "trials": spec.trials,
        "load_seconds": round(load_seconds, 4),
    }
    return {"inference": summary}

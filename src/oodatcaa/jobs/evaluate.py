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
``eval_seconds``, ``load_seconds``.
"""

from __future__ import annotations

import json
import math
import time
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


def run(spec: EvaluateJob, ctx: JobContext) -> dict[str, dict[str, Any]]:
    """Run an ``evaluate`` job; returns ``{"eval": {...}}`` (see the module docstring).

    Raises:
        JobFailure: missing split file, model or adapter that does not load, or an empty split.
    """
    model_path = ctx.resolve_model(spec.model)
    data_dir = ctx.resolve(spec.data)
    split_file = data_dir / f"{spec.split}.jsonl"
    if not split_file.is_file():
        raise JobFailure(f"data directory {data_dir} has no {spec.split}.jsonl (split: {spec.split})")
    from oodatcaa.jobs.lora_train import check_jsonl

    examples = check_jsonl(split_file)
    adapter = ctx.resolve_adapter(spec.adapter)
    ctx.config_extra.update({
        "model_path": str(model_path), "adapter_path": str(adapter) if adapter else None,
        "dataset": {"dir": str(data_dir), f"{spec.split}.jsonl": {"sha256": sha256_file(split_file), "records": examples}},
    })

    from mlx_lm.tuner.utils import load_adapters

    from oodatcaa.jobs._common import seed_everything
    from oodatcaa.jobs.cpu_fastpath import describe_blas
    from oodatcaa.jobs.model_check import _adapter_base_quantization, load_model

    ctx.config_extra["blas"] = describe_blas()
    seed_everything(spec.seed)
    model, tokenizer, config, load_seconds = load_model(str(model_path))
    quant = _adapter_base_quantization(str(adapter)) if adapter else None
    if quant is not None and T.base_quantization(config) is None:
        config = T.quantize_in_place(model, config, quant["bits"], quant["group_size"])
        ctx.log(f"base quantized to {quant['bits']} bits (group {quant['group_size']}) as the adapter was trained")
    splits = T.load_splits(data_dir, tokenizer, spec.mask_prompt)
    dataset = splits[("train", "valid", "test").index(spec.split)]
    prompts = list(spec.prompts) if spec.prompts is not None else prompts_from_split(split_file, spec.num_prompts)
    batches = len(T.eval_groups(dataset, spec.batch_size, spec.max_batches))

    start = time.perf_counter()
    results: dict[str, dict[str, Any]] = {}
    phases = []
    if adapter is None or spec.compare_base:
        phases.append("base")
    if adapter is not None:
        phases.append("adapted")
    ctx.metric("start", total_steps=len(phases), split=spec.split, examples=examples, batches=batches, prompts=len(prompts))
    for phase in phases:
        if phase == "adapted":
            try:
                load_adapters(model, str(adapter))
            except Exception as exc:  # noqa: BLE001 - any loader error
                raise JobFailure(f"could not load adapter {adapter}: {type(exc).__name__}: {exc}") from exc
        loss, tokens = T.evaluate_loss(model, dataset, spec.batch_size, spec.max_seq_length, spec.max_batches)
        if tokens == 0:
            raise JobFailure(f"{spec.split}.jsonl gave no target tokens to evaluate (all masked or empty)")
        texts = _generate(model, tokenizer, prompts, spec)
        results[phase] = {"loss": loss, "perplexity": math.exp(loss) if loss < 700 else float("inf"), "tokens": tokens,
                          "texts": texts}
        ctx.metric("eval", phase=phase, loss=loss, perplexity=results[phase]["perplexity"], tokens=tokens)
        ctx.log(f"{phase}: loss {loss:.4f} nats/token, perplexity {results[phase]['perplexity']:.3f} on {tokens} tokens")
    seconds = time.perf_counter() - start

    outputs = []
    for i, prompt in enumerate(prompts):
        row: dict[str, Any] = {"prompt": prompt}
        for phase in phases:
            row[phase] = results[phase]["texts"][i]
        outputs.append(row)
    write_json(ctx.run_dir / "outputs.json", {"model": str(model_path), "adapter": str(adapter) if adapter else None,
                                               "split": spec.split, "outputs": outputs})
    main = results["adapted" if adapter is not None else "base"]
    base = results.get("base")
    summary = {
        "loss": main["loss"],
        "perplexity": main["perplexity"],
        "base_loss": base["loss"] if base else None,
        "base_perplexity": base["perplexity"] if base else None,
        "loss_delta": (main["loss"] - base["loss"]) if base and adapter is not None else None,
        "tokens": main["tokens"],
        "examples": examples,
        "batches": batches,
        "split": spec.split,
        "prompts": len(prompts),
        "adapter": int(adapter is not None),
        "eval_seconds": round(seconds, 4),
        "load_seconds": round(load_seconds, 4),
    }
    return {"eval": summary}

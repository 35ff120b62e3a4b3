"""Job kind ``lora_train``: LoRA / DoRA / full fine-tuning with resumable checkpoints (job process only).

Our own training loop from mlx-lm pieces (see :mod:`oodatcaa.jobs._training` for why not
``mlx_lm.tuner.trainer.train``); per step it does exactly what ``trainer.train`` does.

1. checks ``data`` (train.jsonl and valid.jsonl; test.jsonl optional) and records their sha256;
2. seeds Python, numpy and ``mx.random``; loads the model; with ``quantize: N`` quantizes the base
   to N bits (``mlx_lm.utils.quantize_model``) before adding LoRA layers (QLoRA; a base that is
   already quantized is QLoRA without it);
3. ``iters`` = the spec's, or ``ceil(epochs * (train records // batch_size))`` for ``epochs``
   (one epoch = every full batch once, as mlx-lm batches);
4. LoRA/DoRA layers on the last ``num_layers`` blocks with ``scale = alpha / rank`` (Hu et al. 2021,
   section 4.1), or those blocks unfrozen for ``full``; Adam with a constant learning rate or
   ``lr_schedule`` (``mlx_lm.tuner.utils.build_schedule``, warm-up included);
5. resumes from ``artifacts_dir/checkpoints`` (or ``resume_from``) when a checkpoint of the same
   set-up exists: adapter weights, Adam state (moments and step, hence the schedule position), a
   pending accumulated gradient, the batch stream's position, the report window, the validation
   history, the best checkpoint and the early-stopping counter;
6. trains ``iters`` batches: reports every ``steps_per_report``, validates at 0 (fresh start), every
   ``steps_per_eval`` and at the end; checkpoints every ``save_every``; keeps the best weights by
   validation loss (``keep_best``); stops early after ``early_stopping.patience`` validations without
   an improvement of more than ``min_delta``;
7. writes ``adapters/`` (mlx-lm format), ``metrics.jsonl`` and ``loss_curve.png``.

Summary namespace ``train`` (see docs/jobs.md for every key).
"""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import time
from pathlib import Path
from typing import Any

from oodatcaa.jobs import _training as T
from oodatcaa.jobs._common import (
    JobContext,
    JobFailure,
    finite,
    record_format,
    seed_everything,
    sha256_file,
    write_json,
)
from oodatcaa.jobs._plot import Plotter, plot_loss_curve  # noqa: F401 - plot_loss_curve re-exported
from oodatcaa.jobs.spec import MAX_DEFAULT_LORA_LAYERS

_FORMATS = ("prompt/completion", "messages", "text")




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
                fmt = record_format(record)
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


def resolve_iters(spec: Any, train_records: int) -> int:
    """``spec.iters``, or for ``epochs``: ceil(epochs * (train_records // batch_size)) (at least 1).

    Raises:
        JobFailure: fewer train records than ``batch_size``.
    """
    per_epoch = train_records // spec.batch_size
    if per_epoch < 1:
        raise JobFailure(f"train.jsonl has {train_records} records, fewer than batch_size={spec.batch_size}")
    if spec.iters is not None:
        return int(spec.iters)
    return max(1, math.ceil(spec.epochs * per_epoch - 1e-9))


def fingerprint(spec: Any, *, model_path: Path, dataset: dict[str, Any], num_layers: int) -> dict[str, Any]:
    """What must be equal for a checkpoint to be resumed: everything that shapes the trajectory
    (``iters``, reporting, validation and checkpoint cadence may change)."""
    return {
        "model": str(model_path),
        "train_sha256": dataset["train.jsonl"]["sha256"],
        "fine_tune_type": spec.fine_tune_type,
        "rank": spec.lora.rank,
        "alpha": spec.lora.alpha,
        "dropout": spec.lora.dropout,
        "num_layers": num_layers,
        "batch_size": spec.batch_size,
        "grad_accumulation_steps": spec.grad_accumulation_steps,
        "max_seq_length": spec.max_seq_length,
        "learning_rate": spec.learning_rate,
        "lr_schedule": spec.lr_schedule.model_dump(mode="json") if spec.lr_schedule else None,
        "quantize": spec.quantize,
        "quantize_group_size": spec.quantize_group_size if spec.quantize else None,
        "mask_prompt": spec.mask_prompt,
        "seed": spec.seed,
    }


def _checkpoint_source(spec: Any, ctx: JobContext) -> Path:
    if spec.resume_from is None:
        return ctx.artifacts_dir / "checkpoints"
    path = ctx.resolve(spec.resume_from)
    if (path / "checkpoints").is_dir():  # an artifacts dir was given
        path = path / "checkpoints"
    if not path.is_dir():
        raise JobFailure(f"resume_from directory does not exist: {path}")
    return path


def _choose_resume(spec: Any, ctx: JobContext, fp: dict[str, Any]) -> T.Checkpoint | None:
    """The checkpoint to resume from, or None for a fresh start (old own checkpoints then removed)."""
    own = ctx.artifacts_dir / "checkpoints"
    if spec.resume is False:
        shutil.rmtree(own, ignore_errors=True)
        return None
    source = _checkpoint_source(spec, ctx)
    explicit = spec.resume is True  # auto (also with resume_from) falls back to a fresh start

    def start_over(refusal: str, note: str | None = None) -> None:
        # resume: true must resume, so it fails; auto starts fresh and says why
        if explicit:
            raise JobFailure(refusal)
        if note:
            ctx.log(note)
        shutil.rmtree(own, ignore_errors=True)

    found = T.find_checkpoint(source)
    if found is None:
        return start_over(f"resume: no checkpoint in {source} (set resume: auto or false to start over)")
    if (source / "completed.json").is_file():
        return start_over(f"resume: the run in {source} already completed (completed.json); use resume: false to train again",
                          f"checkpoints in {source} belong to a completed run: starting over")
    ckpt = T.load_checkpoint(found)
    diff = T.differences(ckpt.state.get("fingerprint", {}), fp)
    if diff:
        return start_over(f"resume: checkpoint {found} was written with a different set-up ({', '.join(diff)} differ)",
                          f"checkpoint {found} does not fit this spec ({', '.join(diff)} differ): starting over")
    if source != own and own.exists():
        shutil.rmtree(own, ignore_errors=True)
    best = own / "best"
    shutil.rmtree(best, ignore_errors=True)
    if (ckpt.path / "best_adapters.safetensors").is_file():  # the best weights as of the checkpoint
        best.mkdir(parents=True)
        shutil.copyfile(ckpt.path / "best_adapters.safetensors", best / "adapters.safetensors")
    return ckpt


def _save_adapter_dir(directory: Path, weights: dict[str, Any], config: dict[str, Any]) -> None:
    import mlx.core as mx
    from mlx_lm.utils import save_config

    directory.mkdir(parents=True, exist_ok=True)
    mx.save_safetensors(str(directory / "adapters.safetensors"), weights)
    save_config(dict(config, adapter_path=str(directory)), directory / "adapter_config.json")


def _kill_hook(iteration: int) -> None:
    if os.environ.get(T.KILL_AFTER_CHECKPOINT_ENV) == str(iteration):
        print(f"[oodatcaa job] test hook: killing the job after the checkpoint of iteration {iteration}", flush=True)
        os.kill(os.getpid(), signal.SIGKILL)


def run(spec: Any, ctx: JobContext) -> dict[str, dict[str, Any]]:
    """Run a ``lora_train`` job; returns ``{"train": {...}}`` (see the module docstring and docs/jobs.md).

    Raises:
        JobFailure: missing/invalid data, a model that does not load, too many layers, a resume that
            cannot be honoured, or a non-finite final loss (the summary is kept).
    """
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
    if counts["train.jsonl"] < spec.batch_size:
        raise JobFailure(f"train.jsonl has {counts['train.jsonl']} records, fewer than batch_size={spec.batch_size}")
    iters = resolve_iters(spec, counts["train.jsonl"])
    steps_per_eval = spec.steps_per_eval or iters

    from oodatcaa.jobs.cpu_fastpath import describe_blas

    ctx.config_extra["blas"] = describe_blas()
    plotter = Plotter()  # imports matplotlib in a helper process while we load and train
    try:
        return _train(spec, ctx, model_path=model_path, data_dir=data_dir, counts=counts, dataset_info=dataset_info,
                      iters=iters, steps_per_eval=steps_per_eval, plotter=plotter)
    finally:
        plotter.close()


def _train(spec: Any, ctx: JobContext, *, model_path: Path, data_dir: Path, counts: dict[str, int],
           dataset_info: dict[str, Any], iters: int, steps_per_eval: int, plotter: Plotter) -> dict[str, dict[str, Any]]:
    import mlx.core as mx
    import mlx.optimizers as optim

    accum = spec.grad_accumulation_steps
    seed_everything(spec.seed)
    loaded = T.load_for_training(model_path, quantize=spec.quantize, group_size=spec.quantize_group_size)
    model, tokenizer = loaded.model, loaded.tokenizer
    ctx.log(f"loaded {model_path} in {loaded.load_seconds:.2f} s" + (f" (quantized to {spec.quantize} bits)" if loaded.quantized_here else ""))
    train_set, valid_set, _test = T.load_splits(data_dir, tokenizer, spec.mask_prompt)

    layers = len(model.layers)
    num_layers = T.resolve_num_layers(spec.num_layers, layers, MAX_DEFAULT_LORA_LAYERS)
    rank, alpha, dropout = spec.lora.rank, spec.lora.alpha, spec.lora.dropout
    scale = alpha / rank  # Hu et al. 2021: the LoRA update is scaled by alpha / r
    trainable = T.setup_fine_tune(model, spec.fine_tune_type, num_layers, rank, scale, dropout)
    what = spec.fine_tune_type if spec.fine_tune_type == "full" else f"{spec.fine_tune_type} rank {rank} alpha {alpha:g} (scale {scale:g})"
    ctx.log(f"{what} on the last {num_layers}/{layers} layers: {trainable} trainable parameters")

    adapters_dir = ctx.artifacts_dir / "adapters"
    adapter_cfg = T.adapter_config(
        spec, model_path=model_path, data_dir=data_dir, adapters_dir=adapters_dir, num_layers=num_layers,
        quantization=loaded.quantization, quantized_here=loaded.quantized_here, iters=iters,
    )
    from mlx_lm.utils import save_config

    adapters_dir.mkdir(parents=True, exist_ok=True)
    save_config(dict(adapter_cfg), adapters_dir / "adapter_config.json")

    fp = fingerprint(spec, model_path=model_path, dataset=dataset_info, num_layers=num_layers)
    ckpt = _choose_resume(spec, ctx, fp)
    total_updates = iters // accum
    lr = T.build_learning_rate(spec, total_updates)
    optimizer = optim.Adam(learning_rate=lr)
    st: dict[str, Any] = {
        "window": {"loss": 0.0, "tokens": 0, "steps": 0, "seconds": 0.0},
        "trained_tokens": 0, "train_seconds": 0.0, "val_seconds": 0.0,
        "history": {"train": [], "val": []},
        "best": {"val_loss": None, "iteration": None},
        "early_stopping": {"reference": None, "bad_evals": 0},
        "data_position": {"epoch": 0, "index": 0}, "truncated": 0, "checkpoints_saved": 0,
    }
    grad_accum = None
    start_it = 0
    if ckpt is not None:
        from mlx.utils import tree_flatten

        T.restore_tree(model.trainable_parameters(), ckpt.adapters, "adapter weights")
        model.load_weights(list(ckpt.adapters.items()), strict=False)
        optimizer.init(model.trainable_parameters())
        optimizer.state = T.restore_tree(optimizer.state, ckpt.optimizer, "optimizer state")
        if ckpt.grad_accum is not None:
            grad_accum = T.restore_tree(model.trainable_parameters(), ckpt.grad_accum, "accumulated gradient")
        start_it = int(ckpt.state["iteration"])
        for key in st:
            if key in ckpt.state:
                st[key] = ckpt.state[key]
        mx.eval(dict(tree_flatten(optimizer.state)))
        ctx.log(f"resumed from {ckpt.path} at iteration {start_it} (optimizer step {int(optimizer.state['step'].item())})")
    ctx.config_extra["resolved"] = {
        "iters": iters, "epochs": spec.epochs, "steps_per_eval": steps_per_eval, "optimizer_updates": total_updates,
        "num_layers": num_layers, "scale": scale, "trainable_parameters": trainable, "profile": spec.profile,
        "base_quantization": loaded.quantization, "resumed_from": str(ckpt.path) if ckpt else None,
        "resumed_at_iteration": start_it,
    }

    runner = T.StepRunner(model, optimizer, accum, spec.grad_checkpoint)
    stream = T.BatchStream(train_set, spec.batch_size, spec.max_seq_length, spec.seed, start=st["data_position"])
    stream.truncated = int(st["truncated"])
    ckpt_root = ctx.artifacts_dir / "checkpoints"
    best_dir = ckpt_root / "best"
    history = st["history"]

    ctx.metric("start", total_iterations=iters, start_iteration=start_it, batches_per_epoch=stream.batches_per_epoch,
               resumed=int(ckpt is not None))
    for record in history["train"]:
        ctx.metric("train", **record, restored=True)
    for record in history["val"]:
        ctx.metric("val", **record, restored=True)

    def validate(iteration: int) -> bool:
        """Validate, record, update best / early stopping; True when training should stop."""
        tic = time.perf_counter()
        val_loss, _tokens = T.evaluate_loss(model, valid_set, spec.batch_size, spec.max_seq_length, spec.val_batches)
        model.train()
        seconds = time.perf_counter() - tic
        st["val_seconds"] += seconds
        best = st["best"]
        improved = T.finite(val_loss) and (best["val_loss"] is None or val_loss < best["val_loss"])
        if improved:
            best.update(val_loss=val_loss, iteration=iteration)
            if spec.keep_best:
                from mlx.utils import tree_flatten

                best_dir.mkdir(parents=True, exist_ok=True)
                mx.save_safetensors(str(best_dir / "adapters.safetensors"), dict(tree_flatten(model.trainable_parameters())))
                write_json(best_dir / "best.json", {"iteration": iteration, "val_loss": val_loss})
        record = {"iteration": iteration, "val_loss": val_loss, "val_seconds": round(seconds, 4), "best": int(improved)}
        history["val"].append(record)
        ctx.metric("val", **record)
        es = spec.early_stopping
        if es is None:
            return False
        ref = st["early_stopping"]
        if ref["reference"] is None or (T.finite(val_loss) and val_loss < ref["reference"] - es.min_delta):
            ref.update(reference=val_loss, bad_evals=0)
            return False
        ref["bad_evals"] += 1
        return ref["bad_evals"] >= es.patience

    mx.reset_peak_memory()
    start_wall = time.perf_counter()
    model.train()
    stopped_early = False
    if start_it == 0:
        stopped_early = validate(0)
    window = st["window"]
    losses: Any = mx.array(window["loss"], dtype=mx.float32) if window["steps"] else 0
    n_tokens: Any = mx.array(window["tokens"], dtype=mx.int32) if window["steps"] else 0
    steps, window_seconds = int(window["steps"]), float(window["seconds"])

    def report(iteration: int) -> None:
        """One train report over the current window (losses / n_tokens / steps / window_seconds)."""
        window_tokens = int(n_tokens.item())
        st["trained_tokens"] += window_tokens
        st["train_seconds"] += window_seconds
        record = {
            "iteration": iteration,
            "train_loss": losses.item() / steps,
            "learning_rate": float(optimizer.learning_rate.item()),
            "tokens_per_second": window_tokens / window_seconds if window_seconds > 0 else None,
            "iterations_per_second": steps / window_seconds if window_seconds > 0 else None,
            "trained_tokens": st["trained_tokens"],
            "peak_memory_gb": mx.get_peak_memory() / 1e9,
            "window_seconds": round(window_seconds, 6),
        }
        history["train"].append(record)
        ctx.metric("train", **record)

    it = start_it
    while it < iters and not stopped_early:
        it += 1
        tic = time.perf_counter()
        batch = stream.next()
        mx.random.seed(T.step_seed(spec.seed, it))
        lvalue, toks, grad_accum = runner.step(batch, grad_accum, it % accum == 0)
        losses += lvalue
        n_tokens += toks
        steps += 1
        mx.eval(runner.state, losses, n_tokens, grad_accum)
        window_seconds += time.perf_counter() - tic

        if it % spec.steps_per_report == 0 or it == iters:
            report(it)
            losses, n_tokens, steps, window_seconds = 0, 0, 0, 0.0

        if it % steps_per_eval == 0 or it == iters:
            stopped_early = validate(it)

        if it % spec.save_every == 0 and it < iters and not stopped_early:
            st["window"] = {
                "loss": float(losses.item()) if steps else 0.0,
                "tokens": int(n_tokens.item()) if steps else 0,
                "steps": steps,
                "seconds": window_seconds,
            }
            st["data_position"] = stream.position()
            st["truncated"] = stream.truncated
            st["checkpoints_saved"] += 1
            extra = {"best_adapters.safetensors": best_dir / "adapters.safetensors"}
            path = T.save_checkpoint(ckpt_root, it, model=model, optimizer=optimizer, grad_accum=grad_accum,
                                     state={**st, "fingerprint": fp}, extra_files=extra)
            ctx.metric("checkpoint", iteration=it, path=str(path.relative_to(ctx.artifacts_dir)))
            _kill_hook(it)
    iterations_done = it
    stopped_early = stopped_early and iterations_done < iters
    if steps:  # stopped early inside a report window: report what was trained
        report(iterations_done)
    if stopped_early:
        ctx.metric("early_stop", iteration=iterations_done, best_iteration=st["best"]["iteration"],
                   best_val_loss=st["best"]["val_loss"])
        ctx.log(f"early stopping at iteration {iterations_done}: no improvement for {spec.early_stopping.patience} validations")
    wall = time.perf_counter() - start_wall
    peak_gb = mx.get_peak_memory() / 1e9

    from mlx.utils import tree_flatten

    last_weights = dict(tree_flatten(model.trainable_parameters()))
    selected = "last"
    if spec.keep_best and (best_dir / "adapters.safetensors").is_file():
        _save_adapter_dir(ctx.artifacts_dir / "adapters_last", last_weights, adapter_cfg)
        shutil.copyfile(best_dir / "adapters.safetensors", adapters_dir / "adapters.safetensors")
        selected = "best"
    else:
        mx.save_safetensors(str(adapters_dir / "adapters.safetensors"), last_weights)
    write_json(ckpt_root / "completed.json", {"iteration": iterations_done, "iters": iters})

    if not history["train"]:
        raise JobFailure("training produced no loss report")
    train_seconds = st["train_seconds"]
    trained_tokens = st["trained_tokens"]
    val = history["val"]
    png = plotter.plot(
        ctx.run_dir / "loss_curve.png", history["train"], val,
        f"{spec.fine_tune_type} r={rank} alpha={alpha:g} lr={spec.learning_rate:g} bs={spec.batch_size}",
    )
    summary = {
        "first_loss": history["train"][0]["train_loss"],
        "final_loss": history["train"][-1]["train_loss"],
        "first_val_loss": val[0]["val_loss"] if val else None,
        "final_val_loss": val[-1]["val_loss"] if val else None,
        "best_val_loss": st["best"]["val_loss"],
        "best_iteration": st["best"]["iteration"],
        "adapters_selected": selected,
        "tokens_per_second": trained_tokens / train_seconds if train_seconds > 0 else None,
        "iterations_per_second": iterations_done / train_seconds if train_seconds > 0 else None,
        "peak_memory_gb": round(peak_gb, 6),
        "iters": iters,
        "iterations_done": iterations_done,
        "epochs": spec.epochs,
        "stopped_early": int(stopped_early),
        "resumed_at_iteration": start_it,
        "checkpoints_saved": st["checkpoints_saved"],
        "trained_tokens": trained_tokens,
        "truncated_sequences": stream.truncated,
        "train_seconds": round(train_seconds, 4),
        "val_seconds": round(st["val_seconds"], 4),
        "wall_seconds": round(wall, 4),
        "load_seconds": round(loaded.load_seconds, 4),
        "profile": spec.profile,
        "fine_tune_type": spec.fine_tune_type,
        "quantize_bits": loaded.quantization["bits"] if loaded.quantization else None,
        "rank": rank,
        "alpha": alpha,
        "scale": scale,
        "dropout": dropout,
        "batch_size": spec.batch_size,
        "grad_accumulation_steps": accum,
        "grad_checkpoint": int(spec.grad_checkpoint),
        "num_layers": num_layers,
        "trainable_parameters": trainable,
        "learning_rate": spec.learning_rate,
        "lr_schedule": spec.lr_schedule.name if spec.lr_schedule else "constant",
        "final_learning_rate": history["train"][-1]["learning_rate"],
        "train_examples": counts["train.jsonl"],
        "valid_examples": counts["valid.jsonl"],
        "loss_curve_png": int(png),
    }
    result = {"train": summary}
    for key in ("final_loss", "final_val_loss"):
        value = summary[key]
        if value is not None and not finite(value):
            raise JobFailure(f"training diverged: {key} is {value} (try a lower learning_rate)", summary=result)
    if summary["final_val_loss"] is not None:
        ctx.log(f"final train loss {summary['final_loss']:.4f}, val loss {summary['final_val_loss']:.4f}")
    return result


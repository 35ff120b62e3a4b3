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
   the loss of the first batch, computed before the first update, is ``train.initial_loss``; with
   ``max_grad_norm`` the averaged gradient's global norm is clipped before each update;
7. stops and raises the typed ``diverged`` failure (:func:`check_diverged`, configured by the
   ``divergence`` block) when a loss is not finite, a report's loss exceeds ``max_loss_ratio`` x the
   loss before training (the larger of the initial and the step-0 validation loss), or the
   validation loss ends ``max_val_increase`` above where it started or at the uniform-distribution
   level ln(vocab size) — a loss that is merely lower than the first (already diverged) report
   window's is not a pass;
8. writes ``adapters/`` (mlx-lm format), ``metrics.jsonl`` and ``loss_curve.png``.

Summary namespace ``train`` (see docs/jobs.md for every key).
"""

from __future__ import annotations

import json
import math
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from oodatcaa.jobs import _training as T
from oodatcaa.jobs._common import (
    DivergedError,
    JobContext,
    JobFailure,
    finite,
    record_format,
    seed_everything,
    sha256_file,
    write_json,
)
from oodatcaa.jobs._plot import Plotter, plot_loss_curve  # noqa: F401 - plot_loss_curve re-exported
from oodatcaa.jobs.spec import MAX_DEFAULT_LORA_LAYERS, LoraTrainJob

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


def resolve_iters(spec: LoraTrainJob, train_records: int) -> int:
    """``spec.iters``, or for ``epochs``: ceil(epochs * (train_records // batch_size)) (at least 1).

    Raises:
        JobFailure: fewer train records than ``batch_size``.
    """
    per_epoch = train_records // spec.batch_size
    if per_epoch < 1:
        raise JobFailure(f"train.jsonl has {train_records} records, fewer than batch_size={spec.batch_size}")
    if spec.iters is not None:
        return int(spec.iters)
    assert spec.epochs is not None  # the spec sets iters when neither is given
    return max(1, math.ceil(spec.epochs * per_epoch - 1e-9))


def fingerprint(spec: LoraTrainJob, *, model_path: Path, dataset: dict[str, Any], num_layers: int) -> dict[str, Any]:
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
        # only when set, so checkpoints written before clipping existed still fit
        **({"max_grad_norm": spec.max_grad_norm} if spec.max_grad_norm is not None else {}),
    }


def _checkpoint_source(spec: LoraTrainJob, ctx: JobContext) -> Path:
    if spec.resume_from is None:
        return ctx.artifacts_dir / "checkpoints"
    path = ctx.resolve(spec.resume_from)
    if (path / "checkpoints").is_dir():  # an artifacts dir was given
        path = path / "checkpoints"
    if not path.is_dir():
        raise JobFailure(f"resume_from directory does not exist: {path}")
    return path


def _choose_resume(spec: LoraTrainJob, ctx: JobContext, fp: dict[str, Any]) -> T.Checkpoint | None:
    """The checkpoint to resume from, or None for a fresh start (old own checkpoints then removed).

    Raises:
        JobFailure: ``resume: true`` and no fitting checkpoint (none, a completed run, another set-up).
    """
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
        start_over(f"resume: no checkpoint in {source} (set resume: auto or false to start over)")
        return None
    if (source / "completed.json").is_file():
        start_over(f"resume: the run in {source} already completed (completed.json); use resume: false to train again",
                   f"checkpoints in {source} belong to a completed run: starting over")
        return None
    ckpt = T.load_checkpoint(found)
    diff = T.differences(ckpt.state.get("fingerprint", {}), fp)
    if diff:
        start_over(f"resume: checkpoint {found} was written with a different set-up ({', '.join(diff)} differ)",
                   f"checkpoint {found} does not fit this spec ({', '.join(diff)} differ): starting over")
        return None
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


# ---------------------------------------------------------------- the run's fixed inputs and state


@dataclass(frozen=True)
class TrainingPlan:
    """What the loop does, resolved from the spec (the role of mlx-lm's ``TrainingArgs``).

    Attributes are the spec's, except ``iters`` (resolved from ``epochs``) and ``steps_per_eval``
    (default ``iters``). Counts are in steps (batches); ``min_delta`` in nats/token.
    """

    iters: int
    batch_size: int
    max_seq_length: int
    steps_per_report: int
    steps_per_eval: int
    save_every: int
    val_batches: int
    grad_accumulation_steps: int
    grad_checkpoint: bool
    keep_best: bool
    seed: int
    patience: int | None = None
    min_delta: float = 0.0
    max_grad_norm: float | None = None
    max_loss_ratio: float | None = None

    @classmethod
    def of(cls, spec: LoraTrainJob, iters: int, steps_per_eval: int) -> TrainingPlan:
        """The plan of ``spec`` with its resolved ``iters`` and ``steps_per_eval``."""
        es = spec.early_stopping
        return cls(
            iters=iters, batch_size=spec.batch_size, max_seq_length=spec.max_seq_length,
            steps_per_report=spec.steps_per_report, steps_per_eval=steps_per_eval, save_every=spec.save_every,
            val_batches=spec.val_batches, grad_accumulation_steps=spec.grad_accumulation_steps,
            grad_checkpoint=spec.grad_checkpoint, keep_best=spec.keep_best, seed=spec.seed,
            patience=es.patience if es else None, min_delta=es.min_delta if es else 0.0,
            max_grad_norm=spec.max_grad_norm, max_loss_ratio=spec.divergence.max_loss_ratio,
        )


@dataclass
class ReportWindow:
    """The steps since the last train report: summed loss and tokens (mx scalars, or 0 when empty), steps, seconds."""

    loss: Any = 0
    tokens: Any = 0
    steps: int = 0
    seconds: float = 0.0

    def reset(self) -> None:
        self.loss, self.tokens, self.steps, self.seconds = 0, 0, 0, 0.0

    def to_json(self) -> dict[str, Any]:
        """``{"loss", "tokens", "steps", "seconds"}`` as plain numbers (a checkpoint's ``window``)."""
        return {
            "loss": float(self.loss.item()) if self.steps else 0.0,
            "tokens": int(self.tokens.item()) if self.steps else 0,
            "steps": self.steps,
            "seconds": self.seconds,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ReportWindow:
        """The window :meth:`to_json` wrote; the sums become float32 / int32 mx scalars again, as the
        loop's own sums are, so a resumed window adds up to the same bits."""
        import mlx.core as mx

        if not data.get("steps"):
            return cls()
        return cls(mx.array(data["loss"], dtype=mx.float32), mx.array(data["tokens"], dtype=mx.int32),
                   int(data["steps"]), float(data["seconds"]))


@dataclass
class TrainState:
    """Everything the loop carries from step to step and a checkpoint restores (besides the arrays:
    weights, Adam state and a pending accumulated gradient, which :func:`T.save_checkpoint` writes).

    ``history`` is ``{"train": [report, ...], "val": [validation, ...]}`` (the metrics.jsonl records);
    ``best`` ``{"val_loss", "iteration"}``; ``early_stopping`` ``{"reference", "bad_evals"}``;
    ``data_position`` the batch stream's ``{"epoch", "index"}``; seconds and token counts are totals
    over the run including any killed attempt it resumed.
    """

    iteration: int = 0
    window: ReportWindow = field(default_factory=ReportWindow)
    trained_tokens: int = 0
    train_seconds: float = 0.0
    val_seconds: float = 0.0
    history: dict[str, list[dict[str, Any]]] = field(default_factory=lambda: {"train": [], "val": []})
    best: dict[str, Any] = field(default_factory=lambda: {"val_loss": None, "iteration": None})
    early_stopping: dict[str, Any] = field(default_factory=lambda: {"reference": None, "bad_evals": 0})
    data_position: dict[str, int] = field(default_factory=lambda: {"epoch": 0, "index": 0})
    truncated: int = 0
    checkpoints_saved: int = 0
    grad_accum: Any = None
    #: loss of the first batch before any optimizer update (``train.initial_loss``, nats/token)
    initial_loss: float | None = None
    #: set when the loop detected divergence: ``{"reason", "iteration", "loss", ...}`` (not checkpointed)
    diverged: dict[str, Any] | None = None

    def to_json(self) -> dict[str, Any]:
        """The checkpoint's ``state.json`` fields (without ``format`` / ``iteration``, which the writer adds)."""
        return {
            "window": self.window.to_json(), "trained_tokens": self.trained_tokens, "train_seconds": self.train_seconds,
            "val_seconds": self.val_seconds, "history": self.history, "best": self.best,
            "early_stopping": self.early_stopping, "data_position": self.data_position, "truncated": self.truncated,
            "checkpoints_saved": self.checkpoints_saved, "initial_loss": self.initial_loss,
        }

    @classmethod
    def from_checkpoint(cls, ckpt: T.Checkpoint, grad_accum: Any) -> TrainState:
        """The state a checkpoint's ``state.json`` holds (fields it lacks keep their fresh-start values)."""
        data = ckpt.state
        fresh = cls()
        return cls(
            iteration=int(data["iteration"]),
            window=ReportWindow.from_json(data.get("window") or {}),
            trained_tokens=int(data.get("trained_tokens", 0)),
            train_seconds=float(data.get("train_seconds", 0.0)),
            val_seconds=float(data.get("val_seconds", 0.0)),
            history=data.get("history", fresh.history),
            best=data.get("best", fresh.best),
            early_stopping=data.get("early_stopping", fresh.early_stopping),
            data_position=data.get("data_position", fresh.data_position),
            truncated=int(data.get("truncated", 0)),
            checkpoints_saved=int(data.get("checkpoints_saved", 0)),
            grad_accum=grad_accum,
            initial_loss=data.get("initial_loss"),
        )


@dataclass
class _Inputs:
    """What :func:`run` checked before any mlx import: paths, record counts, the resolved length."""

    model_path: Path
    data_dir: Path
    counts: dict[str, int]
    dataset_info: dict[str, Any]
    iters: int
    steps_per_eval: int


@dataclass
class _Setup:
    """What the set-up phase built: the model ready to train and the run's fixed facts."""

    loaded: T.LoadedModel
    train_set: Any
    valid_set: Any
    num_layers: int
    trainable: int
    adapters_dir: Path
    adapter_cfg: dict[str, Any]
    fingerprint: dict[str, Any]

    @property
    def model(self) -> Any:
        return self.loaded.model

    @property
    def vocab_size(self) -> int | None:
        """The model's vocabulary size from its config (``text_config`` too), None when it has none."""
        config = self.loaded.config
        value = config.get("vocab_size") or (config.get("text_config") or {}).get("vocab_size")
        return int(value) if isinstance(value, int) else None


@dataclass
class _Outcome:
    """How the loop ended: steps done, early stop, wall seconds (validation included), peak GB, truncations."""

    iterations_done: int
    stopped_early: bool
    wall_seconds: float
    peak_memory_gb: float
    truncated: int


# ---------------------------------------------------------------- the job


def run(spec: LoraTrainJob, ctx: JobContext) -> dict[str, dict[str, Any]]:
    """Run a ``lora_train`` job; returns ``{"train": {...}}`` (see the module docstring and docs/jobs.md).

    Raises:
        JobFailure: missing/invalid data, a model that does not load, too many layers, a resume that
            cannot be honoured.
        DivergedError: the run diverged (see :func:`check_diverged`; the summary is kept).
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
    inputs = _Inputs(model_path, data_dir, counts, dataset_info, iters, spec.steps_per_eval or iters)

    from oodatcaa.jobs.cpu_fastpath import describe_blas

    ctx.config_extra["blas"] = describe_blas()
    plotter = Plotter()  # imports matplotlib in a helper process while we load and train
    try:
        return _train(spec, ctx, inputs, plotter)
    finally:
        plotter.close()


def _train(spec: LoraTrainJob, ctx: JobContext, inputs: _Inputs, plotter: Plotter) -> dict[str, dict[str, Any]]:
    """The four phases: set-up, resume, the loop, adapters + summary."""
    import mlx.optimizers as optim

    plan = TrainingPlan.of(spec, inputs.iters, inputs.steps_per_eval)
    setup = _setup(spec, ctx, inputs)
    total_updates = plan.iters // plan.grad_accumulation_steps
    optimizer = optim.Adam(learning_rate=T.build_learning_rate(spec, total_updates))
    ckpt, state = _resume(spec, ctx, setup, optimizer)
    ctx.config_extra["resolved"] = {
        "iters": plan.iters, "epochs": spec.epochs, "steps_per_eval": plan.steps_per_eval,
        "optimizer_updates": total_updates, "num_layers": setup.num_layers, "scale": spec.lora.scale,
        "trainable_parameters": setup.trainable, "profile": spec.profile, "base_quantization": setup.loaded.quantization,
        "resumed_from": str(ckpt.path) if ckpt else None, "resumed_at_iteration": state.iteration,
    }
    start_it = state.iteration
    loop = _Loop(plan, ctx, setup, optimizer, state)
    outcome = loop.run(resumed=ckpt is not None)
    if outcome.stopped_early:
        ctx.log(f"early stopping at iteration {outcome.iterations_done}: no improvement for {plan.patience} validations")
    selected = _save_adapters(ctx, setup, keep_best=plan.keep_best, best_dir=loop.best_dir)
    write_json(loop.ckpt_root / "completed.json", {"iteration": outcome.iterations_done, "iters": plan.iters})
    if not state.history["train"]:
        raise JobFailure("training produced no loss report")
    png = plotter.plot(
        ctx.run_dir / "loss_curve.png", state.history["train"], state.history["val"],
        f"{spec.fine_tune_type} r={spec.lora.rank} alpha={spec.lora.alpha:g} lr={spec.learning_rate:g} bs={spec.batch_size}",
    )
    summary = _summary(spec, inputs, setup, state, outcome, start_it=start_it, selected=selected, png=png)
    result = {"train": summary}
    check_diverged(summary, spec, state.diverged, outcome.iterations_done, result)
    if summary["final_val_loss"] is not None:
        ctx.log(f"final train loss {summary['final_loss']:.4f}, val loss {summary['final_val_loss']:.4f}")
    return result


def _setup(spec: LoraTrainJob, ctx: JobContext, inputs: _Inputs) -> _Setup:
    """Seed, load (and quantize) the model, read the splits, add the LoRA/DoRA layers (or unfreeze
    blocks) and write ``adapters/adapter_config.json``. The order matters: the LoRA weights are drawn
    from ``mx.random`` right after seeding and loading, as in an uninterrupted run."""
    from mlx_lm.utils import save_config

    seed_everything(spec.seed)
    loaded = T.load_for_training(inputs.model_path, quantize=spec.quantize, group_size=spec.quantize_group_size)
    model = loaded.model
    ctx.log(f"loaded {inputs.model_path} in {loaded.load_seconds:.2f} s"
            + (f" (quantized to {spec.quantize} bits)" if loaded.quantized_here else ""))
    train_set, valid_set, _test = T.load_splits(inputs.data_dir, loaded.tokenizer, spec.mask_prompt)

    layers = len(model.layers)
    num_layers = T.resolve_num_layers(spec.num_layers, layers, MAX_DEFAULT_LORA_LAYERS)
    lora = spec.lora
    trainable = T.setup_fine_tune(model, spec.fine_tune_type, num_layers, lora.rank, lora.scale, lora.dropout)
    what = (spec.fine_tune_type if spec.fine_tune_type == "full"
            else f"{spec.fine_tune_type} rank {lora.rank} alpha {lora.alpha:g} (scale {lora.scale:g})")
    ctx.log(f"{what} on the last {num_layers}/{layers} layers: {trainable} trainable parameters")

    adapters_dir = ctx.artifacts_dir / "adapters"
    adapter_cfg = T.adapter_config(
        spec, model_path=inputs.model_path, data_dir=inputs.data_dir, adapters_dir=adapters_dir, num_layers=num_layers,
        quantization=loaded.quantization, quantized_here=loaded.quantized_here, iters=inputs.iters,
    )
    adapters_dir.mkdir(parents=True, exist_ok=True)
    save_config(dict(adapter_cfg), adapters_dir / "adapter_config.json")
    fp = fingerprint(spec, model_path=inputs.model_path, dataset=inputs.dataset_info, num_layers=num_layers)
    return _Setup(loaded, train_set, valid_set, num_layers, trainable, adapters_dir, adapter_cfg, fp)


def _resume(spec: LoraTrainJob, ctx: JobContext, setup: _Setup, optimizer: Any) -> tuple[T.Checkpoint | None, TrainState]:
    """The checkpoint resumed (None for a fresh start) and the state to continue from; on resume the
    model's weights and ``optimizer``'s state (moments, step, hence the schedule) are restored in place.

    Raises:
        JobFailure: see :func:`_choose_resume`; or the checkpoint's arrays do not fit this model set-up.
    """
    ckpt = _choose_resume(spec, ctx, setup.fingerprint)
    if ckpt is None:
        return None, TrainState()
    import mlx.core as mx
    from mlx.utils import tree_flatten

    model = setup.model
    T.restore_tree(model.trainable_parameters(), ckpt.adapters, "adapter weights")
    model.load_weights(list(ckpt.adapters.items()), strict=False)
    optimizer.init(model.trainable_parameters())
    optimizer.state = T.restore_tree(optimizer.state, ckpt.optimizer, "optimizer state")
    grad_accum = None
    if ckpt.grad_accum is not None:
        grad_accum = T.restore_tree(model.trainable_parameters(), ckpt.grad_accum, "accumulated gradient")
    state = TrainState.from_checkpoint(ckpt, grad_accum)
    mx.eval(dict(tree_flatten(optimizer.state)))
    ctx.log(f"resumed from {ckpt.path} at iteration {state.iteration} (optimizer step {int(optimizer.state['step'].item())})")
    return ckpt, state


class _Loop:
    """The training loop (what ``mlx_lm.tuner.trainer.train`` does per step) with validation, best
    weights, early stopping and checkpoints. Mutates ``state`` (and the model and optimizer)."""

    def __init__(self, plan: TrainingPlan, ctx: JobContext, setup: _Setup, optimizer: Any, state: TrainState):
        self.plan, self.ctx, self.setup, self.optimizer, self.state = plan, ctx, setup, optimizer, state
        self.model = setup.model
        self.ckpt_root = ctx.artifacts_dir / "checkpoints"
        self.best_dir = self.ckpt_root / "best"
        # built after the optimizer state is restored: its compile capture list holds that state
        self.runner = T.StepRunner(self.model, optimizer, plan.grad_accumulation_steps, plan.grad_checkpoint,
                                   plan.max_grad_norm)
        self.stream = T.BatchStream(setup.train_set, plan.batch_size, plan.max_seq_length, plan.seed,
                                    start=state.data_position)
        self.stream.truncated = int(state.truncated)

    def run(self, *, resumed: bool) -> _Outcome:
        """Train from ``state.iteration`` to ``plan.iters`` (or an early stop); see the module docstring."""
        import mlx.core as mx

        plan, state, ctx = self.plan, self.state, self.ctx
        ctx.metric("start", total_iterations=plan.iters, start_iteration=state.iteration,
                   batches_per_epoch=self.stream.batches_per_epoch, resumed=int(resumed))
        for record in state.history["train"]:
            ctx.metric("train", **record, restored=True)
        for record in state.history["val"]:
            ctx.metric("val", **record, restored=True)
        mx.reset_peak_memory()
        start_wall = time.perf_counter()
        self.model.train()
        stopped_early = self.validate(0) if state.iteration == 0 else False
        it = state.iteration
        while it < plan.iters and not stopped_early and state.diverged is None:
            it += 1
            self.step(it)
            if it % plan.steps_per_report == 0 or it == plan.iters:
                self.report(it)
            if it % plan.steps_per_eval == 0 or it == plan.iters:
                stopped_early = self.validate(it)
            if it % plan.save_every == 0 and it < plan.iters and not stopped_early:
                self.checkpoint(it)
        state.iteration = it
        stopped_early = stopped_early and it < plan.iters
        if state.window.steps:  # stopped early inside a report window: report what was trained
            self.report(it)
        if stopped_early:
            ctx.metric("early_stop", iteration=it, best_iteration=state.best["iteration"],
                       best_val_loss=state.best["val_loss"])
        return _Outcome(it, stopped_early, time.perf_counter() - start_wall, mx.get_peak_memory() / 1e9,
                        self.stream.truncated)

    def step(self, it: int) -> None:
        """One training step (batch ``it``, 1-based): the optimizer updates every ``grad_accumulation_steps``."""
        import mlx.core as mx

        window, state = self.state.window, self.state
        tic = time.perf_counter()
        batch = self.stream.next()
        mx.random.seed(T.step_seed(self.plan.seed, it))
        lvalue, toks, state.grad_accum = self.runner.step(batch, state.grad_accum,
                                                          it % self.plan.grad_accumulation_steps == 0)
        window.loss += lvalue
        window.tokens += toks
        window.steps += 1
        mx.eval(self.runner.state, window.loss, window.tokens, state.grad_accum)
        window.seconds += time.perf_counter() - tic
        if state.initial_loss is None:  # step 1's loss is computed before its (first) update
            state.initial_loss = float(lvalue.item())

    def report(self, it: int) -> None:
        """One train report over the current window, which is then emptied."""
        import mlx.core as mx

        window, state = self.state.window, self.state
        window_tokens = int(window.tokens.item())
        state.trained_tokens += window_tokens
        state.train_seconds += window.seconds
        record = {
            "iteration": it,
            "train_loss": window.loss.item() / window.steps,
            "learning_rate": float(self.optimizer.learning_rate.item()),
            "tokens_per_second": window_tokens / window.seconds if window.seconds > 0 else None,
            "iterations_per_second": window.steps / window.seconds if window.seconds > 0 else None,
            "trained_tokens": state.trained_tokens,
            "peak_memory_gb": mx.get_peak_memory() / 1e9,
            "window_seconds": round(window.seconds, 6),
        }
        state.history["train"].append(record)
        self.ctx.metric("train", **record)
        window.reset()
        self._check_train_loss(it, record["train_loss"])

    def _check_train_loss(self, it: int, loss: float) -> None:
        """Mark the run diverged (the loop stops) for a non-finite report loss, or one above
        ``max_loss_ratio`` x the loss before training: the larger of ``initial_loss`` (one batch) and
        the step-0 validation loss (the whole validation set), so one easy first batch is no false alarm."""
        state, ratio = self.state, self.plan.max_loss_ratio
        before = [state.initial_loss] + [v["val_loss"] for v in state.history["val"][:1] if v["iteration"] == 0]
        reference = max((x for x in before if x is not None and T.finite(x)), default=None)
        if not T.finite(loss):
            state.diverged = {"reason": "non_finite", "iteration": it, "loss": loss}
        elif ratio is not None and reference is not None and reference > 0 and loss > ratio * reference:
            state.diverged = {"reason": "loss_ratio", "iteration": it, "loss": loss, "max_loss_ratio": ratio,
                              "reference_loss": round(reference, 6), "ratio": round(loss / reference, 4)}
        if state.diverged is not None:
            self.ctx.metric("diverged", **{k: v for k, v in state.diverged.items() if T.finite(v) or isinstance(v, str)})

    def validate(self, it: int) -> bool:
        """Validate, record, update the best weights and early stopping; True when training should stop."""
        plan, state = self.plan, self.state
        tic = time.perf_counter()
        val_loss, _tokens = T.evaluate_loss(self.model, self.setup.valid_set, plan.batch_size, plan.max_seq_length,
                                            plan.val_batches)
        self.model.train()
        seconds = time.perf_counter() - tic
        state.val_seconds += seconds
        best = state.best
        improved = T.finite(val_loss) and (best["val_loss"] is None or val_loss < best["val_loss"])
        if improved:
            best.update(val_loss=val_loss, iteration=it)
            if plan.keep_best:
                self._save_best(it, val_loss)
        record = {"iteration": it, "val_loss": val_loss, "val_seconds": round(seconds, 4), "best": int(improved)}
        state.history["val"].append(record)
        self.ctx.metric("val", **record)
        if not T.finite(val_loss) and state.diverged is None:
            state.diverged = {"reason": "non_finite", "iteration": it, "loss": val_loss, "what": "val_loss"}
            return True
        if plan.patience is None:
            return False
        ref = state.early_stopping
        if ref["reference"] is None or (T.finite(val_loss) and val_loss < ref["reference"] - plan.min_delta):
            ref.update(reference=val_loss, bad_evals=0)
            return False
        ref["bad_evals"] += 1
        return bool(ref["bad_evals"] >= plan.patience)

    def _save_best(self, it: int, val_loss: float) -> None:
        import mlx.core as mx
        from mlx.utils import tree_flatten

        self.best_dir.mkdir(parents=True, exist_ok=True)
        mx.save_safetensors(str(self.best_dir / "adapters.safetensors"), dict(tree_flatten(self.model.trainable_parameters())))
        write_json(self.best_dir / "best.json", {"iteration": it, "val_loss": val_loss})

    def checkpoint(self, it: int) -> None:
        """Write the resumable checkpoint of iteration ``it`` (state, weights, optimizer, pending gradient)."""
        state = self.state
        state.data_position = self.stream.position()
        state.truncated = self.stream.truncated
        state.checkpoints_saved += 1
        extra = {"best_adapters.safetensors": self.best_dir / "adapters.safetensors"}
        path = T.save_checkpoint(self.ckpt_root, it, model=self.model, optimizer=self.optimizer,
                                 grad_accum=state.grad_accum, state={**state.to_json(), "fingerprint": self.setup.fingerprint},
                                 extra_files=extra)
        self.ctx.metric("checkpoint", iteration=it, path=str(path.relative_to(self.ctx.artifacts_dir)))


def _save_adapters(ctx: JobContext, setup: _Setup, *, keep_best: bool, best_dir: Path) -> str:
    """Write ``adapters/adapters.safetensors``: the best weights with ``keep_best`` (the last ones then go
    to ``adapters_last/``), else the last. Returns ``"best"`` or ``"last"``."""
    import mlx.core as mx
    from mlx.utils import tree_flatten

    last_weights = dict(tree_flatten(setup.model.trainable_parameters()))
    if keep_best and (best_dir / "adapters.safetensors").is_file():
        _save_adapter_dir(ctx.artifacts_dir / "adapters_last", last_weights, setup.adapter_cfg)
        shutil.copyfile(best_dir / "adapters.safetensors", setup.adapters_dir / "adapters.safetensors")
        return "best"
    mx.save_safetensors(str(setup.adapters_dir / "adapters.safetensors"), last_weights)
    return "last"


def _summary(spec: LoraTrainJob, inputs: _Inputs, setup: _Setup, state: TrainState, outcome: _Outcome, *,
             start_it: int, selected: str, png: bool) -> dict[str, Any]:
    """The ``train`` namespace of the summary (docs/jobs.md lists every key)."""
    train, val = state.history["train"], state.history["val"]
    train_seconds, trained_tokens, done = state.train_seconds, state.trained_tokens, outcome.iterations_done
    lora, quantization = spec.lora, setup.loaded.quantization
    return {
        "initial_loss": state.initial_loss,
        "first_loss": train[0]["train_loss"],
        "final_loss": train[-1]["train_loss"],
        "first_val_loss": val[0]["val_loss"] if val else None,
        "final_val_loss": val[-1]["val_loss"] if val else None,
        "best_val_loss": state.best["val_loss"],
        "best_iteration": state.best["iteration"],
        "adapters_selected": selected,
        "tokens_per_second": trained_tokens / train_seconds if train_seconds > 0 else None,
        "iterations_per_second": done / train_seconds if train_seconds > 0 else None,
        "peak_memory_gb": round(outcome.peak_memory_gb, 6),
        "iters": inputs.iters,
        "iterations_done": done,
        "epochs": spec.epochs,
        "stopped_early": int(outcome.stopped_early),
        "resumed_at_iteration": start_it,
        "checkpoints_saved": state.checkpoints_saved,
        "trained_tokens": trained_tokens,
        "truncated_sequences": outcome.truncated,
        "train_seconds": round(train_seconds, 4),
        "val_seconds": round(state.val_seconds, 4),
        "wall_seconds": round(outcome.wall_seconds, 4),
        "load_seconds": round(setup.loaded.load_seconds, 4),
        "profile": spec.profile,
        "fine_tune_type": spec.fine_tune_type,
        "quantize_bits": quantization["bits"] if quantization else None,
        "rank": lora.rank,
        "alpha": lora.alpha,
        "scale": lora.scale,
        "dropout": lora.dropout,
        "batch_size": spec.batch_size,
        "grad_accumulation_steps": spec.grad_accumulation_steps,
        "grad_checkpoint": int(spec.grad_checkpoint),
        "num_layers": setup.num_layers,
        "trainable_parameters": setup.trainable,
        "learning_rate": spec.learning_rate,
        "lr_schedule": spec.lr_schedule.name if spec.lr_schedule else "constant",
        "final_learning_rate": train[-1]["learning_rate"],
        "train_examples": inputs.counts["train.jsonl"],
        "valid_examples": inputs.counts["valid.jsonl"],
        "vocab_size": setup.vocab_size,
        "max_grad_norm": spec.max_grad_norm,
        "loss_curve_png": int(png),
    }


def check_diverged(summary: dict[str, Any], spec: LoraTrainJob, detected: dict[str, Any] | None, iteration: int,
                   result: dict[str, dict[str, Any]]) -> None:
    """Raise :class:`DivergedError` (with ``result`` kept as the summary) when the run diverged.

    ``detected`` is what the loop found (a non-finite loss, a report loss above ``max_loss_ratio`` x
    the loss before training); then, on the finished run: a non-finite final loss, a final validation loss more
    than ``divergence.max_val_increase`` above the first, or one at the uniform level (within
    ``uniform_tolerance`` x ln(vocab_size) of ln(vocab_size)) after a first validation loss clearly below it.
    ``details`` carry ``reason`` and the numbers compared.
    """
    div = spec.divergence
    initial, first_val, final_val = summary["initial_loss"], summary["first_val_loss"], summary["final_val_loss"]
    facts: dict[str, Any] | None = detected
    if facts is None:
        for key in ("final_loss", "final_val_loss"):
            value = summary[key]
            if value is not None and not finite(value):
                facts = {"reason": "non_finite", "iteration": iteration, "loss": value, "what": key}
                break
    vocab = summary.get("vocab_size")
    uniform = math.log(vocab) if isinstance(vocab, int) and vocab > 1 else None
    if facts is None and finite(first_val) and finite(final_val):
        assert first_val is not None and final_val is not None
        if div.max_val_increase is not None and final_val > first_val + div.max_val_increase:
            facts = {"reason": "val_increase", "iteration": iteration, "loss": final_val,
                     "max_val_increase": div.max_val_increase}
        elif uniform is not None and div.uniform_tolerance is not None:
            level = uniform * (1 - div.uniform_tolerance)
            if first_val < level and final_val >= level:
                facts = {"reason": "uniform", "iteration": iteration, "loss": final_val, "uniform_loss": round(uniform, 6)}
    if facts is None:
        return
    facts = {**facts, "first_val_loss": first_val, "final_val_loss": final_val}
    what = {
        "non_finite": f"{facts.get('what', 'train_loss')} is {facts.get('loss')}",
        "loss_ratio": f"train loss {facts.get('loss')} at iteration {facts.get('iteration')} is over "
                      f"{facts.get('max_loss_ratio')} x the loss before training {facts.get('reference_loss')}",
        "val_increase": f"validation loss went {first_val} -> {final_val} (more than +{div.max_val_increase})",
        "uniform": f"validation loss went {first_val} -> {final_val}, the uniform level ln({vocab}) = "
                   f"{facts.get('uniform_loss')}: the model collapsed to a uniform distribution",
    }[str(facts["reason"])]
    reason = facts.pop("reason")
    it, loss = facts.pop("iteration", iteration), facts.pop("loss", None)
    raise DivergedError(f"training diverged: {what} (try a lower learning_rate)", iteration=it, loss=loss,
                        initial_loss=initial, summary=result, reason=reason, **facts)

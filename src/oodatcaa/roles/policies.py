"""Refiner policies: one ladder of adaptations per failure family (pure functions of queue data).

A **policy** answers one family of failures. It declares the :class:`FailureKind` values it handles,
a *trigger* (for ``criteria_failed``: which failed metric names concern it, read from
``failure.details["failed_metrics"]``), the builder step it changes, and a **ladder** of rungs. Each
rung is a pure function ``(story, failure, job spec) -> Change | None``; ``None`` means "this rung
cannot help this spec" (grad checkpointing is already on, the batch is 1, ...). One rung is applied
per adaptation loop: the first rung of the ladder that has not been applied to that step in the
current plan (``Task.adaptations`` records ``<policy>.<rung>`` per loop; a Start-Over Gate starts the
ladders again) and that changes the spec. A ladder with
no rung left ends at **a person** (:class:`Escalation`). Policies read only ``failure.kind`` and
``failure.details`` — never ``failure.message``, which is for people.

The policies, in their default order (``[refiner] policies`` in config.toml reorders or disables
them; the first policy whose kinds and trigger match decides):

``branch_missing`` (``branch_missing``)
    ``rebuild`` every step from its base (the Builder recreates the branch). Repeatable.
``merge_conflict`` (``merge_conflict``)
    ``rebase_on_trunk``: the first step's branch is reset to the trunk, every step rebuilt. Repeatable.
``interrupted`` (``timeout``, ``job_killed``)
    ``resume`` from the last checkpoint with the remaining steps (``lora_train``: ``resume`` not false,
    checkpoints at least every tenth of the run; a killed job of another kind runs again unchanged)
    -> ``fewer_steps`` per run (``iters``/``epochs`` or ``memory_profile.steps`` halved) -> a person.
``dataset`` (``criteria_failed`` on ``dataset.rows_too_long`` / ``cross_split_duplicates`` /
``rows_near_duplicate``; ``job_error`` of a dataset step whose details count rows too long)
    ``raise_max_tokens`` to the measured ``tokens_longest`` -> ``group_near_copies`` (a ``source`` split
    re-done with a lower ``near_duplicate_threshold``, so looser near-copies share a split) -> a person.
``divergence`` (``diverged``)
    ``lower_lr_warmup``: learning rate / 10, a linear warm-up and gradient clipping
    (``max_grad_norm: 1.0``) -> ``lower_lr_again``: / 10 again -> a person.
``memory`` (``oom``; ``criteria_failed`` on a ``<namespace>.peak_memory_gb`` / ``*_peak_gb`` metric
of the step's own kind)
    ``grad_checkpoint`` -> ``halve_batch`` (gradient accumulation doubled: effective batch kept) ->
    ``shorter_sequences`` (``max_seq_length`` down to the longest measured row + 1, so no row is cut)
    -> ``fewer_layers`` (half the LoRA layers) -> ``qlora`` (4-bit base) -> a person.
``throughput`` (``criteria_failed`` on ``*.tokens_per_second`` / ``*_tps`` of a training step)
    ``fewer_layers`` -> ``qlora`` -> a person.
``loss`` (``criteria_failed`` on a ``*loss*`` / ``*perplexity*`` metric)
    ``more_iterations`` (doubled) -> ``higher_lr`` (doubled) -> a person.

Metric prefixes are matched to job kinds through the registry's summary namespaces (``train`` ->
``lora_train``, ``memory`` -> ``memory_profile``, ``eval`` -> ``evaluate``), so an
``eval.peak_memory_gb`` failure changes the evaluate step, never the training batch.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from oodatcaa.core.config import REFINER_POLICY_ORDER
from oodatcaa.core.failures import Failure, FailureKind
from oodatcaa.core.models import AdaptationRecord, Subtask, Task
from oodatcaa.core.statuses import TaskStatus
from oodatcaa.jobs.registry import job_kind
from oodatcaa.jobs.spec import JobSpecError, model_of_kind, parse_job_spec

S = TaskStatus
K = FailureKind

#: Kinds whose summary the memory/throughput ladders may change (they train: batch, layers, QLoRA).
TRAINING_KINDS = frozenset({"lora_train", "memory_profile"})


@dataclass(frozen=True)
class Change:
    """What a rung returns: the changed job spec (a plain mapping, as stored on the step) and why."""

    after: dict[str, Any]
    rationale: str


#: A rung: pure function of (story, typed failure, the target step's job spec) -> a change or None.
RungFn = Callable[[Task, Failure, dict[str, Any]], "Change | None"]


@dataclass(frozen=True)
class Rung:
    """One step of a ladder: ``name`` (recorded as ``<policy>.<name>``) and its pure function."""

    name: str
    adapt: RungFn
    repeatable: bool = False  # git recoveries may run every loop; parameter changes run once


@dataclass
class Adaptation:
    """One applied rung: which step changed, its spec before and after, why, and the evidence.

    ``rule`` is ``<policy>.<rung>`` (``memory.halve_batch``); ``evidence`` lists the failure's facts
    (metric values from ``failure.details``) the report shows.
    """

    rule: str
    step_id: str
    before: dict[str, Any]
    after: dict[str, Any]
    rationale: str
    rebuild_all: bool = False  # every step goes back to the Builder, not only the changed one
    reset_to_trunk: bool = False  # and the first step's branch starts again from the current trunk
    evidence: list[str] = field(default_factory=list)

    def validation_error(self) -> str | None:
        """``None`` when :attr:`after` passes :func:`parse_job_spec`, else the error text."""
        try:
            parse_job_spec(self.after, source=f"adapted job of {self.step_id}")
        except JobSpecError as exc:
            return str(exc)
        return None


@dataclass
class Escalation:
    """A ladder that has no rung left for this failure: the story goes to a person."""

    policy: str
    step_id: str | None
    reason: str
    evidence: list[str] = field(default_factory=list)


TargetFn = Callable[[Task, Failure, "Subtask | None"], "Subtask | None"]


@dataclass(frozen=True)
class Policy:
    """A failure family: the kinds it handles, the step it changes (``target``; None = not mine), its ladder."""

    name: str
    handles: frozenset[FailureKind]
    target: TargetFn
    rungs: tuple[Rung, ...]
    rebuild_all: bool = False
    reset_to_trunk: bool = False

    def decide(self, task: Task, failure: Failure, step: Subtask | None) -> Adaptation | Escalation | None:
        """The next rung's adaptation, an :class:`Escalation` when the ladder is spent, ``None`` when
        this policy does not apply to the failure."""
        if failure.kind not in self.handles:
            return None
        target = self.target(task, failure, step)
        if target is None:
            return None
        job = copy.deepcopy(target.job or {})
        done = {r.rule for r in current_plan_adaptations(task) if r.step == target.id}
        tried = []
        for rung in self.rungs:
            rule = f"{self.name}.{rung.name}"
            if rule in done and not rung.repeatable:
                tried.append(f"{rung.name} (applied earlier)")
                continue
            change = rung.adapt(task, failure, copy.deepcopy(job))
            if change is None:
                tried.append(f"{rung.name} (cannot help this spec)")
                continue
            return Adaptation(rule, target.id, job, change.after, change.rationale, rebuild_all=self.rebuild_all,
                              reset_to_trunk=self.reset_to_trunk, evidence=evidence(failure))
        return Escalation(self.name, target.id,
                          f"the {self.name} ladder has no rung left for {target.id}: {'; '.join(tried)}",
                          evidence(failure))


# ---------------------------------------------------------------- reading queue data


def current_plan_adaptations(task: Task) -> list[AdaptationRecord]:
    """The adaptation records of the current plan: the last ``adapt_loops`` (each loop appends one;
    the Start-Over Gate resets the count and restores the backlog's jobs, so every ladder starts again)."""
    return task.adaptations[-task.adapt_loops:] if task.adapt_loops > 0 else []


def failure_of(task: Task) -> Failure | None:
    """The story's failure; a queue written before typed failures may carry it only on a step."""
    if task.failure is not None:
        return task.failure
    return next((s.failure for s in task.builds() if s.failure is not None), None)


def failed_step(task: Task, failure: Failure) -> Subtask | None:
    """The builder step the failure names, else the one waiting in ``needs_adapt``."""
    steps = task.builds()
    named = next((s for s in steps if s.id == failure.item), None)
    return named or next((s for s in steps if s.status == S.NEEDS_ADAPT), None)


def failed_metrics(failure: Failure) -> list[str]:
    """``details["failed_metrics"]`` of a ``criteria_failed`` failure (metric names, both sides)."""
    return [str(m) for m in failure.details.get("failed_metrics", [])]


def evidence(failure: Failure) -> list[str]:
    """The failure's facts for a report: one line per failed criterion (observed vs expected), then
    every other detail as ``key: value``."""
    lines = [f"kind: {failure.kind.value}"]
    for crit in failure.details.get("failed", []) or []:
        if isinstance(crit, dict):
            lines.append(f"{crit.get('id')} {crit.get('outcome')}: observed {crit.get('observed')!r}, "
                         f"expected {crit.get('expected')!r}")
    for key, value in sorted(failure.details.items()):
        if key != "failed":
            lines.append(f"{key}: {value!r}"[:300])
    return lines


def _kind(step: Subtask) -> str:
    return str((step.job or {}).get("kind", ""))


def _namespace(kind: str) -> str | None:
    try:
        return job_kind(kind).namespace
    except LookupError:
        return None


def _has(job: dict[str, Any], name: str) -> bool:
    """Whether the job's kind has the spec field ``name``."""
    try:
        return name in model_of_kind(str(job.get("kind"))).model_fields
    except JobSpecError:
        return False


def _effective(job: dict[str, Any]) -> Any | None:
    """The validated spec (profile defaults applied), or None for a spec that does not validate."""
    try:
        return parse_job_spec(job)
    except JobSpecError:
        return None


def measured(task: Task, step_id: str, metric: str) -> Any:
    """``namespace.key`` as the step last reported it (its result summary, a failed run's too), else
    the story's recorded metrics; ``None`` when unknown."""
    ns, _, key = metric.partition(".")
    step = next((s for s in task.builds() if s.id == step_id), None)
    summary = ((step.result or {}).get("summary") if step is not None else None) or {}
    if isinstance(summary.get(ns), dict) and summary[ns].get(key) is not None:
        return summary[ns][key]
    return task.metrics.get(metric)


def _step_of_namespace(task: Task, namespace: str, kinds: Iterable[str] | None = None) -> Subtask | None:
    """The story's last builder step whose job kind writes ``namespace`` (and is one of ``kinds``)."""
    allowed = set(kinds) if kinds is not None else None
    fits = [s for s in task.builds() if _namespace(_kind(s)) == namespace and (allowed is None or _kind(s) in allowed)]
    return fits[-1] if fits else None


def _last_of_kind(task: Task, step: Subtask | None, kinds: Iterable[str]) -> Subtask | None:
    """The failed step when it is of ``kinds``, else the story's last builder step of ``kinds``."""
    allowed = set(kinds)
    if step is not None and _kind(step) in allowed:
        return step
    fits = [s for s in task.builds() if _kind(s) in allowed]
    return fits[-1] if fits else None


def _metric_step(task: Task, failure: Failure, suffixes: tuple[str, ...], kinds: Iterable[str] | None) -> Subtask | None:
    """The step whose own namespace a failed metric ending in one of ``suffixes`` belongs to."""
    for metric in failed_metrics(failure):
        ns, _, key = metric.partition(".")
        if key and key.endswith(suffixes):
            target = _step_of_namespace(task, ns, kinds)
            if target is not None:
                return target
    return None


# ---------------------------------------------------------------- shared rungs


def _scaled_lr(job: dict[str, Any], factor: float) -> tuple[dict[str, Any], float, float] | None:
    """``job`` with its learning rate (and an explicit schedule's initial/final rate) times ``factor``."""
    spec = _effective(job)
    if spec is None or not hasattr(spec, "learning_rate"):
        return None
    lr = float(spec.learning_rate)
    new = lr * factor
    if not 0 < new <= 10:
        return None
    after = {**job, "learning_rate": float(f"{new:.6g}")}
    sched = job.get("lr_schedule")
    if isinstance(sched, dict) and sched.get("arguments"):
        args = list(sched["arguments"])
        args[0] = float(f"{float(args[0]) * factor:.6g}")
        if sched.get("name") in ("cosine_decay", "linear_schedule") and len(args) > 1:
            end = 2 if sched.get("name") == "cosine_decay" else 1
            if end < len(args):
                args[end] = float(f"{float(args[end]) * factor:.6g}")
        after["lr_schedule"] = {**sched, "arguments": args}
    return after, lr, after["learning_rate"]


def _iters(task: Task, job: dict[str, Any], step_id: str) -> int | None:
    spec = _effective(job)
    if spec is not None and getattr(spec, "iters", None) is not None:
        return int(spec.iters)
    value = measured(task, step_id, "train.iters")
    return int(value) if isinstance(value, (int, float)) else None


def _step_id(task: Task, job: dict[str, Any]) -> str:
    """The id of the step holding ``job`` (rungs get the spec; measured values are per step)."""
    return next((s.id for s in task.builds() if (s.job or {}) == job), "")


def rung_grad_checkpoint(task: Task, failure: Failure, job: dict[str, Any]) -> Change | None:
    """Gradient checkpointing on (activations recomputed in the backward pass instead of stored)."""
    if not _has(job, "grad_checkpoint") or job.get("grad_checkpoint"):
        return None
    return Change({**job, "grad_checkpoint": True},
                  "gradient checkpointing on: block activations are recomputed in the backward pass, not kept")


def rung_halve_batch(task: Task, failure: Failure, job: dict[str, Any]) -> Change | None:
    """Batch halved; for training kinds gradient accumulation doubled, so the effective batch is kept."""
    spec = _effective(job)
    if spec is None or not hasattr(spec, "batch_size") or spec.batch_size <= 1:
        return None
    batch = int(spec.batch_size)
    after = {**job, "batch_size": batch // 2}
    if _has(job, "grad_accumulation_steps"):
        accum = int(spec.grad_accumulation_steps)
        after["grad_accumulation_steps"] = accum * 2
        return Change(after, f"batch {batch} -> {batch // 2} with gradient accumulation {accum} -> {accum * 2} "
                             f"(effective batch {batch * accum} -> {batch // 2 * accum * 2})")
    return Change(after, f"batch {batch} -> {batch // 2} (the loss is token-weighted: the result does not change)")


def _dataset_stats(task: Task, data: str | None) -> tuple[int, str] | None:
    """``(longest row in tokens, step id)`` of a dataset step of the story that measured ``data`` with a
    tokenizer (``token_counter`` ``tokenizer:<model>``; whitespace words are no token counts)."""
    for step in reversed(task.builds()):
        job = step.job or {}
        if job.get("kind") != "dataset" or data not in (job.get("data"), job.get("output")):
            continue
        summary = ((step.result or {}).get("summary") or {}).get("dataset") or {}
        counter = summary.get("token_counter")
        longest = summary.get("tokens_longest", summary.get("tokens_max"))  # too-long rows included
        if isinstance(longest, (int, float)) and isinstance(counter, str) and counter.startswith("tokenizer"):
            return int(longest), step.id
    return None


def rung_shorter_sequences(task: Task, failure: Failure, job: dict[str, Any]) -> Change | None:
    """``max_seq_length`` down to the longest row the dataset step measured (tokenizer counts) + 1 for
    the EOS token mlx-lm appends: shorter batches and no row is cut. Without such statistics: None."""
    spec = _effective(job)
    if spec is None or not hasattr(spec, "max_seq_length") or not getattr(spec, "data", None):
        return None
    stats = _dataset_stats(task, spec.data)
    if stats is None:
        return None
    longest, source = stats
    new = max(8, longest + 1)
    if new >= spec.max_seq_length:
        return None
    return Change({**job, "max_seq_length": new},
                  f"max_seq_length {spec.max_seq_length} -> {new}: {source} measured the longest row at {longest} "
                  "tokens (its tokenizer), so no row is cut")


def rung_fewer_layers(task: Task, failure: Failure, job: dict[str, Any]) -> Change | None:
    """Half the adapted layers (the last ``num_layers`` blocks): fewer LoRA weights, gradients and Adam state."""
    spec = _effective(job)
    if spec is None or not _has(job, "num_layers"):
        return None
    current = spec.num_layers
    if current is None or current == -1:
        ns = _namespace(str(job.get("kind")))
        value = measured(task, _step_id(task, job), f"{ns}.num_layers")
        current = int(value) if isinstance(value, (int, float)) else None
    if current is None or current <= 1:
        return None
    return Change({**job, "num_layers": current // 2},
                  f"LoRA layers {current} -> {current // 2}: fewer adapted blocks to run backward through and train")


def rung_qlora(task: Task, failure: Failure, job: dict[str, Any]) -> Change | None:
    """QLoRA: the base quantized to 4 bits before the LoRA layers are added (not for full fine-tuning
    or a base that is already quantized)."""
    spec = _effective(job)
    if spec is None or not _has(job, "quantize") or spec.quantize is not None or spec.fine_tune_type == "full":
        return None
    ns = _namespace(str(job.get("kind")))
    if measured(task, _step_id(task, job), f"{ns}.quantize_bits") is not None:
        return None  # the base came quantized: it is QLoRA already
    return Change({**job, "quantize": 4}, "QLoRA: the base is quantized to 4 bits (groups of 64) before adding LoRA layers")


# ---------------------------------------------------------------- git policies


def _first_step(task: Task, failure: Failure, step: Subtask | None) -> Subtask | None:
    steps = task.builds()
    return steps[0] if steps else None


def rung_rebuild(task: Task, failure: Failure, job: dict[str, Any]) -> Change:
    """Every step is rebuilt from its base (the Builder recreates the deleted branch)."""
    branch = failure.details.get("branch")
    return Change(job, f"feature branch {branch or '(unknown)'} was deleted: rebuild every step from its base")


def rung_rebase_on_trunk(task: Task, failure: Failure, job: dict[str, Any]) -> Change:
    """Every step is rebuilt on the current trunk (the first step's branch is reset to it)."""
    files = ", ".join(str(f) for f in failure.details.get("files", [])) or "unknown files"
    return Change(job, f"merge conflict with the trunk in {files}: rebuild every step on the current trunk")


# ---------------------------------------------------------------- interrupted: timeout, job_killed


def rung_resume(task: Task, failure: Failure, job: dict[str, Any]) -> Change | None:
    """Resume from the last checkpoint with the remaining steps (the resume is exact: weights, Adam
    state, batch position). ``lora_train``: ``resume`` not false, and checkpoints at least every tenth
    of the run so a next interruption loses less. A killed job of another kind runs again unchanged;
    a timed-out one cannot resume (None)."""
    why = (f"timed out after {failure.details['timeout_s']:g} s" if isinstance(failure.details.get("timeout_s"), (int, float))
           else "timed out" if failure.kind == K.TIMEOUT else "was killed from outside (OOM killer, an operator)")
    if job.get("kind") != "lora_train":
        if failure.kind == K.TIMEOUT:
            return None
        return Change(job, f"the job {why}: run it again unchanged")
    spec = _effective(job)
    if spec is None:
        return None
    after = dict(job)
    if spec.resume is False:
        after["resume"] = "auto"
    iters = _iters(task, job, _step_id(task, job))
    if iters is not None and spec.save_every > max(1, iters // 10):
        after["save_every"] = max(1, iters // 10)
    reached = measured(task, _step_id(task, job), "train.iterations_done")
    where = f" (it reached iteration {int(reached)})" if isinstance(reached, (int, float)) else ""
    cadence = f"; checkpoints every {after['save_every']} steps" if after.get("save_every") != job.get("save_every") else ""
    return Change(after, f"the job {why}{where}: resume from its last checkpoint with the remaining steps{cadence}")


def rung_fewer_steps(task: Task, failure: Failure, job: dict[str, Any]) -> Change | None:
    """Fewer steps per run: ``lora_train`` iters (or epochs) halved, ``memory_profile`` steps halved."""
    spec = _effective(job)
    if spec is None:
        return None
    if job.get("kind") == "lora_train":
        if spec.epochs is not None and "iters" not in job:
            return Change({**job, "epochs": spec.epochs / 2},
                          f"fewer steps per run: epochs {spec.epochs:g} -> {spec.epochs / 2:g}")
        if spec.iters is None or spec.iters <= 1:
            return None
        return Change({**job, "iters": spec.iters // 2}, f"fewer steps per run: iterations {spec.iters} -> {spec.iters // 2}")
    if job.get("kind") == "memory_profile" and spec.steps > 1:
        return Change({**job, "steps": spec.steps // 2}, f"fewer steps per run: steps {spec.steps} -> {spec.steps // 2}")
    return None


# ---------------------------------------------------------------- dataset


_TOO_LONG = ("rows_too_long",)
_NEAR_COPIES = ("cross_split_duplicates", "rows_near_duplicate")


def _dataset_target(task: Task, failure: Failure, step: Subtask | None) -> Subtask | None:
    if failure.kind == K.JOB_ERROR:
        named = step if step is not None and _kind(step) == "dataset" else None
        return named if named is not None and failure.details.get("rows_too_long") else None
    return _metric_step(task, failure, _TOO_LONG + _NEAR_COPIES, {"dataset"})


def rung_raise_max_tokens(task: Task, failure: Failure, job: dict[str, Any]) -> Change | None:
    """``max_tokens`` up to the measured longest row (``dataset.tokens_longest``, too-long rows included)
    when rows were too long."""
    step_id = _step_id(task, job)
    too_long = failure.details.get("rows_too_long", measured(task, step_id, "dataset.rows_too_long"))
    longest = failure.details.get("tokens_longest", measured(task, step_id, "dataset.tokens_longest"))
    current = job.get("max_tokens")
    if not too_long or not isinstance(longest, (int, float)) or current is None or longest <= current:
        return None
    return Change({**job, "max_tokens": int(longest)},
                  f"{int(too_long)} row(s) over max_tokens {current}: max_tokens -> {int(longest)}, the longest row measured "
                  "(check the training jobs' max_seq_length covers it)")


def rung_group_near_copies(task: Task, failure: Failure, job: dict[str, Any]) -> Change | None:
    """Re-split with near-copies grouped: a ``source`` split is re-done with ``near_duplicate_threshold``
    lowered by 0.1 (not below 0.5), so looser near-copies also land in one split. A ``data`` job only
    validates existing splits and cannot re-split (None)."""
    if not job.get("source"):
        return None
    spec = _effective(job)
    if spec is None:
        return None
    old = float(spec.near_duplicate_threshold)
    new = round(max(0.5, old - 0.1), 4)
    if new >= old:
        return None
    count = measured(task, _step_id(task, job), "dataset.cross_split_duplicates")
    seen = f"{int(count)} cross-split near-copies" if isinstance(count, (int, float)) else "near-copies across splits"
    return Change({**job, "near_duplicate_threshold": new, "dedupe": True},
                  f"{seen}: re-split with near-copies grouped, near_duplicate_threshold {old:g} -> {new:g}")


# ---------------------------------------------------------------- divergence


def _warmup_steps(task: Task, job: dict[str, Any]) -> int:
    spec = _effective(job)
    iters = _iters(task, job, _step_id(task, job)) or 100
    updates = max(1, iters // int(getattr(spec, "grad_accumulation_steps", 1) or 1))
    return max(1, min(100, updates // 10))


def rung_lower_lr_warmup(task: Task, failure: Failure, job: dict[str, Any]) -> Change | None:
    """Learning rate / 10, a linear warm-up (a tenth of the optimizer updates, at most 100) and
    gradient clipping at norm 1.0 (``max_grad_norm``; lora_train's Adam supports it)."""
    if job.get("kind") != "lora_train":
        return None
    scaled = _scaled_lr(job, 0.1)
    if scaled is None:
        return None
    after, old, new = scaled
    warmup = _warmup_steps(task, job)
    sched = after.get("lr_schedule")
    if isinstance(sched, dict):
        if not sched.get("warmup"):
            after["lr_schedule"] = {**sched, "warmup": warmup}
        else:
            warmup = int(sched["warmup"])
    else:  # a constant rate: linear_schedule from new to new is constant after the warm-up
        after["lr_schedule"] = {"name": "linear_schedule", "warmup": warmup, "arguments": [new, new, 1]}
    clip = ""
    if after.get("max_grad_norm") is None:
        after["max_grad_norm"] = 1.0
        clip = ", gradient norm clipped at 1.0"
    where = failure.details.get("iteration")
    return Change(after, f"training diverged{f' at iteration {where}' if where is not None else ''}: learning rate "
                         f"{old:g} -> {new:g} with {warmup} warm-up updates{clip}")


def _lr_times(job: dict[str, Any], factor: float, why: str) -> Change | None:
    """A ``lora_train`` job with its learning rate times ``factor`` (None for other kinds or no rate)."""
    if job.get("kind") != "lora_train":
        return None
    scaled = _scaled_lr(job, factor)
    if scaled is None:
        return None
    after, old, new = scaled
    return Change(after, f"{why}: learning rate {old:g} -> {new:g}")


def rung_lower_lr_again(task: Task, failure: Failure, job: dict[str, Any]) -> Change | None:
    """Learning rate / 10 again."""
    return _lr_times(job, 0.1, "training diverged again")


# ---------------------------------------------------------------- memory, throughput, loss


_MEMORY = ("peak_memory_gb", "_peak_gb")
_THROUGHPUT = ("tokens_per_second", "_tps")


def _memory_target(task: Task, failure: Failure, step: Subtask | None) -> Subtask | None:
    if failure.kind == K.OOM:  # the step that ran out of memory, never another one
        if step is not None:
            return step if _kind(step) in TRAINING_KINDS | {"evaluate"} else None
        return _last_of_kind(task, None, TRAINING_KINDS)
    return _metric_step(task, failure, _MEMORY, TRAINING_KINDS | {"evaluate"})


def _throughput_target(task: Task, failure: Failure, step: Subtask | None) -> Subtask | None:
    return _metric_step(task, failure, _THROUGHPUT, TRAINING_KINDS)


def _loss_target(task: Task, failure: Failure, step: Subtask | None) -> Subtask | None:
    if not any("loss" in m or "perplexity" in m for m in failed_metrics(failure)):
        return None
    return _last_of_kind(task, step, {"lora_train"})


def rung_more_iterations(task: Task, failure: Failure, job: dict[str, Any]) -> Change | None:
    """Twice the iterations (or epochs)."""
    spec = _effective(job)
    if spec is None or job.get("kind") != "lora_train":
        return None
    if spec.epochs is not None and "iters" not in job:
        return Change({**job, "epochs": spec.epochs * 2},
                      f"loss did not go down enough: epochs {spec.epochs:g} -> {spec.epochs * 2:g}")
    iters = int(spec.iters)
    if iters * 2 > 1_000_000:
        return None
    return Change({**job, "iters": iters * 2}, f"loss did not go down enough: iterations {iters} -> {iters * 2}")


def rung_higher_lr(task: Task, failure: Failure, job: dict[str, Any]) -> Change | None:
    """Twice the learning rate."""
    return _lr_times(job, 2.0, "loss still did not go down enough")


def _divergence_target(task: Task, failure: Failure, step: Subtask | None) -> Subtask | None:
    return _last_of_kind(task, step, {"lora_train"})


def _interrupted_target(task: Task, failure: Failure, step: Subtask | None) -> Subtask | None:
    return step


#: Every policy by name; the order here is the default (``REFINER_POLICY_ORDER`` in core/config.py).
POLICIES: dict[str, Policy] = {p.name: p for p in (
    Policy("branch_missing", frozenset({K.BRANCH_MISSING}), _first_step, (Rung("rebuild", rung_rebuild, True),),
           rebuild_all=True),
    Policy("merge_conflict", frozenset({K.MERGE_CONFLICT}), _first_step,
           (Rung("rebase_on_trunk", rung_rebase_on_trunk, True),), rebuild_all=True, reset_to_trunk=True),
    Policy("interrupted", frozenset({K.TIMEOUT, K.JOB_KILLED}), _interrupted_target,
           (Rung("resume", rung_resume), Rung("fewer_steps", rung_fewer_steps))),
    Policy("dataset", frozenset({K.CRITERIA_FAILED, K.JOB_ERROR}), _dataset_target,
           (Rung("raise_max_tokens", rung_raise_max_tokens), Rung("group_near_copies", rung_group_near_copies))),
    Policy("divergence", frozenset({K.DIVERGED}), _divergence_target,
           (Rung("lower_lr_warmup", rung_lower_lr_warmup), Rung("lower_lr_again", rung_lower_lr_again))),
    Policy("memory", frozenset({K.OOM, K.CRITERIA_FAILED}), _memory_target,
           (Rung("grad_checkpoint", rung_grad_checkpoint), Rung("halve_batch", rung_halve_batch),
            Rung("shorter_sequences", rung_shorter_sequences), Rung("fewer_layers", rung_fewer_layers),
            Rung("qlora", rung_qlora))),
    Policy("throughput", frozenset({K.CRITERIA_FAILED}), _throughput_target,
           (Rung("fewer_layers", rung_fewer_layers), Rung("qlora", rung_qlora))),
    Policy("loss", frozenset({K.CRITERIA_FAILED}), _loss_target,
           (Rung("more_iterations", rung_more_iterations), Rung("higher_lr", rung_higher_lr))),
)}

if tuple(POLICIES) != REFINER_POLICY_ORDER:  # config.py validates names without importing this module
    raise RuntimeError(f"POLICIES {tuple(POLICIES)} and core.config.REFINER_POLICY_ORDER differ; keep them equal")


def decide(task: Task, order: Iterable[str] = REFINER_POLICY_ORDER) -> Adaptation | Escalation | None:
    """The first policy in ``order`` that applies to the story's failure decides: its next rung's
    :class:`Adaptation`, or an :class:`Escalation` when its ladder is spent. ``None``: no policy applies.

    Raises:
        KeyError: a name in ``order`` that is no policy (config.toml is validated before this).
    """
    failure = failure_of(task)
    if failure is None:
        return None
    step = failed_step(task, failure)
    for name in order:
        decision = POLICIES[name].decide(task, failure, step)
        if decision is not None:
            return decision
    return None

"""Refiner (Adapt): changes what failed, then sends the work back to the Builder.

A rule is a pure function of (story, typed failure, failed step) that returns an
:class:`Adaptation` or ``None``; each rule declares the :class:`~oodatcaa.core.failures.FailureKind`
values it handles (in the manner of a transition with from-states) and reads only the failure's
``kind`` and structured ``details`` — never its message, which is for people. Rules run in the
order of :data:`RULES`; the first that returns an adaptation wins:

- ``retry_killed_job`` (``job_killed``) — the job process was killed from outside (the OOM
  killer, an operator): the step runs again unchanged; a training job resumes from its checkpoint.
- ``rebuild_missing_branch`` (``branch_missing``) — a feature branch was deleted by hand: every
  step is rebuilt (the Builder recreates the branch from its base).
- ``rebase_on_trunk`` (``merge_conflict``) — the merge into the trunk conflicted: the first step's
  branch is reset to the current trunk and every step is rebuilt on top of it.
- ``reduce_peak_memory`` (``oom``, or ``criteria_failed`` on a ``*.peak_memory_gb`` metric) —
  gradient checkpointing on and the batch halved with gradient accumulation doubled, so the
  effective batch (batch_size x grad_accumulation_steps) is kept.
- ``recover_divergence`` (``diverged``) — learning rate divided by 10.
- ``stabilise_loss`` (``criteria_failed`` on a loss metric) — learning rate halved, iterations
  (or epochs) doubled.

Loop policy (the original's): at most ``loop.max_adapt_loops`` (3) adaptation loops per task,
a warning at ``loop.warn_at`` (2); past the limit the task goes to ``needs_manual`` with the reason
— or, with ``loop.on_limit = "start_over"``, through the Start-Over Gate (branches reset to the
baseline tag, subtasks cancelled, post-mortem in the report, back to ``needs_plan`` for plan
version +1), at most ``loop.max_start_overs`` times. When no rule applies: ``needs_manual``.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import yaml

from oodatcaa.core import lifecycle
from oodatcaa.core.failures import Failure, FailureKind
from oodatcaa.core.leases import Claim
from oodatcaa.core.models import Item, Subtask, Task
from oodatcaa.core.statuses import TaskStatus
from oodatcaa.core.store import Transaction
from oodatcaa.jobs.registry import job_kind
from oodatcaa.reports import write_report
from oodatcaa.roles.base import RoleAgent

S = TaskStatus
K = FailureKind


@dataclass
class Adaptation:
    """One applied rule: which step changed, its spec before and after, and why."""

    rule: str
    step_id: str
    before: dict[str, Any]
    after: dict[str, Any]
    rationale: str
    rebuild_all: bool = False  # every step goes back to the Builder, not only the changed one
    reset_to_trunk: bool = False  # and the first step's branch starts again from the current trunk


RuleFn = Callable[[Task, Failure, "Subtask | None"], "Adaptation | None"]


@dataclass(frozen=True)
class Rule:
    """A Refiner rule: its name, the failure kinds it handles, and the pure function that adapts."""

    name: str
    handles: frozenset[FailureKind]
    adapt: RuleFn

    def applies_to(self, failure: Failure) -> bool:
        return failure.kind in self.handles


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


def _trains(job: dict[str, Any] | None) -> bool:
    kind = (job or {}).get("kind")
    try:
        return bool(kind) and job_kind(str(kind)).trains
    except LookupError:  # an unknown kind never trains
        return False


def _training_step(task: Task, step: Subtask | None, only_kind: str | None = None) -> Subtask | None:
    """The failed step when it trains, else the last training step of the story."""
    def fits(s: Subtask) -> bool:
        return _trains(s.job) and (only_kind is None or (s.job or {}).get("kind") == only_kind)

    if step is not None:
        return step if fits(step) else None
    candidates = [s for s in task.builds() if fits(s)]
    return candidates[-1] if candidates else None


def _failed_metrics(failure: Failure) -> list[str]:
    return [str(m) for m in failure.details.get("failed_metrics", [])]


def rule_retry_killed_job(task: Task, failure: Failure, step: Subtask | None) -> Adaptation | None:
    if step is None:
        return None
    return Adaptation("retry_killed_job", step.id, copy.deepcopy(step.job or {}), copy.deepcopy(step.job or {}),
                      "the job process was killed from outside (OOM killer, an operator): run the step again "
                      "unchanged; a training job resumes from its last checkpoint")


def _rebuild_every_step(task: Task, rule: str, rationale: str, reset_to_trunk: bool) -> Adaptation | None:
    steps = task.builds()
    if not steps:
        return None
    first = steps[0]
    return Adaptation(rule, first.id, copy.deepcopy(first.job or {}), copy.deepcopy(first.job or {}), rationale,
                      rebuild_all=True, reset_to_trunk=reset_to_trunk)


def rule_rebuild_missing_branch(task: Task, failure: Failure, step: Subtask | None) -> Adaptation | None:
    branch = failure.details.get("branch")
    return _rebuild_every_step(task, "rebuild_missing_branch",
                               f"feature branch {branch or '(unknown)'} was deleted: rebuild every step from its base",
                               reset_to_trunk=False)


def rule_rebase_on_trunk(task: Task, failure: Failure, step: Subtask | None) -> Adaptation | None:
    files = ", ".join(str(f) for f in failure.details.get("files", [])) or "unknown files"
    return _rebuild_every_step(task, "rebase_on_trunk",
                               f"merge conflict with the trunk in {files}: rebuild every step on the current trunk",
                               reset_to_trunk=True)


def rule_reduce_peak_memory(task: Task, failure: Failure, step: Subtask | None) -> Adaptation | None:
    if failure.kind == K.CRITERIA_FAILED and not any(m.endswith("peak_memory_gb") for m in _failed_metrics(failure)):
        return None
    target = _training_step(task, step)
    if target is None or target.job is None:
        return None
    job = target.job
    batch = int(job.get("batch_size", 4))
    accum = int(job.get("grad_accumulation_steps", 1))
    if batch <= 1 and job.get("grad_checkpoint"):
        return None  # nothing left to trade
    after = copy.deepcopy(job)
    after["grad_checkpoint"] = True
    if batch > 1:
        after["batch_size"] = batch // 2
        after["grad_accumulation_steps"] = accum * 2
    new_accum = after.get("grad_accumulation_steps", accum)
    why = "out of memory" if failure.kind == K.OOM else "peak memory over target"
    rationale = (
        f"{why}: gradient checkpointing on; batch {batch} -> {after['batch_size']} with "
        f"gradient accumulation {accum} -> {new_accum} "
        f"(effective batch {batch * accum} -> {after['batch_size'] * new_accum})"
    )
    return Adaptation("reduce_peak_memory", target.id, copy.deepcopy(job), after, rationale)


def _effective(job: dict[str, Any]) -> Any:
    from oodatcaa.jobs.spec import parse_job_spec  # light: pydantic only

    return parse_job_spec(job)  # profile defaults included, so we change what really ran


def rule_recover_divergence(task: Task, failure: Failure, step: Subtask | None) -> Adaptation | None:
    target = _training_step(task, step, only_kind="lora_train")
    if target is None or target.job is None:
        return None
    lr = float(_effective(target.job).learning_rate)
    after = {**copy.deepcopy(target.job), "learning_rate": lr / 10}
    where = failure.details.get("iteration")
    rationale = f"training diverged{f' at iteration {where}' if where is not None else ''}: learning rate {lr:g} -> {lr / 10:g}"
    return Adaptation("recover_divergence", target.id, copy.deepcopy(target.job), after, rationale)


def rule_stabilise_loss(task: Task, failure: Failure, step: Subtask | None) -> Adaptation | None:
    if not any("loss" in m for m in _failed_metrics(failure)):
        return None
    target = _training_step(task, step, only_kind="lora_train")
    if target is None or target.job is None:
        return None
    job = target.job
    effective = _effective(job)
    lr = float(effective.learning_rate)
    after = copy.deepcopy(job)
    after["learning_rate"] = lr / 2
    if effective.epochs is not None and "iters" not in job:
        length = f"epochs {effective.epochs:g} -> {effective.epochs * 2:g}"
        after["epochs"] = effective.epochs * 2
    else:
        iters = int(effective.iters)
        length = f"iterations {iters} -> {iters * 2}"
        after["iters"] = iters * 2
    rationale = f"loss criterion failed: learning rate {lr:g} -> {lr / 2:g}, {length}"
    return Adaptation("stabilise_loss", target.id, copy.deepcopy(job), after, rationale)


RULES: list[Rule] = [
    Rule("retry_killed_job", frozenset({K.JOB_KILLED}), rule_retry_killed_job),
    Rule("rebuild_missing_branch", frozenset({K.BRANCH_MISSING}), rule_rebuild_missing_branch),
    Rule("rebase_on_trunk", frozenset({K.MERGE_CONFLICT}), rule_rebase_on_trunk),
    Rule("reduce_peak_memory", frozenset({K.OOM, K.CRITERIA_FAILED}), rule_reduce_peak_memory),
    Rule("recover_divergence", frozenset({K.DIVERGED}), rule_recover_divergence),
    Rule("stabilise_loss", frozenset({K.CRITERIA_FAILED}), rule_stabilise_loss),
]


def choose_adaptation(task: Task) -> Adaptation | None:
    """The first rule that handles the story's failure kind and returns an adaptation, or ``None``."""
    failure = failure_of(task)
    if failure is None:
        return None
    step = failed_step(task, failure)
    for rule in RULES:
        if rule.applies_to(failure):
            adaptation = rule.adapt(task, failure, step)
            if adaptation is not None:
                return adaptation
    return None


class Refiner(RoleAgent):
    """Claims ``needs_adapt`` stories, applies a rule, counts the loop."""

    role = "refiner"
    crash_status = S.NEEDS_MANUAL

    def work(self, claim: Claim) -> None:
        ws, loop = self.ctx.ws, self.ctx.config.loop
        task = self.store.read().task(claim.task_id)
        iteration = task.adapt_loops + 1
        title = f"Refiner report — {task.id} loop {iteration}"
        if task.adapt_loops >= loop.max_adapt_loops:
            reason = (f"adaptation limit reached ({task.adapt_loops} of {loop.max_adapt_loops} loops used); "
                      f"last failure: {task.last_error or 'unknown'}")
            if loop.on_limit == "start_over" and task.plan_version <= loop.max_start_overs and task.baseline_tag:
                self._start_over(claim, task, reason)
            else:
                self._manual(claim, task, reason, title, iteration)
            return
        adaptation = choose_adaptation(task)
        if adaptation is None:
            failure = failure_of(task)
            what = failure.short(500) if failure else "an unknown failure (nothing recorded)"
            reason = f"no adaptation rule applies to {what}"
            self._manual(claim, task, reason, title, iteration)
            return
        if adaptation.reset_to_trunk:
            git = self.git()
            first = task.builds()[0]
            assert first.branch is not None
            git.reset_branch(first.branch)
        warn = iteration >= loop.warn_at
        before = yaml.safe_dump(adaptation.before, sort_keys=True).strip()
        after = yaml.safe_dump(adaptation.after, sort_keys=True).strip()
        body = (
            f"## Loop {iteration} of {loop.max_adapt_loops}{' — WARNING: close to the limit' if warn else ''}\n\n"
            f"**Failure:** {task.last_error or 'unknown'}\n\n**Rule:** `{adaptation.rule}` — {adaptation.rationale}\n\n"
            f"**Step changed:** {adaptation.step_id}\n\n### Job before\n\n```yaml\n{before}\n```\n\n"
            f"### Job after\n\n```yaml\n{after}\n```\n\nThe step goes back to `ready` for the Builder.\n"
        )
        write_report(ws, task.id, "refiner", self.ctx.owner, title, body,
                     f"loop {iteration}: {adaptation.rule} on {adaptation.step_id}", suffix=str(iteration),
                     clock=self.ctx.clock)

        def apply(tx: Transaction, item: Item) -> None:
            assert isinstance(item, Task)
            item.adapt_loops = iteration
            lifecycle.on_adapted(tx, item, adaptation.step_id, adaptation.after, rebuild_all=adaptation.rebuild_all,
                                 what=f"adapted ({adaptation.rule}), loop {iteration}", rule=adaptation.rule,
                                 rationale=adaptation.rationale)
            if warn:
                tx.log(item.id, "warning", f"adaptation loop {iteration} of {loop.max_adapt_loops}")

        self.finish(claim, S.READY, f"loop {iteration}: {adaptation.rationale}"[:300], apply)

    def _start_over(self, claim: Claim, task: Task, reason: str) -> None:
        """The Start-Over Gate: branches back to the baseline tag, subtasks cancelled, re-plan."""
        ws = self.ctx.ws
        git = self.git()
        reset = []
        for step in task.builds():
            if step.branch and git.branch_exists(step.branch):
                git.reset_branch(step.branch, task.baseline_tag)
                reset.append(step.branch)
        loops = "\n".join(f"- [{p.name}]({p.name})" for p in sorted(ws.report_dir(task.id).glob("refiner_*.md")))
        body = (
            f"## Start-Over Gate (plan v{task.plan_version} -> v{task.plan_version + 1})\n\n{reason}.\n\n"
            f"### Post-mortem\n\n- Loops used: {task.adapt_loops}\n- Last failure: {task.last_error or 'unknown'}\n"
            f"- Earlier adaptations:\n{loops or '- none'}\n\n### What happens now\n\n"
            f"Branches reset to `{task.baseline_tag}`: {', '.join(f'`{b}`' for b in reset) or 'none'}. The subtasks "
            "are cancelled and the task goes back to `needs_plan` with the backlog's original jobs.\n"
        )
        write_report(ws, task.id, "refiner", self.ctx.owner, f"Refiner report — {task.id} start over", body,
                     f"start over: plan v{task.plan_version + 1}", suffix=f"start_over_{task.plan_version}",
                     clock=self.ctx.clock)

        def apply(tx: Transaction, item: Item) -> None:
            assert isinstance(item, Task)
            lifecycle.on_start_over(tx, item)

        self.finish(claim, S.NEEDS_PLAN, f"Start-Over Gate: {reason}"[:300], apply)

    def _manual(self, claim: Claim, task: Task, reason: str, title: str, iteration: int) -> None:
        body = f"## Escalated to a person\n\n{reason}\n"
        write_report(self.ctx.ws, task.id, "refiner", self.ctx.owner, title, body, f"needs_manual: {reason}"[:200],
                     suffix=str(iteration), clock=self.ctx.clock)

        def apply(tx: Transaction, item: Item) -> None:
            assert isinstance(item, Task)
            lifecycle.on_escalated(tx, item, reason)

        self.finish(claim, S.NEEDS_MANUAL, reason[:300], apply)

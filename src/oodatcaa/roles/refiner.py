"""Refiner (Adapt): changes what failed, then sends the work back to the Builder.

Rules (each a real change to the job spec, recorded before and after in the report):

- ``reduce_peak_memory`` — a peak-memory criterion failed, or the job ran out of memory: turn on
  gradient checkpointing and halve the batch size while doubling gradient accumulation, so the
  effective batch (batch_size x grad_accumulation_steps) is kept.
- ``stabilise_loss`` — a loss criterion failed (loss did not go down): halve the learning rate
  and double the iterations.
- ``rebase_on_main`` — the merge into main conflicted: the step's branch is reset to the current
  main and every step is rebuilt on top of it.
- ``rebuild_missing_branch`` — a feature branch was deleted by hand: every step is rebuilt (the
  Builder recreates the branch from its base).
- ``retry_killed_job`` — the job process was killed from outside (SIGKILL: the OOM killer, an
  operator): the step runs again unchanged; a training job resumes from its checkpoint. The loop
  limit bounds the retries.

Loop policy (the original's): at most ``loop.max_adapt_loops`` (3) adaptation loops per task,
a warning at ``loop.warn_at`` (2); past the limit the task goes to ``needs_manual`` with the reason
— or, with ``loop.on_limit = "start_over"``, through the Start-Over Gate (branches reset to the
baseline tag, subtasks cancelled, post-mortem in the report, back to ``needs_plan`` for plan
version +1), at most ``loop.max_start_overs`` times. When no rule applies: ``needs_manual``.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any, Callable

import yaml

from oodatcaa.core.leases import Claim
from oodatcaa.core.models import Item, Subtask, Task
from oodatcaa.core.statuses import TaskStatus
from oodatcaa.core.store import Transaction
from oodatcaa.gitops import GitRepo
from oodatcaa.jobs.registry import training_kinds
from oodatcaa.reports import write_report
from oodatcaa.roles.base import RoleAgent

S = TaskStatus


@dataclass
class Failure:
    """What went wrong, gathered from the story: failed criteria and builder errors."""

    failed_metrics: list[str]
    error: str
    failed_step: str | None

    def mentions(self, *needles: str) -> bool:
        text = self.error.lower()
        return any(n in text for n in needles)


@dataclass
class Adaptation:
    """One applied rule: which step changed, its spec before and after, and why."""

    rule: str
    step_id: str
    before: dict[str, Any]
    after: dict[str, Any]
    rationale: str
    rebuild_all: bool = False  # every step goes back to the Builder, not only the changed one
    reset_to_main: bool = False  # and the first step's branch starts again from the current main


def failure_of(task: Task) -> Failure:
    """Collect the failing metric names (from the Tester) and the last error (any role)."""
    metrics: list[str] = []
    tester = task.tester()
    if tester and tester.result:
        for f in tester.result.get("failures", []):
            for crit in task.acceptance_criteria:
                if crit.id == f.get("criterion_id") and crit.check is not None and crit.check.kind == "metric":
                    metrics.append(crit.check.metric)
                    if isinstance(crit.check.value, str):
                        metrics.append(crit.check.value)
    failed_step = next((s.id for s in task.builds() if s.status == S.NEEDS_ADAPT), None)
    return Failure(metrics, task.last_error or "", failed_step)


#: Job kinds that train and so take the memory rule's batch / checkpointing fields.
TRAINING_KINDS = training_kinds()


def _pick_step(task: Task, failure: Failure, kinds: tuple[str, ...]) -> Subtask | None:
    steps = task.builds()
    if failure.failed_step:
        return next(s for s in steps if s.id == failure.failed_step)
    candidates = [s for s in steps if (s.job or {}).get("kind") in kinds]
    return candidates[-1] if candidates else None


def rule_reduce_peak_memory(task: Task, failure: Failure) -> Adaptation | None:
    memory_failed = any(m.endswith("peak_memory_gb") for m in failure.failed_metrics)
    if not (memory_failed or failure.mentions("out of memory", "memoryerror", "std::bad_alloc")):
        return None
    step = _pick_step(task, failure, TRAINING_KINDS)
    if step is None or step.job is None or step.job.get("kind") not in TRAINING_KINDS:
        return None
    job = step.job
    batch = int(job.get("batch_size", 4))
    accum = int(job.get("grad_accumulation_steps", 1))
    if batch <= 1 and job.get("grad_checkpoint"):
        return None  # nothing left to trade
    after = copy.deepcopy(job)
    after["grad_checkpoint"] = True
    if batch > 1:
        after["batch_size"] = batch // 2
        after["grad_accumulation_steps"] = accum * 2
    rationale = (
        f"peak memory over target: gradient checkpointing on; batch {batch} -> {after['batch_size']} with "
        f"gradient accumulation {accum} -> {after.get('grad_accumulation_steps', accum)} "
        f"(effective batch {batch * accum} -> {after['batch_size'] * after.get('grad_accumulation_steps', accum)})"
    )
    return Adaptation("reduce_peak_memory", step.id, copy.deepcopy(job), after, rationale)


def rule_stabilise_loss(task: Task, failure: Failure) -> Adaptation | None:
    if not any("loss" in m for m in failure.failed_metrics):
        return None
    step = _pick_step(task, failure, ("lora_train",))
    if step is None or step.job is None or step.job.get("kind") != "lora_train":
        return None
    from oodatcaa.jobs.spec import parse_job_spec  # light: pydantic only

    job = step.job
    effective = parse_job_spec(job)  # profile defaults included, so we halve what really ran
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
    return Adaptation("stabilise_loss", step.id, copy.deepcopy(job), after, rationale)


def _rebuild_every_step(task: Task, rule: str, rationale: str, reset_to_main: bool) -> Adaptation | None:
    steps = task.builds()
    if not steps:
        return None
    first = steps[0]
    return Adaptation(rule, first.id, copy.deepcopy(first.job or {}), copy.deepcopy(first.job or {}), rationale,
                      rebuild_all=True, reset_to_main=reset_to_main)


def rule_rebase_on_main(task: Task, failure: Failure) -> Adaptation | None:
    if not failure.mentions("conflicts in", "merge conflict"):
        return None
    return _rebuild_every_step(task, "rebase_on_main", "merge conflict with main: rebuild every step on the current main",
                               reset_to_main=True)


def rule_rebuild_missing_branch(task: Task, failure: Failure) -> Adaptation | None:
    if "does not exist (deleted by hand?)" not in failure.error:
        return None
    return _rebuild_every_step(task, "rebuild_missing_branch",
                               "a feature branch was deleted: rebuild every step from its base", reset_to_main=False)


def rule_retry_killed_job(task: Task, failure: Failure) -> Adaptation | None:
    if failure.failed_step is None or not failure.mentions("killed by sigkill", "killed by signal"):
        return None
    step = next(s for s in task.builds() if s.id == failure.failed_step)
    return Adaptation("retry_killed_job", step.id, copy.deepcopy(step.job or {}), copy.deepcopy(step.job or {}),
                      "the job process was killed from outside (OOM killer, an operator): run the step again "
                      "unchanged; a training job resumes from its last checkpoint")


RULES: list[Callable[[Task, Failure], Adaptation | None]] = [
    rule_retry_killed_job,
    rule_rebuild_missing_branch,
    rule_rebase_on_main,
    rule_reduce_peak_memory,
    rule_stabilise_loss,
]


def choose_adaptation(task: Task) -> Adaptation | None:
    """The first rule that applies to the story's failure, or ``None``."""
    failure = failure_of(task)
    for rule in RULES:
        adaptation = rule(task, failure)
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
            reason = f"no adaptation rule applies to: {task.last_error or 'unknown failure'}"
            self._manual(claim, task, reason, title, iteration)
            return
        if adaptation.reset_to_main:
            git = GitRepo(ws.root, ws.lock_path("git"), owner=self.ctx.owner)
            step = task.builds()[0]
            with git.locked():
                git.repo.git.branch("-f", step.branch, "main")
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
            changed = False
            for step in item.builds():
                if step.id == adaptation.step_id:
                    step.job = adaptation.after
                    changed = True
                if changed or adaptation.rebuild_all:
                    # this step and every later one must be rebuilt
                    if step.status in (S.NEEDS_ADAPT, S.AWAITING_TEST):
                        tx.move(step, S.READY, f"adapted ({adaptation.rule}), loop {iteration}")
            tester = item.tester()
            if tester is not None and tester.status in (S.NEEDS_ADAPT, S.READY_FOR_INTEGRATOR, S.READY):
                tx.move(tester, S.BLOCKED, "waiting for the rebuilt steps")
            if warn:
                tx.log(item.id, "warning", f"adaptation loop {iteration} of {loop.max_adapt_loops}")

        self.finish(claim, S.READY, f"loop {iteration}: {adaptation.rationale}"[:300], apply)

    def _start_over(self, claim: Claim, task: Task, reason: str) -> None:
        """The Start-Over Gate: branches back to the baseline tag, subtasks cancelled, re-plan."""
        ws = self.ctx.ws
        git = GitRepo(ws.root, ws.lock_path("git"), owner=self.ctx.owner)
        reset = []
        with git.locked():
            for step in task.builds():
                if step.branch and git.branch_exists(step.branch):
                    git.repo.git.branch("-f", step.branch, task.baseline_tag)
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
            item.adapt_loops = 0
            for sub in item.subtasks:
                if sub.status not in (S.DONE, S.CANCELLED):
                    tx.move(sub, S.CANCELLED, f"Start-Over Gate of {item.id}")

        self.finish(claim, S.NEEDS_PLAN, f"Start-Over Gate: {reason}"[:300], apply)

    def _manual(self, claim: Claim, task: Task, reason: str, title: str, iteration: int) -> None:
        body = f"## Escalated to a person\n\n{reason}\n"
        write_report(self.ctx.ws, task.id, "refiner", self.ctx.owner, title, body, f"needs_manual: {reason}"[:200],
                     suffix=str(iteration), clock=self.ctx.clock)

        def apply(tx: Transaction, item: Item) -> None:
            assert isinstance(item, Task)
            item.manual_reason = reason
            for step in item.builds():
                if step.status == S.NEEDS_ADAPT:
                    tx.move(step, S.NEEDS_MANUAL, reason[:200])

        self.finish(claim, S.NEEDS_MANUAL, reason[:300], apply)

"""Refiner (Adapt): changes what failed, then sends the work back to the Builder.

The decisions are the policies of :mod:`oodatcaa.roles.policies` — one ladder of adaptations per
failure family (memory, divergence, loss, interrupted jobs, throughput, dataset problems, merge
conflicts, deleted branches), each rung a pure function of (story, typed failure, job spec) that
reads only the failure's ``kind`` and ``details``. ``[refiner] policies`` in config.toml orders or
disables them (docs/refiner.md). This module is the agent: it claims a ``needs_adapt`` story, asks
the policies, re-validates the changed job spec with :func:`~oodatcaa.jobs.spec.parse_job_spec`
before writing it, and writes the report (the rule, its rationale, the failure's evidence and a
unified diff of the job spec's YAML).

Loop policy (the original's): at most ``loop.max_adapt_loops`` (3) adaptation loops per task,
a warning at ``loop.warn_at`` (2); past the limit the task goes to ``needs_manual`` with the reason
— or, with ``loop.on_limit = "start_over"``, through the Start-Over Gate (branches reset to the
baseline tag, subtasks cancelled, post-mortem in the report, back to ``needs_plan`` for plan
version +1), at most ``loop.max_start_overs`` times. When no policy applies, a ladder is spent, or
the adapted spec does not validate: ``needs_manual`` (the report then shows both specs).
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from typing import Any

import yaml

from oodatcaa.core import lifecycle
from oodatcaa.core.config import REFINER_POLICY_ORDER
from oodatcaa.core.leases import Claim
from oodatcaa.core.models import Item, Task
from oodatcaa.core.statuses import TaskStatus
from oodatcaa.core.store import Transaction
from oodatcaa.reports import write_report
from oodatcaa.roles.base import RoleAgent
from oodatcaa.roles.policies import POLICIES, Adaptation, Escalation, decide, failed_step, failure_of

__all__ = ["POLICIES", "Adaptation", "Escalation", "Refiner", "choose_adaptation", "failed_step", "failure_of",
           "spec_diff"]

S = TaskStatus


def choose_adaptation(task: Task, order: Iterable[str] = REFINER_POLICY_ORDER) -> Adaptation | None:
    """The adaptation the policies in ``order`` choose for the story's failure, or ``None`` (a spent
    ladder or no policy that applies: a person decides)."""
    decision = decide(task, order)
    return decision if isinstance(decision, Adaptation) else None


def _yaml(job: dict[str, Any]) -> str:
    return yaml.safe_dump(job, sort_keys=True).strip()


def spec_diff(before: dict[str, Any], after: dict[str, Any], step_id: str) -> str:
    """A unified diff of the two job specs' YAML (``(no change)`` when equal)."""
    lines = list(difflib.unified_diff(_yaml(before).splitlines(), _yaml(after).splitlines(),
                                      f"{step_id} job (before)", f"{step_id} job (after)", lineterm=""))
    return "\n".join(lines) if lines else "(no change: the step runs again as it is)"


def _evidence(lines: list[str]) -> str:
    """One inline-code bullet per fact; a backtick in the data would end the code span, so it is swapped."""
    safe = (" ".join(line.replace("`", "'").split()) for line in lines)
    return "\n".join(f"- `{line}`" for line in safe) or "- none recorded"


class Refiner(RoleAgent):
    """Claims ``needs_adapt`` stories, applies the next rung of the policy that applies, counts the loop."""

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
        decision = decide(task, self.ctx.config.refiner.policies)
        if not isinstance(decision, Adaptation):
            self._manual(claim, task, self._no_adaptation(task, decision), title, iteration,
                         decision.evidence if decision else [])
            return
        adaptation = decision
        invalid = adaptation.validation_error()
        if invalid is not None:
            reason = (f"the {adaptation.rule} adaptation of {adaptation.step_id} produced a job spec that does not "
                      f"validate, so it was not written: {invalid}")
            self._manual(claim, task, reason, title, iteration, adaptation.evidence,
                         specs=(adaptation.before, adaptation.after, adaptation.step_id))
            return
        if adaptation.reset_to_trunk:
            git = self.git()
            first = task.builds()[0]
            assert first.branch is not None
            git.reset_branch(first.branch)
        warn = iteration >= loop.warn_at
        body = (
            f"## Loop {iteration} of {loop.max_adapt_loops}{' — WARNING: close to the limit' if warn else ''}\n\n"
            f"**Failure:** {task.last_error or 'unknown'}\n\n**Rule:** `{adaptation.rule}`\n\n"
            f"**Rationale:** {adaptation.rationale}\n\n**Step changed:** {adaptation.step_id}\n\n"
            f"### Evidence\n\n{_evidence(adaptation.evidence)}\n\n"
            f"### Job spec diff\n\n```diff\n{spec_diff(adaptation.before, adaptation.after, adaptation.step_id)}\n```\n\n"
            f"### Job before\n\n```yaml\n{_yaml(adaptation.before)}\n```\n\n"
            f"### Job after\n\n```yaml\n{_yaml(adaptation.after)}\n```\n\nThe step goes back to `ready` for the Builder.\n"
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

    @staticmethod
    def _no_adaptation(task: Task, decision: Escalation | None) -> str:
        if decision is not None:
            return decision.reason
        failure = failure_of(task)
        what = failure.short(500) if failure else "an unknown failure (nothing recorded)"
        return f"no Refiner policy applies to {what}"

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

    def _manual(self, claim: Claim, task: Task, reason: str, title: str, iteration: int,
                evidence: list[str] | None = None,
                specs: tuple[dict[str, Any], dict[str, Any], str] | None = None) -> None:
        body = f"## Escalated to a person\n\n{reason}\n"
        if evidence:
            body += f"\n### Evidence\n\n{_evidence(evidence)}\n"
        if specs is not None:
            before, after, step_id = specs
            body += (f"\n### Job spec (current, kept)\n\n```yaml\n{_yaml(before)}\n```\n\n"
                     f"### Job spec the adaptation proposed (invalid, not written)\n\n```yaml\n{_yaml(after)}\n```\n\n"
                     f"```diff\n{spec_diff(before, after, step_id)}\n```\n")
        write_report(self.ctx.ws, task.id, "refiner", self.ctx.owner, title, body, f"needs_manual: {reason}"[:200],
                     suffix=str(iteration), clock=self.ctx.clock)

        def apply(tx: Transaction, item: Item) -> None:
            assert isinstance(item, Task)
            lifecycle.on_escalated(tx, item, reason)

        self.finish(claim, S.NEEDS_MANUAL, reason[:300], apply)

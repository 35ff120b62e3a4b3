"""Tester (Test and Check): evaluates every acceptance criterion on the story's branch.

Metrics come from the run summaries committed on the branch (merged across builder steps, later
steps winning), files are looked up in the run directories, the artifacts and the branch's tree,
and commands run in a checkout of the branch. The verdict follows the check rules of the
original process (:func:`oodatcaa.core.criteria.decide`); results are committed on the branch as
``[test] <TASK>: ...`` and written as a PASS/FAIL table in the report, with the decision's rationale
(:mod:`oodatcaa.checkrecord`); a gray-zone or ``needs_manual`` decision is also appended to
``SPRINT_DISCUSS.md``. ``regression:`` criteria are checked against the baselines of the stories
merged before (:mod:`oodatcaa.baselines`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from oodatcaa import baselines, checkrecord
from oodatcaa.core import lifecycle
from oodatcaa.core.atomic import atomic_write_text
from oodatcaa.core.criteria import (
    CheckContext,
    Criterion,
    CriterionResult,
    MetricCheck,
    RegressionBaseline,
    RegressionCheck,
    Verdict,
    decide,
    evaluate_criterion,
    format_results_table,
)
from oodatcaa.core.errors import BranchMissingError
from oodatcaa.core.failures import Failure, FailureKind
from oodatcaa.core.leases import Claim
from oodatcaa.core.models import Item, Subtask, Task
from oodatcaa.core.statuses import TaskStatus
from oodatcaa.core.store import Transaction
from oodatcaa.core.workspace import run_dir_in_branch
from oodatcaa.gitops import GitRepo
from oodatcaa.reports import write_report
from oodatcaa.roles.base import RoleAgent, as_subtask

S = TaskStatus


def merged_metrics(worktree: Path, steps: list[Subtask]) -> dict[str, dict[str, Any]]:
    """Namespaced metrics of every step's ``summary.json`` on the branch (later steps win)."""
    merged: dict[str, dict[str, Any]] = {}
    for step in steps:
        path = worktree / run_dir_in_branch(step.id) / "summary.json"
        if not path.exists():
            continue
        for ns, values in json.loads(path.read_text(encoding="utf-8")).items():
            if isinstance(values, dict):
                merged.setdefault(ns, {}).update(values)
    return merged


def verdict_failure(task_id: str, tester_id: str, verdict: Verdict, results: list[CriterionResult],
                    criteria: list[Criterion]) -> Failure:
    """The ``criteria_failed`` failure of a verdict that is not ``accept``.

    ``details``: ``decision``, ``failed`` (one dict per criterion not passing: id, outcome, critical,
    observed, expected, detail), ``failed_metrics`` (every metric name a failing ``metric:`` check
    compares, both sides, and the metric of a ``regression:`` check that failed, so the Refiner's
    too-slow, memory and loss rules apply to a regression) and ``failed_critical``.
    """
    by_id = {c.id: c for c in criteria}
    failed = [r for r in results if r.outcome != "PASS"]
    metrics: list[str] = []
    for r in failed:
        check = by_id[r.criterion_id].check if r.criterion_id in by_id else None
        if isinstance(check, MetricCheck):
            metrics.append(check.metric)
            if isinstance(check.value, str):
                metrics.append(check.value)
        elif isinstance(check, RegressionCheck) and r.outcome == "FAIL":
            metrics.append(check.metric)
    listed = "; ".join(f"{r.criterion_id} {r.outcome}: {r.detail or r.observed}" for r in failed)
    return Failure.of(
        FailureKind.CRITERIA_FAILED, f"tester: {verdict.reason}; {listed}", item=tester_id,
        decision=verdict.decision, failed_critical=list(verdict.failed_critical), failed_metrics=metrics,
        failed=[{"id": r.criterion_id, "outcome": r.outcome, "critical": r.critical, "observed": r.observed,
                 "expected": r.expected, "detail": r.detail[:500]} for r in failed])


class Tester(RoleAgent):
    """Claims ``ready`` tester subtasks (their builder steps are built) and checks the story."""

    role = "tester"
    crash_status = S.NEEDS_MANUAL

    def work(self, claim: Claim) -> None:
        queue = self.store.read()
        task = queue.task(claim.task_id)
        tester = queue.item(claim.item_id)
        assert isinstance(tester, Subtask) and tester.branch
        git = self.git()
        try:
            git.require_branch(tester.branch)
        except BranchMissingError as exc:
            self._branch_missing(claim, exc)
            return
        results, verdict, payload, commit = self.check(git, task, tester)
        summary = f"{verdict.decision}: {verdict.passed}/{verdict.total} pass" + (
            f"; failed critical: {', '.join(verdict.failed_critical)}" if verdict.failed_critical else "")
        report = self.report(task, tester, results, verdict, payload["tested_commit"], commit, summary)
        if checkrecord.needs_discussion(verdict):
            self.discuss(task, tester, results, verdict, payload["tested_commit"], commit, report)
        failures = [r.model_dump(mode="json") for r in results if r.outcome != "PASS"]
        # every regression, passing ones too: the Integrator's "investigate" note reads them
        regressions = [r.regression.model_dump(mode="json") | {"criterion_id": r.criterion_id}
                       for r in results if r.regression is not None]
        # every criterion's outcome, compactly: the HTML report's PASS/FAIL table reads it
        outcomes = [{"criterion_id": r.criterion_id, "outcome": r.outcome} for r in results]
        record = {"verdict": verdict.model_dump(mode="json"), "failures": failures, "commit": commit,
                  "regressions": regressions, "criteria": outcomes}
        failure = None if verdict.decision == "accept" else verdict_failure(
            task.id, tester.id, verdict, results, task.acceptance_criteria)

        def apply(tx: Transaction, item: Item) -> None:
            assert isinstance(item, Subtask)
            item.result = record
            item.failure = failure
            lifecycle.on_verdict(tx, item, verdict.decision, summary, failure, manual_reason=verdict.reason)

        self.finish(claim, lifecycle.VERDICT_STATUS[verdict.decision], summary, apply)

    def check(self, git: GitRepo, task: Task, tester: Subtask) -> tuple[list[CriterionResult], Verdict, dict[str, Any], str]:
        """Evaluate every criterion in a worktree of the branch; commit ``results.json`` there.

        Returns ``(results, verdict, the committed payload, the results commit)``.
        """
        steps = task.builds()
        worktree = self.ctx.ws.worktree_dir(tester.id)
        assert tester.branch is not None
        git.add_worktree(worktree, tester.branch, git.trunk)
        try:
            metrics = merged_metrics(worktree, steps)
            roots = [worktree / run_dir_in_branch(s.id) for s in steps]
            roots += [Path(s.result["artifacts_dir"]) for s in steps if s.result and s.result.get("artifacts_dir")]
            roots.append(worktree)
            found, error = self.baselines(task)
            ctx = CheckContext(metrics=metrics, file_roots=roots, workdir=worktree, baselines=found,
                               baseline_error=error, policy=self.ctx.config.check)
            results = []
            for criterion in task.acceptance_criteria:
                self.check_abort()
                results.append(evaluate_criterion(criterion, ctx))
            verdict = decide(results, self.ctx.config.check)
            out = worktree / run_dir_in_branch(tester.id)
            out.mkdir(parents=True, exist_ok=True)
            payload = {
                "verdict": verdict.model_dump(mode="json"),
                "results": [r.model_dump(mode="json") for r in results],
                "tested_commit": git.head_sha(tester.branch),
            }
            atomic_write_text(out / "results.json", json.dumps(payload, indent=2) + "\n")
            commit, _ = git.commit_worktree(
                worktree, f"[test] {task.id}: {verdict.passed}/{verdict.total} criteria pass -> {verdict.decision}")
        finally:
            git.remove_worktree(worktree)
        return results, verdict, payload, commit

    def baselines(self, task: Task) -> tuple[dict[str, RegressionBaseline | None] | None, str | None]:
        """Baselines of the story's ``regression:`` metrics, or ``(None, why)`` when ``baselines.json`` is unreadable.

        An unreadable file makes those criteria ``UNVERIFIED`` (a person repairs the file), never a pass.
        """
        names = [c.check.metric for c in task.acceptance_criteria if isinstance(c.check, RegressionCheck)]
        try:
            return baselines.baselines_for_story(self.ctx.ws, task, names), None
        except baselines.BaselinesError as exc:
            return None, str(exc)

    def report(self, task: Task, tester: Subtask, results: list[CriterionResult], verdict: Verdict,
               tested: str, commit: str, summary: str) -> Path:
        """The PASS/FAIL report with the decision's rationale; one per attempt, so a re-test never
        overwrites the earlier verdict. Returns its path."""
        record = "\n".join(checkrecord.rationale(results, verdict, self.ctx.config.check))
        body = (
            f"## Verdict: {verdict.decision.upper()}\n\n{verdict.reason}\n\n"
            f"- **Branch:** `{tester.branch}` at `{tested}`\n"
            f"- **Results commit:** `{commit}`\n- **Pass ratio:** {verdict.pass_ratio:.0%} "
            f"({verdict.passed}/{verdict.total})\n\n## Decision record\n\n{record}\n\n"
            f"## Criteria\n\n{format_results_table(results)}\n"
        )
        suffix = tester.id if tester.attempts <= 1 else f"{tester.id}_{tester.attempts}"
        return write_report(self.ctx.ws, task.id, "tester", self.ctx.owner, f"Tester report — {tester.id}", body,
                            summary, suffix=suffix, clock=self.ctx.clock)

    def discuss(self, task: Task, tester: Subtask, results: list[CriterionResult], verdict: Verdict,
                tested: str, commit: str, report: Path) -> None:
        """Append the gray-zone or person decision to ``SPRINT_DISCUSS.md`` (the original's decision record)."""
        failing = [f"{r.criterion_id} {r.outcome}" for r in results if r.outcome != "PASS"]
        evidence = [
            f"- **Tester report:** `{self.ctx.ws.relative(report)}`",
            f"- **Branch:** `{tester.branch}` at `{tested}`; results commit `{commit}`",
            f"- **Criteria not passing:** {', '.join(failing) if failing else 'none'}",
        ]
        checkrecord.append_discussion(self.ctx.ws, task_id=task.id, title=task.title, verdict=verdict,
                                      rationale_lines=checkrecord.rationale(results, verdict, self.ctx.config.check),
                                      evidence=evidence, clock=self.ctx.clock)

    def _branch_missing(self, claim: Claim, exc: BranchMissingError) -> None:
        failure = Failure.of(FailureKind.BRANCH_MISSING, str(exc), item=claim.item_id, branch=exc.branch)
        write_report(self.ctx.ws, claim.task_id, "tester", self.ctx.owner, f"Tester report — {claim.item_id}",
                     f"## Cannot test\n\n{failure.message}\n", failure.message[:200], suffix=f"{claim.item_id}_missing",
                     clock=self.ctx.clock)
        self.finish(claim, S.NEEDS_ADAPT, failure.short(),
                    lambda tx, item: lifecycle.on_test_blocked(tx, as_subtask(item), failure))

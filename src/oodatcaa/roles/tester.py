"""Tester (Test and Check): evaluates every acceptance criterion on the story's branch.

Metrics come from the run summaries committed on the branch (merged across builder steps, later
steps winning), files are looked up in the run directories, the artifacts and the branch's tree,
and commands run in a checkout of the branch. The verdict follows the check rules of the
original process (:func:`oodatcaa.core.criteria.decide`); results are committed on the branch as
``[test] <TASK>: ...`` and written as a PASS/FAIL table in the report.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from oodatcaa.core.atomic import atomic_write_text
from oodatcaa.core.errors import BranchMissingError
from oodatcaa.core.criteria import CheckContext, decide, evaluate_criterion, format_results_table
from oodatcaa.core.leases import Claim
from oodatcaa.core.models import Item, Subtask
from oodatcaa.core.statuses import TaskStatus
from oodatcaa.core.store import Transaction
from oodatcaa.core.workspace import run_dir_in_branch
from oodatcaa.gitops import GitRepo
from oodatcaa.reports import write_report
from oodatcaa.roles.base import RoleAgent

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


class Tester(RoleAgent):
    """Claims ``ready`` tester subtasks (their builder steps are built) and checks the story."""

    role = "tester"
    crash_status = S.NEEDS_MANUAL

    def work(self, claim: Claim) -> None:
        ws, cfg = self.ctx.ws, self.ctx.config
        queue = self.store.read()
        task = queue.task(claim.task_id)
        tester = queue.item(claim.item_id)
        assert isinstance(tester, Subtask) and tester.branch
        steps = task.builds()
        git = GitRepo(ws.root, ws.lock_path("git"), owner=self.ctx.owner)
        try:
            git.require_branch(tester.branch)
        except BranchMissingError as exc:
            self._branch_missing(claim, str(exc))
            return
        worktree = ws.worktree_dir(tester.id)
        git.add_worktree(worktree, tester.branch, "main")
        try:
            metrics = merged_metrics(worktree, steps)
            roots = [worktree / run_dir_in_branch(s.id) for s in steps]
            roots += [Path(s.result["artifacts_dir"]) for s in steps if s.result and s.result.get("artifacts_dir")]
            roots.append(worktree)
            ctx = CheckContext(metrics=metrics, file_roots=roots, workdir=worktree)
            results = []
            for criterion in task.acceptance_criteria:
                self.check_abort()
                results.append(evaluate_criterion(criterion, ctx))
            verdict = decide(results, cfg.check)
            rel = run_dir_in_branch(tester.id)
            out = worktree / rel
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

        table = format_results_table(results)
        body = (
            f"## Verdict: {verdict.decision.upper()}\n\n{verdict.reason}\n\n"
            f"- **Branch:** `{tester.branch}` at `{payload['tested_commit']}`\n"
            f"- **Results commit:** `{commit}`\n- **Pass ratio:** {verdict.pass_ratio:.0%} "
            f"({verdict.passed}/{verdict.total})\n\n## Criteria\n\n{table}\n"
        )
        summary = f"{verdict.decision}: {verdict.passed}/{verdict.total} pass" + (
            f"; failed critical: {', '.join(verdict.failed_critical)}" if verdict.failed_critical else "")
        # one report per attempt: a re-test after an adaptation never overwrites the earlier verdict
        suffix = tester.id if tester.attempts <= 1 else f"{tester.id}_{tester.attempts}"
        write_report(ws, task.id, "tester", self.ctx.owner, f"Tester report — {tester.id}", body, summary,
                     suffix=suffix, clock=self.ctx.clock)

        failures = [r.model_dump(mode="json") for r in results if r.outcome != "PASS"]
        record = {"verdict": verdict.model_dump(mode="json"), "failures": failures, "commit": commit}
        to_item = {"accept": S.READY_FOR_INTEGRATOR, "adapt": S.NEEDS_ADAPT, "needs_manual": S.NEEDS_MANUAL}[verdict.decision]

        def apply(tx: Transaction, item: Item) -> None:
            item.result = record
            story = tx.queue.parent(item)
            if verdict.decision == "accept":
                story.last_error = None
                tx.move(story, S.READY_FOR_INTEGRATOR, summary)
            else:
                failed = "; ".join(f"{f['criterion_id']} {f['outcome']}: {f['detail']}" for f in failures)
                story.last_error = f"tester: {verdict.reason}; {failed}"[:2000]
                if verdict.decision == "needs_manual":
                    story.manual_reason = verdict.reason
                tx.move(story, to_item, summary)

        self.finish(claim, to_item, summary, apply)

    def _branch_missing(self, claim: Claim, error: str) -> None:
        write_report(self.ctx.ws, claim.task_id, "tester", self.ctx.owner, f"Tester report — {claim.item_id}",
                     f"## Cannot test\n\n{error}\n", error[:200], suffix=f"{claim.item_id}_missing",
                     clock=self.ctx.clock)

        def apply(tx: Transaction, item: Item) -> None:
            item.last_error = error
            story = tx.queue.parent(item)
            story.last_error = f"tester: {error}"
            tx.move(story, S.NEEDS_ADAPT, error[:300])

        self.finish(claim, S.NEEDS_ADAPT, error[:300], apply)

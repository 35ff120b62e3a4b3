"""Integrator (Archive): merges a tested story into the trunk, tags it and writes the CHANGELOG.

Steps, each idempotent so a killed integrator's successor can finish the job:
``git merge --no-ff`` of the last builder step's branch (skipped if already merged), the task's
CHANGELOG entry, a ``[docs]`` commit of the CHANGELOG with the task's plans and reports, the
annotated tag ``<TASK>-complete`` carrying the key metrics, then the story and its subtasks
``done`` and its dependents unblocked. A conflict aborts the merge (the trunk untouched) and sends
the story to ``needs_adapt`` with the conflicting files.
"""

from __future__ import annotations

from oodatcaa import baselines
from oodatcaa.changelog import add_entry
from oodatcaa.core import lifecycle
from oodatcaa.core.atomic import atomic_write_text
from oodatcaa.core.clock import Clock
from oodatcaa.core.errors import BranchMissingError, MergeConflictError
from oodatcaa.core.failures import Failure, FailureKind
from oodatcaa.core.leases import Claim
from oodatcaa.core.models import Item, Task
from oodatcaa.core.statuses import TaskStatus
from oodatcaa.core.store import Transaction
from oodatcaa.core.workspace import Workspace
from oodatcaa.jobs.registry import headline
from oodatcaa.reports import write_report
from oodatcaa.roles.base import RoleAgent

S = TaskStatus


def merge_failure(exc: MergeConflictError | BranchMissingError, item: str) -> Failure:
    """The typed failure of a refused merge, from the exception class (never from its text)."""
    if isinstance(exc, MergeConflictError):
        return Failure.of(FailureKind.MERGE_CONFLICT, f"merge conflict: {exc}", item=item,
                          branch=exc.branch, files=list(exc.files))
    return Failure.of(FailureKind.BRANCH_MISSING, str(exc), item=item, branch=exc.branch)


def metrics_text(task: Task) -> str:
    """The story's headline metrics (each job kind's key metrics) as ``k=v, ...`` for its tag and CHANGELOG line."""
    return ", ".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in sorted(headline(task.metrics).items()))


def record_baselines(ws: Workspace, task: Task, merge_commit: str, sprint_id: str, clock: Clock) -> str:
    """Record the merged story's metrics as the newest regression baselines; returns a line for the report.

    An unreadable ``baselines.json`` is left as it is (never overwritten) and named in the report: the
    merge has happened, so it is not undone for a file a person must repair.
    """
    try:
        entries = baselines.record_story(ws, task, merge_commit, sprint_id=sprint_id, clock=clock)
    except baselines.BaselinesError as exc:
        return f"not recorded: {exc}"
    return (f"{sum(len(e.metrics) for e in entries)} metrics of {len(entries)} step(s) recorded in "
            f"`{ws.relative(baselines.baselines_path(ws))}`" if entries else "no step metrics to record")


class Integrator(RoleAgent):
    """Claims ``ready_for_integrator`` stories and archives them into the trunk (``[git] trunk``)."""

    role = "integrator"
    crash_status = S.NEEDS_MANUAL

    def work(self, claim: Claim) -> None:
        ws = self.ctx.ws
        queue = self.store.read()
        task = queue.task(claim.task_id)
        sprint = queue.sprint
        assert sprint is not None
        branch = task.builds()[-1].branch
        assert branch
        git = self.git()
        git.ensure_trunk()
        dirty = git.foreign_changes()
        if dirty:
            reason = (f"{git.trunk} has uncommitted changes in: {', '.join(dirty[:10])}; commit or stash them, "
                      "then set the task back to ready_for_integrator")
            self.finish(claim, S.NEEDS_MANUAL, reason[:300], lambda tx, item: setattr(item, "manual_reason", reason))
            return
        # docs a killed integrator staged but did not commit would make git refuse the merge; they stay
        # in the working tree and are committed with their own task's integration
        git.unstage([".oodatcaa", "CHANGELOG.md"])
        try:
            merged_already = git.is_ancestor(branch)
            if merged_already:  # by a predecessor killed before it recorded the merge: find that commit
                merge_commit = task.merged_commit or git.merge_commit_of(branch) or git.head_sha()
            else:
                merge_commit = git.merge_no_ff(branch, f"[impl] {task.id}: merge {branch} — {task.title}")
        except (MergeConflictError, BranchMissingError) as exc:
            failure = merge_failure(exc, task.id)
            body = (f"## Merge refused (`{failure.kind.value}`)\n\n{failure.message}\n\n"
                    f"The merge was aborted; {git.trunk} is unchanged.\n")
            write_report(ws, task.id, "integrator", self.ctx.owner, f"Integrator report — {task.id}", body,
                         failure.message[:200], clock=self.ctx.clock)

            def conflict(tx: Transaction, item: Item) -> None:
                item.failure = failure

            self.finish(claim, S.NEEDS_ADAPT, failure.short(), conflict)
            return
        self.check_abort()

        tag = f"{task.id}-complete"
        metrics = metrics_text(task)
        # --- regression baselines (baselines.py): record this merge, flag a 20-50 % regression ---
        investigate = baselines.investigate_note(task)
        baselines_note = record_baselines(ws, task, merge_commit, sprint.id, self.ctx.clock)
        # --- end regression baselines ---
        changelog = ws.root / "CHANGELOG.md"
        old = changelog.read_text(encoding="utf-8") if changelog.exists() else None
        line = f"{task.title} (tag `{tag}`; {metrics or 'no metrics'}{'; ' + investigate if investigate else ''})"
        atomic_write_text(changelog, add_entry(old, number=sprint.number, sprint_id=sprint.id,
                                               day=self.ctx.clock.now().date(), task_id=task.id, line=line))
        body = (
            f"## Integrated\n\n- **Branch:** `{branch}`\n- **Merge commit:** `{merge_commit}`"
            f"{' (already merged by an earlier attempt)' if merged_already else ''}\n- **Tag:** `{tag}`\n"
            f"- **Key metrics:** {metrics or 'none'}\n- **CHANGELOG:** entry under Sprint {sprint.number}\n"
            f"- **Baselines:** {baselines_note}\n" + (f"- **Flag:** {investigate}\n" if investigate else "")
        )
        write_report(ws, task.id, "integrator", self.ctx.owner, f"Integrator report — {task.id}", body,
                     f"merged {branch}, tagged {tag}", clock=self.ctx.clock)
        paths = ["CHANGELOG.md", ws.relative(ws.plan_dir(task.id)), ws.relative(ws.report_dir(task.id)),
                 ws.relative(ws.reports_index_path), ws.relative(baselines.baselines_path(ws))]
        docs_commit = git.commit_paths(paths, f"[docs] {task.id}: changelog, plan and reports")
        if not git.tag_exists(tag):
            # on this task's own commit: after a crash, HEAD may already be another task's
            git.tag(tag, f"{task.id}: {task.title}\n\nSprint: {sprint.id}\nBranch: {branch}\n"
                         f"Merge: {merge_commit}\nMetrics: {metrics or 'none'}\n"
                         + (f"Flag: {investigate}\n" if investigate else ""), docs_commit or merge_commit)
        tag_commit = git.head_sha(tag + "^{commit}")

        def apply(tx: Transaction, item: Item) -> None:
            assert isinstance(item, Task)
            lifecycle.on_integrated(tx, item, merge_commit)

        self.finish(claim, S.DONE, f"merged {branch} ({merge_commit[:10]}), tagged {tag} at {tag_commit[:10]}", apply)

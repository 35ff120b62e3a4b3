"""Integrator (Archive): merges a tested story into the trunk through the quality gates, tags it, writes the CHANGELOG.

Merge-queue semantics (:mod:`oodatcaa.landing`): in a detached integration checkout of the trunk's
current commit (``state/integration/<owner>/``) it makes the ``git merge --no-ff`` of the last builder
step's branch, then a ``[docs]`` commit with the story's CHANGELOG entry, plans and reports; it runs
every ``[[gates]]`` on that commit and, only when all pass, moves the trunk to exactly that commit by
compare-and-swap (a fast-forward of the primary checkout when the trunk is checked out there). A trunk
that moved meanwhile means a retry on the new trunk. Then the annotated tag ``<TASK>-complete`` (key
metrics, gate results) on the landed commit, and the story and its subtasks ``done``, dependents
unblocked.

Fencing: the compare-and-swap and the tag each run only after :func:`~oodatcaa.core.leases.assert_holds`
confirmed, under the git lock, that this agent's claim still holds the story's lease; an integrator whose
lease was taken over moves nothing and logs the ``LeaseError`` (docs/guarantees.md, "What is fenced").

Crash safety: nothing is visible on the trunk until the single compare-and-swap, so a killed
integrator leaves either nothing (its successor starts over in a fresh checkout) or a landed story
(its successor finds the branch merged, tags the landed commit if the tag is missing, and finishes).
A conflict sends the story to ``needs_adapt`` with ``merge_conflict`` and the files; a failing gate
with ``gate_failed`` (the gate, its command, reason and output tail); the trunk is untouched in both.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from oodatcaa import baselines
from oodatcaa.changelog import add_entry
from oodatcaa.core import lifecycle
from oodatcaa.core.atomic import atomic_write_text
from oodatcaa.core.clock import Clock
from oodatcaa.core.errors import BranchMissingError, MergeConflictError, UncommittedChangesError
from oodatcaa.core.failures import Failure, FailureKind
from oodatcaa.core.leases import Claim, assert_holds
from oodatcaa.core.models import Item, Sprint, Task
from oodatcaa.core.statuses import TaskStatus
from oodatcaa.core.store import Transaction
from oodatcaa.core.workspace import Workspace
from oodatcaa.gates import GateResult
from oodatcaa.gitops import GitRepo
from oodatcaa.landing import LandingOutcome, land_gated
from oodatcaa.person import approval_text
from oodatcaa.reports import write_report
from oodatcaa.roles.base import RoleAgent
from oodatcaa.tagging import completion_tag_message, landed_commit, metrics_text

S = TaskStatus


def merge_failure(exc: MergeConflictError | BranchMissingError, item: str) -> Failure:
    """The typed failure of a refused merge, from the exception class (never from its text)."""
    if isinstance(exc, MergeConflictError):
        return Failure.of(FailureKind.MERGE_CONFLICT, f"merge conflict: {exc}", item=item,
                          branch=exc.branch, files=list(exc.files))
    return Failure.of(FailureKind.BRANCH_MISSING, str(exc), item=item, branch=exc.branch)


def gates_text(results: list[GateResult]) -> str:
    """``unit tests: passed; lint: passed`` for the tag message, or ``none configured``."""
    return "; ".join(f"{r.gate}: {'passed' if r.passed else 'failed'}" for r in results) or "none configured"


def copy_into(ws: Workspace, checkout: Path, paths: list[str]) -> None:
    """Copy the primary checkout's ``paths`` (files or directories, relative) into ``checkout``."""
    for rel in paths:
        source, target = ws.root / rel, checkout / rel
        if source.is_dir():
            shutil.copytree(source, target, dirs_exist_ok=True)
        elif source.is_file():
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target)


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
    """Claims ``ready_for_integrator`` stories and lands them, gated, on the trunk (``[git] trunk``)."""

    role = "integrator"
    crash_status = S.NEEDS_MANUAL

    def work(self, claim: Claim) -> None:
        queue = self.store.read()
        task = queue.task(claim.task_id)
        sprint = queue.sprint
        assert sprint is not None
        branch = task.builds()[-1].branch
        assert branch
        git = self.git()
        git.ensure_trunk_branch()
        if git.trunk_checked_out():
            dirty = git.foreign_changes()
            if dirty:
                self._needs_person(claim, git, dirty)
                return
            # docs a killed integrator of an earlier version staged but did not commit would make the
            # fast-forward refuse; they stay in the working tree
            git.unstage([".oodatcaa", "CHANGELOG.md"])
        if git.branch_exists(branch) and git.is_ancestor(branch):
            self._finish_landed(claim, git, task, sprint, branch)  # by a predecessor killed after landing
            return
        tag = f"{task.id}-complete"
        try:
            outcome = land_gated(self.ctx.ws, git, self.ctx.config.gates,
                                 lambda checkout, trunk: self._build(git, checkout, task, sprint, branch, tag),
                                 owner=self.ctx.owner, cancel=self.abort_signal(),
                                 guard=lambda: assert_holds(self.store, claim, f"landing on {git.trunk}"))
        except (MergeConflictError, BranchMissingError) as exc:
            self._refused(claim, git, task, merge_failure(exc, task.id))
            return
        except UncommittedChangesError as exc:
            self._needs_person(claim, git, exc.files)
            return
        self.check_abort()  # a gate stopped because the agent is stopping is no verdict on the story
        if outcome.status != "landed":
            self._gate_refused(claim, git, task, outcome)
            return
        # the landed commit is the [docs] commit on top of the merge, or the merge itself (nothing to document)
        first_parent = git.head_sha(outcome.commit + "^1")
        merge_commit = outcome.commit if first_parent == outcome.trunk_before else first_parent
        self._tag_and_finish(claim, git, task, sprint, branch, merge_commit, outcome.commit, outcome.results)

    def _build(self, git: GitRepo, checkout: Path, task: Task, sprint: Sprint, branch: str, tag: str) -> str:
        """The candidate in ``checkout``: the ``--no-ff`` merge, then the CHANGELOG, plans and reports."""
        ws = self.ctx.ws
        merge_commit = git.merge_no_ff_at(checkout, branch, f"[impl] {task.id}: merge {branch} — {task.title}")
        self.check_abort()
        metrics = metrics_text(task)
        # --- regression baselines (baselines.py): recorded in the candidate, so only a landed merge counts ---
        investigate = baselines.investigate_note(task)
        baselines_note = record_baselines(Workspace(checkout), task, merge_commit, sprint.id, self.ctx.clock)
        changelog = checkout / "CHANGELOG.md"
        old = changelog.read_text(encoding="utf-8") if changelog.exists() else None
        line = f"{task.title} (tag `{tag}`; {metrics or 'no metrics'}{'; ' + investigate if investigate else ''})"
        atomic_write_text(changelog, add_entry(old, number=sprint.number, sprint_id=sprint.id,
                                               day=self.ctx.clock.now().date(), task_id=task.id, line=line))
        gates = self.ctx.config.gates
        gate_list = ", ".join(f"`{g.name}` (`{g.run}`)" for g in gates) or "none configured"
        body = (
            f"## Integrated\n\n- **Branch:** `{branch}`\n- **Merge commit:** `{merge_commit}`\n- **Tag:** `{tag}`\n"
            f"- **Key metrics:** {metrics or 'none'}\n- **CHANGELOG:** entry under Sprint {sprint.number}\n"
            f"- **Gates:** {gate_list}; run on the commit holding this report before the trunk moved to it "
            "(their results are in the tag message)\n"
            + (f"- **Approval:** {approval_text(task)}\n" if approval_text(task) else "")
            + f"- **Baselines:** {baselines_note}\n" + (f"- **Flag:** {investigate}\n" if investigate else "")
        )
        write_report(ws, task.id, "integrator", self.ctx.owner, f"Integrator report — {task.id}", body,
                     f"merged {branch}, tagged {tag}", clock=self.ctx.clock)
        paths = [ws.relative(ws.plan_dir(task.id)), ws.relative(ws.report_dir(task.id)),
                 ws.relative(ws.reports_index_path)]
        copy_into(ws, checkout, paths)
        committed = ["CHANGELOG.md", ws.relative(baselines.baselines_path(ws)), *paths]
        docs = git.commit_at(checkout, committed, f"[docs] {task.id}: changelog, plan and reports")
        return docs or merge_commit

    def _finish_landed(self, claim: Claim, git: GitRepo, task: Task, sprint: Sprint, branch: str) -> None:
        """A predecessor landed the story and was killed before it finished: tag and finish."""
        merge_commit = task.merged_commit or git.merge_commit_of(branch) or git.trunk_sha()
        # the landed commit is this story's [docs] commit on the merge (never a later story's commit)
        landed = landed_commit(git, task.id, merge_commit)
        self._tag_and_finish(claim, git, task, sprint, branch, merge_commit, landed, None)

    def _tag_and_finish(self, claim: Claim, git: GitRepo, task: Task, sprint: Sprint, branch: str,
                        merge_commit: str, landed: str, results: list[GateResult] | None) -> None:
        tag = f"{task.id}-complete"
        if not git.tag_exists(tag):
            gates = gates_text(results) if results is not None else "passed before landing (by an earlier attempt)"
            with git.locked():  # the claim check and the tag under one hold of the git lock (re-entrant)
                assert_holds(self.store, claim, f"tag {tag}")
                git.tag(tag, completion_tag_message(task, sprint.id, branch, merge_commit, gates), landed)
        tag_commit = git.head_sha(tag + "^{commit}")

        def apply(tx: Transaction, item: Item) -> None:
            assert isinstance(item, Task)
            lifecycle.on_integrated(tx, item, merge_commit)

        self.finish(claim, S.DONE, f"merged {branch} ({merge_commit[:10]}), tagged {tag} at {tag_commit[:10]}", apply)

    def _needs_person(self, claim: Claim, git: GitRepo, dirty: list[str]) -> None:
        reason = (f"{git.trunk} has uncommitted changes in: {', '.join(dirty[:10])}; commit or stash them, "
                  "then set the task back to ready_for_integrator")
        self.finish(claim, S.NEEDS_MANUAL, reason[:300], lambda tx, item: setattr(item, "manual_reason", reason))

    def _refused(self, claim: Claim, git: GitRepo, task: Task, failure: Failure, extra: str = "") -> None:
        body = (f"## Merge refused (`{failure.kind.value}`)\n\n{failure.message}\n\n"
                f"The merge result was not landed; {git.trunk} is unchanged.\n{extra}")
        write_report(self.ctx.ws, task.id, "integrator", self.ctx.owner, f"Integrator report — {task.id}", body,
                     failure.message[:200], clock=self.ctx.clock)

        def record(tx: Transaction, item: Item) -> None:
            item.failure = failure

        self.finish(claim, S.NEEDS_ADAPT, failure.short(), record)

    def _gate_refused(self, claim: Claim, git: GitRepo, task: Task, outcome: LandingOutcome) -> None:
        gate = outcome.failed_gate
        if gate is None:  # the trunk kept moving: nothing wrong with the story, try again later
            reason = (f"{git.trunk} moved under {outcome.attempts} landing attempts in a row; "
                      "set the task back to ready_for_integrator to try again")
            self.finish(claim, S.NEEDS_MANUAL, reason, lambda tx, item: setattr(item, "manual_reason", reason))
            return
        passed = "".join(r.markdown() + "\n" for r in outcome.results[:-1])
        extra = f"\n{gate.markdown()}\n" + (f"Gates that passed first:\n\n{passed}" if passed else "")
        self._refused(claim, git, task, gate.failure(task.id), extra)

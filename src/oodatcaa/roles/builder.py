"""Builder (Act): runs one builder step's job on its own feature branch in its own worktree.

Each attempt of a step gets its own worktree, ``state/worktrees/<STEP>.a<attempt>`` (run files inside
it at ``.oodatcaa/runs/<STEP>``, the path committed on the branch), with an owner file beside it
naming the process; a reclaimed step's next attempt never touches the checkout of an old process
that still runs. The branch commit happens only after :func:`~oodatcaa.core.leases.assert_holds`
confirmed, under the git lock, that the claim still holds the step's lease.

The job runs in a child process (MLX memory isolated and measurable, a crash contained). Small
run files (resolved config, metrics JSONL, summary) are committed on the branch as
``[impl] <TASK>: ...``; large artifacts stay under the git-ignored state dir with their sha256
recorded. A failed job is never reported as a success: the step and its story go to
``needs_adapt`` carrying the error, and the agent keeps running.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from oodatcaa.archive import earlier_stories, story_artifact_dirs
from oodatcaa.core import lifecycle
from oodatcaa.core.atomic import atomic_write_text
from oodatcaa.core.leases import Claim, assert_holds, pid_alive, update_claimed
from oodatcaa.core.models import Item, Subtask, Task
from oodatcaa.core.statuses import TaskStatus
from oodatcaa.core.store import Transaction
from oodatcaa.core.workspace import Workspace, run_dir_in_branch, worktree_owner_path
from oodatcaa.gitops import GitRepo
from oodatcaa.jobs.registry import headline, numeric_metrics
from oodatcaa.reports import write_report
from oodatcaa.roles.base import RoleAgent, as_subtask
from oodatcaa.roles.inheritance import inherited_settings

if TYPE_CHECKING:
    from oodatcaa.jobs.runner import JobResult

S = TaskStatus
log = logging.getLogger("oodatcaa.agent")


def _metrics_table(summary: dict[str, dict[str, Any]]) -> str:
    rows = ["| metric | value |", "|---|---|"]
    for ns, values in summary.items():
        for key, value in values.items():
            if isinstance(value, (dict, list)):
                continue
            text = str(value).replace("\n", " ")
            rows.append(f"| {ns}.{key} | {text[:120]} |")
    return "\n".join(rows)


#: Job fields that may name the output of an earlier step (an adapter, a fused model, a dataset).
PATH_FIELDS = ("adapter", "model", "data")


def resolve_earlier_outputs(job: dict[str, Any], worktree: Path, earlier: list[Path]) -> dict[str, Any]:
    """Point relative paths that exist only in an earlier step's artifacts dir at that dir.

    A later step may say ``adapter: adapters`` for the adapter trained by step 01; adapters live in
    the git-ignored artifacts dir, not on the branch. The newest earlier step wins. Paths that
    exist in the worktree, absolute paths and ``default`` are left alone.
    """
    resolved = dict(job)
    for key in PATH_FIELDS:
        value = job.get(key)
        if not isinstance(value, str) or value == "default" or Path(value).is_absolute():
            continue
        if (worktree / value).exists():
            continue
        for directory in reversed(earlier):
            if (directory / value).exists():
                resolved[key] = str(directory / value)
                break
    return resolved


def resume_from_earlier_attempt(job: dict[str, Any], step_artifacts: Path, attempt: int) -> dict[str, Any]:
    """For a re-run ``lora_train`` step, resume from the newest earlier attempt's checkpoints.

    A crash, a timeout or a takeover gives the step a new attempt (and a new artifacts dir); with
    ``resume_from`` the job continues where the killed run stopped. The job ignores a checkpoint
    whose set-up differs (after a Refiner change), so this is always safe. A spec that says
    ``resume: false`` or names its own ``resume_from`` is left alone.
    """
    if job.get("kind") != "lora_train" or job.get("resume") is False or job.get("resume_from"):
        return job
    for earlier in range(attempt - 1, 0, -1):
        checkpoints = step_artifacts / f"attempt-{earlier:02d}" / "checkpoints"
        if checkpoints.is_dir() and any(checkpoints.iterdir()):
            return {**job, "resume_from": str(checkpoints.parent)}
    return job


@dataclass
class StepRun:
    """What one attempt of one builder step works with (set up by :meth:`Builder.prepare`)."""

    task: Task
    step: Subtask
    base: str
    worktree: Path
    rel_run: Path
    run_dir: Path
    artifacts: Path
    job: dict[str, Any]

    @property
    def attempt(self) -> int:
        """This attempt's number (the step's claim count, 1 for the first run)."""
        return self.step.attempts


class Builder(RoleAgent):
    """Claims ``ready`` builder steps and runs their jobs.

    Phases of :meth:`work`: :meth:`prepare` (worktree on the step's branch, clean run and artifacts
    dirs), :meth:`run_step` (the job in a child process), :meth:`record` (result manifest, commit on
    the branch, report) and the fenced completion through the story lifecycle.
    """

    role = "builder"
    crash_status = S.NEEDS_ADAPT

    def work(self, claim: Claim) -> None:
        queue = self.store.read()
        step = queue.item(claim.item_id)
        assert isinstance(step, Subtask) and step.branch and step.job is not None
        git = self.git()
        step = self.inherit(claim, queue.task(claim.task_id), step)
        try:
            run = self.prepare(git, queue.task(claim.task_id), step, claim)
            result = self.run_step(claim, run)
            self.check_abort()  # a cancelled job is handed back, never recorded as a result
            record, summary_line, metrics = self.record(git, run, result, claim)
        finally:  # this attempt's checkout is only ever this process's: gone whatever happened
            drop_attempt_worktree(git, self.ctx.ws.step_worktree_dir(step.id, step.attempts))
        if result.ok:
            self.finish(claim, S.AWAITING_TEST, f"built: {summary_line}"[:300],
                        lambda tx, item: lifecycle.on_build_done(tx, as_subtask(item), record, metrics))
            return
        assert result.failure is not None  # the runner's contract: ok is exactly "no failure"
        failure = result.failure.model_copy(update={"item": step.id})
        self.finish(claim, S.NEEDS_ADAPT, f"job failed: {failure.short()}"[:300],
                    lambda tx, item: lifecycle.on_build_failed(tx, as_subtask(item), failure, record, metrics))

    def prepare(self, git: GitRepo, task: Task, step: Subtask, claim: Claim | None = None) -> StepRun:
        """This attempt's worktree on the step's branch (from the trunk, or the previous step's branch), clean dirs.

        The worktree is ``state/worktrees/<STEP>.a<attempt>`` (:meth:`Workspace.step_worktree_dir`), its
        owner file written first (pid, host, owner, ``claim``'s id); earlier attempts' worktrees whose
        process is gone are removed (:func:`clean_attempt_worktrees`), a live one's never.
        Raises :class:`~oodatcaa.core.errors.BranchMissingError` when the previous step's branch is
        gone: a deleted base is a failure to adapt, not a silent rebuild from the trunk.
        """
        ws = self.ctx.ws
        base = git.trunk
        if step.step > 1:
            previous = next(s for s in task.builds() if s.step == step.step - 1)
            base = previous.branch or git.trunk
            git.require_branch(base)
        for gone in clean_attempt_worktrees(ws, git, step.id, keep=step.attempts):
            log.info("%s: removed %s (its process is gone)", self.ctx.owner, gone)
        worktree = ws.step_worktree_dir(step.id, step.attempts)
        write_worktree_owner(worktree, self.ctx.owner, claim.claim_id if claim else None)
        assert step.branch is not None
        git.add_worktree(worktree, step.branch, base)
        rel_run = run_dir_in_branch(step.id)
        run_dir = worktree / rel_run
        if run_dir.exists():
            shutil.rmtree(run_dir)  # the previous attempt's files stay in the branch history
        run_dir.mkdir(parents=True)
        artifacts = ws.artifacts_dir(step.id, step.attempts)
        if artifacts.exists():
            shutil.rmtree(artifacts)
        earlier = [*self.dependency_artifacts(task),
                   *(Path(s.result["artifacts_dir"]) for s in task.builds()
                     if s.step < step.step and s.result and s.result.get("artifacts_dir"))]
        assert step.job is not None
        job = resolve_earlier_outputs(step.job, worktree, earlier)
        job = resume_from_earlier_attempt(job, ws.artifacts_dir(step.id, 0).parent, step.attempts)
        return StepRun(task, step, base, worktree, rel_run, run_dir, artifacts, job)

    def dependency_stories(self, task: Task) -> list[Task]:
        """The stories ``task`` depends on: earlier sprints' (``prior_dependencies``) first, then this sprint's."""
        before = earlier_stories(self.ctx.ws) if task.prior_dependencies else {}
        out = [before[d][0] for d in task.prior_dependencies if d in before]
        queue = self.store.read()
        for dep in task.dependencies:
            try:
                out.append(queue.task(dep))
            except KeyError:
                continue
        return out

    def inherit(self, claim: Claim, task: Task, step: Subtask) -> Subtask:
        """Before a step's first run, take the settings its dependencies' accepted adaptations found.

        The inherited fields are written into the step's job in the queue (so every later attempt and
        any Refiner change start from them) and appended to the story's plan. Returns the step as it
        now is. See :mod:`oodatcaa.roles.inheritance`.
        """
        if step.attempts != 1 or step.job is None or step.step > len(task.jobs):
            return step
        found = inherited_settings(task.jobs[step.step - 1], step.job, self.dependency_stories(task))
        if found is None:
            return step

        def put(tx: Transaction, item: Item) -> None:
            sub = as_subtask(item)
            sub.job = {**(sub.job or {}), **found.fields}
            tx.log(sub.id, "inherited", found.describe()[:300])

        update_claimed(self.store, claim, put)
        plan = self.ctx.ws.plan_dir(task.id) / "AGENT_PLAN.md"
        if plan.exists():
            atomic_write_text(plan, plan.read_text(encoding="utf-8").rstrip("\n")
                              + f"\n\n## Inherited settings — {step.id}\n\n{found.describe()}.\n")
        return as_subtask(self.store.read().item(step.id))

    def dependency_artifacts(self, task: Task) -> list[Path]:
        """Artifacts dirs of the stories ``task`` depends on: this sprint's, then earlier sprints' (merged there).

        A sprint-2 story saying ``adapter: adapters`` gets the adapter its dependency ``T005`` trained
        in sprint 1; the story's own earlier steps still win (they are looked up last-first).
        """
        return [d for story in self.dependency_stories(task) for d in story_artifact_dirs(story)]

    def run_step(self, claim: Claim, run: StepRun) -> JobResult:
        """Run the step's job in a child process, with progress written to the queue at most every 10 s."""
        from oodatcaa.jobs.runner import run_job  # the job runner is only needed by builders

        cfg = self.ctx.config
        default_model = None if cfg.jobs.default_model == "default" else cfg.jobs.default_model
        # parallel builders share the cores: without a cap each job's OpenBLAS spawns a thread per
        # core and oversubscription slows every job several-fold
        os.environ.setdefault("OPENBLAS_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // max(1, cfg.wip_limit("builder")))))
        last_progress = [0.0]

        def on_progress(event: dict[str, Any]) -> None:
            now = time.monotonic()
            if now - last_progress[0] < 10:
                return
            last_progress[0] = now
            flat = {k: v for k, v in event.items() if not isinstance(v, (dict, list))}

            def put(tx: Transaction, item: Item) -> None:
                assert isinstance(item, Subtask)
                item.result = {**(item.result or {}), "progress": flat}

            try:
                update_claimed(self.store, claim, put)
            except Exception:  # noqa: BLE001 - progress is best effort; the lease decides ownership
                pass

        return run_job(run.job, workdir=run.worktree, run_dir=run.run_dir, artifacts_dir=run.artifacts,
                       default_model=default_model, timeout_s=cfg.jobs.timeout_minutes * 60,
                       cancel=self.abort_signal(), on_progress=on_progress)

    def record(self, git: GitRepo, run: StepRun, result: JobResult,
               claim: Claim | None = None) -> tuple[dict[str, Any], str, dict[str, Any]]:
        """Write ``result.json``, commit the run files on the branch, write the report.

        With ``claim``, the commit happens only while it still holds the step's lease, checked under
        the git lock held across the commit; a lost lease raises :class:`~oodatcaa.core.errors.LeaseError`
        (logged) before anything reaches the branch or the reports.
        Returns ``(the step's result record, one-line summary, every numeric metric, flat)``.
        """
        step, attempt = run.step, run.attempt
        failure = result.failure.model_dump(mode="json") if result.failure else None
        manifest = {
            "subtask": step.id, "attempt": attempt, "ok": result.ok, "error": result.error, "failure": failure,
            "returncode": result.returncode, "wall_seconds": round(result.wall_seconds, 3),
            "max_rss_gb": result.max_rss_gb, "artifacts_dir": str(run.artifacts), "artifacts_sha256": result.artifacts,
        }
        atomic_write_text(run.run_dir / "result.json", json.dumps(manifest, indent=2) + "\n")
        verdict = "ok" if result.ok else "FAILED"
        kind = (step.job or {}).get("kind")
        message = f"[impl] {run.task.id}: {kind} step {step.step:02d} {verdict} (attempt {attempt})"
        with git.locked():  # no reclaim-and-rebuild of the branch can come between the check and the commit
            if claim is not None:
                assert_holds(self.store, claim, f"commit on {step.branch}")
            commit, left_out = git.commit_worktree(run.worktree, message)
        drop_attempt_worktree(git, run.worktree)
        metrics = numeric_metrics(result.summary)
        shown = headline(metrics)
        summary_line = f"{step.id} attempt {attempt}: {verdict}" + (
            "; " + ", ".join(f"{k}={v}" for k, v in shown.items()) if shown else f"; {result.error or ''}"[:200])
        write_report(self.ctx.ws, run.task.id, "builder", self.ctx.owner, f"Builder report — {step.id}",
                     _report_body(run, result, commit, verdict, left_out), summary_line,
                     suffix=step.id if attempt <= 1 else f"{step.id}_{attempt}", clock=self.ctx.clock)
        record = {
            "commit": commit, "attempt": attempt, "run_dir": run.rel_run.as_posix(), "artifacts_dir": str(run.artifacts),
            "artifacts": result.artifacts, "summary": result.summary, "wall_seconds": round(result.wall_seconds, 3),
            "max_rss_gb": result.max_rss_gb,
        }
        return record, summary_line, metrics


def write_worktree_owner(worktree: Path, owner: str, claim_id: str | None) -> None:
    """Name the process that works in ``worktree`` (its owner file, written before the checkout exists)."""
    record = {"pid": os.getpid(), "host": socket.gethostname(), "owner": owner, "claim_id": claim_id}
    path = worktree_owner_path(worktree)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(record) + "\n")


def worktree_in_use(worktree: Path) -> bool:
    """True while another live process on this host may work in ``worktree`` (its owner file says so).

    A worktree without a readable owner file (a process killed before writing it, an earlier version's
    layout) or owned by this process (which runs one attempt at a time) is not in use; one owned on
    another host is assumed in use (its pid cannot be checked from here).
    """
    try:
        record = json.loads(worktree_owner_path(worktree).read_text(encoding="utf-8"))
        pid, host = int(record["pid"]), str(record["host"])
    except (OSError, ValueError, KeyError, TypeError):
        return False
    if pid == os.getpid() and host == socket.gethostname():
        return False
    return host != socket.gethostname() or pid_alive(pid)


def drop_attempt_worktree(git: GitRepo, worktree: Path) -> None:
    """Remove an attempt worktree (its branch and commits stay) and its owner file; idempotent."""
    if worktree.exists() or worktree_owner_path(worktree).exists():
        git.remove_worktree(worktree)
    worktree_owner_path(worktree).unlink(missing_ok=True)


def clean_attempt_worktrees(ws: Workspace, git: GitRepo, step_id: str, *, keep: int) -> list[Path]:
    """Remove the worktrees of ``step_id``'s attempts other than ``keep`` whose process is gone.

    A killed builder leaves its attempt's worktree behind; the next attempt removes it here. A live
    process's worktree (a builder whose lease was reclaimed but whose job still runs) is left as it is:
    that process removes it itself when its attempt ends, its results refused by fencing. The
    pre-attempt layout ``state/worktrees/<STEP>`` is removed too. Returns the removed paths.
    """
    removed = []
    legacy = ws.worktree_dir(step_id)
    candidates = [p for n, p in ws.step_worktrees(step_id).items() if n != keep]
    for worktree in [*candidates, *([legacy] if legacy.exists() else [])]:
        if worktree_in_use(worktree):
            continue
        drop_attempt_worktree(git, worktree)
        removed.append(worktree)
    return removed


def _report_body(run: StepRun, result: JobResult, commit: str, verdict: str, left_out: list[str]) -> str:
    step = run.step
    rss = f"{result.max_rss_gb:.3f} GB" if result.max_rss_gb is not None else "n/a"
    body = [
        f"## Job\n\n- **Step:** {step.id} — {step.title}\n- **Branch:** `{step.branch}` (from `{run.base}`)\n"
        f"- **Attempt:** {run.attempt}\n- **Commit:** `{commit}`\n- **Outcome:** {verdict}\n"
        f"- **Wall time:** {result.wall_seconds:.1f} s; job process max RSS: {rss}\n",
        "\n```json\n" + json.dumps(run.job, indent=2) + "\n```\n",
    ]
    if result.error:
        kind = f" (`{result.failure.kind.value}`)" if result.failure else ""
        body.append(f"\n## Error{kind}\n\n```\n{result.error}\n```\n")
    if result.summary:
        body.append("\n## Metrics\n\n" + _metrics_table(result.summary) + "\n")
    if result.artifacts:
        body.append("\n## Artifacts (not in git)\n\n" + "\n".join(
            f"- `{p}` sha256 `{h}`" for p, h in sorted(result.artifacts.items())) + f"\n\nUnder `{run.artifacts}`.\n")
    body.append(f"\nRun files on the branch: `{run.rel_run.as_posix()}/`.\n")
    if left_out:
        body.append("\nNot committed (over 5 MiB; keep large outputs in the artifacts dir): "
                    + ", ".join(f"`{p}`" for p in left_out) + "\n")
    return "".join(body)

"""Builder (Act): runs one builder step's job on its own feature branch in its own worktree.

The job runs in a child process (MLX memory isolated and measurable, a crash contained). Small
run files (resolved config, metrics JSONL, summary) are committed on the branch as
``[impl] <TASK>: ...``; large artifacts stay under the git-ignored state dir with their sha256
recorded. A failed job is never reported as a success: the step and its story go to
``needs_adapt`` carrying the error, and the agent keeps running.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path
from pathlib import Path
from typing import Any

from oodatcaa.core.atomic import atomic_write_text
from oodatcaa.core.leases import Claim, update_claimed
from oodatcaa.core.models import Item, Subtask, Task
from oodatcaa.core.statuses import TaskStatus
from oodatcaa.core.store import Transaction
from oodatcaa.core.workspace import run_dir_in_branch
from oodatcaa.gitops import GitRepo
from oodatcaa.jobs.registry import key_metrics  # the headline metrics of each job kind
from oodatcaa.reports import write_report
from oodatcaa.roles.base import RoleAgent

S = TaskStatus



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


class Builder(RoleAgent):
    """Claims ``ready`` builder steps and runs their jobs."""

    role = "builder"
    crash_status = S.NEEDS_ADAPT

    def work(self, claim: Claim) -> None:
        from oodatcaa.jobs.runner import run_job  # the job runner is only needed by builders

        ws, cfg = self.ctx.ws, self.ctx.config
        queue = self.store.read()
        task = queue.task(claim.task_id)
        step = queue.item(claim.item_id)
        assert isinstance(step, Subtask) and step.branch and step.job is not None
        attempt = step.attempts
        git = GitRepo(ws.root, ws.lock_path("git"), owner=self.ctx.owner)
        base = "main"
        if step.step > 1:
            previous = next(s for s in task.builds() if s.step == step.step - 1)
            base = previous.branch or "main"
            git.require_branch(base)  # a deleted base is a failure to adapt, not a silent rebuild from main
        worktree = ws.worktree_dir(step.id)
        git.add_worktree(worktree, step.branch, base)
        rel_run = run_dir_in_branch(step.id)
        run_dir = worktree / rel_run
        if run_dir.exists():
            shutil.rmtree(run_dir)  # the previous attempt's files stay in the branch history
        run_dir.mkdir(parents=True)
        artifacts = ws.artifacts_dir(step.id, attempt)
        if artifacts.exists():
            shutil.rmtree(artifacts)
        default_model = None if cfg.jobs.default_model == "default" else cfg.jobs.default_model
        # parallel builders share the cores: without a cap each job's OpenBLAS spawns a thread per
        # core and oversubscription slows every job several-fold
        os.environ.setdefault("OPENBLAS_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // max(1, cfg.wip_limit("builder")))))

        last_progress = [0.0]

        def on_progress(event: dict) -> None:
            # bounded rate: at most one queue write every 10 s
            now = time.monotonic()
            if now - last_progress[0] < 10:
                return
            last_progress[0] = now

            def put(tx: Transaction, item: Item) -> None:
                item.result = {**(item.result or {}), "progress": {k: v for k, v in event.items() if not isinstance(v, (dict, list))}}

            try:
                update_claimed(self.store, claim, put)
            except Exception:
                pass

        earlier = [Path(s.result["artifacts_dir"]) for s in task.builds()
                    if s.step < step.step and s.result and s.result.get("artifacts_dir")]
        job = resolve_earlier_outputs(step.job, worktree, earlier)
        job = resume_from_earlier_attempt(job, ws.artifacts_dir(step.id, 0).parent, attempt)
        result = run_job(
            job,
            workdir=worktree,
            run_dir=run_dir,
            artifacts_dir=artifacts,
            default_model=default_model,
            timeout_s=cfg.jobs.timeout_minutes * 60,
            cancel=self.cancelled(),
            on_progress=on_progress,
        )
        self.check_abort()  # a cancelled job is handed back, never recorded as a result
        manifest = {
            "subtask": step.id,
            "attempt": attempt,
            "ok": result.ok,
            "error": result.error,
            "returncode": result.returncode,
            "wall_seconds": round(result.wall_seconds, 3),
            "max_rss_gb": result.max_rss_gb,
            "artifacts_dir": str(artifacts),
            "artifacts_sha256": result.artifacts,
        }
        atomic_write_text(run_dir / "result.json", json.dumps(manifest, indent=2) + "\n")
        verdict = "ok" if result.ok else "FAILED"
        kind = step.job.get("kind")
        commit, left_out = git.commit_worktree(
            worktree, f"[impl] {task.id}: {kind} step {step.step:02d} {verdict} (attempt {attempt})")
        git.remove_worktree(worktree)
        headline = key_metrics(result.summary)

        body = [
            f"## Job\n\n- **Step:** {step.id} — {step.title}\n- **Branch:** `{step.branch}` (from `{base}`)\n"
            f"- **Attempt:** {attempt}\n- **Commit:** `{commit}`\n- **Outcome:** {verdict}\n"
            f"- **Wall time:** {result.wall_seconds:.1f} s; job process max RSS: "
            f"{'%.3f GB' % result.max_rss_gb if result.max_rss_gb is not None else 'n/a'}\n",
            "\n```json\n" + json.dumps(job, indent=2) + "\n```\n",
        ]
        if result.error:
            body.append(f"\n## Error\n\n```\n{result.error}\n```\n")
        if result.summary:
            body.append("\n## Metrics\n\n" + _metrics_table(result.summary) + "\n")
        if result.artifacts:
            body.append("\n## Artifacts (not in git)\n\n" + "\n".join(
                f"- `{p}` sha256 `{h}`" for p, h in sorted(result.artifacts.items())) + f"\n\nUnder `{artifacts}`.\n")
        body.append(f"\nRun files on the branch: `{rel_run.as_posix()}/`.\n")
        if left_out:
            body.append("\nNot committed (over 5 MiB; keep large outputs in the artifacts dir): "
                        + ", ".join(f"`{p}`" for p in left_out) + "\n")
        summary_line = f"{step.id} attempt {attempt}: {verdict}" + (
            "; " + ", ".join(f"{k}={v}" for k, v in headline.items()) if headline else f"; {result.error or ''}"[:200])
        write_report(ws, task.id, "builder", self.ctx.owner, f"Builder report — {step.id}", "".join(body),
                     summary_line, suffix=step.id if attempt <= 1 else f"{step.id}_{attempt}", clock=self.ctx.clock)

        record = {
            "commit": commit,
            "attempt": attempt,
            "run_dir": rel_run.as_posix(),
            "artifacts_dir": str(artifacts),
            "artifacts": result.artifacts,
            "summary": result.summary,
            "wall_seconds": round(result.wall_seconds, 3),
            "max_rss_gb": result.max_rss_gb,
        }

        if result.ok:
            def done(tx: Transaction, item: Item) -> None:
                assert isinstance(item, Subtask)
                item.result = record
                item.last_error = None
                story = tx.queue.parent(item)
                story.metrics = {**story.metrics, **headline}
                if all(s.status in (S.AWAITING_TEST, S.DONE) for s in story.builds()):
                    if story.status == S.IN_PROGRESS:
                        tx.move(story, S.AWAITING_TEST, "all builder steps built")
                    tester = story.tester()
                    if tester is not None and tester.status == S.BLOCKED:
                        tx.move(tester, S.READY, "builder steps done; ready to test")

            self.finish(claim, S.AWAITING_TEST, f"built: {summary_line}"[:300], done)
        else:
            error = result.error or "job failed without an error message"

            def failed(tx: Transaction, item: Item) -> None:
                assert isinstance(item, Subtask)
                item.result = record
                item.last_error = error
                story = tx.queue.parent(item)
                story.last_error = f"{item.id}: {error}"
                if story.status == S.IN_PROGRESS:
                    tx.move(story, S.NEEDS_ADAPT, f"builder step {item.id} failed: {error}"[:300])

            self.finish(claim, S.NEEDS_ADAPT, f"job failed: {error}"[:300], failed)



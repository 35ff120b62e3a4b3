"""Where everything lives inside a user's repository (DESIGN.md §3).

Pure path arithmetic: nothing here touches git or creates files except :meth:`Workspace.ensure_dirs`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from oodatcaa.core.errors import WorkspaceError
from oodatcaa.core.ids import validate_story_id, validate_task_id

WORKSPACE_DIRNAME = ".oodatcaa"

#: Files that are coordination state: git-ignored, so feature branches never carry them.
IGNORED_IN_GIT = (
    "state/",
    "work/SPRINT_QUEUE.json",
    "work/AGENT_LOG.md",
    "work/SPRINT_LOG.md",
    "work/.*.tmp",
)


@dataclass(frozen=True)
class Workspace:
    """Paths of one workspace. ``root`` is the git repository's top level."""

    root: Path

    @property
    def dir(self) -> Path:
        return self.root / WORKSPACE_DIRNAME

    @property
    def config_path(self) -> Path:
        return self.dir / "config.toml"

    @property
    def agents_dir(self) -> Path:
        return self.dir / "agents"

    @property
    def objectives_dir(self) -> Path:
        return self.dir / "objectives"

    @property
    def work_dir(self) -> Path:
        return self.dir / "work"

    @property
    def queue_path(self) -> Path:
        return self.work_dir / "SPRINT_QUEUE.json"

    @property
    def backlog_path(self) -> Path:
        return self.work_dir / "SPRINT_BACKLOG.md"

    @property
    def backlogs_dir(self) -> Path:
        """The roadmap: one backlog per sprint, run in file-name order by ``run --until-objective``."""
        return self.work_dir / "backlogs"

    @property
    def agent_log_path(self) -> Path:
        return self.work_dir / "AGENT_LOG.md"

    @property
    def sprint_log_path(self) -> Path:
        return self.work_dir / "SPRINT_LOG.md"

    @property
    def reports_index_path(self) -> Path:
        return self.work_dir / "AGENT_REPORTS.md"

    @property
    def archive_dir(self) -> Path:
        return self.work_dir / "archive"

    @property
    def state_dir(self) -> Path:
        return self.dir / "state"

    @property
    def locks_dir(self) -> Path:
        return self.state_dir / "locks"

    @property
    def queue_history_dir(self) -> Path:
        return self.state_dir / "queue_history"

    @property
    def agents_state_dir(self) -> Path:
        return self.state_dir / "agents"

    def lock_path(self, name: str) -> Path:
        """Lock file ``state/locks/<name>.lock``."""
        return self.locks_dir / f"{name}.lock"

    def plan_dir(self, task_id: str) -> Path:
        return self.work_dir / "plans" / validate_story_id(task_id)

    def report_dir(self, task_id: str) -> Path:
        return self.work_dir / "reports" / validate_story_id(task_id)

    def worktree_dir(self, subtask_id: str) -> Path:
        """A worktree reused by every attempt of ``subtask_id`` (the Tester's); builder steps use
        :meth:`step_worktree_dir`, one per attempt."""
        return self.state_dir / "worktrees" / validate_task_id(subtask_id)

    def step_worktree_dir(self, subtask_id: str, attempt: int) -> Path:
        """The worktree of one attempt of a builder step: ``state/worktrees/<SUBTASK>.a<attempt>``.

        Each attempt (the step's claim count, 1 for the first run) gets its own directory, so a
        reclaimed step's new attempt never touches the checkout an old, still-running process works in.
        Raises :class:`WorkspaceError` for an attempt below 1 and
        :class:`~oodatcaa.core.errors.InvalidIdError` for a malformed subtask ID.
        """
        if isinstance(attempt, bool) or not isinstance(attempt, int) or attempt < 1:
            raise WorkspaceError(f"attempt {attempt!r} of {subtask_id}: attempts are counted from 1 (the step's "
                                 "first claim); fix the caller")
        return self.state_dir / "worktrees" / f"{validate_task_id(subtask_id)}.a{attempt}"

    def step_run_dir(self, subtask_id: str, attempt: int) -> Path:
        """Where attempt ``attempt`` of a builder step writes its run files while it runs:
        :meth:`step_worktree_dir` / :func:`run_dir_in_branch` (the path committed on the branch)."""
        return self.step_worktree_dir(subtask_id, attempt) / run_dir_in_branch(subtask_id)

    def step_worktrees(self, subtask_id: str) -> dict[int, Path]:
        """The attempt worktrees of ``subtask_id`` that exist now, by attempt number (plus their owner
        files' attempts: a worktree killed before its checkout leaves only that file)."""
        base = self.state_dir / "worktrees"
        prefix = f"{validate_task_id(subtask_id)}.a"
        found: dict[int, Path] = {}
        if not base.is_dir():
            return found
        for entry in base.iterdir():
            name = entry.name.removesuffix(OWNER_SUFFIX)
            number = name[len(prefix):]
            if name.startswith(prefix) and number.isdigit() and int(number) >= 1:
                found[int(number)] = base / name
        return dict(sorted(found.items()))

    def artifacts_dir(self, subtask_id: str, attempt: int) -> Path:
        """Large run artifacts (adapters): git-ignored, hashes recorded in the run summary."""
        return self.state_dir / "artifacts" / validate_task_id(subtask_id) / f"attempt-{attempt:02d}"

    def sprint_archive_dir(self, number: int) -> Path:
        return self.archive_dir / f"sprint_{number}"

    def relative(self, path: Path) -> str:
        """``path`` relative to the repository root, POSIX style."""
        return Path(path).resolve().relative_to(self.root.resolve()).as_posix()

    def ensure_dirs(self) -> None:
        """Create the directories of the layout (idempotent)."""
        for d in (
            self.agents_dir,
            self.objectives_dir,
            self.work_dir / "plans",
            self.work_dir / "reports",
            self.archive_dir,
            self.locks_dir,
            self.queue_history_dir,
            self.agents_state_dir,
        ):
            d.mkdir(parents=True, exist_ok=True)


#: Suffix of the file next to an attempt worktree naming the process that works in it
#: (``state/worktrees/<SUBTASK>.a<N>.owner.json``: pid, host, owner, claim id).
OWNER_SUFFIX = ".owner.json"


def worktree_owner_path(worktree: Path) -> Path:
    """The owner file of an attempt worktree (see :data:`OWNER_SUFFIX`); outside the checkout, so never committed."""
    return worktree.with_name(worktree.name + OWNER_SUFFIX)


#: Where a builder step's small run files go, relative to the worktree root (committed on the branch).
def run_dir_in_branch(subtask_id: str) -> Path:
    """``.oodatcaa/runs/<SUBTASK>`` — config, metrics and summary committed on the feature branch."""
    return Path(WORKSPACE_DIRNAME) / "runs" / validate_task_id(subtask_id)


def find_workspace(start: Path | None = None) -> Workspace:
    """The workspace containing ``start`` (default: cwd), searching upwards.

    Raises :class:`WorkspaceError` when no ``.oodatcaa/config.toml`` is found, naming the fix.
    """
    here = Path(start or Path.cwd()).resolve()
    for candidate in (here, *here.parents):
        if (candidate / WORKSPACE_DIRNAME / "config.toml").is_file():
            return Workspace(candidate)
    raise WorkspaceError(
        f"no oodatcaa workspace at or above {here} (no {WORKSPACE_DIRNAME}/config.toml); "
        "run `oodatcaa init` in your git repository first"
    )

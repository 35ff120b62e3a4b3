"""Workspace set-up (``oodatcaa init``) and sprint creation (``oodatcaa sprint new``)."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

from oodatcaa.core.atomic import atomic_write_text
from oodatcaa.core.backlog import Backlog, load_backlog
from oodatcaa.core.clock import Clock, utc_stamp
from oodatcaa.core.config import DEFAULT_CONFIG_TOML
from oodatcaa.core.errors import BacklogError, WorkspaceError
from oodatcaa.core.eventlog import SPRINT_LOG_HEADER, EventLog, LogEntry
from oodatcaa.core.models import Sprint, Task
from oodatcaa.core.statuses import SprintStatus
from oodatcaa.core.store import QueueStore
from oodatcaa.core.workspace import IGNORED_IN_GIT, Workspace
from oodatcaa.gitops import GitRepo, repo_root
from oodatcaa.jobs.spec import JobSpecError, parse_job_spec
from oodatcaa.reports import INDEX_HEADER

OBJECTIVE_TEMPLATE = """\
# OBJECTIVE

## Vision

_What this project is for, in a paragraph._

## Success criteria

- [ ] _A measurable criterion, e.g. "the fine-tuned adapter beats the base model's validation loss by 10 %"_
"""


def init_workspace(path: Path, clock: Clock | None = None) -> Workspace:
    """Create the ``.oodatcaa/`` layout (DESIGN.md §3) in the git repository containing ``path``.

    Idempotent: existing files are kept. Commits the workspace definition on ``main`` (making a
    first commit in an empty repository). Raises :class:`WorkspaceError` outside a git repository.
    """
    root = repo_root(Path(path))
    ws = Workspace(root)
    ws.ensure_dirs()
    files = {
        ws.config_path: DEFAULT_CONFIG_TOML,
        ws.dir / ".gitignore": "# coordination state never travels on feature branches\n" + "\n".join(IGNORED_IN_GIT) + "\n",
        ws.objectives_dir / "OBJECTIVE.md": OBJECTIVE_TEMPLATE,
        ws.agents_dir / "README.md": "Per-workspace role overrides: copy a file from oodatcaa's `agents/` here and edit it.\n",
        ws.reports_index_path: INDEX_HEADER,
    }
    for file, text in files.items():
        if not file.exists():
            atomic_write_text(file, text)
    for keep in (ws.work_dir / "plans", ws.work_dir / "reports", ws.archive_dir):
        (keep / ".gitkeep").touch()
    git = GitRepo(root, ws.lock_path("git"), owner="oodatcaa")
    git.ensure_main()
    git.commit_paths([ws.relative(ws.dir)], "[docs] oodatcaa: initialise workspace")
    return ws


def _validate_jobs(backlog: Backlog) -> None:
    for item in backlog.items:
        for block in item.jobs:
            try:
                parse_job_spec({k: v for k, v in block.data.items() if k not in ("title", "slug")},
                               source=f"{backlog.source}:{block.line}")
            except JobSpecError as exc:
                raise BacklogError(backlog.source, block.line, f"job block of {item.id}: {exc}") from None


def _sprint_goal_md(sprint: Sprint, backlog: Backlog) -> str:
    exits = backlog.exit_criteria or [f"{item.id} {item.title} is done and tagged `{item.id}-complete`" for item in backlog.items[:6]]
    items = "\n".join(f"- {i.id}: {i.title}" for i in backlog.items)
    return (
        f"# SPRINT_GOAL — Sprint {sprint.number} ({sprint.id})\n\n## Goal\n\n{sprint.goal or sprint.title}\n\n"
        f"## Exit criteria\n\n" + "\n".join(f"- [ ] {e}" for e in exits) + "\n\n"
        f"## Items\n\n{items}\n\n## History\n\n- {utc_stamp(sprint.created_at)}: Sprint {sprint.number} initiated "
        f"from `{Path(backlog.source).name}` with {len(backlog.items)} items\n"
    )


def new_sprint(ws: Workspace, backlog_path: Path, *, force: bool = False, clock: Clock | None = None) -> Sprint:
    """Parse the backlog into a new sprint; every item starts ``needs_plan``.

    Writes ``SPRINT_QUEUE.json``, ``work/SPRINT_BACKLOG.md``, ``objectives/SPRINT_GOAL.md`` and a
    "Sprint N initiated" entry in ``SPRINT_LOG.md``, and commits the backlog and goal on main.

    Raises :class:`BacklogError` (file:line) for a malformed backlog or job block, and
    :class:`WorkspaceError` when a sprint is still running (unless ``force``).
    """
    clock = clock or Clock()
    backlog_path = Path(backlog_path)
    if not backlog_path.is_file():
        raise WorkspaceError(f"backlog file {backlog_path} does not exist")
    backlog = load_backlog(backlog_path)
    _validate_jobs(backlog)
    store = QueueStore.for_workspace(ws, clock=clock)
    number = 1
    if store.exists():
        current = store.read()
        if current.sprint is not None:
            if current.sprint.status not in (SprintStatus.COMPLETED, SprintStatus.PROJECT_COMPLETE) and not force:
                raise WorkspaceError(
                    f"{ws.queue_path}: sprint {current.sprint.id} is still {current.sprint.status.value}; "
                    "finish it (`oodatcaa run`) or pass --force to replace it (its queue stays in state/queue_history/)"
                )
            number = current.sprint.number + 1
    now: datetime = clock.now()
    sprint = Sprint(
        id=f"SPRINT-{now.year:04d}-{number:03d}",
        number=number,
        title=backlog.title or f"Sprint {number}",
        goal=backlog.goal or "",
        status=SprintStatus.IN_PROGRESS,
        exit_criteria=backlog.exit_criteria,
        backlog_source=str(backlog_path),
        created_at=now,
    )
    tasks = [
        Task(
            id=item.id,
            title=item.title,
            type=item.type,
            complexity=item.complexity,
            priority=item.priority,
            dependencies=item.dependencies,
            description=item.description,
            acceptance_criteria=item.acceptance_criteria,
            jobs=[block.data for block in item.jobs],
        )
        for item in backlog.ordered()
    ]
    with store.transaction("sprint_planner", create=True) as tx:
        tx.queue.sprint = sprint
        tx.queue.tasks = tasks
        for task in tasks:
            tx.log(task.id, "new -> needs_plan", f"from backlog: {task.title}")
    text = backlog_path.read_text(encoding="utf-8")
    if backlog_path.resolve() != ws.backlog_path.resolve():
        atomic_write_text(ws.backlog_path, text)
    atomic_write_text(ws.objectives_dir / "SPRINT_GOAL.md", _sprint_goal_md(sprint, backlog))
    EventLog(ws.sprint_log_path, ws.lock_path("sprint_log"), header=SPRINT_LOG_HEADER).append(
        [LogEntry(now, "sprint_planner", sprint.id, "sprint initiated",
                  f"Sprint {number} initiated: {len(tasks)} items ({', '.join(t.id for t in tasks)})")]
    )
    git = GitRepo(ws.root, ws.lock_path("git"), owner="sprint_planner")
    git.ensure_main()
    git.commit_paths([ws.relative(ws.backlog_path), ws.relative(ws.objectives_dir)],
                     f"[plan] {sprint.id}: sprint {number} initiated")
    return sprint

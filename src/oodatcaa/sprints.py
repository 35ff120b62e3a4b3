"""Workspace set-up (``oodatcaa init``) and sprint creation (``oodatcaa sprint new``)."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from datetime import datetime
from pathlib import Path

from oodatcaa.archive import archived_sprints, earlier_stories
from oodatcaa.backlog import Backlog, BacklogItem, BacklogWarning, load_backlog, raise_warnings
from oodatcaa.core.atomic import atomic_write_text
from oodatcaa.core.clock import Clock, utc_stamp
from oodatcaa.core.config import EstimatesSection, default_config_toml, load_config, load_role_definitions
from oodatcaa.core.criteria import MetricCheck, RegressionCheck
from oodatcaa.core.errors import BacklogError, WorkspaceError
from oodatcaa.core.eventlog import SPRINT_LOG_HEADER, EventLog, LogEntry
from oodatcaa.core.models import Sprint, Task
from oodatcaa.core.objective import default_exit_criteria
from oodatcaa.core.statuses import SprintStatus, TaskStatus
from oodatcaa.core.store import QueueStore
from oodatcaa.core.workspace import IGNORED_IN_GIT, Workspace
from oodatcaa.gitops import GitRepo, head_state, repo_root
from oodatcaa.jobs.spec import JobSpecError, parse_job_spec
from oodatcaa.reports import INDEX_HEADER

OBJECTIVE_TEMPLATE = """\
# OBJECTIVE

## Vision

_What this project is for, in a paragraph._

## Success criteria

- [ ] _A measurable criterion, e.g. "the fine-tuned adapter beats the base model's validation loss by 10 %"_
"""


class _Rollback:
    """Files and directories created or replaced by one command, undone if the command fails.

    ``init`` and ``sprint new`` are all-or-nothing: when a later step (a git commit) fails, what the
    command wrote is removed again and replaced files get their old bytes back.
    """

    def __init__(self) -> None:
        self.created: list[Path] = []
        self.replaced: dict[Path, bytes] = {}

    def mkdir(self, path: Path) -> None:
        missing = [p for p in (path, *path.parents) if not p.exists()]
        path.mkdir(parents=True, exist_ok=True)
        self.created.extend(missing)

    def write(self, path: Path, text: str) -> None:
        if path.exists():
            self.replaced.setdefault(path, path.read_bytes())
        else:
            self.mkdir(path.parent)
            self.created.append(path)
        atomic_write_text(path, text)

    def undo(self) -> None:
        for path, data in self.replaced.items():
            path.write_bytes(data)
        for path in sorted(set(self.created), key=lambda p: len(p.parts), reverse=True):
            if path.is_dir():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)


def _refuse_head(root: Path) -> str:
    """The branch checked out at ``root``; :class:`WorkspaceError` for an unborn or detached HEAD."""
    branch, state = head_state(root)
    if state == "detached":
        raise WorkspaceError(f"{root}: HEAD is detached; oodatcaa merges into the branch you work on "
                             "(fix: `git checkout <branch>`, then run `oodatcaa init` again; nothing was created)")
    if state == "unborn":
        raise WorkspaceError(f"{root}: branch {branch!r} has no commit yet; oodatcaa tags baselines on it "
                             "(fix: `git commit --allow-empty -m 'initial commit'`, then run `oodatcaa init` "
                             "again; nothing was created)")
    assert branch is not None
    return branch


def init_workspace(path: Path, *, force: bool = False, clock: Clock | None = None) -> Workspace:
    """Create the ``.oodatcaa/`` layout (DESIGN.md §3) in the git repository containing ``path``.

    The trunk is the branch checked out now; it is written as ``[git] trunk`` into the new
    ``config.toml`` (every other key commented out at its default). The workspace definition is
    committed on that branch. All or nothing: when it refuses — not a git repository, an unborn or
    detached HEAD, an existing workspace without ``force`` — or the commit fails, nothing is left
    behind. With ``force`` missing files are added and existing ones kept.

    Raises :class:`WorkspaceError` naming the repository and the fix.
    """
    root = repo_root(Path(path))
    trunk = _refuse_head(root)
    ws = Workspace(root)
    if ws.dir.exists() and not force:
        raise WorkspaceError(f"{ws.dir} exists already; run `oodatcaa init --force` to add what is missing "
                             "(existing files are kept), or work in it as it is")
    files = {
        ws.config_path: default_config_toml(load_role_definitions(ws.agents_dir), trunk=trunk),
        ws.dir / ".gitignore": "# coordination state never travels on feature branches\n" + "\n".join(IGNORED_IN_GIT) + "\n",
        ws.objectives_dir / "OBJECTIVE.md": OBJECTIVE_TEMPLATE,
        ws.agents_dir / "README.md": "Per-workspace role definitions: copy a file from oodatcaa's `agents/` here and "
                                     "edit its wip_limit or lease_ttl_minutes (config.toml still wins).\n",
        ws.reports_index_path: INDEX_HEADER,
        ws.work_dir / "plans" / ".gitkeep": "",
        ws.work_dir / "reports" / ".gitkeep": "",
        ws.archive_dir / ".gitkeep": "",
    }
    undo = _Rollback()
    try:
        undo.mkdir(ws.dir)
        for file, text in files.items():
            if not file.exists():
                undo.write(file, text)
        ws.ensure_dirs()
        git = GitRepo.for_workspace(ws, "oodatcaa")  # with --force the existing config names the trunk
        git.require_trunk(ws.config_path)
        git.ensure_trunk()
        git.commit_paths([ws.relative(ws.dir)], "[docs] oodatcaa: initialise workspace")
    except BaseException:
        undo.undo()
        raise
    return ws


def _validate_jobs(backlog: Backlog) -> None:
    """Every job block against its spec model, and every ``metric:`` criterion against the metrics
    its item's job kinds produce (the job-kind registry), so a typo fails now, not an hour later.

    Raises :class:`BacklogError` (file:line) naming the item, the field and the closest known name.
    """
    from oodatcaa.jobs.registry import check_metric_names

    for item in backlog.items:
        for block in item.jobs:
            try:
                parse_job_spec({k: v for k, v in block.data.items() if k not in ("title", "slug")},
                               source=f"{backlog.source}:{block.line}")
            except JobSpecError as exc:
                raise BacklogError(backlog.source, block.line, f"job block of {item.id}: {exc}") from None
        names: list[str] = []
        for criterion in item.acceptance_criteria:
            if isinstance(criterion.check, MetricCheck):
                names.append(criterion.check.metric)
                if isinstance(criterion.check.value, str):
                    names.append(criterion.check.value)
            elif isinstance(criterion.check, RegressionCheck):
                names.append(criterion.check.metric)
        problems = check_metric_names(names, [block.kind for block in item.jobs])
        if problems:
            raise BacklogError(backlog.source, item.line, f"acceptance criteria of {item.id}: " + "; ".join(problems))


def _sprint_goal_md(sprint: Sprint, tasks: list[Task], backlog: Backlog, history: list[str]) -> str:
    """``SPRINT_GOAL.md`` of a new sprint; ``history`` holds the earlier sprints' lines, kept."""
    exits = list(sprint.exit_criteria) or default_exit_criteria(tasks)
    items = "\n".join(f"- {t.id}: {t.title}" + (f" (carried over from {t.carried_from})" if t.carried_from else "")
                      for t in tasks)
    source = Path(backlog.source).name
    return (
        f"# SPRINT_GOAL — Sprint {sprint.number} ({sprint.id})\n\n## Goal\n\n{sprint.goal or sprint.title}\n\n"
        f"## Exit criteria\n\n" + "\n".join(f"- [ ] {e}" for e in exits) + "\n\n"
        f"## Items\n\n{items}\n\n## History\n\n" + "".join(line + "\n" for line in history)
        + f"- {utc_stamp(sprint.created_at)}: Sprint {sprint.number} initiated from `{source}` with {len(tasks)} items\n"
    )


def _history_lines(path: Path) -> list[str]:
    """The ``- ...`` lines under ``## History`` of an existing ``SPRINT_GOAL.md`` (none when absent)."""
    if not path.exists():
        return []
    out, inside = [], False
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.startswith("## "):
            inside = line.strip().lower() == "## history"
        elif inside and line.startswith("- "):
            out.append(line)
    return out


class _EarlierSprints:
    """What the archived sprints say about a new backlog: reused IDs, dependencies, carry-over.

    Story IDs are unique across the sprints of one workspace: an item may reuse the ID of an
    earlier story only while that story is unfinished (not ``done`` or ``cancelled``) — it then
    continues that story. A dependency on an earlier story is met when that story is ``done``
    (``Task.prior_dependencies``) or when it comes into this sprint (re-defined or carried over).
    """

    def __init__(self, ws: Workspace):
        self.stories = earlier_stories(ws)
        archived = archived_sprints(ws)
        self.previous = archived[-1] if archived else None

    def unfinished(self) -> list[Task]:
        """The previous sprint's stories that were neither done nor cancelled, in queue order."""
        if self.previous is None:
            return []
        return [t for t in self.previous.queue.tasks if t.status not in (TaskStatus.DONE, TaskStatus.CANCELLED)]

    def check_ids(self, backlog: Backlog) -> None:
        """Raise :class:`BacklogError` for an item reusing the ID of a finished earlier story, naming both files."""
        used = {int(i[1:]) for i in self.stories} | {int(item.id[1:]) for item in backlog.items}
        for item in backlog.items:
            earlier = self.stories.get(item.id)
            if item.status_kind == "done" or earlier is None:
                continue
            task, archived = earlier
            if task.status in (TaskStatus.DONE, TaskStatus.CANCELLED):
                free = max(used) + 1
                where = archived.backlog_source or str(archived.path)
                raise BacklogError(
                    backlog.source, item.line,
                    f"story ID {item.id} is already used by sprint {archived.number} (`{where}`), where it is "
                    f"{task.status.value}; story IDs are unique across the sprints of a workspace: give this item "
                    f"a new ID (the next free one is {item.id[0]}{free:03d})")

    def split_dependencies(self, task: Task, in_sprint: set[str], source: str, line: int | None) -> Task:
        """Move the dependencies met in earlier sprints to ``prior_dependencies``; refuse unmet ones."""
        here, prior = [], []
        for dep in task.dependencies:
            if dep in in_sprint:
                here.append(dep)
                continue
            earlier = self.stories.get(dep)
            if earlier is not None and earlier[0].status == TaskStatus.DONE:
                prior.append(dep)
                continue
            status = earlier[0].status.value if earlier else "unknown"
            number = earlier[1].number if earlier else "?"
            raise BacklogError(source, line, f"{task.id} depends on {dep}, which sprint {number} left {status}; carry "
                                             f"it into this sprint (`--carry-over`, or write it in the backlog) or "
                                             "remove the dependency")
        return task.model_copy(update={"dependencies": here, "prior_dependencies": prior})

    def carried_from(self, story_id: str) -> str | None:
        earlier = self.stories.get(story_id)
        if earlier is None or earlier[0].status in (TaskStatus.DONE, TaskStatus.CANCELLED):
            return None
        sprint = earlier[1].queue.sprint
        return sprint.id if sprint else None


def _carry(task: Task, sprint_id: str) -> Task:
    """An unfinished story of the previous sprint as a story of the new one: planned again from its backlog jobs.

    Its definition, estimate, links, plan version and adaptation history are kept; its subtasks,
    leases, loops and failure are not (the new plan starts from the current trunk).
    """
    return Task(
        id=task.id, title=task.title, status=TaskStatus.NEEDS_PLAN, type=task.type, complexity=task.complexity,
        priority=task.priority, dependencies=list(task.dependencies), description=task.description,
        acceptance_criteria=list(task.acceptance_criteria), jobs=list(task.jobs), estimate=task.estimate,
        objective_links=list(task.objective_links), backlog_status=task.backlog_status, plan_version=task.plan_version,
        adaptations=list(task.adaptations), carried_from=sprint_id, approval_required=task.approval_required,
    )


def _task(item: BacklogItem, rules: EstimatesSection, done: set[str]) -> Task:
    """The queue story of a backlog item: estimate from ``Estimated Time`` or else the complexity."""
    return Task(
        id=item.id,
        title=item.title,
        status=TaskStatus.CANCELLED if item.status_kind == "cancelled" else TaskStatus.NEEDS_PLAN,
        type=item.type,
        complexity=item.complexity,
        priority=item.priority,
        # an item written done is not in the sprint: its dependents do not wait for it
        dependencies=[d for d in item.dependencies if d not in done],
        description=item.description,
        acceptance_criteria=item.acceptance_criteria,
        jobs=[block.data for block in item.jobs],
        estimate=item.estimate if item.estimate is not None else rules.for_complexity(item.complexity),
        objective_links=item.objective_links,
        backlog_status=item.status,
        approval_required=item.approval_required,
    )


def _sprint_warnings(backlog: Backlog) -> list[BacklogWarning]:
    """What the written statuses make of the sprint that is worth saying (beyond the parser's warnings)."""
    cancelled = {i.id for i in backlog.items if i.status_kind == "cancelled"}
    out = []
    for item in backlog.items:
        if item.status_kind in ("cancelled", "done"):
            continue
        waits = [d for d in item.dependencies if d in cancelled]
        if waits:
            out.append(BacklogWarning(
                source=backlog.source, line=item.line,
                message=f"{item.id} depends on {', '.join(waits)}, written cancelled: it will wait for a person "
                        "(remove the dependency or the cancellation)"))
    return out


def new_sprint(ws: Workspace, backlog_path: Path, *, force: bool = False, strict: bool = False, carry_over: bool = False,
               on_warning: Callable[[BacklogWarning], None] | None = None, clock: Clock | None = None) -> Sprint:
    """Parse the backlog into a new sprint; every item starts ``needs_plan``, except as written below.

    Sprint ``N+1`` follows a completed sprint ``N`` (``SPRINT-YYYY-NNN`` counting on). Each story
    gets its estimate (minutes): the item's ``**Estimated Time:**``, or else its complexity under
    ``[estimates]`` of ``config.toml``; and its ``**Links to Objective:**``. The written
    ``**Status:**`` is kept as ``Task.backlog_status`` and acted on: ``cancelled`` items are created
    ``cancelled``; ``done`` items are left out (a warning says so) and count as done for the items
    that depend on them; ``blocked`` items are planned first like every story, then wait in
    ``blocked`` until their dependencies are done (the Negotiator's promotion). The sprint keeps the
    backlog's start and target dates and its other sprint-level and summary lines as notes.

    Earlier sprints (``work/archive/sprint_<N>/``): story IDs are unique across them (see
    :class:`_EarlierSprints`); items may depend on earlier stories that are ``done`` (never waited
    for; the Builder finds their artifacts). With ``carry_over`` the previous sprint's unfinished
    stories come into this one (re-planned from their backlog jobs, their old branches reset to the
    trunk); an item of the backlog with the same ID replaces the carried definition.

    Warnings (:class:`~oodatcaa.backlog.BacklogWarning`: unknown fields, ...) go to ``on_warning``;
    with ``strict`` they are a :class:`BacklogError` instead and nothing is written.

    Writes ``work/SPRINT_BACKLOG.md`` and ``objectives/SPRINT_GOAL.md`` (its history kept) and
    commits them on the trunk, then ``SPRINT_QUEUE.json`` and a "Sprint N initiated" entry in
    ``SPRINT_LOG.md``. Atomic: if the commit fails, the files are restored and no sprint is started.

    Raises :class:`BacklogError` (file:line) for a malformed backlog or job block, a backlog whose
    every item is written done, a reused story ID (naming both backlogs), a dependency on an
    earlier story that is not done, or (``strict``) any warning; :class:`WorkspaceError` when a
    sprint is still running (unless ``force``).
    """
    clock = clock or Clock()
    backlog_path = Path(backlog_path)
    earlier = _EarlierSprints(ws)
    backlog, done = _read_backlog(backlog_path, strict=strict, on_warning=on_warning, known=set(earlier.stories))
    earlier.check_ids(backlog)
    config = load_config(ws.config_path, ws.agents_dir)
    store = QueueStore.for_workspace(ws, clock=clock)
    source = ws.relative(backlog_path.resolve()) if backlog_path.resolve().is_relative_to(ws.root) else str(backlog_path)
    sprint = _next_sprint(store, backlog, source, force=force, now=clock.now())
    tasks = [_task(item, config.estimates, done) for item in backlog.ordered() if item.id not in done]
    tasks = [t.model_copy(update={"carried_from": earlier.carried_from(t.id)}) for t in tasks]
    defined = {t.id for t in tasks}
    carried = [_carry(t, earlier.carried_from(t.id) or "") for t in earlier.unfinished() if t.id not in defined] \
        if carry_over else []
    in_sprint = defined | {t.id for t in carried}
    lines = {item.id: item.line for item in backlog.items}
    # carried stories first: they were started before this backlog was written
    tasks = [earlier.split_dependencies(t, in_sprint, backlog.source, lines.get(t.id)) for t in [*carried, *tasks]]
    _commit_sprint_files(ws, sprint, tasks, backlog, backlog_path, trunk=config.git.trunk)
    reset = _reset_carried_branches(ws, earlier, {t.id for t in tasks if t.carried_from}, config.git.trunk)
    with store.transaction("sprint_planner", create=True) as tx:
        tx.queue.sprint = sprint
        tx.queue.tasks = tasks
        for task in tasks:
            if task.status == TaskStatus.CANCELLED:
                tx.log(task.id, "new -> cancelled", f"from backlog, written {task.backlog_status}: {task.title}")
            elif task.carried_from:
                tx.log(task.id, "new -> needs_plan", f"carried over from {task.carried_from}: {task.title}")
            else:
                tx.log(task.id, "new -> needs_plan", f"from backlog: {task.title}")
    skipped = f"; left out as written done: {', '.join(sorted(done))}" if done else ""
    moved = f"; carried over: {', '.join(sorted(t.id for t in tasks if t.carried_from))}" if reset is not None else ""
    EventLog(ws.sprint_log_path, ws.lock_path("sprint_log"), header=SPRINT_LOG_HEADER).append(
        [LogEntry(sprint.created_at, "sprint_planner", sprint.id, "sprint initiated",
                  f"Sprint {sprint.number} initiated: {len(tasks)} items ({', '.join(t.id for t in tasks)}){skipped}"
                  f"{moved}")]
    )
    return sprint


def _reset_carried_branches(ws: Workspace, earlier: _EarlierSprints, carried: set[str], trunk: str) -> list[str] | None:
    """Point the old feature branches of carried stories at the trunk, so their new plan starts from it.

    Returns the branches reset, or ``None`` when no story was carried.
    """
    if not carried:
        return None
    git = GitRepo.for_workspace(ws, "sprint_planner", trunk=trunk)
    reset = []
    for story in carried:
        old = earlier.stories.get(story)
        for step in old[0].builds() if old else []:
            if step.branch and git.branch_exists(step.branch):
                git.reset_branch(step.branch)
                reset.append(step.branch)
    return reset


def _read_backlog(backlog_path: Path, *, strict: bool, on_warning: Callable[[BacklogWarning], None] | None,
                  known: set[str]) -> tuple[Backlog, set[str]]:
    """The parsed, validated backlog and the IDs of items written done; warnings said (or raised).

    ``known``: story IDs of earlier sprints, which items may depend on.
    """
    if not backlog_path.is_file():
        raise WorkspaceError(f"backlog file {backlog_path} does not exist")
    backlog = load_backlog(backlog_path, known_stories=known)
    _validate_jobs(backlog)
    backlog = backlog.model_copy(update={"warnings": [*backlog.warnings, *_sprint_warnings(backlog)]})
    if strict:
        raise_warnings(backlog)
    for warning in backlog.warnings:  # said before anything is written, so a later refusal keeps them
        if on_warning is not None:
            on_warning(warning)
    done = {item.id for item in backlog.items if item.status_kind == "done"}
    if len(done) == len(backlog.items):
        raise BacklogError(backlog.source, None, "every item is written done; there is nothing to run "
                                                 "(write the items still to do, or a status other than done)")
    return backlog, done


def _next_sprint(store: QueueStore, backlog: Backlog, source: str, *, force: bool, now: datetime) -> Sprint:
    """Sprint N+1 after the queue's sprint (1 in a new workspace); refuses while one is running."""
    number = 1
    if store.exists():
        current = store.read()
        if current.sprint is not None:
            if current.sprint.status not in (SprintStatus.COMPLETED, SprintStatus.PROJECT_COMPLETE) and not force:
                raise WorkspaceError(
                    f"{store.path}: sprint {current.sprint.id} is still {current.sprint.status.value}; "
                    "finish it (`oodatcaa run`, then `oodatcaa sprint complete`) or pass --force to replace it "
                    "(its queue stays in state/queue_history/)"
                )
            number = current.sprint.number + 1
    return Sprint(
        id=f"SPRINT-{now.year:04d}-{number:03d}", number=number, title=backlog.title or f"Sprint {number}",
        goal=backlog.goal or "", status=SprintStatus.IN_PROGRESS, exit_criteria=backlog.exit_criteria,
        backlog_source=source, start_date=backlog.start_date, target_date=backlog.target_date,
        notes=backlog.notes, created_at=now,
    )


def _commit_sprint_files(ws: Workspace, sprint: Sprint, tasks: list[Task], backlog: Backlog, backlog_path: Path, *,
                         trunk: str) -> None:
    """Write and commit ``SPRINT_BACKLOG.md`` and ``SPRINT_GOAL.md`` on the trunk, or put them back.

    Done before the queue is written: a failed commit leaves no running sprint behind.
    """
    git = GitRepo.for_workspace(ws, "sprint_planner", trunk=trunk)
    git.require_trunk(ws.config_path)
    git.ensure_trunk()
    goal = ws.objectives_dir / "SPRINT_GOAL.md"
    history = _history_lines(goal)
    undo = _Rollback()
    try:
        if backlog_path.resolve() != ws.backlog_path.resolve():
            undo.write(ws.backlog_path, backlog_path.read_text(encoding="utf-8"))
        undo.write(goal, _sprint_goal_md(sprint, tasks, backlog, history))
        git.commit_paths([ws.relative(ws.backlog_path), ws.relative(ws.objectives_dir)],
                         f"[plan] {sprint.id}: sprint {sprint.number} initiated")
    except BaseException:
        undo.undo()
        raise

"""Shared builders for the coordination tests: workspaces, queues and backlogs."""

from __future__ import annotations

import subprocess
from datetime import UTC, datetime
from pathlib import Path

from oodatcaa.core.clock import FakeClock
from oodatcaa.core.criteria import Criterion, MetricCheck
from oodatcaa.core.models import Queue, Sprint, Subtask, Task
from oodatcaa.core.statuses import TaskStatus
from oodatcaa.core.store import QueueStore
from oodatcaa.core.workspace import Workspace

S = TaskStatus


def git_repo(path: Path, branch: str = "main", *, first_commit: bool = True) -> Path:
    """A git repository on ``branch`` with a local identity and (by default) one empty commit."""
    path.mkdir(parents=True, exist_ok=True)
    subprocess.run(["git", "init", "-q", "-b", branch, str(path)], check=True)
    subprocess.run(["git", "-C", str(path), "config", "user.name", "test"], check=True)
    subprocess.run(["git", "-C", str(path), "config", "user.email", "test@example.com"], check=True)
    if first_commit:
        subprocess.run(["git", "-C", str(path), "commit", "-q", "--allow-empty", "-m", "[docs] test: initial commit"], check=True)
    return path


def workspace(tmp_path: Path) -> Workspace:
    """A fresh repository with an initialised workspace."""
    from oodatcaa.sprints import init_workspace

    return init_workspace(git_repo(tmp_path / "repo"))


def sample_queue(n_tasks: int = 3) -> Queue:
    """A queue with ``n_tasks`` planned-looking stories (T001 .. T00n), no subtasks."""
    sprint = Sprint(id="SPRINT-2026-001", number=1, title="test sprint",
                    created_at=datetime(2026, 1, 1, tzinfo=UTC))
    tasks = [
        Task(id=f"T{i:03d}", title=f"task {i}", jobs=[{"kind": "command", "run": "true"}],
             acceptance_criteria=[Criterion(id="AC1", text="rc", critical=True,
                                            check=MetricCheck(kind="metric", metric="command.returncode", op="==", value=0))])
        for i in range(1, n_tasks + 1)
    ]
    return Queue(sprint=sprint, tasks=tasks)


def store_with(ws: Workspace, queue: Queue, clock: FakeClock | None = None) -> QueueStore:
    """A store for ``ws`` seeded with ``queue``."""
    store = QueueStore.for_workspace(ws, clock=clock)
    with store.transaction("test", create=True) as tx:
        tx.queue.sprint = queue.sprint
        tx.queue.tasks = queue.tasks
    return store


def add_steps(task: Task, n_builds: int = 1, status: TaskStatus = S.READY) -> Task:
    """Give ``task`` builder steps and a tester subtask, as the Planner would."""
    subs = [Subtask(id=f"{task.id}-B{n:02d}", kind="build", status=status, title=f"step {n}", step=n,
                    branch=f"feat/{task.id}-step-{n:02d}-x", job={"kind": "command", "run": "true"},
                    dependencies=[f"{task.id}-B{n - 1:02d}"] if n > 1 else [])
            for n in range(1, n_builds + 1)]
    subs.append(Subtask(id=f"{task.id}-T01", kind="test", status=S.BLOCKED, title="tests", step=1,
                        branch=subs[-1].branch, dependencies=[s.id for s in subs]))
    task.subtasks = subs
    return task


def configure(config_path: Path, **sections: dict) -> None:
    """Set keys in a ``config.toml`` written by ``oodatcaa init`` (its sections exist, keys commented).

    ``configure(path, wip={"builder": 2}, agents={"poll_seconds": 0.2})`` puts ``builder = 2`` under
    ``[wip]``; a section that is missing is appended. The result must still parse.
    """
    import tomllib

    lines = config_path.read_text(encoding="utf-8").splitlines()
    for section, values in sections.items():
        rendered = [f"{k} = {_toml(v)}" for k, v in values.items()]
        header = next((i for i, line in enumerate(lines) if line.split("#")[0].strip() == f"[{section}]"), None)
        if header is None:
            lines += ["", f"[{section}]", *rendered]
        else:
            # drop an active key of the same name, then insert right below the header
            names = set(values)
            lines = [line for j, line in enumerate(lines)
                     if not (j > header and line.split("=")[0].strip() in names and not line.lstrip().startswith("#"))]
            lines[header + 1:header + 1] = rendered
    text = "\n".join(lines) + "\n"
    tomllib.loads(text)
    config_path.write_text(text, encoding="utf-8")


def _toml(value: object) -> str:
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    return '"' + str(value).replace("\\", "\\\\").replace('"', '\\"') + '"'


def process_alive(pid: int) -> bool:
    """True while the process exists and is not a zombie (``/proc``; ``kill 0`` where there is none)."""
    import os
    import sys

    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        return sys.platform != "linux"
    return stat.rsplit(")", 1)[1].split()[0] not in ("Z", "X")


def wait_dead(pid: int, limit_s: float = 10.0) -> bool:
    """Wait up to ``limit_s`` seconds for ``pid`` to be gone; True when it is."""
    import time

    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        if not process_alive(pid):
            return True
        time.sleep(0.05)
    return not process_alive(pid)


def git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True, text=True).stdout.strip()


def story_branch(ws: Workspace, task_id: str, files: dict[str, str]) -> str:
    """A feature branch of ``task_id`` off main with ``files`` committed; the primary checkout stays on main."""
    root = ws.root
    branch = f"feat/{task_id}-step-01-x"
    git(root, "checkout", "-qb", branch, "main")
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
        git(root, "add", name)
    git(root, "commit", "-qm", f"[impl] {task_id}: work")
    git(root, "checkout", "-q", "main")
    return branch


def merge_story(ws: Workspace, task_id: str, files: dict[str, str], *, tag: bool = True) -> str:
    """Commit ``files`` on a feature branch of ``task_id`` and merge it into main; returns the merge commit."""
    root = ws.root
    branch = story_branch(ws, task_id, files)
    git(root, "merge", "-q", "--no-ff", "-m", f"[impl] {task_id}: merge {branch}", branch)
    sha = git(root, "rev-parse", "HEAD")
    if tag:
        git(root, "tag", "-a", f"{task_id}-complete", "-m", "done")
    return sha


def queue_of(n: int, **changes: dict) -> Queue:
    """``sample_queue(n)`` with per-task field changes: ``queue_of(2, T001={"status": S.DONE})``."""
    queue = sample_queue(n)
    for task in queue.tasks:
        for key, value in changes.get(task.id, {}).items():
            setattr(task, key, value)
    return queue


def one_command_backlog(sprint: str, story: str, command: str) -> str:
    """A backlog of one story T001 whose job runs ``command`` and whose criterion is its return code 0."""
    return (f"# {sprint}\n\n### T001: {story}\n**Type:** Story  **Complexity:** S  **Priority:** 1  "
            "**Dependencies:** None\n\n```job\nkind: command\n"
            f"run: \"{command}\"\n```\n\n**Acceptance Criteria:**\n"
            "- [ ] it succeeds `metric: command.returncode == 0` (critical)\n")

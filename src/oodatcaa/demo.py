"""``oodatcaa demo PATH``: the bundled demo sprint, copied into a fresh git repository and run.

The demo definition is this repository's ``.oodatcaa/`` (config, objective, backlog) plus its
``data/`` dataset. An earlier demo at PATH (recognised by its ``.oodatcaa-demo`` marker) is
replaced; any other existing non-empty directory is refused.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import git as gitpython
from rich.console import Console

from oodatcaa.core.config import bundled_dir
from oodatcaa.core.errors import WorkspaceError
from oodatcaa.core.store import QueueStore
from oodatcaa.core.workspace import Workspace

MARKER = ".oodatcaa-demo"


def prepare_demo_repo(path: Path) -> Workspace:
    """Create a fresh git repository at ``path`` holding the demo definition; returns its workspace."""
    path = Path(path).resolve()
    if path.exists():
        if (path / MARKER).exists():
            shutil.rmtree(path)
        elif any(path.iterdir()):
            raise WorkspaceError(f"{path} exists and is not an earlier oodatcaa demo (no {MARKER}); choose another path")
    path.mkdir(parents=True, exist_ok=True)
    (path / MARKER).write_text("created by `oodatcaa demo`; the directory is replaced by the next demo run\n")
    gitpython.Repo.init(path, initial_branch="main")
    source = bundled_dir("demo")
    ws = Workspace(path)
    for rel in ("config.toml", "objectives/OBJECTIVE.md", "work/SPRINT_BACKLOG.md"):
        target = ws.dir / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source / rel, target)
    shutil.copytree(source / "data", path / "data")
    (path / "README.md").write_text(
        "# oodatcaa demo\n\nA training-system-foundation sprint run by `oodatcaa demo`. "
        "See `CHANGELOG.md`, `git log --graph --oneline --all`, `git tag` and `.oodatcaa/work/`.\n"
    )
    return ws


def run_demo(path: Path, *, model: str | None = None, max_seconds: float | None = 1800,
             console: Console | None = None) -> int:
    """Set up and run the demo sprint; returns the Negotiator's exit code (0 = every task done)."""
    from oodatcaa.cli.render import status_table
    from oodatcaa.roles.base import AgentContext, install_signal_handlers
    from oodatcaa.roles.negotiator import Negotiator
    from oodatcaa.sprints import init_workspace, new_sprint

    console = console or Console()
    started = time.monotonic()
    ws = prepare_demo_repo(path)
    if model:
        cfg = ws.config_path.read_text(encoding="utf-8")
        ws.config_path.write_text(cfg.replace('default_model = "default"', f'default_model = "{Path(model).resolve()}"'))
    init_workspace(ws.root)
    repo = gitpython.Repo(ws.root)
    repo.git.add("-A", "--", "data", "README.md", MARKER)
    repo.git.commit("-m", "[docs] demo: dataset and readme", env={
        "GIT_AUTHOR_NAME": "oodatcaa demo", "GIT_AUTHOR_EMAIL": "demo@oodatcaa.local",
        "GIT_COMMITTER_NAME": "oodatcaa demo", "GIT_COMMITTER_EMAIL": "demo@oodatcaa.local"})
    if not model:
        from oodatcaa.mlmodels.default_model import ensure_default_model

        t0 = time.monotonic()
        console.print("preparing the default model (SmolLM2-135M-Instruct, converted once and cached)...")
        model_dir = ensure_default_model()
        console.print(f"default model: {model_dir} ({time.monotonic() - t0:.1f} s)")
    sprint = new_sprint(ws, ws.backlog_path)
    console.print(f"{sprint.id} initiated in {ws.root}; running the agents...")
    ctx = AgentContext.open(ws, "negotiator")
    install_signal_handlers(ctx)
    code, message = Negotiator(ctx, max_seconds=max_seconds).run()
    queue = QueueStore.for_workspace(ws).read()
    console.print(status_table(queue))
    for task in queue.tasks:
        figures = ", ".join(f"{k}={v}" for k, v in sorted(task.metrics.items()))
        console.print(f"[bold]{task.id}[/] {task.status.value} — loops {task.adapt_loops} — {figures}")
    wall = time.monotonic() - started
    (console.print if code == 0 else console.print)(
        f"demo {'completed' if code == 0 else 'FAILED'} in {wall:.0f} s: {message}")
    console.print(f"inspect: cd {ws.root} && git log --graph --oneline --all && git tag -n9 && oodatcaa status")
    return code

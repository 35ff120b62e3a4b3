"""``oodatcaa demo PATH``: the bundled demo roadmap, copied into a fresh git repository and run.

The demo definition is this repository's ``.oodatcaa/`` (config, an objective whose success
criteria are all machine-checkable, and a two-sprint roadmap in ``work/backlogs/``) plus its
``data/`` dataset. It runs as ``oodatcaa run --until-objective`` does: sprint 1 trains and evaluates
a LoRA adapter; sprint 2 fuses it, quantizes the fused model and evaluates both; the project then
ends ``project_complete``. An earlier demo at PATH (recognised by its ``.oodatcaa-demo`` marker) is
replaced; any other existing non-empty directory is refused.

The demo runs and reports its outcome; showing it (the status table, the figures) is the CLI's job,
so this module never imports :mod:`oodatcaa.cli`.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from oodatcaa.completion import ObjectiveReport
from oodatcaa.core.config import bundled_dir
from oodatcaa.core.errors import WorkspaceError
from oodatcaa.core.models import Queue
from oodatcaa.core.store import QueueStore
from oodatcaa.core.workspace import Workspace
from oodatcaa.gitops import DEFAULT_TRUNK, GitRepo, init_repository

if TYPE_CHECKING:
    from oodatcaa.roadmap import SprintRun

MARKER = ".oodatcaa-demo"
#: The demo repository's trunk (a fresh repository, so the branch is ours to name).
DEMO_TRUNK = DEFAULT_TRUNK
#: The demo workspace definition copied from the bundled ``.oodatcaa/``.
DEFINITION_FILES = ("config.toml", "objectives/OBJECTIVE.md", "work/backlogs/sprint-01.md", "work/backlogs/sprint-02.md")


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
    init_repository(path, DEMO_TRUNK)
    source = bundled_dir("demo")
    ws = Workspace(path)
    for rel in DEFINITION_FILES:
        target = ws.dir / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source / rel, target)
    shutil.copytree(source / "data", path / "data")
    (path / "README.md").write_text(
        "# oodatcaa demo\n\nA two-sprint roadmap run by `oodatcaa demo` until its objective is met. "
        "See `CHANGELOG.md`, `git log --graph --oneline --all`, `git tag` and `.oodatcaa/work/`.\n"
    )
    return ws


@dataclass(frozen=True)
class DemoOutcome:
    """How a demo run ended, for the caller to show (the demo itself prints nothing).

    Attributes:
        code: the exit code of the roadmap run (0 = project complete).
        message: its closing sentence.
        queue: the final queue as read after the run (the last sprint).
        wall_seconds: time from the start of set-up to the end of the run.
        root: the demo repository.
        sprints: each sprint run, with its wall time (seconds).
        report: the objective report of the last check (``None`` if it never ran).
    """

    code: int
    message: str
    queue: Queue
    wall_seconds: float
    root: Path
    sprints: list[SprintRun] = field(default_factory=list)
    report: ObjectiveReport | None = None


def run_demo(path: Path, *, model: str | None = None, max_seconds: float | None = 1800,
             progress: Callable[[str], None] | None = None) -> DemoOutcome:
    """Set up and run the demo roadmap at ``path`` until its objective is met; returns its :class:`DemoOutcome`.

    ``progress`` receives a plain-text line at each stage (model preparation, sprint start); it is
    text, not markup. Raises :class:`WorkspaceError` when ``path`` is a non-empty directory that
    is not an earlier demo, and what the sprint start raises for a bad backlog.
    """
    from oodatcaa.roadmap import run_until_objective
    from oodatcaa.roles.base import AgentContext, install_signal_handlers
    from oodatcaa.roles.negotiator import Negotiator
    from oodatcaa.sprints import init_workspace

    say = progress or (lambda line: None)
    started = time.monotonic()
    ws = prepare_demo_repo(path)
    if model:
        cfg = ws.config_path.read_text(encoding="utf-8")
        ws.config_path.write_text(cfg.replace('default_model = "default"', f'default_model = "{Path(model).resolve()}"'))
    # the first commit carries the demo definition, so `init` finds a branch with history (it
    # refuses an unborn HEAD) and keeps the demo's own config
    definition = [ws.relative(ws.dir / rel) for rel in DEFINITION_FILES]
    GitRepo.for_workspace(ws, "demo", trunk=DEMO_TRUNK).commit_all(["data", "README.md", MARKER, *definition],
                                                                  "[docs] demo: dataset, readme and sprint definition")
    init_workspace(ws.root, force=True)
    if not model:
        from oodatcaa.mlmodels.default_model import ensure_default_model

        t0 = time.monotonic()
        say("preparing the default model (SmolLM2-135M-Instruct, converted once and cached)...")
        model_dir = ensure_default_model()
        say(f"default model: {model_dir} ({time.monotonic() - t0:.1f} s)")
    ctx = AgentContext.open(ws, "negotiator")
    install_signal_handlers(ctx)
    outcome = run_until_objective(ws, lambda left: Negotiator(ctx, max_seconds=left).run(), max_seconds=max_seconds,
                                  on_event=say)
    queue = QueueStore.for_workspace(ws).read()
    return DemoOutcome(outcome.code, outcome.message, queue, time.monotonic() - started, ws.root, outcome.sprints,
                       outcome.report)

"""Running jobs for the board: a running builder step's progress and its run's ``metrics.jsonl``.

The Builder writes the latest progress record into the queue every 10 s (``result["progress"]``);
the job appends every report and validation to ``metrics.jsonl`` in the step's run directory inside
its worktree. The board joins the two: the progress gives step / total and ETA even before the file
has a line, the file gives the loss history for the sparkline and the peak memory so far. A torn
last line or a non-finite value is skipped and counted (``skipped``), never fatal.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from oodatcaa.board.progress import finite_number, step_progress
from oodatcaa.core.models import Subtask, Task, TaskStatus
from oodatcaa.core.workspace import Workspace
from oodatcaa.htmlreport.metrics import read_metrics
from oodatcaa.htmlreport.page import memory_target

#: Block characters of a sparkline, lowest to highest (U+2581..U+2588).
SPARK = "▁▂▃▄▅▆▇█"


@dataclass(frozen=True)
class JobRow:
    """One running builder step.

    ``losses``: the train losses reported so far, oldest first (finite only); ``peak_memory_gb`` the
    largest ``peak_memory_gb`` any record reported (GB, 10^9 bytes, as mlx reports it);
    ``target_gb``: the story's tightest peak-memory acceptance criterion, or None; ``eta_s`` in
    seconds; ``skipped``: metrics lines left out (torn or non-finite), with ``problems`` saying which.
    """

    step_id: str
    kind: str
    step: int | None
    total: int | None
    losses: tuple[float, ...]
    tokens_per_second: float | None
    peak_memory_gb: float | None
    target_gb: float | None
    eta_s: float | None
    skipped: int = 0
    problems: tuple[str, ...] = field(default_factory=tuple)

    @property
    def last_loss(self) -> float | None:
        return self.losses[-1] if self.losses else None


def metrics_path(ws: Workspace, step_id: str, attempt: int) -> Path:
    """Where attempt ``attempt`` of a running step appends its records (``Workspace.step_run_dir``/metrics.jsonl)."""
    return ws.step_run_dir(step_id, max(1, attempt)) / "metrics.jsonl"


def sparkline(values: tuple[float, ...] | list[float], width: int = 16) -> str:
    """The last ``width`` values as block characters scaled between their min and max ("" when empty).

    A flat series draws at the lowest block. Non-finite values are not expected (filtered upstream).
    """
    shown = [v for v in values if math.isfinite(v)][-width:]
    if not shown:
        return ""
    low, high = min(shown), max(shown)
    span = high - low
    top = len(SPARK) - 1
    return "".join(SPARK[0] if span == 0 else SPARK[int((v - low) / span * top + 0.5)] for v in shown)


def job_row(ws: Workspace, task: Task, step: Subtask) -> JobRow:
    """The board's row for running ``step`` of ``task`` (reads its metrics file; never raises for its content)."""
    progress = step_progress(step.result) or {}
    path = metrics_path(ws, step.id, step.attempts)
    metrics = read_metrics(path)
    exists = path.exists()
    losses = tuple(v for r in metrics.events("train") if (v := finite_number(r.get("train_loss"))) is not None)
    peaks = [v for r in metrics.records if (v := finite_number(r.get("peak_memory_gb"))) is not None]
    tps = next((v for r in reversed(metrics.events("train")) if (v := finite_number(r.get("tokens_per_second"))) is not None),
               progress.get("tokens_per_second"))
    last = metrics.events("train")[-1] if metrics.events("train") else {}
    start = metrics.events("start")[-1] if metrics.events("start") else {}
    problems = tuple(metrics.problems) if exists else ()  # no file yet is not a problem: the job just started
    at = _int(last.get("iteration")) or progress.get("step")
    total = _int(start.get("total_iterations", start.get("total_steps"))) or progress.get("total")
    rate = finite_number(last.get("iterations_per_second"))
    eta = (total - at) / rate if rate and at is not None and total is not None else progress.get("eta_s")
    return JobRow(step_id=step.id, kind=str((step.job or {}).get("kind", "")), step=at, total=total,
                  losses=losses or ((progress["loss"],) if progress.get("loss") is not None else ()),
                  tokens_per_second=tps, peak_memory_gb=max(peaks) if peaks else None,
                  target_gb=memory_target(task), eta_s=None if eta is None else max(0.0, eta),
                  skipped=len(problems), problems=problems)


def _int(value: Any) -> int | None:
    number = finite_number(value)
    return None if number is None else int(number)


def running_jobs(ws: Workspace, tasks: list[Task]) -> list[JobRow]:
    """A :class:`JobRow` for every builder step ``in_progress`` under a lease, in queue order."""
    return [job_row(ws, task, step) for task in tasks for step in task.subtasks
            if step.kind == "build" and step.status == TaskStatus.IN_PROGRESS and step.lease is not None]

"""Regression baselines: the metrics of every story merged on the trunk, per job kind and model.

The Integrator records a story's metrics in the committed ``.oodatcaa/work/baselines.json`` after its
merge (:func:`record_story`); a revert removes them (:func:`forget_story`); the Tester asks for the
baseline of a ``regression:`` criterion (:func:`baseline_for`): the same metric recorded for the
latest story merged whose job had the same kind and model. File order is merge order, so "latest" is
the last matching entry, whatever the clocks say.

The file is read strictly: unparseable JSON or an entry that does not validate raises
:class:`BaselinesError` naming the file, the field and the fix, and such a file is never overwritten
(every write first reads the file it replaces). Writes are atomic (:mod:`oodatcaa.core.atomic`),
under a lock, and keep the previous version in ``.oodatcaa/state/baselines.json.bak``.

The "investigate" flag of a story that landed 20–50 % worse than its baseline is read from its
Tester's result by :func:`investigate_note`, for the CHANGELOG line and the tag message.
"""

from __future__ import annotations

import json
import math
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

from filelock import FileLock
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from oodatcaa.core.atomic import atomic_write_bytes, atomic_write_text
from oodatcaa.core.clock import Clock
from oodatcaa.core.criteria import RegressionBaseline
from oodatcaa.core.errors import OodatcaaError
from oodatcaa.core.models import Subtask, Task
from oodatcaa.core.workspace import Workspace
from oodatcaa.jobs.registry import numeric_metrics
from oodatcaa.jobs.spec import JobSpecError, model_of_kind

__all__ = [
    "BaselineEntry",
    "BaselinesError",
    "BaselinesFile",
    "baseline_for",
    "baselines_for_story",
    "baselines_path",
    "forget_story",
    "investigate_note",
    "job_identity",
    "load_baselines",
    "record_story",
]

#: The model of a job kind that names none (``command``, a ``dataset`` without a tokenizer).
NO_MODEL = "-"


class BaselinesError(OodatcaaError):
    """``baselines.json`` cannot be read: the message names the file, the field and the fix."""


class BaselineEntry(BaseModel):
    """The metrics one builder step of a merged story recorded.

    ``metrics`` is flat ``{"namespace.key": number}`` (:func:`oodatcaa.jobs.registry.numeric_metrics`:
    the units the job reports). ``kind`` and ``model`` are the step's job kind and its ``model`` as
    written in the job block (``"default"`` or a directory; ``"-"`` for a kind without a model).
    """

    model_config = ConfigDict(extra="forbid")

    task: str = Field(min_length=1)
    step: str = Field(min_length=1)
    kind: str = Field(min_length=1)
    model: str = Field(min_length=1)
    merge_commit: str = Field(min_length=1)
    sprint: str | None = None
    recorded_at: datetime
    metrics: dict[str, float]

    @field_validator("metrics")
    @classmethod
    def _finite(cls, value: dict[str, float]) -> dict[str, float]:
        bad = [k for k, v in value.items() if not math.isfinite(v)]
        if bad:
            raise ValueError(f"metrics {', '.join(bad)} are not finite numbers")
        return value


class BaselinesFile(BaseModel):
    """``baselines.json``: a version and the entries in merge order (oldest first)."""

    model_config = ConfigDict(extra="forbid")

    version: Literal[1] = 1
    entries: list[BaselineEntry] = Field(default_factory=list)


def baselines_path(ws: Workspace) -> Path:
    """``.oodatcaa/work/baselines.json`` (committed on the trunk with the story's docs)."""
    return ws.work_dir / "baselines.json"


def _backup_path(ws: Workspace) -> Path:
    return ws.state_dir / "baselines.json.bak"


def _lock(ws: Workspace) -> FileLock:
    ws.locks_dir.mkdir(parents=True, exist_ok=True)
    return FileLock(str(ws.lock_path("baselines")), timeout=60)


def load_baselines(ws: Workspace) -> BaselinesFile:
    """Read ``baselines.json``; a missing file is an empty one.

    Raises :class:`BaselinesError` naming the file and the first bad field (``entries[2].metrics``)
    for a file that is not JSON or does not validate; the fix is to repair it (its previous version is
    in ``.oodatcaa/state/baselines.json.bak``) or restore it from git.
    """
    path = baselines_path(ws)
    if not path.exists():
        return BaselinesFile()
    fix = (f"repair it, restore it with `git checkout -- {ws.relative(path)}`, or copy the previous version "
           f"from {ws.relative(_backup_path(ws))}")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise BaselinesError(f"{path}: not valid JSON ({exc}); {fix}") from None
    try:
        return BaselinesFile.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        where = "".join(f"[{p}]" if isinstance(p, int) else (f".{p}" if i else str(p))
                        for i, p in enumerate(err["loc"])) or "(top level)"
        raise BaselinesError(f"{path}: field {where}: {err['msg']}; {fix}") from None


def _write(ws: Workspace, data: BaselinesFile) -> None:
    """Atomically replace the file, keeping the old bytes as the backup first (caller holds the lock)."""
    path = baselines_path(ws)
    if path.exists():
        atomic_write_bytes(_backup_path(ws), path.read_bytes())
    atomic_write_text(path, json.dumps(data.model_dump(mode="json"), indent=2) + "\n")


def job_identity(step: Subtask) -> tuple[str, str] | None:
    """``(kind, model)`` of a builder step's job, the model as the spec reads it; ``None`` without a job.

    A job block that leaves ``model`` out gets the spec's default (``"default"``), so two blocks that
    differ only in writing the default compare equal.
    """
    job = step.job
    if not job or not isinstance(job.get("kind"), str):
        return None
    kind = job["kind"]
    model = job.get("model")
    if model is None:
        try:
            field = model_of_kind(kind).model_fields.get("model")
        except JobSpecError:  # a kind unknown to this version: no default to read
            field = None
        model = field.default if field is not None else None
    return kind, str(model) if model else NO_MODEL


def _step_metrics(step: Subtask) -> dict[str, float]:
    summary = (step.result or {}).get("summary")
    if not isinstance(summary, dict):
        return {}
    return {k: float(v) for k, v in numeric_metrics(summary).items() if math.isfinite(float(v))}


def record_story(ws: Workspace, task: Task, merge_commit: str, *, sprint_id: str | None = None,
                 clock: Clock | None = None) -> list[BaselineEntry]:
    """Record the metrics of every built step of ``task`` (merged at ``merge_commit``) as the newest baselines.

    Idempotent: entries the story recorded before (an Integrator killed after recording) are
    replaced, and the story's entries move to the end (it is the latest merge). Returns the entries
    written (none when no step has a job and a summary). Raises :class:`BaselinesError` for an
    unparseable file, which is left as it is.
    """
    now = (clock or Clock()).now()
    entries = []
    for step in task.builds():
        identity = job_identity(step)
        metrics = _step_metrics(step)
        if identity is None or not metrics:
            continue
        entries.append(BaselineEntry(task=task.id, step=step.id, kind=identity[0], model=identity[1],
                                     merge_commit=merge_commit, sprint=sprint_id, recorded_at=now, metrics=metrics))
    with _lock(ws):
        data = load_baselines(ws)
        kept = [e for e in data.entries if e.task != task.id]
        if entries or len(kept) != len(data.entries):
            _write(ws, BaselinesFile(entries=kept + entries))
    return entries


def forget_story(ws: Workspace, task_id: str) -> int:
    """Remove every baseline ``task_id`` recorded (its merge was reverted); returns how many.

    The baselines then fall back to the story merged before it. Raises :class:`BaselinesError` for
    an unparseable file, which is left as it is.
    """
    with _lock(ws):
        data = load_baselines(ws)
        kept = [e for e in data.entries if e.task != task_id]
        removed = len(data.entries) - len(kept)
        if removed:
            _write(ws, BaselinesFile(entries=kept))
    return removed


def baseline_for(ws: Workspace, metric: str, kind: str, model: str, *,
                 exclude_task: str | None = None) -> RegressionBaseline | None:
    """The baseline of ``metric`` for a job of ``kind`` on ``model``: the latest merged entry that has it.

    ``exclude_task`` leaves out the story being checked (a re-test after its own merge was recorded).
    ``None`` when no merged story recorded it. Raises :class:`BaselinesError` for an unparseable file.
    """
    for entry in reversed(load_baselines(ws).entries):
        if entry.kind == kind and entry.model == model and metric in entry.metrics and entry.task != exclude_task:
            source = f"{entry.task} (merge {entry.merge_commit[:10]}, {kind} on {model})"
            return RegressionBaseline(value=entry.metrics[metric], task=entry.task, source=source)
    return None


def baselines_for_story(ws: Workspace, task: Task, metrics: list[str]) -> dict[str, RegressionBaseline | None]:
    """The baseline of each metric name for ``task``'s run, as :class:`~oodatcaa.core.criteria.CheckContext` takes them.

    A metric's job is the last builder step whose summary has it (later steps win, as in the
    Tester's merged metrics); a metric no step produced maps to ``None`` (its check then finds the
    metric missing). Raises :class:`BaselinesError` for an unparseable file.
    """
    out: dict[str, RegressionBaseline | None] = {}
    for metric in metrics:
        out[metric] = None
        for step in reversed(task.builds()):
            identity = job_identity(step)
            if identity is not None and metric in _step_metrics(step):
                out[metric] = baseline_for(ws, metric, identity[0], identity[1], exclude_task=task.id)
                break
    return out


def investigate_note(task: Task) -> str | None:
    """``investigate: inference.generation_tps 35 % worse than 120 (T003 ...)`` for a story that passed
    with a 20–50 % regression, read from its Tester's result; ``None`` when there is none.

    For the CHANGELOG line and the tag message (the original flags such a story there).
    """
    tester = task.tester()
    result: dict[str, Any] = (tester.result if tester is not None else None) or {}
    flagged = [r for r in result.get("regressions", []) if isinstance(r, dict) and r.get("level") == "investigate"]
    if not flagged:
        return None
    parts = []
    for r in flagged:
        pct = r.get("worse_percent")
        pct_text = f"{pct:.3g} %" if isinstance(pct, (int, float)) else "?"
        parts.append(f"{r.get('metric')} {pct_text} worse than {r.get('baseline')} from {r.get('baseline_source')}")
    return "investigate: " + "; ".join(parts)

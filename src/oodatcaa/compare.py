"""``oodatcaa compare``: one row per run (story, step, attempt), in the manner of ``dvc exp show`` / ``exp diff``.

Runs come from each builder step's ``attempt_history`` (:class:`~oodatcaa.core.models.AttemptRecord`,
written by :mod:`oodatcaa.core.lifecycle`); a step built before that history existed shows its last
result as one row. A story not in the current sprint is looked up in the archived sprints' final
queues (:func:`oodatcaa.archive.archived_sprints`), the latest sprint winning.

Columns: the job-spec parameters that differ between the rows shown (every one with ``all_params``;
nested dicts flattened as ``lora.rank``), the headline metrics, and the change of each headline
metric against the merged baseline of the same job kind and model
(:func:`oodatcaa.baselines.baseline_for`). Rows of different job kinds share one table: the
``kind`` column tells them apart and a parameter a kind does not have is blank.
"""

from __future__ import annotations

import csv
import io
import json
import math
from dataclasses import dataclass, field
from typing import Any

from rich import box
from rich.table import Table
from rich.text import Text

from oodatcaa.archive import archived_sprints
from oodatcaa.baselines import BaselinesError, baseline_for, job_identity
from oodatcaa.core.errors import OodatcaaError
from oodatcaa.core.models import Queue, Subtask, Task
from oodatcaa.core.workspace import Workspace
from oodatcaa.htmlreport.page import memory_target
from oodatcaa.jobs.registry import headline, numeric_metrics
from oodatcaa.jobs.spec import flatten_spec as flatten

#: Metric columns in display order: label -> flat metric name (first one present of the alternatives).
METRIC_COLUMNS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("best_val_loss", ("train.best_val_loss",)),
    ("best_iteration", ("train.best_iteration",)),
    ("final_train_loss", ("train.final_loss",)),
    ("tokens_per_second", ("train.tokens_per_second", "inference.generation_tps")),
    ("peak_memory_gb", ("train.peak_memory_gb", "inference.peak_memory_gb", "memory.peak_memory_gb",
                        "eval.peak_memory_gb")),
    ("max_rss_gb", ("max_rss_gb",)),
)


class CompareError(OodatcaaError):
    """``compare`` cannot answer: an unknown task or run, or a bad ``--sort-by``."""


@dataclass
class RunRow:
    """One run: ``task``, ``step`` (``T004-B01``), ``attempt``, its flat ``params`` and ``metrics``.

    ``metrics`` holds the headline metrics (flat names), the :data:`METRIC_COLUMNS` labels, the
    memory target (``peak_memory_target_gb``), ``criteria`` (``"3/4"``, the Tester's last verdict,
    on the story's latest attempts) and ``vs_baseline`` (metric -> relative change, e.g. ``-0.12``).
    """

    task: str
    step: str
    attempt: int
    kind: str
    ok: bool | None
    failure: str | None
    params: dict[str, Any]
    metrics: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        """The ``--json`` row: task, step, attempt, kind, ok, failure, params, metrics."""
        return {"task": self.task, "step": self.step, "attempt": self.attempt, "kind": self.kind, "ok": self.ok,
                "failure": self.failure, "params": self.params, "metrics": self.metrics}


def find_task(ws: Workspace | None, queue: Queue, task_id: str) -> Task:
    """``task_id`` from the current queue, else from the latest archived sprint that has it.

    Raises :class:`CompareError` naming the task and the known ones.
    """
    for task in queue.tasks:
        if task.id == task_id:
            return task
    known = [t.id for t in queue.tasks]
    if ws is not None:
        found: dict[str, Task] = {}
        for archived in archived_sprints(ws):
            for task in archived.queue.tasks:
                found[task.id] = task
        if task_id in found:
            return found[task_id]
        known += [t for t in found if t not in known]
    listing = ", ".join(sorted(known)) or "none"
    raise CompareError(f"compare: unknown task or run {task_id!r}; known tasks: {listing}")


def _criteria(task: Task) -> str | None:
    tester = task.tester()
    verdict = (tester.result or {}).get("verdict") if tester is not None else None
    if isinstance(verdict, dict) and isinstance(verdict.get("total"), int):
        return f"{verdict.get('passed', 0)}/{verdict['total']}"
    return None


def _step_rows(task: Task, step: Subtask) -> list[RunRow]:
    rows = []
    for rec in step.attempt_history:
        job = rec.job or {}
        metrics = dict(rec.metrics)
        if rec.max_rss_gb is not None:  # the job process's RSS: known even when an OOM left no summary
            metrics["max_rss_gb"] = rec.max_rss_gb
        rows.append(RunRow(task.id, step.id, rec.attempt, str(job.get("kind", "")), rec.ok,
                           rec.failure_kind.value if rec.failure_kind else None, flatten(job), metrics))
    if not rows and step.result and isinstance(step.result.get("summary"), dict):
        # built before attempt_history existed: the last result is all that is left
        job = step.job or {}
        rows.append(RunRow(task.id, step.id, int(step.result.get("attempt") or step.attempts), str(job.get("kind", "")),
                           step.failure is None, step.failure.kind.value if step.failure else None, flatten(job),
                           numeric_metrics(step.result["summary"])))
    return rows


def _fill_metrics(ws: Workspace | None, task: Task, step: Subtask, row: RunRow, latest: bool) -> None:
    raw = row.metrics
    shown: dict[str, Any] = dict(headline(raw))
    for label, names in METRIC_COLUMNS:
        value = next((raw[n] for n in names if isinstance(raw.get(n), (int, float))), None)
        if value is not None:
            shown[label] = value
    target = memory_target(task)
    if target is not None:
        shown["peak_memory_target_gb"] = target
    criteria = _criteria(task) if latest else None
    if criteria is not None:
        shown["criteria"] = criteria
    identity = job_identity(step)
    if ws is not None and identity is not None:
        changes: dict[str, float] = {}
        for metric, value in headline(raw).items():
            try:
                base = baseline_for(ws, metric, identity[0], identity[1], exclude_task=task.id)
            except BaselinesError:
                base = None
            if base is not None and base.value and math.isfinite(float(value)):
                changes[metric] = round((float(value) - base.value) / abs(base.value), 4)
        if changes:
            shown["vs_baseline"] = changes
    row.metrics = shown


def collect_rows(ws: Workspace | None, queue: Queue, targets: list[str]) -> list[RunRow]:
    """Rows for ``targets`` (story IDs ``T004`` or steps ``T004-B01``; empty = every story of the queue).

    Grouped by story in the order asked, then step and attempt. Raises :class:`CompareError` for an
    unknown story or step.
    """
    wanted: list[tuple[Task, str | None]] = []
    for target in targets or [t.id for t in queue.tasks]:
        story_id, _, rest = target.partition("-")
        task = find_task(ws, queue, story_id)
        if rest and all(s.id != target for s in task.builds()):
            steps = ", ".join(s.id for s in task.builds()) or "none"
            raise CompareError(f"compare: {task.id} has no builder step {target!r}; its steps: {steps}")
        wanted.append((task, target if rest else None))
    rows: list[RunRow] = []
    for task, only in wanted:
        for step in task.builds():
            if only is not None and step.id != only:
                continue
            step_rows = sorted(_step_rows(task, step), key=lambda r: r.attempt)
            for i, row in enumerate(step_rows):
                _fill_metrics(ws, task, step, row, latest=i == len(step_rows) - 1)
            rows.extend(step_rows)
    return rows


def param_columns(rows: list[RunRow], all_params: bool) -> list[str]:
    """Parameter names to show: those whose value differs between the rows (or every one), ``kind`` first."""
    names: list[str] = []
    for row in rows:
        names += [n for n in row.params if n not in names and n != "kind"]
    if not all_params:
        names = [n for n in names if len({json.dumps(r.params.get(n), sort_keys=True, default=str) for r in rows}) > 1]
    return names


def metric_columns(rows: list[RunRow]) -> list[str]:
    """Metric columns present in any row, in :data:`METRIC_COLUMNS` order, then ``criteria``."""
    labels = [label for label, _ in METRIC_COLUMNS] + ["criteria"]
    return [label for label in labels if any(label in r.metrics for r in rows)]


def sort_rows(rows: list[RunRow], metric: str) -> list[RunRow]:
    """Rows ordered by ``metric`` ascending (a column label or a flat metric name), runs without it last.

    Raises :class:`CompareError` when no row has ``metric``, naming the metrics that exist.
    """
    known = sorted({k for r in rows for k, v in r.metrics.items() if isinstance(v, (int, float))})
    if metric not in known:
        raise CompareError(f"compare --sort-by: no run has metric {metric!r}; known: {', '.join(known) or 'none'}")
    return sorted(rows, key=lambda r: (not isinstance(r.metrics.get(metric), (int, float)), r.metrics.get(metric) or 0))


def _fmt(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, (dict, list)):
        return json.dumps(value, sort_keys=True)
    return str(value)


def _memory_cell(row: RunRow) -> str:
    peak = row.metrics.get("peak_memory_gb")
    target = row.metrics.get("peak_memory_target_gb")
    if peak is None:
        return ""
    if target is None:
        return _fmt(peak)
    return f"{_fmt(peak)} {'>' if float(peak) > float(target) else '<='} {_fmt(target)}"  # against its target


def _baseline_cell(row: RunRow) -> str:
    changes = row.metrics.get("vs_baseline") or {}
    return ", ".join(f"{k} {v * 100:+.1f}%" for k, v in changes.items())


def table_cells(rows: list[RunRow], all_params: bool = False) -> tuple[list[str], list[list[str]]]:
    """Headers and plain-text cells shared by the rich table, Markdown and CSV."""
    params = param_columns(rows, all_params)
    metrics = metric_columns(rows)
    headers = ["task", "step", "attempt", "kind", "outcome", *params, *metrics]
    with_baseline = any(r.metrics.get("vs_baseline") for r in rows)
    if with_baseline:
        headers.append("vs baseline")
    body = []
    for r in rows:
        outcome = "ok" if r.ok else (r.failure or "failed") if r.ok is False else ""
        cells = [r.task, r.step, str(r.attempt), r.kind, outcome, *(_fmt(r.params.get(p)) for p in params)]
        cells += [_memory_cell(r) if m == "peak_memory_gb" else _fmt(r.metrics.get(m)) for m in metrics]
        if with_baseline:
            cells.append(_baseline_cell(r))
        body.append(cells)
    return headers, body


#: Columns that name a run: never wrapped, so IDs stay copyable.
IDENTITY = frozenset({"task", "step", "attempt", "kind", "outcome"})


def rich_table(rows: list[RunRow], all_params: bool = False) -> Table:
    """The terminal table, one section per story; every cell is a literal :class:`~rich.text.Text`."""
    headers, body = table_cells(rows, all_params)
    kinds = {r.kind for r in rows}
    title = "Runs"
    if len(kinds) == 1:  # one kind: said once in the title, its column left out (80 columns are few)
        title = f"Runs ({next(iter(kinds))})"
        k = headers.index("kind")
        headers = headers[:k] + headers[k + 1:]
        body = [c[:k] + c[k + 1:] for c in body]
    # no vertical rules and no doubled padding: at 80 columns every character goes to the cells
    table = Table(title=title, show_lines=False, box=box.SIMPLE_HEAD, pad_edge=False, collapse_padding=True)
    for h in headers:
        # the run's identity never wraps (IDs stay copyable); headers stay whole; values fold when narrow
        table.add_column(Text(h), no_wrap=h in IDENTITY,
                         overflow="fold", min_width=min(len(h), 8))
    previous = None
    for row, cells in zip(rows, body, strict=True):
        if previous is not None and row.task != previous:
            table.add_section()
        previous = row.task
        table.add_row(*(Text(c, style="red" if headers[i] == "outcome" and row.ok is False else "")
                        for i, c in enumerate(cells)))
    return table


def markdown(rows: list[RunRow], all_params: bool = False) -> str:
    """A GitHub Markdown table (``|`` in cells escaped)."""
    headers, body = table_cells(rows, all_params)

    def line(cells: list[str]) -> str:
        return "| " + " | ".join(c.replace("|", "\\|").replace("\n", " ") for c in cells) + " |"

    return "\n".join([line(headers), "|" + "---|" * len(headers), *(line(c) for c in body)]) + "\n"


def to_csv(rows: list[RunRow], all_params: bool = False) -> str:
    """CSV with a header row (RFC 4180 quoting)."""
    headers, body = table_cells(rows, all_params)
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(headers)
    writer.writerows(body)
    return out.getvalue()


def to_json(rows: list[RunRow]) -> str:
    """``[{"task", "step", "attempt", "kind", "ok", "failure", "params", "metrics"}, ...]`` as indented JSON."""
    return json.dumps([r.to_json() for r in rows], indent=2, default=str) + "\n"


def add_parser(sub: Any, handler: Any) -> None:
    """The ``compare`` sub-parser (kept here so ``cli/main.py`` stays small), bound to ``handler``."""
    p = sub.add_parser("compare", help="one row per run (story, step, attempt): differing job params, headline "
                                       "metrics, change against the baseline")
    p.add_argument("targets", nargs="*", metavar="TASK|RUN",
                   help="story IDs (T004) or builder steps (T004-B01); default: every story of the sprint")
    p.add_argument("--all", action="store_true", dest="all_params",
                   help="show every job-spec parameter, not only those that differ")
    p.add_argument("--sort-by", metavar="METRIC", help="order rows by this metric, ascending (e.g. peak_memory_gb)")
    fmt = p.add_mutually_exclusive_group()
    fmt.add_argument("--md", action="store_true", help="print a Markdown table")
    fmt.add_argument("--csv", action="store_true", help="print CSV")
    fmt.add_argument("--json", action="store_true", help="print rows as JSON (task, step, attempt, params, metrics)")
    p.set_defaults(func=handler)


def render(ws: Workspace, queue: Queue, args: Any) -> str | Table:
    """What ``oodatcaa compare`` prints for parsed ``args``: text (JSON, Markdown, CSV, a note) or the rich table.

    Raises :class:`CompareError` for an unknown task, step or ``--sort-by`` metric.
    """
    rows = collect_rows(ws, queue, list(args.targets))
    if args.sort_by:
        rows = sort_rows(rows, args.sort_by)
    if args.json:
        return to_json(rows)
    if args.md:
        return markdown(rows, args.all_params)
    if args.csv:
        return to_csv(rows, args.all_params)
    if not rows:
        return "No runs yet for " + (", ".join(args.targets) or "this sprint") + ".\n"
    return rich_table(rows, args.all_params)

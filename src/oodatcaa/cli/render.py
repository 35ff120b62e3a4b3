"""Rich rendering of the queue, logs, agents and reports for the terminal (CLI only).

Everything shown here comes from files a person or an agent wrote: backlog titles, log text, error
messages, pid files. None of it is ever parsed as rich markup — a title such as ``Fix the [/] parser``
would otherwise crash the view (``MarkupError``) or lose its brackets. Cells are :class:`~rich.text.Text`
objects (taken literally) and styles are applied as styles, never spliced into a markup string.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markdown import Markdown
from rich.table import Table
from rich.text import Text

from oodatcaa.board.progress import progress_text, step_progress
from oodatcaa.core.eventlog import LogEntry
from oodatcaa.core.models import Queue
from oodatcaa.jobs.registry import headline

#: Colour of a status cell; other statuses are unstyled.
STATUS_COLOURS = {"done": "green", "needs_manual": "red", "needs_adapt": "yellow", "cancelled": "grey50"}


def cell(value: object, style: str = "") -> Text:
    """A table cell showing ``value`` literally (``None`` -> empty), optionally styled."""
    return Text("" if value is None else str(value), style=style)


def status_rows(queue: Queue) -> list[dict[str, Any]]:
    """One row per story and subtask: id, kind, status, owner, branch, last metric, loops, failure.

    Plain JSON-ready dicts (``status --json`` prints them as they are).
    """
    rows: list[dict[str, Any]] = []
    for task in queue.tasks:
        # the job kinds' headline metrics in registry order, not the alphabetically last key
        metric = ", ".join(f"{k}={v}" for k, v in headline(task.metrics).items())
        rows.append({
            "id": task.id, "kind": "story", "title": task.title, "status": task.status.value,
            "owner": task.lease.owner if task.lease else None,
            "branch": task.builds()[-1].branch if task.builds() else None,
            "last_metric": metric or None, "metrics": task.metrics, "adapt_loops": task.adapt_loops,
            "last_error": task.last_error, "manual_reason": task.manual_reason,
        })
        for sub in task.subtasks:
            summary = (sub.result or {}).get("summary") or {}
            sub_metric = None
            for ns, values in summary.items():
                for k, v in values.items():
                    if isinstance(v, (int, float)) and not isinstance(v, bool):
                        sub_metric = f"{ns}.{k}={v:g}" if isinstance(v, float) else f"{ns}.{k}={v}"
                        break
                if sub_metric:
                    break
            rows.append({
                "id": sub.id, "kind": sub.kind, "title": sub.title, "status": sub.status.value,
                "owner": sub.lease.owner if sub.lease else None, "branch": sub.branch,
                "last_metric": sub_metric, "attempts": sub.attempts, "last_error": sub.last_error,
                "progress": step_progress(sub.result) if sub.status.value == "in_progress" else None,
            })
    return rows


def status_table(queue: Queue) -> Table:
    """The ``oodatcaa status`` table: one line per story (bold) and subtask (dim, indented)."""
    sprint = queue.sprint
    title = Text(f"{sprint.id} — {sprint.title} [{sprint.status.value}]" if sprint else "no sprint")
    # a title wraps at the table's width, and the table is only as wide as its cells: let it be as
    # wide as the title (rich still caps it at the console width)
    table = Table(title=title, show_lines=False, min_width=title.cell_len)
    rows = status_rows(queue)
    # ids and statuses are what a person greps for: never split or cut them
    table.add_column("task", no_wrap=True, min_width=max((len(r["id"]) + 2 for r in rows), default=4))
    table.add_column("status", no_wrap=True, min_width=max([len("status")] + [len(r["status"]) for r in rows]))
    # owner and progress only while something is claimed or running: at 80 columns every cell counts
    owners = any(r["owner"] for r in rows)
    running = any(r.get("progress") for r in rows)
    if owners:
        table.add_column("owner", overflow="fold")
    # a branch is long and derived from the id: cut it rather than let it push every row to 4 lines
    table.add_column("branch", no_wrap=True, overflow="ellipsis", max_width=22)
    if running:
        table.add_column("progress", overflow="fold")
    # one headline metric per line, never split inside a name (`eval.peak_memory_gb=0.7078`)
    table.add_column("last metric", overflow="fold")
    for row in rows:
        name = row["id"] if row["kind"] == "story" else f"  {row['id']}"
        status = row["status"]
        cells = [cell(name), cell(status, STATUS_COLOURS.get(status, ""))]
        cells += [cell(row["owner"])] if owners else []
        cells += [cell(row["branch"])]
        cells += [cell(progress_text(row.get("progress")))] if running else []
        cells += [cell((row["last_metric"] or "").replace(", ", "\n") or None)]
        table.add_row(*cells, style="bold" if row["kind"] == "story" else "dim")
    c = queue.counters["totals"]
    table.caption = Text(f"{c['done']}/{c['stories']} stories done · {c['subtasks']} subtasks · revision {queue.revision}")
    return table


def task_figures(queue: Queue) -> list[Text]:
    """One line per story: ``T001 done — loops 0 — key=value, ...`` (the demo's closing figures)."""
    lines: list[Text] = []
    for task in queue.tasks:
        figures = ", ".join(f"{k}={v}" for k, v in sorted(headline(task.metrics).items()))
        lines.append(Text.assemble((task.id, "bold"), f" {task.status.value} — loops {task.adapt_loops} — {figures}"))
    return lines


def log_table(entries: Iterable[LogEntry]) -> Table:
    """``AGENT_LOG.md`` entries as a table: time, agent, task, change, what."""
    table = Table(show_header=True)
    for col in ("time", "agent", "task", "from -> to", "what"):
        table.add_column(col, overflow="fold")
    for e in entries:
        table.add_row(cell(e.time.strftime("%H:%M:%S")), cell(e.agent), cell(e.task), cell(e.change), cell(e.what))
    return table


def agents_table(rows: Sequence[dict[str, Any]]) -> Table:
    """``agents status``: rows as built by the CLI (owner, role, pid, alive, task, last_heartbeat, started_at)."""
    table = Table(title="agents")
    for col in ("owner", "role", "pid", "alive", "task held", "last heartbeat", "started"):
        table.add_column(col)
    for r in rows:
        alive = cell("yes", "green") if r["alive"] else cell("no", "red")
        table.add_row(cell(r["owner"]), cell(r["role"]), cell(r["pid"]), alive, cell(r["task"]),
                      cell(r["last_heartbeat"]), cell(r["started_at"]))
    return table


def history_table(versions: Iterable[tuple[int, str, Path]]) -> Table:
    """``queue history``: (revision, saved at, file) per kept version, oldest first."""
    table = Table(title="kept queue versions (oldest first)")
    for col in ("revision", "saved", "file"):
        table.add_column(col)
    for revision, saved, path in versions:
        table.add_row(cell(revision), cell(saved), cell(path))
    return table


def print_markdown(console: Console, text: str) -> None:
    """Render a Markdown report. rich's Markdown never reads rich markup, so brackets stay literal."""
    console.print(Markdown(text))

"""Rich rendering of the queue, logs and reports for the terminal (CLI only)."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.markdown import Markdown
from rich.table import Table

from oodatcaa.core.models import Queue


def status_rows(queue: Queue) -> list[dict[str, Any]]:
    """One row per story and subtask: id, kind, status, owner, branch, last metric, loops."""
    rows: list[dict[str, Any]] = []
    for task in queue.tasks:
        metric = ""
        if task.metrics:
            key = sorted(task.metrics)[-1]
            metric = f"{key}={task.metrics[key]}"
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
            })
    return rows


def status_table(queue: Queue) -> Table:
    sprint = queue.sprint
    title = f"{sprint.id} — {sprint.title} [{sprint.status.value}]" if sprint else "no sprint"
    table = Table(title=title, show_lines=False)
    for col in ("task", "status", "owner", "branch", "last metric"):
        table.add_column(col, overflow="fold")
    for row in status_rows(queue):
        name = row["id"] if row["kind"] == "story" else f"  {row['id']}"
        style = "bold" if row["kind"] == "story" else "dim"
        status = row["status"]
        colour = {"done": "green", "needs_manual": "red", "needs_adapt": "yellow", "cancelled": "grey50"}.get(status)
        table.add_row(name, f"[{colour}]{status}[/]" if colour else status, row["owner"] or "",
                      row["branch"] or "", row["last_metric"] or "", style=style)
    c = queue.counters["totals"]
    table.caption = f"{c['done']}/{c['stories']} stories done · {c['subtasks']} subtasks · revision {queue.revision}"
    return table


def print_markdown(console: Console, text: str) -> None:
    console.print(Markdown(text))

"""Agent reports: ``work/reports/<TASK>/<role>[_<suffix>].md`` plus one line each in
``work/AGENT_REPORTS.md`` (the permanent index, never rotated)."""

from __future__ import annotations

import os
import re
from pathlib import Path

from filelock import FileLock

from oodatcaa.core.atomic import atomic_write_text
from oodatcaa.core.clock import Clock, utc_stamp
from oodatcaa.core.ids import validate_story_id
from oodatcaa.core.statuses import PROCESS_ROLES
from oodatcaa.core.workspace import Workspace

INDEX_HEADER = (
    "# AGENT_REPORTS\n\nPermanent index of every agent report (never rotated).\n\n"
    "| time | task | role | report | summary |\n|---|---|---|---|---|\n"
)
_REPORTING_ROLES = frozenset(r.value for r in PROCESS_ROLES)
_SUFFIX = re.compile(r"^[A-Za-z0-9_-]{1,40}$")


def report_path(ws: Workspace, task_id: str, role: str, suffix: str | None = None) -> Path:
    """Path of a report; ``suffix`` is a subtask ID or an iteration number (validated)."""
    validate_story_id(task_id)
    if role not in _REPORTING_ROLES:
        raise ValueError(f"unknown role {role!r}; reports are written by {', '.join(sorted(_REPORTING_ROLES))}")
    name = role if suffix is None else f"{role}_{suffix}"
    if suffix is not None and not _SUFFIX.fullmatch(str(suffix)):
        raise ValueError(f"invalid report suffix {suffix!r}")
    return ws.report_dir(task_id) / f"{name}.md"


def write_report(
    ws: Workspace,
    task_id: str,
    role: str,
    owner: str,
    title: str,
    body: str,
    summary: str,
    suffix: str | None = None,
    clock: Clock | None = None,
) -> Path:
    """Write (atomically) a report and index it; returns its path.

    The report's header names the task, the role, the agent and the time. The written text is
    read back and compared, so an empty or truncated report is never indexed.
    """
    now = (clock or Clock()).now()
    path = report_path(ws, task_id, role, suffix)
    text = (
        f"# {title}\n\n"
        f"- **Task:** {task_id}\n- **Role:** {role}\n- **Agent:** {owner}\n- **Written:** {utc_stamp(now)}\n\n"
        f"{body.rstrip()}\n"
    )
    atomic_write_text(path, text)
    if path.read_text(encoding="utf-8") != text:  # verify what was written
        raise OSError(f"report {path} did not read back as written")
    rel = path.relative_to(ws.work_dir).as_posix()
    line = f"| {utc_stamp(now)} | {task_id} | {role} | [{rel}]({rel}) | {' '.join(summary.split()).replace('|', '/')} |\n"
    ws.locks_dir.mkdir(parents=True, exist_ok=True)
    with FileLock(str(ws.lock_path("agent_reports"))):
        index = ws.reports_index_path
        if not index.exists() or index.stat().st_size == 0:
            index.write_text(INDEX_HEADER, encoding="utf-8")
        fd = os.open(index, os.O_WRONLY | os.O_APPEND)
        try:
            os.write(fd, line.encode("utf-8"))
            os.fsync(fd)
        finally:
            os.close(fd)
    return path


def reports_for(ws: Workspace, task_id: str, role: str | None = None) -> list[Path]:
    """Reports of a task (optionally of one role), in name order."""
    directory = ws.report_dir(task_id)
    if not directory.is_dir():
        return []
    return sorted(p for p in directory.glob("*.md") if role is None or p.stem == role or p.stem.startswith(role + "_"))

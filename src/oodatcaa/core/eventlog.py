"""``AGENT_LOG.md`` and ``SPRINT_LOG.md``: append-only Markdown tables, one whole row per entry.

Each entry is ``| time | agent | task | from -> to | what |`` on a single line, written with one
``write`` on an ``O_APPEND`` descriptor under a ``filelock`` lock and fsynced, so concurrent
agents never interleave or tear entries and rotation can cut on line boundaries.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from filelock import FileLock

from oodatcaa.core.clock import utc_stamp

AGENT_LOG_HEADER = (
    "# AGENT_LOG\n\nAppend-only event log of the OODATCAA agents (newest last).\n\n"
    "| time | agent | task | from -> to | what |\n|---|---|---|---|---|\n"
)
SPRINT_LOG_HEADER = (
    "# SPRINT_LOG\n\nSprint-level events and Negotiator heartbeats (newest last).\n\n"
    "| time | agent | sprint | event | what |\n|---|---|---|---|---|\n"
)


def _cell(text: str) -> str:
    return " ".join(str(text).split()).replace("|", "\\|")


@dataclass(frozen=True)
class LogEntry:
    """One row of ``AGENT_LOG.md``. ``change`` is ``"from -> to"`` or a short event word."""

    time: datetime
    agent: str
    task: str
    change: str
    what: str

    def render(self) -> str:
        """The entry as one Markdown table row, newline-terminated."""
        cells = [utc_stamp(self.time), self.agent, self.task or "-", self.change or "-", self.what]
        return "| " + " | ".join(_cell(c) for c in cells) + " |\n"

    @classmethod
    def parse(cls, line: str) -> LogEntry | None:
        """Parse a row written by :meth:`render`; ``None`` for header or foreign lines."""
        if not line.startswith("| ") or line.startswith("| time ") or line.startswith("|---"):
            return None
        raw = line.rstrip("\n")[2:-2]
        parts = [p.replace("\\|", "|") for p in _split_cells(raw)]
        if len(parts) != 5:
            return None
        try:
            time = datetime.strptime(parts[0], "%Y-%m-%dT%H:%M:%SZ")
        except ValueError:
            return None
        return cls(time, parts[1], parts[2], parts[3], parts[4])


def _split_cells(raw: str) -> list[str]:
    cells, current, i = [], [], 0
    while i < len(raw):
        if raw.startswith("\\|", i):
            current.append("\\|")
            i += 2
        elif raw.startswith(" | ", i):
            cells.append("".join(current))
            current = []
            i += 3
        else:
            current.append(raw[i])
            i += 1
    cells.append("".join(current))
    return cells


class EventLog:
    """An append-only Markdown log file guarded by its own lock file."""

    def __init__(self, path: Path, lock_path: Path, header: str = AGENT_LOG_HEADER, lock_timeout: float = 60.0):
        self.path = Path(path)
        self.lock = FileLock(str(lock_path), timeout=lock_timeout)
        self.header = header

    def append(self, entries: list[LogEntry]) -> None:
        """Append whole entries atomically with respect to other writers (one write call)."""
        self.append_rendered([e.render() for e in entries])

    def tail_text(self, max_bytes: int) -> str:
        """The last ``max_bytes`` bytes of the log as text ("" when there is no log)."""
        try:
            with open(self.path, "rb") as handle:
                handle.seek(0, os.SEEK_END)
                size = handle.tell()
                handle.seek(max(0, size - max_bytes))
                return handle.read().decode("utf-8", errors="replace")
        except FileNotFoundError:
            return ""

    def append_rendered(self, rows: list[str]) -> None:
        """Append rows already rendered by :meth:`LogEntry.render` (one write call, fsynced)."""
        if not rows:
            return
        data = "".join(rows).encode("utf-8")
        with self.lock:
            self._ensure_header()
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            try:
                written = os.write(fd, data)
                if written != len(data):  # pragma: no cover - disk full
                    raise OSError(f"short write to {self.path}: {written} of {len(data)} bytes")
                os.fsync(fd)
            finally:
                os.close(fd)

    def _ensure_header(self) -> None:
        if not self.path.exists() or self.path.stat().st_size == 0:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with open(self.path, "w", encoding="utf-8") as handle:
                handle.write(self.header)

    def entries(self) -> list[LogEntry]:
        """All parseable entries, oldest first."""
        if not self.path.exists():
            return []
        with open(self.path, encoding="utf-8") as handle:
            return [e for e in (LogEntry.parse(line) for line in handle) if e is not None]


_RELATIVE = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_since(text: str, now: datetime) -> datetime:
    """``--since``: an ISO-8601 time (``2026-11-21T18:40:01Z``, naive means UTC) or a span back from ``now``.

    A span is a whole number and a unit, ``s``, ``m``, ``h`` or ``d`` (``10m``, ``2h``). Returns a naive
    UTC ``datetime`` (entries are parsed naive UTC). Raises :class:`ValueError` naming the value and the
    accepted forms.
    """
    raw = text.strip()
    if len(raw) >= 2 and raw[:-1].isdigit() and raw[-1] in _RELATIVE:
        moment = now - timedelta(seconds=int(raw[:-1]) * _RELATIVE[raw[-1]])
    else:
        try:
            moment = datetime.fromisoformat(raw.replace("Z", "+00:00"))
        except ValueError:
            raise ValueError(f"--since {text!r}: expected an ISO time such as 2026-11-21T18:40:00Z "
                             "or a span back from now such as 10m, 2h, 1d") from None
    if moment.tzinfo is not None:
        moment = moment.astimezone(UTC).replace(tzinfo=None)
    return moment


def role_of(agent: str) -> str:
    """The role of an agent name: ``builder-A`` -> ``builder``; ``negotiator`` and ``person`` stay."""
    return agent.split("-", 1)[0]


def filter_entries(entries: list[LogEntry], *, task: str | None = None, role: str | None = None,
                   since: datetime | None = None, status: str | None = None,
                   grep: str | None = None) -> list[LogEntry]:
    """The entries matching every filter given (order kept).

    ``task`` matches the task and its subtasks (``T001`` also ``T001-S02``); ``role`` the agent's role;
    ``since`` (naive UTC) entries at or after it; ``status`` entries whose change moves *to* it
    (``build_in_progress -> ready_for_tester`` matches ``ready_for_tester``, a bare event word matches
    itself); ``grep`` a case-insensitive substring of any cell.
    """
    needle = grep.lower() if grep else None
    kept = []
    for e in entries:
        if task and not (e.task == task or e.task.startswith(task + "-")):
            continue
        if role and role_of(e.agent) != role:
            continue
        if since is not None and e.time < since:
            continue
        if status and e.change.rsplit("->", 1)[-1].strip() != status:
            continue
        if needle and needle not in " ".join((e.agent, e.task, e.change, e.what)).lower():
            continue
        kept.append(e)
    return kept


def entry_json(entry: LogEntry) -> dict[str, str]:
    """One entry for ``log --json``: ``time`` (ISO UTC), ``agent``, ``role``, ``task``, ``from``, ``to``, ``what``."""
    parts = [p.strip() for p in entry.change.split("->", 1)] if "->" in entry.change else ["", entry.change]
    return {"time": utc_stamp(entry.time), "agent": entry.agent, "role": role_of(entry.agent),
            "task": entry.task if entry.task != "-" else "", "from": parts[0], "to": parts[1], "what": entry.what}

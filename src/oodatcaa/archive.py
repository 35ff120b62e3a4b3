"""Earlier sprints: their archived queues, and the archive of a sprint as it completes.

A completed sprint ``N`` lives in ``work/archive/sprint_<N>/``: its final ``SPRINT_QUEUE.json``,
the sprint's ``AGENT_LOG.md`` and ``SPRINT_LOG.md`` (moved there whole, on entry boundaries, with
line counts verified, next to any parts rotated earlier), ``SPRINT_DISCUSS.md`` (the sprint's
gray-zone and person decisions at Check, when there were any) and ``RETROSPECTIVE.md``. Everything that
asks about earlier sprints — story IDs already used, the artifacts of a story merged two sprints
ago, which roadmap backlogs have run, the objective's evidence — reads them through this module.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from oodatcaa.core.atomic import atomic_write_text
from oodatcaa.core.eventlog import EventLog, LogEntry
from oodatcaa.core.models import Queue, Task
from oodatcaa.core.queuefile import parse_queue
from oodatcaa.core.workspace import Workspace

_SPRINT_DIR = re.compile(r"sprint_([0-9]+)")


@dataclass(frozen=True)
class ArchivedSprint:
    """One archived sprint: its number, its queue file and the parsed queue."""

    number: int
    path: Path
    queue: Queue

    @property
    def backlog_source(self) -> str | None:
        return self.queue.sprint.backlog_source if self.queue.sprint else None


def archived_sprints(ws: Workspace) -> list[ArchivedSprint]:
    """Every ``work/archive/sprint_<N>/SPRINT_QUEUE.json``, oldest sprint first.

    Raises :class:`~oodatcaa.core.errors.QueueFileError` (naming the file) for a corrupt one: an
    archive is evidence, never skipped silently.
    """
    found: list[tuple[int, Path]] = []
    if ws.archive_dir.is_dir():
        for d in ws.archive_dir.iterdir():
            m = _SPRINT_DIR.fullmatch(d.name)
            if m and (d / "SPRINT_QUEUE.json").is_file():
                found.append((int(m.group(1)), d / "SPRINT_QUEUE.json"))
    return [ArchivedSprint(n, p, parse_queue(p.read_text(encoding="utf-8"), p)) for n, p in sorted(found)]


def earlier_stories(ws: Workspace, *, before: int | None = None) -> dict[str, tuple[Task, ArchivedSprint]]:
    """Stories of the archived sprints (numbered below ``before`` when given), the latest sprint winning."""
    out: dict[str, tuple[Task, ArchivedSprint]] = {}
    for archived in archived_sprints(ws):
        if before is not None and archived.number >= before:
            continue
        for task in archived.queue.tasks:
            out[task.id] = (task, archived)
    return out


def story_artifact_dirs(task: Task) -> list[Path]:
    """The artifacts directories of a story's built steps, in step order (where its adapters live)."""
    return [Path(s.result["artifacts_dir"]) for s in task.builds()
            if s.result and isinstance(s.result.get("artifacts_dir"), str)]


def agent_log_files(ws: Workspace) -> list[Path]:
    """Every file holding AGENT_LOG rows, oldest first: per archived sprint its rotated parts
    (``AGENT_LOG_archive_NNN.md``) then the rest moved there at its close (``AGENT_LOG.md``), then
    the live ``work/AGENT_LOG.md``."""
    files: list[Path] = []
    sprints = [d for d in ws.archive_dir.glob("sprint_*") if _SPRINT_DIR.fullmatch(d.name)] if ws.archive_dir.is_dir() else []
    for sprint in sorted(sprints, key=lambda d: int(d.name.split("_")[1])):
        files += sorted(sprint.glob("AGENT_LOG_archive_*.md")) + [p for p in [sprint / "AGENT_LOG.md"] if p.exists()]
    return [*files, ws.agent_log_path]


@dataclass(frozen=True)
class MovedLog:
    """A live log moved into a sprint archive: where, and how many entries."""

    source: Path
    archive: Path
    entries: int


def move_log(log: EventLog, archive: Path, *, note: LogEntry | None = None) -> MovedLog:
    """Move every entry of ``log`` into ``archive`` (appended after what is there), leaving its header.

    Under the log's lock, so no append is lost or torn. The archive is written atomically and read
    back: it must hold exactly its old lines plus the moved entries before the live log is cut. The
    live log then keeps its header and ``note`` (a "moved to ..." entry) when given.
    Raises ``OSError`` when a file does not read back as written (the live log is then left whole).
    """
    with log.lock:
        lines = log.path.read_text(encoding="utf-8").splitlines(keepends=True) if log.path.exists() else []
        cut = next((i + 1 for i, line in enumerate(lines) if line.startswith("|---")), 0)
        header, entries = lines[:cut], lines[cut:]
        header = header or log.header.splitlines(keepends=True)
        old = archive.read_text(encoding="utf-8").splitlines(keepends=True) if archive.exists() else []
        if old and not old[-1].endswith("\n"):
            old[-1] += "\n"
        expected = (old or header) + entries
        atomic_write_text(archive, "".join(expected))
        if archive.read_text(encoding="utf-8").splitlines(keepends=True) != expected:
            raise OSError(f"{archive} did not read back with {len(expected)} lines; {log.path} was left whole")
        kept = header + ([note.render()] if note is not None else [])
        atomic_write_text(log.path, "".join(kept))
        if len(log.path.read_text(encoding="utf-8").splitlines()) != len(kept):
            raise OSError(f"{log.path} did not read back with {len(kept)} lines after its entries moved to {archive}")
    return MovedLog(log.path, archive, len(entries))


def write_verified(path: Path, text: str) -> Path:
    """Write ``text`` atomically and read it back; ``OSError`` when it differs or is empty."""
    if not text.strip():
        raise OSError(f"refusing to write an empty {path.name} to {path}")
    atomic_write_text(path, text)
    if path.read_text(encoding="utf-8") != text:
        raise OSError(f"{path} did not read back as written ({len(text.splitlines())} lines)")
    return path

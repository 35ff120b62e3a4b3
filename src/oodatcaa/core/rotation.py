"""Rotation of ``AGENT_LOG.md`` and ``SPRINT_LOG.md``, as the original policy intended.

When a log is over ``max_lines`` (1000) lines, all but the newest ``keep_lines`` (~450) entries move
to ``work/archive/sprint_<N>/<NAME>_archive_<NNN>.md``. Entries are whole lines, so the cut always
falls on an entry boundary. Line counts of the archive and of the shortened log are verified
before the original is replaced, all under the log's lock, so no append is lost or torn.
``ARCHIVE_INDEX.md`` is regenerated. ``AGENT_REPORTS.md`` is never rotated.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from oodatcaa.core.atomic import atomic_write_text
from oodatcaa.core.eventlog import EventLog, LogEntry

MAX_LINES = 1000
KEEP_LINES = 450


@dataclass(frozen=True)
class RotationResult:
    """What a rotation did (or, with ``dry_run``, would do)."""

    log: Path
    lines_before: int
    archived_entries: int
    kept_entries: int
    archive: Path | None
    dry_run: bool

    def describe(self) -> str:
        if self.archive is None:
            return f"{self.log.name}: {self.lines_before} lines, under the limit; nothing to rotate"
        verb = "would move" if self.dry_run else "moved"
        return (f"{self.log.name}: {verb} {self.archived_entries} entries to {self.archive.name}, "
                f"keeping the newest {self.kept_entries}")


def _split_header(lines: list[str]) -> tuple[list[str], list[str]]:
    for i, line in enumerate(lines):
        if line.startswith("|---"):
            return lines[: i + 1], lines[i + 1:]
    return [], lines


def _next_archive(archive_dir: Path, name: str) -> Path:
    pattern = re.compile(rf"^{re.escape(name)}_archive_(\d{{3}})\.md$")
    numbers = [int(m.group(1)) for p in archive_dir.glob(f"{name}_archive_*.md") if (m := pattern.match(p.name))]
    return archive_dir / f"{name}_archive_{max(numbers, default=0) + 1:03d}.md"


def rotate_log(log: EventLog, archive_dir: Path, *, max_lines: int = MAX_LINES, keep_lines: int = KEEP_LINES,
               dry_run: bool = False) -> RotationResult:
    """Rotate ``log`` into ``archive_dir`` if it has more than ``max_lines`` lines.

    Raises ``OSError`` if a written file does not read back with the expected line count; the
    original log is then left as it was.
    """
    with log.lock:
        if not log.path.exists():
            return RotationResult(log.path, 0, 0, 0, None, dry_run)
        text = log.path.read_text(encoding="utf-8")
        lines = text.splitlines(keepends=True)
        if len(lines) <= max_lines:
            return RotationResult(log.path, len(lines), 0, len(lines), None, dry_run)
        header, entries = _split_header(lines)
        keep = min(keep_lines, len(entries))
        archived, kept = entries[: len(entries) - keep], entries[len(entries) - keep:]
        name = log.path.stem
        archive = _next_archive(archive_dir, name)
        result = RotationResult(log.path, len(lines), len(archived), len(kept), archive, dry_run)
        if dry_run or not archived:
            return result
        archive_text = "".join(header) + "".join(archived)
        atomic_write_text(archive, archive_text)
        if archive.read_text(encoding="utf-8").splitlines(keepends=True) != header + archived:
            raise OSError(f"archive {archive} did not read back with {len(header) + len(archived)} lines")
        new_text = "".join(header) + "".join(kept)
        if len(header) + len(archived) + len(kept) != len(lines):
            raise OSError(f"rotation of {log.path} would lose lines")
        atomic_write_text(log.path, new_text)
        if len(log.path.read_text(encoding="utf-8").splitlines()) != len(header) + len(kept):
            raise OSError(f"{log.path} did not read back with {len(header) + len(kept)} lines after rotation")
    write_archive_index(archive_dir.parent)
    return result


def write_archive_index(archive_root: Path) -> Path:
    """Regenerate ``work/archive/ARCHIVE_INDEX.md``: every archive file, its entries and time range."""
    rows = ["# ARCHIVE_INDEX\n\nRotated logs and sprint archives (regenerated on every rotation).\n\n",
            "| file | entries | first | last |\n|---|---|---|---|\n"]
    for path in sorted(archive_root.glob("sprint_*/*.md")):
        entries = [e for e in (LogEntry.parse(line) for line in path.read_text(encoding="utf-8").splitlines(keepends=True)) if e]
        first = entries[0].time.strftime("%Y-%m-%dT%H:%M:%SZ") if entries else "-"
        last = entries[-1].time.strftime("%Y-%m-%dT%H:%M:%SZ") if entries else "-"
        rel = path.relative_to(archive_root).as_posix()
        rows.append(f"| [{rel}]({rel}) | {len(entries)} | {first} | {last} |\n")
    index = archive_root / "ARCHIVE_INDEX.md"
    atomic_write_text(index, "".join(rows))
    return index

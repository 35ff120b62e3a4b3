"""Log rotation on entry boundaries, verified, with the archive index; concurrent appends are not lost."""

from __future__ import annotations

import multiprocessing
from datetime import datetime, timedelta

from oodatcaa.core.eventlog import AGENT_LOG_HEADER, EventLog, LogEntry
from oodatcaa.core.rotation import rotate_log

HEADER_LINES = AGENT_LOG_HEADER.count("\n")


def make_log(tmp_path, n: int) -> EventLog:
    log = EventLog(tmp_path / "work" / "AGENT_LOG.md", tmp_path / "agent_log.lock")
    start = datetime(2026, 1, 1)
    log.append([LogEntry(start + timedelta(seconds=i), "a", "T001", "x -> y", f"entry {i} | with a pipe")
                for i in range(n)])
    return log


def test_under_the_limit_nothing_moves(tmp_path):
    log = make_log(tmp_path, 100)
    before = log.path.read_text()
    result = rotate_log(log, tmp_path / "work" / "archive" / "sprint_1")
    assert result.archive is None and log.path.read_text() == before


def test_rotation_keeps_the_newest_450_whole_entries(tmp_path):
    log = make_log(tmp_path, 1200)
    archive_dir = tmp_path / "work" / "archive" / "sprint_1"
    dry = rotate_log(log, archive_dir, dry_run=True)
    assert dry.archived_entries == 750 and not archive_dir.exists()
    result = rotate_log(log, archive_dir)
    assert result.archive == archive_dir / "AGENT_LOG_archive_001.md"
    kept = log.entries()
    archived = [e for e in (LogEntry.parse(x) for x in result.archive.read_text().splitlines(keepends=True)) if e]
    assert len(kept) == 450 and len(archived) == 750
    assert [e.what for e in archived + kept] == [f"entry {i} | with a pipe" for i in range(1200)]
    assert log.path.read_text().startswith(AGENT_LOG_HEADER)
    assert len(log.path.read_text().splitlines()) == HEADER_LINES + 450
    index = (tmp_path / "work" / "archive" / "ARCHIVE_INDEX.md").read_text()
    assert "sprint_1/AGENT_LOG_archive_001.md" in index and "| 750 |" in index
    make_more = make_log(tmp_path, 700)  # same file: appends
    second = rotate_log(make_more, archive_dir)
    assert second.archive.name == "AGENT_LOG_archive_002.md"


def _append_many(path: str, lock: str, worker: int, n: int) -> None:
    log = EventLog(path, lock)
    for i in range(n):
        log.append([LogEntry(datetime(2026, 1, 1), f"w{worker}", "T001", "-", f"w{worker}-{i}")])


def test_rotation_racing_appenders_loses_and_tears_nothing(tmp_path):
    log = make_log(tmp_path, 1100)
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_append_many, args=(str(log.path), str(log.lock.lock_file), w, 300)) for w in range(3)]
    for p in procs:
        p.start()
    archive_dir = tmp_path / "work" / "archive" / "sprint_1"
    rotations = 0
    while any(p.is_alive() for p in procs):
        if rotate_log(log, archive_dir, max_lines=1000).archive is not None:
            rotations += 1
    for p in procs:
        p.join()
    everything = []
    for f in sorted(archive_dir.glob("AGENT_LOG_archive_*.md")):
        everything += f.read_text().splitlines()
    everything += log.path.read_text().splitlines()
    rows = [line for line in everything if line.startswith("| 2026")]
    assert all(LogEntry.parse(line + "\n") is not None for line in rows)  # no torn rows
    whats = [LogEntry.parse(line + "\n").what for line in rows]
    assert len(whats) == 1100 + 900 and len(set(whats)) == 2000
    assert rotations >= 1

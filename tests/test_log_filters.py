"""``oodatcaa log`` filters: --role, --since, --status, --grep, --json (issue 10 part 6)."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import pytest
from tests.support import workspace

from oodatcaa.cli.main import main
from oodatcaa.core.eventlog import EventLog, LogEntry, filter_entries, parse_since

T0 = datetime(2026, 11, 21, 18, 0, 0)
ENTRIES = [
    LogEntry(T0, "planner-A", "T001", "needs_plan -> planning", "claimed"),
    LogEntry(T0.replace(minute=30), "builder-A", "T001-S01", "ready -> build_in_progress", "Batch size 4"),
    LogEntry(T0.replace(hour=19), "tester-A", "T001", "ready_for_tester -> ready_for_integrator", "all PASS"),
    LogEntry(T0.replace(hour=19, minute=5), "builder-B", "T002-S01", "ready -> build_in_progress", "started"),
]


def test_filters_combine() -> None:
    assert [e.agent for e in filter_entries(ENTRIES, role="builder")] == ["builder-A", "builder-B"]
    assert [e.task for e in filter_entries(ENTRIES, task="T001", role="builder")] == ["T001-S01"]
    assert [e.agent for e in filter_entries(ENTRIES, status="build_in_progress")] == ["builder-A", "builder-B"]
    assert [e.agent for e in filter_entries(ENTRIES, grep="batch SIZE")] == ["builder-A"]
    assert [e.agent for e in filter_entries(ENTRIES, since=T0.replace(hour=19))] == ["tester-A", "builder-B"]


def test_parse_since_relative_and_iso() -> None:
    now = datetime(2026, 11, 21, 19, 10, tzinfo=UTC)
    assert parse_since("10m", now) == datetime(2026, 11, 21, 19, 0)
    assert parse_since("2h", now) == datetime(2026, 11, 21, 17, 10)
    assert parse_since("2026-11-21T18:40:00Z", now) == datetime(2026, 11, 21, 18, 40)
    with pytest.raises(ValueError, match="--since 'yesterday'"):
        parse_since("yesterday", now)


def test_cli_json_and_bad_since(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ws = workspace(tmp_path)
    EventLog(ws.agent_log_path, ws.lock_path("agent_log")).append(ENTRIES)
    root = str(ws.root) if hasattr(ws, "root") else str(tmp_path / "repo")
    assert main(["--workspace", root, "log", "--role", "builder", "--since", "2026-11-21T19:00:00Z",
                 "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [(r["agent"], r["task"], r["to"]) for r in rows] == [("builder-B", "T002-S01", "build_in_progress")]
    assert main(["--workspace", root, "log", "--since", "yesterday"]) == 2
    assert "--since 'yesterday'" in capsys.readouterr().err

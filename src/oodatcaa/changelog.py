"""``CHANGELOG.md`` in Keep a Changelog form (https://keepachangelog.com/en/1.1.0/).

Entries are grouped under one ``## [Sprint N] - YYYY-MM-DD`` section per sprint (newest sprint
first), each with an ``### Added`` list holding one line per integrated task. Adding an entry is
idempotent: a task already listed under its sprint is not added twice.
"""

from __future__ import annotations

import re
from datetime import date

HEADER = (
    "# Changelog\n\nAll notable changes to this project are documented in this file.\n\n"
    "The format is based on [Keep a Changelog](https://keepachangelog.com/en/1.1.0/); entries are grouped "
    "by sprint, one per task merged by the oodatcaa Integrator.\n"
)


def sprint_heading(number: int, sprint_id: str, day: date) -> str:
    return f"## [Sprint {number}] - {day.isoformat()} ({sprint_id})"


def add_entry(text: str | None, *, number: int, sprint_id: str, day: date, task_id: str, line: str) -> str:
    """Return the changelog with ``- **<task_id>**: <line>`` under the sprint's ``### Added``."""
    text = text if text and text.strip() else HEADER
    entry = f"- **{task_id}**: {' '.join(line.split())}\n"
    marker = re.compile(rf"^## \[Sprint {number}\] .*\({re.escape(sprint_id)}\)$", re.M)
    found = marker.search(text)
    if found is None:
        section = f"\n{sprint_heading(number, sprint_id, day)}\n\n### Added\n\n{entry}"
        first = re.search(r"^## ", text, re.M)
        if first is None:
            return text.rstrip("\n") + "\n" + section
        return text[: first.start()].rstrip("\n") + "\n" + section + "\n" + text[first.start():]
    start = found.end()
    nxt = re.search(r"^## ", text[start:], re.M)
    end = start + nxt.start() if nxt else len(text)
    section = text[start:end]
    if re.search(rf"^- \*\*{re.escape(task_id)}\*\*:", section, re.M):
        return text
    if "### Added" not in section:
        section = section.rstrip("\n") + "\n\n### Added\n\n"
    body = section.rstrip("\n") + "\n" + entry
    return text[:start] + body + ("\n" + text[end:] if end < len(text) else "")

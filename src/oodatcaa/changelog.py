"""``CHANGELOG.md`` in Keep a Changelog form (https://keepachangelog.com/en/1.1.0/).

Entries are grouped under one ``## [Sprint N] - YYYY-MM-DD`` section per sprint (newest sprint
first), each with an ``### Added`` list holding one line per integrated task and, when a story was
undone by ``oodatcaa revert``, a ``### Reverted`` list naming the reason. Adding an entry is
idempotent: a task already listed under its sprint's heading is not added twice.
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


def add_entry(text: str | None, *, number: int, sprint_id: str, day: date, task_id: str, line: str,
              heading: str = "Added") -> str:
    """Return the changelog with ``- **<task_id>**: <line>`` under the sprint's ``### <heading>``.

    ``heading`` is ``Added`` for an integrated story and ``Reverted`` for one ``oodatcaa revert`` undid.
    Idempotent per (sprint, heading, task): an entry already there is not added twice.
    """
    text = text if text and text.strip() else HEADER
    entry = f"- **{task_id}**: {' '.join(line.split())}\n"
    marker = re.compile(rf"^## \[Sprint {number}\] .*\({re.escape(sprint_id)}\)$", re.M)
    found = marker.search(text)
    if found is None:
        section = f"\n{sprint_heading(number, sprint_id, day)}\n\n### {heading}\n\n{entry}"
        first = re.search(r"^## ", text, re.M)
        if first is None:
            return text.rstrip("\n") + "\n" + section
        return text[: first.start()].rstrip("\n") + "\n" + section + "\n" + text[first.start():]
    start = found.end()
    nxt = re.search(r"^## ", text[start:], re.M)
    end = start + nxt.start() if nxt else len(text)
    updated = _with_entry(text[start:end], heading, task_id, entry)
    if updated is None:
        return text
    return text[:start] + updated + ("\n" + text[end:] if end < len(text) else "")


def _with_entry(section: str, heading: str, task_id: str, entry: str) -> str | None:
    """The sprint section (without its ``##`` line) with ``entry`` under ``### heading``; None if already there."""
    sub = re.search(rf"^### {re.escape(heading)}\s*$", section, re.M)
    if sub is None:
        return section.rstrip("\n") + f"\n\n### {heading}\n\n" + entry
    nxt = re.search(r"^### ", section[sub.end():], re.M)
    sub_end = sub.end() + nxt.start() if nxt else len(section)
    body = section[sub.end():sub_end]
    if re.search(rf"^- \*\*{re.escape(task_id)}\*\*:", body, re.M):
        return None
    rest = section[sub_end:]
    merged = section[:sub.end()] + body.rstrip("\n") + "\n" + entry
    return merged + ("\n" + rest if rest else "")

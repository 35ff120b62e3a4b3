"""``CHANGELOG.md`` in Keep a Changelog form (https://keepachangelog.com/en/1.1.0/).

Entries are grouped under one ``## [Sprint N] - YYYY-MM-DD`` section per sprint (newest sprint
first), each with an ``### Added`` list holding one line per integrated task and, when a story was
undone by ``oodatcaa revert``, a ``### Reverted`` list naming the reason. Adding an entry is
idempotent: a task already listed under its sprint's heading is not added twice.

Releases (``oodatcaa tag release vX.Y.Z``, :func:`release`): every section above the newest
``## [X.Y.Z] - YYYY-MM-DD`` heading is unreleased; a release merges those sections' lists into one
such section. A sprint section that a release consumed is started anew, above the release, by the next
entry of that sprint, so the Integrator's entries after a release are unreleased again.
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


#: https://semver.org's regular expression for a version (``X.Y.Z``, pre-release, build metadata).
SEMVER = re.compile(
    r"(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)"
    r"(?:-((?:0|[1-9]\d*|\d*[a-zA-Z-][0-9a-zA-Z-]*)(?:\.(?:0|[1-9]\d*|\d*[a-zA-Z-][0-9a-zA-Z-]*))*))?"
    r"(?:\+([0-9a-zA-Z-]+(?:\.[0-9a-zA-Z-]+)*))?")
_RELEASE_HEADING = re.compile(r"^## \[(?P<version>[^\]]+)\]", re.M)
_ENTRY = re.compile(r"^- \*\*(?P<task>[^*]+)\*\*:", re.M)


def is_release_heading(version: str) -> bool:
    """True when ``## [version]`` is a release (a semantic version), not a sprint or ``Unreleased``."""
    return SEMVER.fullmatch(version) is not None


def released_versions(text: str | None) -> list[str]:
    """The versions of every ``## [X.Y.Z] - date`` release section, newest (topmost) first."""
    return [m["version"] for m in _RELEASE_HEADING.finditer(text or "") if is_release_heading(m["version"])]


def unreleased(text: str | None) -> dict[str, list[str]]:
    """The unreleased entries: ``{"Added": [...], "Reverted": [...]}`` (entry lines, in file order).

    Unreleased means every ``##`` section above the newest release heading ``## [X.Y.Z]``: the
    ``## [Sprint N]`` sections the Integrator and ``oodatcaa revert`` write, and an ``## [Unreleased]``
    section a person wrote. Their ``### <heading>`` lists are merged by heading name.
    """
    body = _unreleased_span(text or "")[1]
    out: dict[str, list[str]] = {}
    heading: str | None = None
    for line in body.splitlines():
        if line.startswith("### "):
            heading = line[4:].strip()
            out.setdefault(heading, [])
        elif line.startswith("- ") and heading is not None:
            out[heading].append(line)
    return {k: v for k, v in out.items() if v}


def entry_task(line: str) -> str | None:
    """The task ID of an entry line ``- **T001**: ...``, or None."""
    m = _ENTRY.match(line)
    return m["task"] if m else None


def _unreleased_span(text: str) -> tuple[int, str]:
    """``(start, body)``: where the first ``##`` section starts and the text up to the newest release."""
    first = re.search(r"^## ", text, re.M)
    if first is None:
        return len(text), ""
    end = next((m.start() for m in _RELEASE_HEADING.finditer(text) if is_release_heading(m["version"])), len(text))
    return first.start(), text[first.start():end] if end >= first.start() else ""


def release(text: str | None, version: str, day: date) -> str:
    """The changelog with its unreleased sections replaced by one ``## [version] - YYYY-MM-DD`` section.

    The entries keep their lines, grouped under ``### Added`` then ``### Reverted`` (then any other
    heading, in file order). New entries added afterwards by :func:`add_entry` start a new sprint
    section above it, so they are unreleased again. Raises ``ValueError`` when there is nothing
    unreleased or ``version`` is already a heading (callers check both first, with clearer words).
    """
    text = text if text and text.strip() else HEADER
    if version in released_versions(text):
        raise ValueError(f"CHANGELOG.md already has a section ## [{version}]")
    entries = unreleased(text)
    if not entries:
        raise ValueError("CHANGELOG.md has no unreleased entries")
    start, body = _unreleased_span(text)
    order = [h for h in ("Added", "Reverted") if h in entries] + [h for h in entries if h not in ("Added", "Reverted")]
    section = f"## [{version}] - {day.isoformat()}\n" + "".join(
        f"\n### {h}\n\n" + "".join(line + "\n" for line in entries[h]) for h in order)
    rest = text[start + len(body):]
    return text[:start].rstrip("\n") + "\n\n" + section + ("\n" + rest if rest else "")

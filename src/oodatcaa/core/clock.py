"""Clocks: the real one, and a fake one that tests advance by hand.

Lease expiry and heartbeats read time only through a :class:`Clock`, so tests never sleep.
"""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta


class Clock:
    """Wall-clock time in UTC (timezone-aware ``datetime``)."""

    def now(self) -> datetime:
        """Current time, UTC."""
        return datetime.now(UTC)


class FakeClock(Clock):
    """A clock that only moves when told to (thread-safe). Starts at ``start`` (UTC)."""

    def __init__(self, start: datetime | None = None):
        self._now = start or datetime(2026, 1, 1, tzinfo=UTC)
        self._lock = threading.Lock()

    def now(self) -> datetime:
        with self._lock:
            return self._now

    def advance(self, seconds: float) -> datetime:
        """Move the clock forward by ``seconds`` and return the new time."""
        with self._lock:
            self._now += timedelta(seconds=seconds)
            return self._now


def utc_stamp(moment: datetime) -> str:
    """ISO-8601 UTC stamp to the second, e.g. ``2026-11-21T18:40:01Z``."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def tag_stamp(moment: datetime) -> str:
    """Compact stamp for git refs, ``YYYYMMDDTHHMMSSZ`` (git forbids ``:`` in ref names)."""
    return moment.astimezone(UTC).strftime("%Y%m%dT%H%M%SZ")

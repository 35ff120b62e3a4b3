"""Sleep until a file changes: how an idle agent (and the Negotiator) waits for ``SPRINT_QUEUE.json``.

:class:`FileWatch` watches the file's *directory* with inotify (FSEvents on macOS) through the
``watchfiles`` library's Rust notifier and keeps only events naming the file: the queue is replaced
with ``os.replace``, so the inode a watch on the file itself would hold is gone after the first write.
The notifier runs from the first :meth:`FileWatch.wait` until :meth:`FileWatch.close` and keeps the
events that arrive while its owner is busy, so a write made between the owner's read and its next
wait still wakes it at once.

Where inotify is missing or the notifier raises (no inotify on the platform, the per-user watch limit
reached, a file system that sends no events), it falls back on comparing the file's ``(inode,
mtime_ns, size)`` every :data:`STAT_INTERVAL_SECONDS`, and says so once through ``on_fallback``.
Either way a write wakes the waiter within about 100 ms (one to two of the notifier's 40 ms steps;
the stat fallback's 50 ms interval), and :meth:`FileWatch.wait` never sleeps
longer than the timeout it is given, so time-based events (a dead Negotiator) are still noticed.

``watchfiles`` is imported on first use only: the core stays importable without it.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Literal, Protocol

log = logging.getLogger("oodatcaa.wake")

#: Seconds between two ``stat`` calls of the fallback (a write is seen within this long).
STAT_INTERVAL_SECONDS = 0.05
#: The notifier's step (ms): it looks at its event set this often and returns once a step adds none,
#: so a write wakes the waiter 1 to 2 steps later. Each step takes the GIL: 25 ms cost about 0.3 % of
#: a core per idle process on the 2-core development machine, 40-50 ms about 0.1 %.
NOTIFY_STEP_MS = 40
#: Longest time (ms) the notifier keeps grouping a burst of events before it returns.
NOTIFY_DEBOUNCE_MS = 100

Outcome = Literal["changed", "timeout", "stopped"]
Signature = tuple[int, int, int] | None


class Notifier(Protocol):
    """What :class:`FileWatch` needs of ``watchfiles._rust_notify.RustNotify``."""

    def watch(self, debounce_ms: int, step_ms: int, timeout_ms: int,
              stop_event: threading.Event | None) -> set[tuple[int, str]] | str: ...

    def close(self) -> None: ...


def open_notifier(directory: Path) -> Notifier:
    """A started notifier on ``directory`` (not recursive); raises whatever ``watchfiles`` raises
    (``ImportError`` when it is not installed, ``OSError``/``RuntimeError`` when inotify is unusable)."""
    from watchfiles._rust_notify import RustNotify  # documented "Rust backend direct usage" API

    notifier: Notifier = RustNotify([str(directory)], False, False, 0, False, False)
    return notifier


def file_signature(path: Path) -> Signature:
    """``(inode, mtime_ns, size)`` of ``path``, or ``None`` while it does not exist.

    ``os.replace`` gives the file a new inode, so even a same-size write within the file system's
    timestamp granularity changes the signature; an edit in place changes mtime or size.
    """
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    return (st.st_ino, st.st_mtime_ns, st.st_size)


class FileWatch:
    """Wait for a change to one file, a timeout or a stop event (see the module docstring).

    ``on_fallback(reason)`` is called once, when the stat fallback replaces the notifier.
    ``notifier_factory`` opens the notifier on a directory (default: :func:`open_notifier`, looked up
    when the watch starts).
    Not thread-safe: one waiter per instance.
    """

    def __init__(self, path: Path, *, on_fallback: Callable[[str], None] | None = None,
                 notifier_factory: Callable[[Path], Notifier] | None = None,
                 stat_interval: float = STAT_INTERVAL_SECONDS):
        self.path = Path(path)
        self.on_fallback = on_fallback
        self.stat_interval = stat_interval
        self._factory = notifier_factory
        self._notifier: Notifier | None = None
        self._signature: Signature = None
        #: ``None`` before the first wait, then ``"inotify"`` or ``"stat"``.
        self.mode: Literal["inotify", "stat"] | None = None
        self.fallback_reason: str | None = None

    def wait(self, timeout: float, stop: threading.Event | None = None) -> Outcome:
        """Block until the file changes (``"changed"``), ``timeout`` seconds pass (``"timeout"``) or
        ``stop`` is set (``"stopped"``).

        The first call starts watching and returns ``"changed"`` at once: a change between the
        caller's first read and the start of the watch would otherwise be missed, so the caller
        reads once more. ``"changed"`` may also follow a write the caller already read (harmless:
        one more read).
        """
        if self.mode is None:
            self._start()
            return "changed"
        deadline = time.monotonic() + max(0.0, timeout)
        if self.mode == "inotify":
            outcome = self._wait_notify(deadline, stop)
            if outcome is not None:
                return outcome
        return self._wait_stat(deadline, stop)

    def close(self) -> None:
        """Stop the notifier's thread (safe to call twice, or before any wait)."""
        if self._notifier is not None:
            try:
                self._notifier.close()
            except Exception:  # closing a broken notifier must not mask the caller's own outcome
                log.debug("closing the notifier of %s failed", self.path, exc_info=True)
            self._notifier = None

    def __enter__(self) -> FileWatch:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- internals --------------------------------------------------------------------------
    def _start(self) -> None:
        self._signature = file_signature(self.path)
        try:
            self._notifier = (self._factory or open_notifier)(self.path.parent)
            self.mode = "inotify"
        except Exception as exc:  # ImportError, OSError (watch limit), RuntimeError: any means "no events"
            self._fall_back(f"{type(exc).__name__}: {exc}")

    def _fall_back(self, reason: str) -> None:
        self.close()
        self.mode = "stat"
        self.fallback_reason = reason
        if self.on_fallback is not None:
            self.on_fallback(reason)

    def _wait_notify(self, deadline: float, stop: threading.Event | None) -> Outcome | None:
        """Wait on the notifier; ``None`` when it failed and the stat fallback must take over."""
        name = self.path.name
        while True:
            if stop is not None and stop.is_set():
                return "stopped"
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return "timeout"
            assert self._notifier is not None
            try:
                got = self._notifier.watch(NOTIFY_DEBOUNCE_MS, NOTIFY_STEP_MS, max(1, int(remaining * 1000)), stop)
            except Exception as exc:
                self._fall_back(f"the file watcher failed: {type(exc).__name__}: {exc}")
                return None
            if got == "stop":
                return "stopped"
            if got == "timeout":
                return "timeout"
            if got == "signal":  # a signal handler ran (SIGTERM sets the stop event): look again
                continue
            if isinstance(got, set) and any(os.path.basename(p) == name for _, p in got):
                self._signature = file_signature(self.path)
                return "changed"
            # only other files of the directory changed (the logs, a temporary file): keep waiting

    def _wait_stat(self, deadline: float, stop: threading.Event | None) -> Outcome:
        while True:
            if stop is not None and stop.is_set():
                return "stopped"
            signature = file_signature(self.path)
            if signature != self._signature:
                self._signature = signature
                return "changed"
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return "timeout"
            pause = min(self.stat_interval, remaining)
            if stop is not None:
                stop.wait(pause)
            else:
                time.sleep(pause)

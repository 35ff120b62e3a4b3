"""``oodatcaa watch``: redraw the board from the workspace's files once a second (rich ``Live``).

The interactive Textual board of issue 10 (keys: arrows, ``enter``, ``a``) is not built yet; this loop
is read-only and stops on Ctrl-C.
"""

from __future__ import annotations

import time

from rich.console import Console
from rich.live import Live

from oodatcaa.board.frame import frame
from oodatcaa.board.snapshot import take_snapshot
from oodatcaa.core.workspace import Workspace

#: Smallest terminal the board draws in (columns, lines); below it a message is shown instead.
MIN_SIZE = (60, 16)


def watch(ws: Workspace, console: Console, *, once: bool = False, interval_s: float = 1.0) -> int:
    """Print one frame (``once``) or redraw every ``interval_s`` seconds until Ctrl-C; returns the exit code.

    A terminal smaller than :data:`MIN_SIZE` gets a message naming the size needed (exit 1), not a
    traceback. Queue errors propagate as the ``OodatcaaError`` ``status`` shows.
    """
    if once:
        console.print(frame(take_snapshot(ws)))
        return 0
    width, height = console.size
    if width < MIN_SIZE[0] or height < MIN_SIZE[1]:
        console.print(f"terminal too small for the board: {width}x{height}, needs at least "
                      f"{MIN_SIZE[0]}x{MIN_SIZE[1]}; enlarge it or use `oodatcaa watch --once`", markup=False)
        return 1
    try:
        with Live(frame(take_snapshot(ws)), console=console, screen=True, auto_refresh=False) as live:
            while True:
                time.sleep(interval_s)
                live.update(frame(take_snapshot(ws)), refresh=True)
    except KeyboardInterrupt:
        return 0

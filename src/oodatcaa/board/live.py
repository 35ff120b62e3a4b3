"""``oodatcaa watch``: one rich frame (``--once``) or the interactive Textual board (:mod:`oodatcaa.board.app`)."""

from __future__ import annotations

from rich.console import Console

from oodatcaa.board.frame import frame
from oodatcaa.board.snapshot import take_snapshot
from oodatcaa.core.workspace import Workspace

#: Smallest terminal the board draws in (columns, lines); below it a message is shown instead.
MIN_SIZE = (60, 16)


def watch(ws: Workspace, console: Console, *, once: bool = False, interval_s: float = 1.0) -> int:
    """Print one frame (``once``) or run the Textual board (refresh every ``interval_s`` s, ``q`` quits); the exit code.

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
    from oodatcaa.board.app import BoardApp  # textual only for the interactive board

    BoardApp(ws, interval_s=interval_s).run()
    return 0

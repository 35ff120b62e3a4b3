"""Issue 10 part 1 (partial): the board's snapshot, ``watch --once``, no workspace, a small terminal."""

from __future__ import annotations

import io
import os
import shlex
import shutil
import subprocess
import sys
import time

import pytest
from rich.console import Console

from oodatcaa.board.frame import frame
from oodatcaa.board.live import watch
from oodatcaa.board.snapshot import take_snapshot
from oodatcaa.cli.main import main
from oodatcaa.core.workspace import find_workspace
from test_cli import _sprint_with_a_long_title


def test_watch_once_prints_one_frame_and_exits_0(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "80")
    repo = _sprint_with_a_long_title(tmp_path, capsys, "board [/] sprint")
    assert main(["-C", str(repo), "watch", "--once"]) == 0
    out = capsys.readouterr().out
    assert "board [/] sprint" in out and "T001" in out and "agents" in out and "log" in out
    assert max(len(line) for line in out.splitlines()) <= 80


def test_watch_without_a_workspace_gives_the_status_error(tmp_path, capsys):
    assert main(["-C", str(tmp_path), "status"]) != 0
    status_err = capsys.readouterr().err
    assert main(["-C", str(tmp_path), "watch", "--once"]) != 0
    assert capsys.readouterr().err == status_err and status_err


def test_snapshot_rows_and_a_small_terminal(tmp_path, capsys):
    repo = _sprint_with_a_long_title(tmp_path, capsys, "snap")
    ws = find_workspace(repo)
    snap = take_snapshot(ws)
    assert [r.id for r in snap.items] == ["T001"] and snap.items[0].loops == 0 and snap.agents == []
    small = Console(file=io.StringIO(), width=40, height=10)
    assert watch(ws, small, once=False) == 1
    assert "terminal too small" in small.file.getvalue()  # type: ignore[attr-defined]
    wide = Console(file=io.StringIO(), width=80, record=True)
    wide.print(frame(snap))
    assert "(no agents recorded)" in wide.export_text()


def test_board_app_pilot_keys(tmp_path, capsys):
    # run_test under asyncio.run: no async pytest plugin is a dependency
    import asyncio

    from oodatcaa.board.app import BoardApp

    repo = _sprint_with_a_long_title(tmp_path, capsys, "pilot sprint")
    app = BoardApp(find_workspace(repo))
    asyncio.run(_drive(app))


async def _drive(app):
    from oodatcaa.board.app import ReportsScreen

    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.pause()
        assert app.selected_story() == "T001"
        await pilot.press("down", "up", "a")
        await pilot.pause()
        assert "T001" in str(app.query_one("#message").render())  # refused: not awaiting approval, named
        await pilot.press("enter")
        await pilot.pause()
        assert isinstance(app.screen, ReportsScreen)
        await pilot.press("escape", "q")


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux is not installed (apt-get install tmux)")
def test_watch_in_a_real_80x24_terminal_under_tmux(tmp_path, capsys):
    repo = _sprint_with_a_long_title(tmp_path, capsys, "tmux sprint")
    session = f"oodatcaa-board-{os.getpid()}"
    command = f"{shlex.quote(sys.executable)} -m oodatcaa -C {shlex.quote(str(repo))} watch"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    subprocess.run(["tmux", "new-session", "-d", "-x", "80", "-y", "24", "-s", session, command], check=True, env=env)
    try:
        screen = ""
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and "T001" not in screen:
            time.sleep(0.5)
            screen = subprocess.run(["tmux", "capture-pane", "-p", "-t", session], capture_output=True,
                                    text=True).stdout
        assert "tmux sprint" in screen and "T001" in screen, screen
        assert "Traceback" not in screen
        subprocess.run(["tmux", "send-keys", "-t", session, "q"], check=True)
        time.sleep(1.5)
        alive = subprocess.run(["tmux", "has-session", "-t", session], capture_output=True).returncode == 0
        assert not alive, "q did not quit the board"
    finally:
        subprocess.run(["tmux", "kill-session", "-t", session], capture_output=True)

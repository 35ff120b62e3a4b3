"""Unit tests of oodatcaa.core.process: the one process runner (real child processes, POSIX)."""

from __future__ import annotations

import io
import os
import signal
import sys
import threading
import time
from pathlib import Path

import pytest

from oodatcaa.core.process import (
    DEFAULT_ENV,
    FORCED_ENV,
    ProcessResult,
    ShellNotFoundError,
    child_env,
    command_argv,
    run_exiting_on_sigterm,
    run_process,
    signal_name,
)
from support import wait_dead

PY = sys.executable




def _wait_file(path: Path, limit_s: float = 20.0) -> str:
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        if path.exists() and path.read_text().strip():
            return path.read_text().strip()
        time.sleep(0.02)
    raise AssertionError(f"{path} never written")


# ---------------------------------------------------------------- exit status, shell, output


def test_exit_status_and_output_tail(tmp_path: Path) -> None:
    r = run_process("echo out; echo err >&2; exit 3", cwd=tmp_path)
    assert r.returncode == 3 and not r.ok and not r.timed_out and not r.cancelled
    assert "out" in r.output_tail and "err" in r.output_tail  # stderr merged into the tail
    assert r.signal_number is None and r.signal_name is None
    assert r.duration_s >= 0
    ok = run_process(["true"])
    assert ok.returncode == 0 and ok.ok


def test_bash_is_the_shell(tmp_path: Path) -> None:
    # bashisms that /bin/sh (dash) rejects
    r = run_process('[[ 1 == 1 ]] && set -o pipefail && echo "$BASH_VERSION" && echo $\'tab\\there\'', cwd=tmp_path)
    assert r.returncode == 0, r.output_tail
    assert "tab\there" in r.output_tail
    assert command_argv("echo hi")[0].endswith("bash") and command_argv("echo hi")[1:] == ["-c", "echo hi"]
    assert command_argv(["ls", "-l"]) == ["ls", "-l"]  # argv: no shell


def test_missing_bash_is_a_clear_error(tmp_path: Path) -> None:
    env = child_env({"PATH": str(tmp_path)})  # a PATH with no bash on it
    with pytest.raises(ShellNotFoundError, match="bash is needed"):
        run_process("echo hi", env=env)
    assert issubclass(ShellNotFoundError, FileNotFoundError)
    with pytest.raises(ValueError):
        command_argv([])


def test_cwd_and_missing_program(tmp_path: Path) -> None:
    assert str(tmp_path) in run_process("pwd", cwd=tmp_path).output_tail
    with pytest.raises(FileNotFoundError):
        run_process(["/nonexistent/program"])
    with pytest.raises(FileNotFoundError):
        run_process("true", cwd=tmp_path / "missing")


def test_signal_death_is_a_negative_returncode() -> None:
    r = run_process("kill -KILL $$")
    assert r.returncode == -signal.SIGKILL and r.signal_number == 9 and r.signal_name == "SIGKILL"
    assert not r.ok
    assert signal_name(15) == "SIGTERM" and signal_name(99999) == "signal 99999"


def test_tail_is_bounded_for_10mb_of_output() -> None:
    # 10 MB in 100-byte lines ending with a marker: only the tail is kept, and it is the real end.
    code = "import sys\nfor i in range(100_000): sys.stdout.write('%099d\\n' % i)\nprint('THE-END')"
    r = run_process([PY, "-c", code], tail_chars=500)
    assert r.returncode == 0
    assert len(r.output_tail) == 500
    assert r.output_tail.rstrip().endswith("THE-END")
    assert f"{99_999:099d}" in r.output_tail


def test_tail_memory_stays_bounded() -> None:
    # The reader keeps whole chunks only while they cover 4 * tail_chars bytes (+ one chunk of 64 KiB).
    from oodatcaa.core.process import _Tail

    tail = _Tail(100)
    for _ in range(10_000):
        tail.add(b"x" * 1000)
    assert tail.size <= 400 + 1000 and len(tail.text()) == 100
    # multi-byte characters: still exactly the last N characters
    utf = _Tail(3)
    for ch in "abcdéfgh€":
        utf.add(ch.encode())
    assert utf.text() == "gh€"


def test_tee_gets_all_output_and_log_file_mode(tmp_path: Path) -> None:
    sink = io.BytesIO()
    r = run_process("for i in 1 2 3; do echo line$i; done", tee=sink, tail_chars=6)
    assert sink.getvalue() == b"line1\nline2\nline3\n"
    assert r.output_tail == "line3\n"
    log = tmp_path / "job.log"
    r = run_process("echo to-the-file; echo more >&2", log_file=log)
    assert log.read_text() == "to-the-file\nmore\n" and "more" in r.output_tail
    with pytest.raises(ValueError):
        run_process("true", log_file=log, tee=sink)


def test_a_broken_tee_does_not_block_the_child() -> None:
    class Broken(io.RawIOBase):
        def write(self, b: object) -> int:
            raise OSError("disk full")

    r = run_process([PY, "-c", "print('x' * 1_000_000)"], tee=Broken(), timeout_s=30)  # type: ignore[arg-type]
    assert r.returncode == 0 and not r.timed_out


# ---------------------------------------------------------------- timeout, cancel, group kill


def test_timeout_kills_the_whole_group_including_a_background_grandchild(tmp_path: Path) -> None:
    # The shell ignores SIGTERM, so it takes the SIGKILL after the grace period; the grandchild is
    # in the background. Both must be gone.
    script = "trap '' TERM; sleep 60 & echo $! > bg.pid; echo $$ > sh.pid; while true; do sleep 0.1; done"
    start = time.monotonic()
    r = run_process(script, cwd=tmp_path, timeout_s=0.5, kill_grace_s=0.5)
    assert time.monotonic() - start < 10
    assert r.timed_out and not r.cancelled and not r.ok
    assert r.returncode == -signal.SIGKILL
    assert wait_dead(int((tmp_path / "bg.pid").read_text())) and wait_dead(int((tmp_path / "sh.pid").read_text()))


def test_leftovers_of_the_group_are_killed_after_a_normal_exit(tmp_path: Path) -> None:
    r = run_process("sleep 60 & echo $! > bg.pid; exit 0", cwd=tmp_path, timeout_s=20)
    assert r.ok and r.duration_s < 10  # the background sleep does not hold the output pipe open
    assert wait_dead(int((tmp_path / "bg.pid").read_text()))


def test_cancel_stops_the_group(tmp_path: Path) -> None:
    cancel = threading.Event()
    box: dict[str, ProcessResult] = {}
    script = "sleep 60 & echo $! > bg.pid; wait"
    thread = threading.Thread(target=lambda: box.update(r=run_process(script, cwd=tmp_path, cancel=cancel)))
    thread.start()
    bg = int(_wait_file(tmp_path / "bg.pid"))
    cancel.set()
    thread.join(30)
    r = box["r"]
    assert r.cancelled and not r.timed_out and not r.ok
    assert r.returncode == -signal.SIGTERM  # bash waiting dies of the SIGTERM
    assert wait_dead(bg)


def test_on_poll_and_on_start_are_called(tmp_path: Path) -> None:
    polls: list[float] = []
    pids: list[int] = []
    r = run_process("sleep 0.3", on_poll=lambda: polls.append(time.monotonic()), on_start=pids.append, poll_s=0.02)
    assert r.ok and pids == [r.pid] and len(polls) >= 3


def test_an_on_poll_error_kills_the_group_and_propagates(tmp_path: Path) -> None:
    pids: list[int] = []

    def boom() -> None:
        raise RuntimeError("observer bug")

    with pytest.raises(RuntimeError, match="observer bug"):
        run_process("sleep 60 & echo $! > bg.pid; wait", cwd=tmp_path, on_start=pids.append, on_poll=boom)
    assert wait_dead(pids[0])
    if (tmp_path / "bg.pid").exists() and (tmp_path / "bg.pid").read_text().strip():
        assert wait_dead(int((tmp_path / "bg.pid").read_text()))


# ---------------------------------------------------------------- memory and environment


def test_max_rss_is_reported_in_gb() -> None:
    code = "b = b'x' * (300 * 1000 * 1000); print(len(b))"  # 300 MB, every page written
    r = run_process([PY, "-c", code], timeout_s=60)
    assert r.returncode == 0, r.output_tail
    assert r.max_rss_gb is not None and 0.3 <= r.max_rss_gb < 5.0
    # through bash: the rusage covers the descendants bash waited for
    r = run_process(f'"{PY}" -c "{code}"; true', timeout_s=60)
    assert r.returncode == 0, r.output_tail
    assert r.max_rss_gb is not None and r.max_rss_gb >= 0.3


def test_env_rules_applied(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")  # forced: the parent's value is overridden
    monkeypatch.setenv("TOKENIZERS_PARALLELISM", "true")  # a default: the parent's value is kept
    monkeypatch.delenv("TRANSFORMERS_VERBOSITY", raising=False)
    monkeypatch.setenv("OODA_PARENT", "kept")
    env = child_env({"OODA_EXTRA": "7"})
    assert env["MLX_DISABLE_COMPILE"] == "1" and env["HF_HUB_OFFLINE"] == "1" and env["PYTHONUNBUFFERED"] == "1"
    assert env["TOKENIZERS_PARALLELISM"] == "true" and env["TRANSFORMERS_VERBOSITY"] == "error"
    assert env["OODA_PARENT"] == "kept" and env["OODA_EXTRA"] == "7"
    assert child_env({"HF_HUB_OFFLINE": "0"})["HF_HUB_OFFLINE"] == "0"  # an explicit extra wins
    assert child_env(base={})["MLX_DISABLE_COMPILE"] == "1" and "OODA_PARENT" not in child_env(base={})
    assert set(FORCED_ENV) == {"MLX_DISABLE_COMPILE", "HF_HUB_OFFLINE", "PYTHONUNBUFFERED"}
    assert set(DEFAULT_ENV) >= {"TOKENIZERS_PARALLELISM"}
    # the default env of run_process is child_env()
    code = "import os; print(os.environ['MLX_DISABLE_COMPILE'], os.environ['HF_HUB_OFFLINE'], os.environ['PYTHONUNBUFFERED'])"
    assert run_process([PY, "-c", code]).output_tail.split() == ["1", "1", "1"]


# ---------------------------------------------------------------- the SIGTERM-aware child

_SIGTERM_CHILD = """
import sys, pathlib
from oodatcaa.core.process import run_exiting_on_sigterm
d = pathlib.Path(sys.argv[1])
r = run_exiting_on_sigterm("sleep 60 & echo $! > bg.pid; echo $$ > sh.pid; wait", cwd=d)
print("not reached", r)
"""


def test_sigterm_to_the_runner_kills_the_commands_group(tmp_path: Path) -> None:
    # A worker-like process runs a command in a session of its own; SIGTERM to the worker only (not to
    # the command's group) must still take the command and its background child down.
    import subprocess

    env = child_env({"PYTHONPATH": os.pathsep.join([str(Path(__file__).resolve().parents[1] / "src"),
                                                      os.environ.get("PYTHONPATH", "")])})
    worker = subprocess.Popen([PY, "-c", _SIGTERM_CHILD, str(tmp_path)], env=env)
    try:
        bg, sh = int(_wait_file(tmp_path / "bg.pid")), int(_wait_file(tmp_path / "sh.pid"))
        worker.send_signal(signal.SIGTERM)
        assert worker.wait(20) == 128 + signal.SIGTERM
        assert wait_dead(bg) and wait_dead(sh)
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.wait()


def test_sigterm_handler_is_restored_and_main_thread_only() -> None:
    before = signal.getsignal(signal.SIGTERM)
    assert run_exiting_on_sigterm("true").ok
    assert signal.getsignal(signal.SIGTERM) == before
    errors: list[BaseException] = []

    def in_thread() -> None:
        try:
            run_exiting_on_sigterm("true")
        except ValueError as exc:
            errors.append(exc)

    t = threading.Thread(target=in_thread)
    t.start()
    t.join(10)
    assert len(errors) == 1

"""One way to run a child process: timeout, process-group kill, bounded output tail, max RSS (stdlib only).

Every subprocess the orchestrator starts goes through :func:`run_process`: a backlog ``command:`` check
(:mod:`oodatcaa.core.criteria`), the ``command`` job (:mod:`oodatcaa.jobs.command`, inside the job
worker) and the job worker itself (:mod:`oodatcaa.jobs.runner`). The rules are the same for all three:

- **Shell.** A string command runs as ``["bash", "-c", command]`` — always bash, so a backlog line
  behaves the same in a check and in a job (``[[ ... ]]``, ``set -o pipefail``, ``$'...'`` work). No
  bash on ``PATH`` is an error (:class:`ShellNotFoundError`), never a silent fallback to ``/bin/sh``.
  A sequence is an argv list and runs without a shell.
- **Environment.** :func:`child_env`: the parent's environment plus :data:`FORCED_ENV`
  (``MLX_DISABLE_COMPILE=1``, ``HF_HUB_OFFLINE=1``, ``PYTHONUNBUFFERED=1``) and the defaults in
  :data:`DEFAULT_ENV` (``TOKENIZERS_PARALLELISM=false``, ``TRANSFORMERS_VERBOSITY=error``, kept when
  already set). Rules that only the job worker needs (its parent-pid watchdog variable, the package
  on ``PYTHONPATH``, the CPU fast path's ``LD_PRELOAD``) are added by the job runner, not here.
- **Process group.** The child starts in its own session (so its own process group). On timeout or
  cancel the whole group gets SIGTERM, then SIGKILL after ``kill_grace_s`` seconds. After the child
  exits, whatever is left of its group (a command's background processes) is SIGKILLed — while the
  child is still an unreaped zombie where the platform allows (``os.waitid`` with ``WNOWAIT``), so
  the group id cannot have been reused by then.
- **Output.** stdout and stderr are merged. Either they go straight to ``log_file`` (the parent reads
  nothing while the child runs; the tail is read from the end of the file afterwards), or through a
  pipe that a reader thread drains, keeping only the last ``tail_chars`` characters (a few chunks of
  at most 64 KiB plus ``4 * tail_chars`` bytes, whatever the volume) and copying every chunk to
  ``tee`` when given.
- **Memory.** ``max_rss_gb`` is the child's peak resident set size from ``os.wait4``'s rusage, which
  on Linux also covers the descendants it waited for (``ru_maxrss`` is KiB on Linux, bytes on macOS;
  reported in GB = 1e9 bytes).

:func:`run_exiting_on_sigterm` is the variant for a process that is itself a managed child (the job
worker running a ``command`` job): a SIGTERM to it takes the command's process group down too.

POSIX only (process groups, ``os.wait4``).
"""

from __future__ import annotations

import collections
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import IO, Any, Protocol

__all__ = [
    "CancelSignal",
    "DEFAULT_ENV",
    "FORCED_ENV",
    "KILL_GRACE_S",
    "POLL_S",
    "TAIL_CHARS",
    "ProcessResult",
    "ShellNotFoundError",
    "child_env",
    "command_argv",
    "run_exiting_on_sigterm",
    "run_process",
    "signal_name",
]

#: Seconds between SIGTERM and SIGKILL when the runner stops a process group.
KILL_GRACE_S = 5.0
#: Seconds between polls of the child (exit, timeout, cancel, ``on_poll``).
POLL_S = 0.05
#: Characters of output kept by default in :attr:`ProcessResult.output_tail`.
TAIL_CHARS = 2000
#: Variables every child gets, overriding the parent's: no ``mx.compile`` (it shells out to g++ and
#: costs ~20 s on a fresh CPU machine), no network for Hugging Face, unbuffered Python output so a
#: log or a tail is current when the child is killed.
FORCED_ENV: Mapping[str, str] = {"MLX_DISABLE_COMPILE": "1", "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
#: Variables every child gets unless the parent already sets them: quiet, fork-safe tokenizers.
DEFAULT_ENV: Mapping[str, str] = {"TOKENIZERS_PARALLELISM": "false", "TRANSFORMERS_VERBOSITY": "error"}

_READ_CHUNK = 65536
# A UTF-8 character is at most 4 bytes: this many bytes always decode to at least tail_chars characters.
_BYTES_PER_CHAR = 4
# How long to wait for the output pipe to reach EOF after the group is gone (a process that left the
# group with setsid may still hold it; we stop waiting rather than hang).
_READER_JOIN_S = 5.0


class CancelSignal(Protocol):
    """Anything with ``is_set() -> bool``: a ``threading.Event``, or an agent's abort signal that is
    set when it is stopping or lost its lease. Polled every ``poll_s`` seconds; no thread is needed."""

    def is_set(self) -> bool: ...


class ShellNotFoundError(FileNotFoundError):
    """A command line needs ``bash`` and there is none on the child's ``PATH``."""


@dataclass(frozen=True)
class ProcessResult:
    """How a child process ended.

    Attributes:
        returncode: exit status; negative = killed by that signal (``subprocess.Popen`` convention).
            None only when something else in this process reaped the child first.
        timed_out: the runner stopped it because ``timeout_s`` passed.
        cancelled: the runner stopped it because the cancel event was set.
        duration_s: wall seconds from start to exit (monotonic clock).
        output_tail: the last ``tail_chars`` characters of stdout+stderr (UTF-8, undecodable bytes replaced).
        max_rss_gb: peak resident set size of the child (and the descendants it waited for), GB = 1e9
            bytes; None when the platform reports nothing.
        pid: the child's process id (also its process group id).
    """

    returncode: int | None
    timed_out: bool
    cancelled: bool
    duration_s: float
    output_tail: str
    max_rss_gb: float | None
    pid: int

    @property
    def signal_number(self) -> int | None:
        """The signal that killed the child (``9``), or None when it exited by itself."""
        return -self.returncode if self.returncode is not None and self.returncode < 0 else None

    @property
    def signal_name(self) -> str | None:
        """The name of that signal (``"SIGKILL"``), or None."""
        num = self.signal_number
        return None if num is None else signal_name(num)

    @property
    def ok(self) -> bool:
        """Exited 0 by itself: not stopped by the runner, not killed."""
        return self.returncode == 0 and not self.timed_out and not self.cancelled


def signal_name(num: int) -> str:
    """``9`` -> ``"SIGKILL"``; an unknown number -> ``"signal 99"``."""
    try:
        return signal.Signals(num).name
    except ValueError:
        return f"signal {num}"


def child_env(extra: Mapping[str, str] | None = None, *, base: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment of a child process.

    Args:
        extra: variables added last; they override everything, the rules included (an explicit
            caller choice, e.g. a check's ``env``).
        base: the environment to start from; default ``os.environ``.

    Returns:
        ``base`` + :data:`FORCED_ENV` (overriding) + :data:`DEFAULT_ENV` (where unset) + ``extra``.
    """
    env = {str(k): str(v) for k, v in (os.environ if base is None else base).items()}
    env.update(FORCED_ENV)
    for key, value in DEFAULT_ENV.items():
        env.setdefault(key, value)
    if extra:
        env.update({str(k): str(v) for k, v in extra.items()})
    return env


def command_argv(command: str | Sequence[str], env: Mapping[str, str] | None = None) -> list[str]:
    """argv for ``command``: a string runs as ``[<bash>, "-c", command]``, a sequence as is.

    Args:
        command: a command line or an argv list (a non-empty sequence of strings).
        env: the child's environment; its ``PATH`` is where bash is looked for (default ``os.environ``).

    Raises:
        ShellNotFoundError: ``command`` is a string and bash is not on ``PATH``.
        ValueError: ``command`` is an empty argv list.
    """
    if isinstance(command, str):
        path = (os.environ if env is None else env).get("PATH", os.defpath)
        bash = shutil.which("bash", path=path)
        if bash is None:
            raise ShellNotFoundError(f"bash is needed to run the command line {command!r} but is not on PATH ({path})")
        return [bash, "-c", command]
    argv = [str(part) for part in command]
    if not argv:
        raise ValueError("empty argv list: nothing to run")
    return argv


def _killpg(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass  # the group is gone already (or was never ours to signal)


def _decode_status(status: int) -> int:
    """A raw wait status as a Popen-style return code (negative = signal)."""
    return os.waitstatus_to_exitcode(status)


def _max_rss_gb(rusage: Any) -> float | None:
    maxrss = getattr(rusage, "ru_maxrss", 0) if rusage is not None else 0
    if maxrss <= 0:
        return None
    scale = 1 if sys.platform == "darwin" else 1024  # ru_maxrss: bytes on macOS, KiB on Linux
    return maxrss * scale / 1e9


class _Tail:
    """The last ``chars`` characters of a byte stream, in bounded memory (thread-safe)."""

    def __init__(self, chars: int) -> None:
        self.chars = chars
        self.limit = max(1, chars) * _BYTES_PER_CHAR
        self.chunks: collections.deque[bytes] = collections.deque()
        self.size = 0
        self.lock = threading.Lock()

    def add(self, chunk: bytes) -> None:
        with self.lock:
            self.chunks.append(chunk)
            self.size += len(chunk)
            # Drop whole chunks from the front while what stays still covers the limit.
            while len(self.chunks) > 1 and self.size - len(self.chunks[0]) >= self.limit:
                self.size -= len(self.chunks.popleft())

    def text(self) -> str:
        with self.lock:
            data = b"".join(self.chunks)[-self.limit :]
        return _tail_text(data, self.chars)


def _tail_text(data: bytes, chars: int) -> str:
    return data.decode("utf-8", errors="replace")[-chars:] if chars > 0 else ""


def _file_tail(path: Path, chars: int) -> str:
    """The last ``chars`` characters of a file, reading only its last ``4 * chars`` bytes."""
    try:
        with open(path, "rb") as fh:
            fh.seek(0, os.SEEK_END)
            size = fh.tell()
            fh.seek(max(0, size - chars * _BYTES_PER_CHAR))
            return _tail_text(fh.read(), chars)
    except OSError:
        return ""


def _pump(fd: int, tail: _Tail, tee: IO[bytes] | None) -> None:
    """Reader thread: drain the pipe to EOF into the tail (and ``tee``), so the child never blocks."""
    sink = tee
    while True:
        try:
            chunk = os.read(fd, _READ_CHUNK)
        except OSError:
            return
        if not chunk:
            return
        tail.add(chunk)
        if sink is not None:
            try:
                sink.write(chunk)
                sink.flush()
            except (OSError, ValueError):
                sink = None  # a closed or broken tee must not stop the draining (the child would block)


class _Watch:
    """Waits for the child's exit, telling apart "exited" from "reaped" where the platform can."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        # waitid(WNOWAIT) sees the exit but leaves a zombie: the pid (= group id) stays taken while
        # we kill the group's leftovers. Not on macOS before Python 3.13: there wait4 reaps at once.
        self.peek = hasattr(os, "waitid") and hasattr(os, "WNOWAIT")

    def exited(self) -> tuple[bool, int | None, Any]:
        """(exited?, return code, rusage); the code and rusage are None until reaped."""
        if self.peek:
            try:
                info = os.waitid(os.P_PID, self.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
            except ChildProcessError:
                return True, None, None
            return info is not None, None, None
        return self.reap(block=False)

    def reap(self, block: bool = True) -> tuple[bool, int | None, Any]:
        try:
            pid, status, rusage = os.wait4(self.pid, 0 if block else os.WNOHANG)
        except ChildProcessError:  # reaped by someone else (a SIGCHLD handler, another thread)
            return True, None, None
        if pid == 0:
            return False, None, None
        return True, _decode_status(status), rusage


def run_process(
    command: str | Sequence[str],
    *,
    cwd: str | os.PathLike[str] | None = None,
    env: Mapping[str, str] | None = None,
    timeout_s: float | None = None,
    cancel: CancelSignal | None = None,
    kill_grace_s: float = KILL_GRACE_S,
    tail_chars: int = TAIL_CHARS,
    log_file: str | os.PathLike[str] | None = None,
    tee: IO[bytes] | None = None,
    on_poll: Callable[[], None] | None = None,
    on_start: Callable[[int], None] | None = None,
    poll_s: float = POLL_S,
) -> ProcessResult:
    """Run ``command`` to completion in its own process group and report how it ended.

    Args:
        command: a command line (run by ``bash -c``) or an argv list (no shell).
        cwd: working directory of the child; None = this process's.
        env: the child's complete environment; None = :func:`child_env` (the parent's plus the rules).
            A caller passing its own should build it with :func:`child_env` too.
        timeout_s: wall-clock limit in seconds from the start; None = none. Past it the group gets
            SIGTERM, then SIGKILL ``kill_grace_s`` seconds later, and ``timed_out`` is set.
        cancel: when set, the group is stopped the same way and ``cancelled`` is set.
        kill_grace_s: seconds between SIGTERM and SIGKILL.
        tail_chars: characters of output kept in ``output_tail``.
        log_file: write stdout+stderr straight to this file (truncated first) instead of a pipe; the
            tail is then read from the end of the file after the exit.
        tee: a binary stream every chunk of output is copied to as it arrives (pipe mode only), e.g.
            ``sys.stdout.buffer``; a tee that fails is dropped, the output is still drained.
        on_poll: called every ``poll_s`` seconds while the child runs and once after it exits (the job
            runner streams metrics.jsonl with it). If it raises, the group is SIGKILLed, the child
            reaped, and the exception propagates.
        on_start: called once with the child's pid (= its process group id) right after it started.
        poll_s: seconds between polls.

    Returns:
        A :class:`ProcessResult`. A failing, killed or timed-out command is a result, never an exception.

    Raises:
        ShellNotFoundError: a command line and no bash on the child's ``PATH``.
        ValueError: an empty argv list, or both ``log_file`` and ``tee``.
        OSError: the child could not be started (``FileNotFoundError`` for a missing program or ``cwd``,
            ``PermissionError``), or ``log_file`` could not be opened.
        BaseException: whatever interrupts the wait (``KeyboardInterrupt``, an ``on_poll`` error) is
            re-raised after the process group has been SIGKILLed and the child reaped.
    """
    # over 80 lines only because of its docstring (half of them): the body is one wait loop and its cleanup
    if log_file is not None and tee is not None:
        raise ValueError("give log_file or tee, not both")
    env = child_env() if env is None else dict(env)
    argv = command_argv(command, env)
    tail = _Tail(tail_chars)
    log_path = None if log_file is None else Path(log_file)
    start = time.monotonic()
    if log_path is not None:
        with open(log_path, "wb") as log:
            proc = _start(argv, cwd, env, log)  # the child holds its own copy of the descriptor
        reader = None
    else:
        proc = _start(argv, cwd, env, subprocess.PIPE)
        assert proc.stdout is not None
        reader = threading.Thread(target=_pump, args=(proc.stdout.fileno(), tail, tee), name="process-output", daemon=True)
        reader.start()
    try:
        if on_start is not None:
            on_start(proc.pid)
        stopped, returncode, rusage = _wait(proc, start, timeout_s, cancel, kill_grace_s, on_poll, poll_s)
    except BaseException:
        # Interrupted (KeyboardInterrupt, an on_poll error, ...): never leave the group running.
        _killpg(proc.pid, signal.SIGKILL)
        _, proc.returncode, _ = _Watch(proc.pid).reap()
        _close_output(proc, reader)
        raise
    duration = time.monotonic() - start
    proc.returncode = returncode  # reaped by us: keep Popen from waiting again
    _close_output(proc, reader)
    if on_poll is not None:
        on_poll()
    output_tail = _file_tail(log_path, tail_chars) if log_path is not None else tail.text()
    return ProcessResult(
        returncode=returncode,
        timed_out=stopped == "timeout",
        cancelled=stopped == "cancelled",
        duration_s=duration,
        output_tail=output_tail,
        max_rss_gb=_max_rss_gb(rusage),
        pid=proc.pid,
    )


def _start(argv: list[str], cwd: str | os.PathLike[str] | None, env: dict[str, str], stdout: Any) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        argv,
        cwd=None if cwd is None else os.fspath(cwd),
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=stdout,
        stderr=subprocess.STDOUT,
        start_new_session=True,  # own session + process group: killpg reaches all of it
    )


def _wait(
    proc: subprocess.Popen[bytes],
    start: float,
    timeout_s: float | None,
    cancel: CancelSignal | None,
    kill_grace_s: float,
    on_poll: Callable[[], None] | None,
    poll_s: float,
) -> tuple[str | None, int | None, Any]:
    """Poll until the child exits, stopping it on timeout/cancel; returns (stop reason, code, rusage)."""
    watch = _Watch(proc.pid)
    stopped: str | None = None
    term_sent_at: float | None = None
    while True:
        exited, returncode, rusage = watch.exited()
        if exited:
            # Leftovers of the group (background processes) would hold pipes and memory: stop them.
            _killpg(proc.pid, signal.SIGKILL)
            if watch.peek:
                _, returncode, rusage = watch.reap()
            return stopped, returncode, rusage
        if on_poll is not None:
            on_poll()
        now = time.monotonic()
        if stopped is None:
            if cancel is not None and cancel.is_set():
                stopped = "cancelled"
            elif timeout_s is not None and now - start > timeout_s:
                stopped = "timeout"
            if stopped is not None:
                _killpg(proc.pid, signal.SIGTERM)
                term_sent_at = now
        elif term_sent_at is not None and now - term_sent_at > kill_grace_s:
            _killpg(proc.pid, signal.SIGKILL)
            term_sent_at = None
        time.sleep(poll_s)


def _close_output(proc: subprocess.Popen[bytes], reader: threading.Thread | None) -> None:
    if reader is not None:
        reader.join(timeout=_READER_JOIN_S)
    if proc.stdout is not None and (reader is None or not reader.is_alive()):
        proc.stdout.close()  # with a reader still blocked on it (an escaped holder), leave it to the thread


def run_exiting_on_sigterm(command: str | Sequence[str], **kwargs: Any) -> ProcessResult:
    """:func:`run_process` for a process that is itself someone's managed child (the job worker).

    While the command runs, a SIGTERM to *this* process (the job runner cancelling or timing out the
    job, or the worker's parent watchdog) SIGKILLs the command's whole process group — it is in a
    session of its own, so the runner's signal to our group does not reach it — reaps it for up to
    2 s (where PID 1 does not reap, an orphaned zombie would stay), and ends this process at once with
    ``os._exit(128 + SIGTERM)``. The previous SIGTERM handler is restored when the command ends.

    Args:
        command, kwargs: as for :func:`run_process` (``on_start`` is chained, not replaced).

    Returns / Raises:
        As :func:`run_process`; also ``ValueError`` when not called from the main thread (only the
        main thread may set signal handlers).
    """
    child: list[int] = []
    user_on_start = kwargs.pop("on_start", None)

    def on_start(pid: int) -> None:
        child.append(pid)
        if user_on_start is not None:
            user_on_start(pid)

    def on_term(signum: int, _frame: FrameType | None) -> None:
        for pid in child:
            _killpg(pid, signal.SIGKILL)
            deadline = time.monotonic() + 2.0
            while time.monotonic() < deadline:
                try:
                    if os.waitpid(pid, os.WNOHANG)[0] != 0:
                        break
                except ChildProcessError:
                    break
                time.sleep(0.01)
        os._exit(128 + signum)

    previous = signal.signal(signal.SIGTERM, on_term)
    try:
        return run_process(command, on_start=on_start, **kwargs)
    finally:
        signal.signal(signal.SIGTERM, previous)

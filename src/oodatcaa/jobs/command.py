"""Job kind ``command``: run a command line (``bash -c``, or ``/bin/sh -c`` without bash) or an argv list.

The command runs in the job's workdir with the job's environment (``MLX_DISABLE_COMPILE=1``,
``HF_HUB_OFFLINE=1``, the CPU fast path), in its own process group; its stdout and stderr go to
``job.log``. After ``timeout_s`` seconds it gets SIGTERM, then SIGKILL 3 s later. When the job is
cancelled (SIGTERM to the worker), the command's process group is killed as well.

Summary namespace ``command``: ``returncode`` (the command's exit status; negative = killed by that
signal), ``duration_s`` (wall seconds), ``timed_out`` (1/0) and ``output_tail`` (the last 2000
characters of its output). The job is ok only if the command exits 0 in time.
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
from typing import Any

from oodatcaa.jobs._common import JobContext, JobFailure
from oodatcaa.jobs.spec import CommandJob

TAIL_CHARS = 2000
TERM_GRACE_S = 3.0


def _killpg(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _argv(run: str | list[str]) -> list[str]:
    if isinstance(run, list):
        return list(run)
    shell = shutil.which("bash") or "/bin/sh"
    return [shell, "-c", run]


def run(spec: CommandJob, ctx: JobContext) -> dict[str, dict[str, Any]]:
    """Run a ``command`` job; returns ``{"command": {...}}`` or raises JobFailure (with the summary)."""
    argv = _argv(spec.run)
    ctx.log(f"running {spec.run!r} in {ctx.workdir} (timeout {spec.timeout_s:g} s)")
    start = time.perf_counter()
    try:
        proc = subprocess.Popen(
            argv,
            cwd=str(ctx.workdir),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    except OSError as exc:
        summary = {"command": {"returncode": None, "duration_s": 0.0, "timed_out": 0, "output_tail": ""}}
        raise JobFailure(f"could not start command {argv[0]!r}: {exc}", summary=summary) from None

    def on_term(signum: int, _frame: Any) -> None:  # job cancelled: take the command down with us
        _killpg(proc.pid, signal.SIGKILL)
        # Reap it: an orphaned zombie may never be reaped where PID 1 does not reap (containers).
        deadline = time.monotonic() + 2.0
        while time.monotonic() < deadline:
            try:
                if os.waitpid(proc.pid, os.WNOHANG)[0] != 0:
                    break
            except ChildProcessError:
                break
            time.sleep(0.01)
        os._exit(128 + signum)

    previous = signal.signal(signal.SIGTERM, on_term)
    tail: collections.deque[bytes] = collections.deque()
    tail_len = [0]

    def pump() -> None:
        assert proc.stdout is not None
        out = sys.stdout.buffer
        for chunk in iter(lambda: proc.stdout.read1(65536), b""):  # type: ignore[union-attr]
            out.write(chunk)
            out.flush()
            tail.append(chunk)
            tail_len[0] += len(chunk)
            while tail_len[0] - len(tail[0]) >= TAIL_CHARS * 4 and len(tail) > 1:
                tail_len[0] -= len(tail.popleft())

    reader = threading.Thread(target=pump, name="command-output", daemon=True)
    reader.start()
    timed_out = False
    try:
        proc.wait(timeout=spec.timeout_s)
    except subprocess.TimeoutExpired:
        timed_out = True
        _killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=TERM_GRACE_S)
        except subprocess.TimeoutExpired:
            _killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    duration = time.perf_counter() - start
    _killpg(proc.pid, signal.SIGKILL)  # background leftovers would keep the output pipe open
    reader.join(timeout=5.0)
    signal.signal(signal.SIGTERM, previous)

    output_tail = b"".join(tail).decode("utf-8", errors="replace")[-TAIL_CHARS:]
    rc = proc.returncode
    summary = {
        "command": {
            "returncode": rc,
            "duration_s": round(duration, 4),
            "timed_out": int(timed_out),
            "output_tail": output_tail,
        }
    }
    if timed_out:
        raise JobFailure(f"command timed out after {spec.timeout_s:g} s", summary=summary)
    if rc != 0:
        last = next((line for line in reversed(output_tail.splitlines()) if line.strip()), "")
        what = f"killed by signal {-rc}" if rc < 0 else f"exited with status {rc}"
        raise JobFailure(f"command {what}" + (f": {last.strip()[:300]}" if last else ""), summary=summary)
    return summary

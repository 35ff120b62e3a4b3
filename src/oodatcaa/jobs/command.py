"""Job kind ``command``: run a command line (``bash -c``) or an argv list (no shell).

The command runs through :func:`oodatcaa.core.process.run_exiting_on_sigterm`, the one process
runner: in the job's workdir, with the child environment rules (``MLX_DISABLE_COMPILE=1``,
``HF_HUB_OFFLINE=1``, ...) on top of the job's environment (which carries the CPU fast path), in its
own process group; its stdout and stderr go to ``job.log``. A command line needs bash: without it the
job fails with "could not start command 'bash': ...". After ``timeout_s`` seconds the group gets
SIGTERM, then SIGKILL 3 s later; background processes left in the group when the command exits are
killed. When the job is cancelled (SIGTERM to the worker), the command's process group is killed as well.

Summary namespace ``command``: ``returncode`` (the command's exit status; negative = killed by that
signal), ``duration_s`` (wall seconds), ``timed_out`` (1/0) and ``output_tail`` (the last 2000
characters of its output). The job is ok only if the command exits 0 in time; a timeout raises
:class:`CommandTimedOut` (failure kind ``timeout``, details ``timeout_s``).
"""

from __future__ import annotations

import sys
from typing import Any

from oodatcaa.core.failures import FailureKind
from oodatcaa.core.process import child_env, run_exiting_on_sigterm
from oodatcaa.jobs._common import JobContext, JobFailure
from oodatcaa.jobs.spec import CommandJob

TAIL_CHARS = 2000
TERM_GRACE_S = 3.0


class CommandTimedOut(JobFailure):
    """The command ran past its ``timeout_s`` (seconds) and was killed: ``FailureKind.TIMEOUT``."""

    kind = FailureKind.TIMEOUT

    def __init__(self, message: str, *, timeout_s: float, summary: dict[str, dict[str, Any]] | None = None):
        super().__init__(message, summary=summary)
        self.details = {"timeout_s": timeout_s}


def _summary(returncode: int | None, duration_s: float, timed_out: bool, output_tail: str) -> dict[str, dict[str, Any]]:
    return {
        "command": {
            "returncode": returncode,
            "duration_s": round(duration_s, 4),
            "timed_out": int(timed_out),
            "output_tail": output_tail,
        }
    }


def run(spec: CommandJob, ctx: JobContext) -> dict[str, dict[str, Any]]:
    """Run a ``command`` job; returns ``{"command": {...}}``.

    Raises:
        JobFailure: the command could not start, exited non-zero or was killed (the message names the
            status and the last output line); the summary is attached.
        CommandTimedOut: it ran past ``spec.timeout_s`` seconds.
    """
    ctx.log(f"running {spec.run!r} in {ctx.workdir} (timeout {spec.timeout_s:g} s)")
    env = child_env()
    sys.stdout.flush()  # our own log lines first, then the command's output, in order
    tee = getattr(sys.stdout, "buffer", None)
    try:
        result = run_exiting_on_sigterm(
            spec.run,
            cwd=ctx.workdir,
            env=env,
            timeout_s=spec.timeout_s,
            kill_grace_s=TERM_GRACE_S,
            tail_chars=TAIL_CHARS,
            tee=tee,
        )
    except OSError as exc:
        program = "bash" if isinstance(spec.run, str) else spec.run[0]
        raise JobFailure(f"could not start command {program!r}: {exc}", summary=_summary(None, 0.0, False, "")) from None

    summary = _summary(result.returncode, result.duration_s, result.timed_out, result.output_tail)
    if result.timed_out:
        raise CommandTimedOut(f"command timed out after {spec.timeout_s:g} s", timeout_s=spec.timeout_s, summary=summary)
    rc = result.returncode
    if rc != 0:
        last = next((line for line in reversed(result.output_tail.splitlines()) if line.strip()), "")
        what = f"killed by signal {-rc}" if rc is not None and rc < 0 else f"exited with status {rc}"
        raise JobFailure(f"command {what}" + (f": {last.strip()[:300]}" if last else ""), summary=summary)
    return summary

"""Job child-process entry point: ``python -m oodatcaa.jobs.worker RUN_DIR/job.json``.

Started by :func:`oodatcaa.jobs.runner.run_job` in its own process group, with stdout+stderr going to
``run_dir/job.log``. Reads ``job.json`` (``spec``, ``workdir``, ``run_dir``, ``artifacts_dir``), runs the
job kind's ``run(spec, ctx)`` (the module named in :mod:`oodatcaa.jobs.registry`) and writes into run_dir:

- ``config.json``  the resolved spec, library versions, seed, BLAS in use, dataset sha256 (lora_train);
- ``summary.json`` the namespaced summary, on success (and for a failed command, with its return code);
- ``error.json``   on failure, ``{"error": message, "type": ..., "failure_kind": ..., "details": {...}}``:
  ``type`` is ``job_failure`` (the job raised :class:`~oodatcaa.jobs._common.JobFailure` or a subclass),
  ``exception`` (anything else) or ``job_file`` (the job file could not be read); ``failure_kind`` is a
  :class:`~oodatcaa.core.failures.FailureKind` value (see :func:`classify`), which is what callers
  route on; ``details`` are its structured facts. ``error`` is for people and may be reworded.

Exit status: 0 on success, 1 on a job failure, 2 for an unreadable job file. Signals (SIGTERM from the
runner on cancel/timeout) end the process with the default action.

When started by hand without the CPU fast path in its environment, the worker re-executes itself once
with :func:`oodatcaa.jobs.cpu_fastpath.fastpath_env` so that OpenBLAS is preloaded (mlx job kinds only).
"""

from __future__ import annotations

import io
import json
import os
import re
import signal
import sys
import threading
import time
import traceback
from pathlib import Path
from typing import Any, TextIO

from oodatcaa.core.failures import FailureKind
from oodatcaa.jobs._common import JobContext, JobFailure, versions, write_json
from oodatcaa.jobs.registry import job_kind, mlx_kinds
from oodatcaa.jobs.spec import JobSpecError, parse_job_spec

#: Job kinds that import mlx (from the registry): they get the CPU fast path and colour-free logs.
MLX_KINDS = mlx_kinds()
#: Lower-cased fragments of the messages MLX (C++ ``std::bad_alloc``, its allocator's ``[malloc]``
#: errors) and other libraries raise when an allocation is refused; they raise RuntimeError, not
#: MemoryError, so the message is all there is to go on.
_OOM_MARKERS = ("std::bad_alloc", "[malloc]", "out of memory")
_ANSI = re.compile(r"\x1b\[[0-9;?]*[ -/]*[@-~]|\x1b\][^\x07]*\x07")


class _PlainText(io.TextIOBase):
    """A text stream that drops ANSI escape sequences (mlx-lm's rich console forces truecolor even when
    writing to a file), so that job.log, which is committed, stays readable."""

    def __init__(self, inner: TextIO):
        self._inner = inner

    def write(self, s: str) -> int:
        self._inner.write(_ANSI.sub("", s))
        return len(s)

    def flush(self) -> None:
        self._inner.flush()

    def isatty(self) -> bool:
        return False

    def fileno(self) -> int:
        return self._inner.fileno()

    @property
    def encoding(self) -> str:  # type: ignore[override]
        return getattr(self._inner, "encoding", "utf-8")

    @property
    def buffer(self) -> object:
        return self._inner.buffer


def _maybe_reexec_with_fastpath(jobfile: Path, kind: str) -> None:
    from oodatcaa.jobs import cpu_fastpath

    if kind not in MLX_KINDS or os.environ.get(cpu_fastpath.ENV_APPLIED) or "mlx" in sys.modules:
        return
    extra = cpu_fastpath.fastpath_env()
    if not extra:
        return
    env = dict(os.environ)
    env.update(extra)
    env.setdefault("MLX_DISABLE_COMPILE", "1")
    env.setdefault("HF_HUB_OFFLINE", "1")
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, [sys.executable, "-m", "oodatcaa.jobs.worker", str(jobfile)], env)


def _says_out_of_memory(exc: BaseException) -> bool:
    text = str(exc).lower()
    return any(marker in text for marker in _OOM_MARKERS)


def classify(exc: BaseException) -> tuple[FailureKind, dict[str, Any]]:
    """The :class:`FailureKind` and details that ``error.json`` reports for an exception a job raised.

    - a :class:`JobFailure` (or subclass) -> its own ``kind`` and ``details``; but a plain
      ``job_error`` JobFailure raised *from* an out-of-memory error (a loader wrapping MLX's
      exception in a sentence) is ``oom``;
    - ``MemoryError`` -> ``oom``; then, since MLX raises RuntimeError for a refused allocation, any
      other exception whose message says ``std::bad_alloc``, ``[malloc]`` or ``out of memory`` -> ``oom``;
    - anything else -> ``job_error``.

    Non-JobFailure results carry ``{"exception": <type name>}`` in the details.
    """
    if isinstance(exc, JobFailure):
        if exc.kind is FailureKind.JOB_ERROR:
            cause = _oom_cause(exc)
            if cause is not None:
                return FailureKind.OOM, {**exc.details, "exception": type(cause).__name__}
        return exc.kind, dict(exc.details)
    details = {"exception": type(exc).__name__}
    if isinstance(exc, MemoryError) or _says_out_of_memory(exc):
        return FailureKind.OOM, details
    return FailureKind.JOB_ERROR, details


def _oom_cause(exc: BaseException) -> BaseException | None:
    """The first exception in ``exc``'s cause/context chain that is an out-of-memory error, or None."""
    seen: set[int] = set()
    current = _cause(exc)
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, MemoryError) or (not isinstance(current, JobFailure) and _says_out_of_memory(current)):
            return current
        current = _cause(current)
    return None


def _cause(exc: BaseException) -> BaseException | None:
    # As traceback prints it: the explicit cause, else the context unless ``raise ... from None`` hid it.
    if exc.__cause__ is not None:
        return exc.__cause__
    return None if exc.__suppress_context__ else exc.__context__


def _error_report(message: str, type_: str, kind: FailureKind, details: dict[str, Any]) -> dict[str, Any]:
    """The content of ``error.json`` (see the module docstring)."""
    return {"error": message, "type": type_, "failure_kind": kind.value, "details": details}


def run_jobfile(jobfile: Path) -> int:
    """Run the job described by ``jobfile``; returns the process exit status (see module docstring)."""
    try:
        job = json.loads(jobfile.read_text(encoding="utf-8"))
        spec = parse_job_spec(job["spec"], source=str(jobfile))
        ctx = JobContext(
            workdir=Path(job["workdir"]).resolve(),
            run_dir=Path(job["run_dir"]).resolve(),
            artifacts_dir=Path(job["artifacts_dir"]).resolve(),
        )
    except (OSError, ValueError, KeyError, JobSpecError) as exc:
        print(f"[oodatcaa job] cannot read job file {jobfile}: {exc}", file=sys.stderr, flush=True)
        try:
            write_json(jobfile.parent / "error.json", _error_report(f"cannot read job file: {exc}", "job_file",
                                                                    FailureKind.JOB_ERROR, {"exception": type(exc).__name__}))
        except OSError:
            pass
        return 2

    _maybe_reexec_with_fastpath(jobfile, spec.kind)
    if spec.kind in MLX_KINDS:
        sys.stdout = _PlainText(sys.stdout)
        sys.stderr = _PlainText(sys.stderr)
    ctx.run_dir.mkdir(parents=True, exist_ok=True)
    ctx.artifacts_dir.mkdir(parents=True, exist_ok=True)
    started_wall = time.time()
    config: dict[str, Any] = {
        "kind": spec.kind,
        "spec": spec.model_dump(mode="json"),
        "seed": getattr(spec, "seed", None),
        "workdir": str(ctx.workdir),
        "versions": versions(),
        "env": {
            k: os.environ.get(k)
            for k in ("MLX_DISABLE_COMPILE", "HF_HUB_OFFLINE", "OODATCAA_FASTPATH", "OODATCAA_BLAS_SOURCE")
        },
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started_wall)),
    }
    write_json(ctx.run_dir / "config.json", config)
    ctx.log(f"{spec.kind} job started (pid {os.getpid()})")

    status = 0
    summary: dict[str, Any] | None = None
    try:
        summary = job_kind(spec.kind).run()(spec, ctx)
    except JobFailure as exc:
        status = 1
        summary = exc.summary
        kind, details = classify(exc)
        write_json(ctx.run_dir / "error.json", _error_report(str(exc), "job_failure", kind, details))
        ctx.log(f"job failed ({kind.value}): {exc}")
    except BaseException as exc:  # noqa: BLE001 - report every crash, then exit non-zero
        status = 1
        traceback.print_exc()
        message = f"{type(exc).__name__}: {exc}".strip()
        kind, details = classify(exc)
        write_json(ctx.run_dir / "error.json", _error_report(message, "exception", kind, details))
        ctx.log(f"job crashed ({kind.value}): {message}")
    finally:
        config.update(ctx.config_extra)
        config["wall_seconds"] = round(time.time() - started_wall, 3)
        write_json(ctx.run_dir / "config.json", config)

    if summary is not None:
        write_json(ctx.run_dir / "summary.json", summary)
    if status == 0:
        ctx.log("job finished ok")
    sys.stdout.flush()
    sys.stderr.flush()
    return status


def watch_parent(expected_parent: int, interval_s: float = 0.5, grace_s: float = 5.0) -> threading.Thread:
    """Stop this job when the process that started it dies (its pid is no longer our parent).

    A SIGKILLed Builder cannot cancel its job; without this the job would run on, unowned, while the
    task is reclaimed and run again. SIGTERM first (a command job takes its own process group down
    with it), SIGKILL to our process group ``grace_s`` seconds later.
    """

    def watch() -> None:
        while os.getppid() == expected_parent:
            time.sleep(interval_s)
        print(f"oodatcaa job: parent {expected_parent} is gone; stopping", file=sys.stderr, flush=True)
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(grace_s)
        os.killpg(os.getpgrp(), signal.SIGKILL)

    thread = threading.Thread(target=watch, name="parent-watchdog", daemon=True)
    thread.start()
    return thread


def main(argv: list[str] | None = None) -> int:
    """``python -m oodatcaa.jobs.worker JOBFILE``."""
    argv = sys.argv[1:] if argv is None else argv
    parent = os.environ.get("OODATCAA_JOB_PARENT_PID")
    if parent and parent.isdigit():
        watch_parent(int(parent))
    if len(argv) != 1:
        print("usage: python -m oodatcaa.jobs.worker RUN_DIR/job.json", file=sys.stderr)
        return 2
    return run_jobfile(Path(argv[0]))


if __name__ == "__main__":
    sys.exit(main())

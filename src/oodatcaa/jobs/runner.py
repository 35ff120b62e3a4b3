"""Run a job in a child process and collect its result (stdlib + pydantic; no mlx in this process).

:func:`run_job` writes ``run_dir/job.json``, starts ``python -m oodatcaa.jobs.worker run_dir/job.json`` in
its own process group (cwd = the job's workdir, stdout+stderr to ``run_dir/job.log``), streams
``run_dir/metrics.jsonl`` to ``on_progress``, enforces the timeout and the cancel event (SIGTERM to the
group, SIGKILL after a grace period) and returns a :class:`JobResult`.

A result is ``ok`` only when the worker exited with status 0 *and* wrote ``summary.json`` (and no
``error.json``), and was neither cancelled nor timed out. Anything else is ``ok=False`` with a readable
``error``: the worker's own message (``error.json``), or for a crash (signal, non-zero exit without
``error.json``) the return code plus the last lines of ``job.log``.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from oodatcaa.jobs import cpu_fastpath
from oodatcaa.jobs.spec import CommandJob, JobSpecModel, parse_job_spec

__all__ = ["JobResult", "run_job"]

#: Seconds between SIGTERM and SIGKILL when stopping a job.
KILL_GRACE_S = 5.0
#: Seconds between polls of the child and of metrics.jsonl.
POLL_S = 0.05
#: Extra seconds the runner allows a command job beyond its own ``timeout_s`` (the worker enforces that).
COMMAND_TIMEOUT_SLACK_S = 15.0
LOG_TAIL_LINES = 25


@dataclass
class JobResult:
    """The outcome of :func:`run_job`.

    Attributes:
        ok: True only if the worker exited 0 and wrote summary.json (never for a cancel/timeout/crash).
        summary: namespaced metrics, e.g. ``{"train": {"final_loss": 1.2, ...}}``; ``{}`` when the job
            failed before writing one.
        error: human-readable reason when not ok (e.g. ``"model path does not exist: /x"``), else None.
        returncode: the worker's exit status; negative = killed by that signal (Popen convention);
            None if it could not be started.
        wall_seconds: seconds from start to the child's exit (wall clock).
        max_rss_gb: the worker's peak resident set size in GB (1e9 bytes), from ``wait4`` rusage
            (``ru_maxrss`` is in KiB on Linux); None when unavailable.
        run_dir: the run directory (job.json, config.json, metrics.jsonl, summary.json, job.log, ...).
        artifacts: path relative to artifacts_dir -> sha256 hex, for every file there after the job.
        cancelled / timed_out: why the runner stopped the job, if it did.
    """

    ok: bool
    summary: dict[str, dict[str, Any]]
    error: str | None
    returncode: int | None
    wall_seconds: float
    max_rss_gb: float | None
    run_dir: Path
    artifacts: dict[str, str] = field(default_factory=dict)
    cancelled: bool = False
    timed_out: bool = False

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (paths as strings)."""
        return {
            "ok": self.ok,
            "summary": self.summary,
            "error": self.error,
            "returncode": self.returncode,
            "wall_seconds": self.wall_seconds,
            "max_rss_gb": self.max_rss_gb,
            "run_dir": str(self.run_dir),
            "artifacts": dict(self.artifacts),
            "cancelled": self.cancelled,
            "timed_out": self.timed_out,
        }


class _MetricsTail:
    """Reads complete new lines of metrics.jsonl and hands each parsed object to a callback."""

    def __init__(self, path: Path, callback: Callable[[dict], None] | None):
        self.path = path
        self.callback = callback
        self.offset = 0
        self.buffer = b""

    def poll(self) -> None:
        if self.callback is None:
            return
        try:
            with open(self.path, "rb") as fh:
                fh.seek(self.offset)
                chunk = fh.read()
        except FileNotFoundError:
            return
        if not chunk:
            return
        self.offset += len(chunk)
        self.buffer += chunk
        *lines, self.buffer = self.buffer.split(b"\n")
        for line in lines:
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if isinstance(record, dict):
                try:
                    self.callback(record)
                except Exception as exc:  # noqa: BLE001 - a buggy observer must not break the job
                    print(f"oodatcaa: on_progress callback raised {type(exc).__name__}: {exc}", file=sys.stderr)


def _package_root() -> str:
    import oodatcaa

    return str(Path(oodatcaa.__file__).resolve().parent.parent)


def _child_env(default_model: str | None) -> dict[str, str]:
    env = dict(os.environ)
    env["MLX_DISABLE_COMPILE"] = "1"
    env["HF_HUB_OFFLINE"] = "1"
    env["PYTHONUNBUFFERED"] = "1"
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    env.setdefault("TRANSFORMERS_VERBOSITY", "error")
    if default_model:
        env["OODATCAA_DEFAULT_MODEL"] = str(default_model)
    # the worker stops itself if this process dies (a SIGKILLed Builder must not leave a job running)
    env["OODATCAA_JOB_PARENT_PID"] = str(os.getpid())
    # The worker must import this very package, also when it is not installed (src checkout).
    root = _package_root()
    parts = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    if root not in parts:
        env["PYTHONPATH"] = os.pathsep.join([root, *parts])
    env.update(cpu_fastpath.fastpath_env(env))
    return env


def _worker_command(jobfile: Path) -> list[str]:
    """argv of the job child process."""
    return [sys.executable, "-m", "oodatcaa.jobs.worker", str(jobfile)]


def _decode_status(status: int) -> int:
    if os.WIFSIGNALED(status):
        return -os.WTERMSIG(status)
    if os.WIFEXITED(status):
        return os.WEXITSTATUS(status)
    return status


def _signal_name(num: int) -> str:
    try:
        return signal.Signals(num).name
    except ValueError:
        return f"signal {num}"


def _log_tail(path: Path, lines: int = LOG_TAIL_LINES) -> str:
    try:
        with open(path, "rb") as fh:
            fh.seek(0, os.SEEK_END)
            size = fh.tell()
            fh.seek(max(0, size - 16384))
            data = fh.read().decode("utf-8", errors="replace")
    except OSError:
        return ""
    return "\n".join(data.splitlines()[-lines:])


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _hash_artifacts(artifacts_dir: Path) -> dict[str, str]:
    from oodatcaa.jobs._common import sha256_file

    out: dict[str, str] = {}
    if not artifacts_dir.is_dir():
        return out
    for path in sorted(artifacts_dir.rglob("*")):
        if path.is_file() and not path.is_symlink():
            out[path.relative_to(artifacts_dir).as_posix()] = sha256_file(path)
    return out


def _stderr_is_tty() -> bool:
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):
        return False


def _killpg(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def run_job(
    spec: JobSpecModel | Mapping[str, Any],
    *,
    workdir: Path,
    run_dir: Path,
    artifacts_dir: Path,
    default_model: str | None = None,
    timeout_s: float | None = None,
    cancel: threading.Event | None = None,
    on_progress: Callable[[dict], None] | None = None,
    progress: bool | None = None,
) -> JobResult:
    """Run one job in a child process and wait for it.

    Args:
        spec: a job spec model or a mapping (validated with :func:`parse_job_spec`).
        workdir: cwd of the job (a git worktree); relative ``model``/``data``/``adapter`` paths and command
            lines resolve against it.
        run_dir: small outputs (job.json, config.json, metrics.jsonl, summary.json, outputs.json, job.log).
            Stale summary/error/metrics files from an earlier run there are removed first.
        artifacts_dir: large outputs (LoRA adapters); every file there is hashed into ``artifacts``.
        default_model: model directory for ``model: default`` (exported as OODATCAA_DEFAULT_MODEL).
        timeout_s: wall-clock limit in seconds for the whole job (None = no limit, except that a command
            job is also stopped shortly after its own ``timeout_s``).
        cancel: when set, the job is stopped (SIGTERM to its process group, SIGKILL after 5 s).
        on_progress: called in this thread with each new metrics.jsonl record (a dict with ``event``).
        progress: show a rich progress bar (step, loss, tokens/s, ETA) on stderr; None (default) = only
            when stderr is a terminal. See :mod:`oodatcaa.jobs.progress`.

    Returns:
        A :class:`JobResult`; failures of the job itself are reported there, never raised.

    Raises:
        JobSpecError: ``spec`` is an invalid mapping.
        OSError: run_dir / artifacts_dir cannot be created or written.
    """
    spec = parse_job_spec(spec, source="run_job")
    workdir = Path(workdir).resolve()
    run_dir = Path(run_dir).resolve()
    artifacts_dir = Path(artifacts_dir).resolve()
    run_dir.mkdir(parents=True, exist_ok=True)
    artifacts_dir.mkdir(parents=True, exist_ok=True)
    for stale in ("summary.json", "error.json", "metrics.jsonl", "outputs.json"):
        (run_dir / stale).unlink(missing_ok=True)

    jobfile = run_dir / "job.json"
    job = {
        "spec": spec.model_dump(mode="json"),
        "workdir": str(workdir),
        "run_dir": str(run_dir),
        "artifacts_dir": str(artifacts_dir),
        "default_model": default_model,
    }
    jobfile.write_text(json.dumps(job, indent=2) + "\n", encoding="utf-8")

    if isinstance(spec, CommandJob):
        limit = spec.timeout_s + COMMAND_TIMEOUT_SLACK_S
        timeout_s = limit if timeout_s is None else min(timeout_s, limit)

    log_path = run_dir / "job.log"
    start = time.monotonic()
    if not workdir.is_dir():
        return JobResult(False, {}, f"workdir does not exist: {workdir}", None, 0.0, None, run_dir)
    with open(log_path, "wb") as log:
        try:
            proc = subprocess.Popen(
                _worker_command(jobfile),
                cwd=str(workdir),
                env=_child_env(default_model),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # own session + process group: killpg reaches all of it
            )
        except OSError as exc:
            return JobResult(False, {}, f"could not start the job process: {exc}", None, 0.0, None, run_dir)

    pgid = proc.pid
    bar = None
    if progress if progress is not None else _stderr_is_tty():
        from oodatcaa.jobs.progress import JobProgress

        bar = JobProgress(spec.kind)
        observers = [cb for cb in (on_progress, bar) if cb is not None]
        on_progress = lambda record: [cb(record) for cb in observers]  # noqa: E731
    tail = _MetricsTail(run_dir / "metrics.jsonl", on_progress)
    stop_reason: str | None = None
    term_sent_at: float | None = None
    status: int | None = None
    rusage = None
    try:
        while True:
            pid, raw_status, ru = os.wait4(proc.pid, os.WNOHANG)
            if pid == proc.pid:
                status, rusage = _decode_status(raw_status), ru
                break
            tail.poll()
            now = time.monotonic()
            if stop_reason is None:
                if cancel is not None and cancel.is_set():
                    stop_reason = "cancelled"
                elif timeout_s is not None and now - start > timeout_s:
                    stop_reason = "timeout"
                if stop_reason is not None:
                    _killpg(pgid, signal.SIGTERM)
                    term_sent_at = now
            elif term_sent_at is not None and now - term_sent_at > KILL_GRACE_S:
                _killpg(pgid, signal.SIGKILL)
                term_sent_at = None
            time.sleep(POLL_S)
    except BaseException:
        # The caller is being interrupted (KeyboardInterrupt, ...): never leave the job running.
        _killpg(pgid, signal.SIGKILL)
        try:
            os.wait4(proc.pid, 0)
        except ChildProcessError:
            pass
        proc.returncode = -signal.SIGKILL
        if bar is not None:
            bar.close()
        raise
    proc.returncode = status  # we reaped it ourselves; keep Popen consistent
    # Leftovers of the job's process group (background processes of a command): stop them too.
    _killpg(pgid, signal.SIGKILL)
    wall = time.monotonic() - start
    tail.poll()
    if bar is not None:
        bar.close()

    max_rss_gb = None
    if rusage is not None and rusage.ru_maxrss > 0:
        scale = 1 if sys.platform == "darwin" else 1024  # ru_maxrss: bytes on macOS, KiB on Linux
        max_rss_gb = rusage.ru_maxrss * scale / 1e9

    summary_data = _read_json(run_dir / "summary.json")
    summary = summary_data if isinstance(summary_data, dict) else {}
    error_data = _read_json(run_dir / "error.json")
    worker_error = error_data.get("error") if isinstance(error_data, dict) else None
    artifacts = _hash_artifacts(artifacts_dir)

    error: str | None = None
    if stop_reason == "cancelled":
        error = "job cancelled"
    elif stop_reason == "timeout":
        error = f"job timed out after {timeout_s:g} s"
    elif worker_error:
        error = str(worker_error)
    elif status != 0:
        if status is not None and status < 0:
            what = f"job process killed by {_signal_name(-status)} (returncode {status})"
        else:
            what = f"job process exited with status {status}"
        tail_text = _log_tail(log_path)
        error = f"{what} without an error report; last lines of job.log:\n{tail_text}" if tail_text else what
    elif summary_data is None:
        error = "job process exited 0 but wrote no summary.json; last lines of job.log:\n" + _log_tail(log_path)
    ok = error is None and status == 0 and isinstance(summary_data, dict)
    if not ok and error is None:  # defensive: never report success that did not happen
        error = "job did not complete"
    return JobResult(
        ok=ok,
        summary=summary,
        error=error,
        returncode=status,
        wall_seconds=round(wall, 3),
        max_rss_gb=max_rss_gb,
        run_dir=run_dir,
        artifacts=artifacts,
        cancelled=stop_reason == "cancelled",
        timed_out=stop_reason == "timeout",
    )

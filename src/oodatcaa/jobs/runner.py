"""Run a job in a child process and collect its result (stdlib + pydantic; no mlx in this process).

:func:`run_job` goes through four phases: :func:`_prepare` (resolve the paths, clear stale outputs,
write ``run_dir/job.json``), :func:`_execute` (start ``python -m oodatcaa.jobs.worker run_dir/job.json``
with :func:`oodatcaa.core.process.run_process` — its own process group, cwd = the job's workdir,
stdout+stderr to ``run_dir/job.log``, the timeout and the cancel event enforced by SIGTERM to the group
and SIGKILL after a grace period — while ``run_dir/metrics.jsonl`` is streamed to ``on_progress``),
then :func:`_collect` (summary, artifact hashes) and :func:`_failure` (what went wrong, as data).

A result is ``ok`` only when the worker exited with status 0 *and* wrote ``summary.json`` (and no
``error.json``), and was neither cancelled nor timed out. Anything else is ``ok=False`` with a typed
:class:`~oodatcaa.core.failures.Failure` (``failure``; see :func:`_failure` for the mapping from the
process result) and a readable ``error`` (= ``failure.message``): the worker's own message
(``error.json``), or for a crash (signal, non-zero exit without ``error.json``) the return code plus
the last lines of ``job.log``.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from oodatcaa.core.failures import Failure, FailureKind
from oodatcaa.core.process import CancelSignal, ProcessResult, child_env, run_process
from oodatcaa.jobs import cpu_fastpath
from oodatcaa.jobs.spec import CommandJob, JobSpecModel, parse_job_spec

__all__ = ["JobResult", "run_job"]

#: Seconds between SIGTERM and SIGKILL when stopping a job.
KILL_GRACE_S = 5.0
#: Seconds between polls of the child and of metrics.jsonl.
POLL_S = 0.05
#: Extra seconds the runner allows a command job beyond its own ``timeout_s`` (the worker enforces that).
COMMAND_TIMEOUT_SLACK_S = 15.0
#: Lines of job.log quoted in the message of a crash (read from the last LOG_TAIL_CHARS characters).
LOG_TAIL_LINES = 25
LOG_TAIL_CHARS = 16384

ProgressCallback = Callable[[dict[str, Any]], None]


@dataclass
class JobResult:
    """The outcome of :func:`run_job`.

    Attributes:
        ok: True only if the worker exited 0 and wrote summary.json (never for a cancel/timeout/crash).
        summary: namespaced metrics, e.g. ``{"train": {"final_loss": 1.2, ...}}``; ``{}`` when the job
            failed before writing one.
        error: human-readable reason when not ok (e.g. ``"model path does not exist: /x"``), else None;
            always ``failure.message``. For people: route on ``failure.kind``, never on this text.
        returncode: the worker's exit status; negative = killed by that signal (Popen convention);
            None if it could not be started.
        wall_seconds: seconds from start to the child's exit (wall clock).
        max_rss_gb: the worker's peak resident set size in GB (1e9 bytes), from ``wait4`` rusage
            (``ru_maxrss`` is in KiB on Linux); None when unavailable.
        run_dir: the run directory (job.json, config.json, metrics.jsonl, summary.json, job.log, ...).
        artifacts: path relative to artifacts_dir -> sha256 hex, for every file there after the job.
        cancelled / timed_out: why the runner stopped the job, if it did.
        failure: the typed failure when not ok (see :func:`_failure`), else None.
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
    failure: Failure | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (paths as strings, the failure as its JSON form or None)."""
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
            "failure": None if self.failure is None else self.failure.model_dump(mode="json"),
        }


class _MetricsTail:
    """Reads complete new lines of metrics.jsonl and hands each parsed object to a callback."""

    def __init__(self, path: Path, callback: ProgressCallback | None):
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
    """The worker's environment: the rules of every child (:func:`child_env`) plus the job-only ones."""
    env = child_env()
    if default_model:
        env["OODATCAA_DEFAULT_MODEL"] = str(default_model)
    # the worker stops itself if this process dies (a SIGKILLed Builder must not leave a job running)
    env["OODATCAA_JOB_PARENT_PID"] = str(os.getpid())
    # The worker must import this very package, also when it is not installed (src checkout).
    root = _package_root()
    parts = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    if root not in parts:
        env["PYTHONPATH"] = os.pathsep.join([root, *parts])
    # OpenBLAS preloaded for mlx: only job processes, never a check's arbitrary command
    env.update(cpu_fastpath.fastpath_env(env))
    return env


def _worker_command(jobfile: Path) -> list[str]:
    """argv of the job child process."""
    return [sys.executable, "-m", "oodatcaa.jobs.worker", str(jobfile)]


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


@dataclass(frozen=True)
class _Plan:
    """Where one run lives and its effective limit (``timeout_s`` in seconds, None = none)."""

    spec: JobSpecModel
    workdir: Path
    run_dir: Path
    artifacts_dir: Path
    jobfile: Path
    log_path: Path
    timeout_s: float | None


def run_job(
    spec: JobSpecModel | Mapping[str, Any],
    *,
    workdir: Path,
    run_dir: Path,
    artifacts_dir: Path,
    default_model: str | None = None,
    timeout_s: float | None = None,
    cancel: CancelSignal | None = None,
    on_progress: ProgressCallback | None = None,
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
        A :class:`JobResult`; failures of the job itself are reported there (``failure``), never raised.

    Raises:
        JobSpecError: ``spec`` is an invalid mapping.
        OSError: run_dir / artifacts_dir cannot be created or written.
    """
    spec = parse_job_spec(spec, source="run_job")
    plan = _prepare(spec, workdir, run_dir, artifacts_dir, default_model, timeout_s)
    if not plan.workdir.is_dir():
        return _not_started(plan, f"workdir does not exist: {plan.workdir}", workdir=str(plan.workdir))
    callback, bar = _observers(spec.kind, on_progress, progress)
    try:
        proc = _execute(plan, default_model, cancel, callback)
    except OSError as exc:
        return _not_started(plan, f"could not start the job process: {exc}", exception=type(exc).__name__)
    finally:
        if bar is not None:
            bar.close()
    return _collect(plan, proc)


def _prepare(
    spec: JobSpecModel,
    workdir: Path,
    run_dir: Path,
    artifacts_dir: Path,
    default_model: str | None,
    timeout_s: float | None,
) -> _Plan:
    """Phase 1: resolve the paths, create the directories, drop stale outputs, write job.json.

    Raises:
        OSError: a directory or job.json cannot be written.
    """
    workdir = Path(workdir).resolve()
    run_dir = Path(run_dir).resolve()
    artifacts_dir = Path(artifacts_dir).resolve()
    run_dir.mkdir(parents=True, exist_ok=True)
    artifacts_dir.mkdir(parents=True, exist_ok=True)
    # An earlier attempt's outputs must never be read as this run's (a stale summary.json would be "ok").
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
        # The worker enforces the command's own timeout; this is the backstop should the worker hang.
        limit = spec.timeout_s + COMMAND_TIMEOUT_SLACK_S
        timeout_s = limit if timeout_s is None else min(timeout_s, limit)
    return _Plan(spec, workdir, run_dir, artifacts_dir, jobfile, run_dir / "job.log", timeout_s)


def _observers(kind: str, on_progress: ProgressCallback | None, progress: bool | None) -> tuple[ProgressCallback | None, Any]:
    """The metrics callback (``on_progress`` and/or a progress bar) and the bar to close afterwards (or None)."""
    if not (progress if progress is not None else _stderr_is_tty()):
        return on_progress, None
    from oodatcaa.jobs.progress import JobProgress

    bar = JobProgress(kind)
    observers: list[ProgressCallback] = [cb for cb in (on_progress, bar) if cb is not None]

    def both(record: dict[str, Any]) -> None:
        for cb in observers:
            cb(record)

    return both, bar


def _execute(
    plan: _Plan, default_model: str | None, cancel: CancelSignal | None, on_progress: ProgressCallback | None
) -> ProcessResult:
    """Phases 2 and 3: start the worker and wait for it, streaming metrics.jsonl to ``on_progress``.

    Raises:
        OSError: the worker could not be started (or job.log not opened).
    """
    tail = _MetricsTail(plan.run_dir / "metrics.jsonl", on_progress)
    return run_process(
        _worker_command(plan.jobfile),
        cwd=plan.workdir,
        env=_child_env(default_model),
        timeout_s=plan.timeout_s,
        cancel=cancel,
        kill_grace_s=KILL_GRACE_S,
        tail_chars=LOG_TAIL_CHARS,
        log_file=plan.log_path,
        on_poll=tail.poll if on_progress is not None else None,
        poll_s=POLL_S,
    )


def _collect(plan: _Plan, proc: ProcessResult) -> JobResult:
    """Phase 4: read summary.json / error.json, hash the artifacts, decide ok and the failure."""
    summary_data = _read_json(plan.run_dir / "summary.json")
    summary = summary_data if isinstance(summary_data, dict) else {}
    error_data = _read_json(plan.run_dir / "error.json")
    failure = _failure(plan, proc, summary_data, error_data)
    return JobResult(
        ok=failure is None,
        summary=summary,
        error=None if failure is None else failure.message,
        returncode=proc.returncode,
        wall_seconds=round(proc.duration_s, 3),
        max_rss_gb=proc.max_rss_gb,
        run_dir=plan.run_dir,
        artifacts=_hash_artifacts(plan.artifacts_dir),
        cancelled=proc.cancelled,
        timed_out=proc.timed_out,
        failure=failure,
    )


def _not_started(plan: _Plan, message: str, **details: Any) -> JobResult:
    """The result of a job whose process never ran (``job_error``)."""
    failure = Failure.of(FailureKind.JOB_ERROR, message, **details)
    return JobResult(False, {}, failure.message, None, 0.0, None, plan.run_dir, failure=failure)


def _log_tail(proc: ProcessResult, lines: int = LOG_TAIL_LINES) -> str:
    return "\n".join(proc.output_tail.splitlines()[-lines:])


def _failure(plan: _Plan, proc: ProcessResult, summary_data: Any, error_data: Any) -> Failure | None:
    """What went wrong, from the process result and the worker's reports; None when the job is ok.

    In this order, first match wins (the kind never depends on any message text):

    - the runner stopped it for the cancel event -> ``cancelled``;
    - the runner stopped it for the timeout -> ``timeout``, details ``timeout_s`` (the effective limit);
    - the worker wrote ``error.json`` -> its ``failure_kind`` and ``details`` (:func:`_reported_failure`);
    - killed by a signal -> ``job_killed``, details ``signal`` (name, ``"SIGKILL"``) and ``returncode``;
    - a non-zero exit -> ``job_error``, details ``returncode`` and ``log_tail``;
    - exit 0 but no summary.json (or not a JSON object) -> ``job_error``, same details.
    """
    if proc.cancelled:
        return Failure.of(FailureKind.CANCELLED, "job cancelled")
    if proc.timed_out:
        limit = plan.timeout_s or 0.0
        return Failure.of(FailureKind.TIMEOUT, f"job timed out after {limit:g} s", timeout_s=limit)
    if isinstance(error_data, dict):
        return _reported_failure(plan, error_data, summary_data)
    log_tail = _log_tail(proc)
    rc = proc.returncode
    if rc is not None and rc < 0:
        what = f"job process killed by {proc.signal_name} (returncode {rc})"
        message = f"{what} without an error report; last lines of job.log:\n{log_tail}" if log_tail else what
        return Failure.of(FailureKind.JOB_KILLED, message, signal=proc.signal_name, returncode=rc)
    if rc != 0:
        what = f"job process exited with status {rc}"
        message = f"{what} without an error report; last lines of job.log:\n{log_tail}" if log_tail else what
        return Failure.of(FailureKind.JOB_ERROR, message, returncode=rc, log_tail=log_tail)
    if not isinstance(summary_data, dict):
        message = "job process exited 0 but wrote no summary.json; last lines of job.log:\n" + log_tail
        return Failure.of(FailureKind.JOB_ERROR, message, returncode=rc, log_tail=log_tail)
    return None


def _reported_failure(plan: _Plan, error_data: dict[str, Any], summary_data: Any) -> Failure:
    """The failure the worker reported in error.json: ``{"error", "type", "failure_kind", "details"}``.

    A missing ``failure_kind`` (a worker from before typed failures) is ``job_error`` — except that a
    ``command`` job whose summary says ``timed_out`` is ``timeout`` (details ``timeout_s``), a fact the
    summary carries as data. An unknown ``failure_kind`` is ``job_error`` with it in ``reported_kind``.
    """
    message = str(error_data.get("error") or "job failed without an error message")[:4000]
    reported_details = error_data.get("details")
    details = dict(reported_details) if isinstance(reported_details, dict) else {}
    reported = error_data.get("failure_kind")
    kind = FailureKind.JOB_ERROR
    if reported is None:
        command = summary_data.get("command") if isinstance(summary_data, dict) else None
        if isinstance(plan.spec, CommandJob) and isinstance(command, dict) and command.get("timed_out"):
            kind, details = FailureKind.TIMEOUT, {"timeout_s": plan.spec.timeout_s, **details}
    else:
        try:
            kind = FailureKind(reported)
        except ValueError:
            details["reported_kind"] = str(reported)
    # Built directly, not with Failure.of: the worker's details may use any key (even "item").
    return Failure(kind=kind, message=message, details=details)

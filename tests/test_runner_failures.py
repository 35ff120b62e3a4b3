"""The job runner's typed failures: every FailureKind it sets, from the process result, never from text.

Real child processes: ``command`` jobs through the real worker, and small Python scripts standing in for
the worker (``runner._worker_command`` monkeypatched) where a worker behaviour is needed that the real one
does not show on demand (an ``error.json`` naming a kind, a bare non-zero exit).
"""

from __future__ import annotations

import json
import sys
import threading
import time
from pathlib import Path

import pytest

from oodatcaa.core.failures import Failure, FailureKind
from oodatcaa.jobs import runner
from oodatcaa.jobs.runner import JobResult, run_job

# A stand-in worker: ``python -c FAKE JOBFILE REPORT EXIT``: writes REPORT (JSON, or "-" for none) as
# run_dir/error.json, prints a line to job.log and exits with EXIT.
FAKE_WORKER = """
import json, pathlib, sys
run_dir = pathlib.Path(sys.argv[1]).parent
report, code = sys.argv[2], int(sys.argv[3])
print("fake worker says hello", flush=True)
if report != "-":
    (run_dir / "error.json").write_text(report)
sys.exit(code)
"""


def _run(spec: dict, base: Path, **kwargs) -> JobResult:
    result = run_job(spec, workdir=base, run_dir=base / "job" / "run", artifacts_dir=base / "job" / "artifacts", **kwargs)
    # the human message is always the failure's message
    assert result.error == (None if result.failure is None else result.failure.message)
    assert result.ok == (result.failure is None)
    return result


def _fake_worker(monkeypatch: pytest.MonkeyPatch, report: dict | None, exit_code: int) -> None:
    text = "-" if report is None else json.dumps(report)
    monkeypatch.setattr(runner, "_worker_command",
                        lambda jobfile: [sys.executable, "-c", FAKE_WORKER, str(jobfile), text, str(exit_code)])


def _kind(result: JobResult) -> FailureKind:
    assert result.failure is not None, "expected a failure"
    return result.failure.kind


# ---------------------------------------------------------------- ok


def test_ok_job_has_no_failure(tmp_path: Path) -> None:
    result = _run({"kind": "command", "run": "echo fine"}, tmp_path)
    assert result.ok and result.failure is None and result.error is None
    assert result.to_dict()["failure"] is None


# ---------------------------------------------------------------- stopped by the runner


def test_runner_timeout_is_timeout(tmp_path: Path) -> None:
    result = _run({"kind": "command", "run": "sleep 30"}, tmp_path, timeout_s=0.5)
    assert _kind(result) is FailureKind.TIMEOUT and result.timed_out
    assert result.failure is not None and result.failure.details == {"timeout_s": 0.5}
    assert result.to_dict()["failure"]["kind"] == "timeout"


def test_cancel_is_cancelled(tmp_path: Path) -> None:
    cancel = threading.Event()
    box: dict[str, JobResult] = {}
    spec = {"kind": "command", "run": "echo started > started.txt; sleep 60"}
    thread = threading.Thread(target=lambda: box.update(r=_run(spec, tmp_path, cancel=cancel)))
    thread.start()
    deadline = time.monotonic() + 30
    while not (tmp_path / "started.txt").exists():
        assert time.monotonic() < deadline, "command never started"
        time.sleep(0.05)
    cancel.set()
    thread.join(60)
    result = box["r"]
    assert _kind(result) is FailureKind.CANCELLED and result.cancelled and not result.timed_out


# ---------------------------------------------------------------- reported by the worker


def test_commands_own_timeout_is_timeout(tmp_path: Path) -> None:
    result = _run({"kind": "command", "run": "sleep 30", "timeout_s": 0.5}, tmp_path)
    assert _kind(result) is FailureKind.TIMEOUT
    assert result.failure is not None and result.failure.details["timeout_s"] == 0.5
    assert not result.timed_out  # the worker stopped the command, not the runner the worker
    assert result.summary["command"]["timed_out"] == 1


def test_command_exit_without_a_kind_is_job_error(tmp_path: Path) -> None:
    result = _run({"kind": "command", "run": "echo about to fail; exit 3"}, tmp_path)
    assert _kind(result) is FailureKind.JOB_ERROR
    assert result.returncode == 1 and result.summary["command"]["returncode"] == 3


@pytest.mark.parametrize("kind,details", [
    ("oom", {"exception": "MemoryError"}),
    ("diverged", {"iteration": 3, "loss": 1e9, "initial_loss": 2.0}),
    ("job_error", {}),
    ("timeout", {"timeout_s": 12}),
])
def test_error_json_names_the_kind(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, kind: str, details: dict) -> None:
    _fake_worker(monkeypatch, {"error": "something happened", "type": "job_failure", "failure_kind": kind,
                               "details": details}, 1)
    result = _run({"kind": "command", "run": "true"}, tmp_path)
    assert result.failure == Failure(kind=FailureKind(kind), message="something happened", details=details)


def test_error_json_without_a_kind_is_job_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _fake_worker(monkeypatch, {"error": "old worker", "type": "exception"}, 1)
    result = _run({"kind": "command", "run": "true"}, tmp_path)
    assert _kind(result) is FailureKind.JOB_ERROR and result.error == "old worker"


def test_unknown_kind_is_job_error_and_kept_in_details(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _fake_worker(monkeypatch, {"error": "from the future", "failure_kind": "cosmic_ray", "details": {"item": "x"}}, 1)
    result = _run({"kind": "command", "run": "true"}, tmp_path)
    assert result.failure is not None
    assert result.failure.kind is FailureKind.JOB_ERROR
    assert result.failure.details == {"item": "x", "reported_kind": "cosmic_ray"}


# Messages that read like another kind: the kind follows failure_kind (or its absence), never the words.
REWORDINGS = [
    "job timed out after 5 s",
    "job cancelled",
    "job process killed by SIGKILL (returncode -9)",
    "RuntimeError: [malloc] out of memory: std::bad_alloc",
    "loss diverged to nan",
    "Das Training ist fehlgeschlagen",
    "",
]


@pytest.mark.parametrize("message", REWORDINGS)
@pytest.mark.parametrize("reported", [None, "oom", "diverged"])
def test_rewording_the_message_does_not_change_the_kind(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                        message: str, reported: str | None) -> None:
    report: dict = {"error": message, "type": "job_failure"}
    if reported is not None:
        report["failure_kind"] = reported
    _fake_worker(monkeypatch, report, 1)
    result = _run({"kind": "command", "run": "true"}, tmp_path)
    assert _kind(result) is FailureKind(reported or "job_error")
    assert result.error == (message or "job failed without an error message")


# ---------------------------------------------------------------- the worker process itself


def test_worker_killed_by_a_signal_is_job_killed(tmp_path: Path) -> None:
    # Process tree: runner (this process) -> worker (python -m oodatcaa.jobs.worker, its own group)
    # -> bash -c (the command, a session of its own). The command's $PPID is the worker: record what
    # that process is, then SIGKILL it. The worker cannot write error.json.
    script = "cat /proc/$PPID/cmdline 2>/dev/null | tr '\\0' ' ' > parent.txt; echo $PPID >> parent.txt; kill -9 $PPID; sleep 5"
    result = _run({"kind": "command", "run": script}, tmp_path)
    parent = (tmp_path / "parent.txt").read_text()
    if Path("/proc/self/cmdline").exists():
        assert "oodatcaa.jobs.worker" in parent, parent
    assert _kind(result) is FailureKind.JOB_KILLED
    assert result.failure is not None and result.failure.details == {"signal": "SIGKILL", "returncode": -9}
    assert result.returncode == -9 and not result.timed_out and not result.cancelled
    assert not (result.run_dir / "error.json").exists()


def test_worker_aborting_is_job_killed_with_its_signal(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(runner, "_worker_command", lambda jobfile: [sys.executable, "-c", "import os; os.abort()"])
    result = _run({"kind": "command", "run": "true"}, tmp_path)
    assert _kind(result) is FailureKind.JOB_KILLED
    assert result.failure is not None and result.failure.details == {"signal": "SIGABRT", "returncode": -6}


def test_nonzero_exit_without_a_report_is_job_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _fake_worker(monkeypatch, None, 4)
    result = _run({"kind": "command", "run": "true"}, tmp_path)
    assert _kind(result) is FailureKind.JOB_ERROR and result.returncode == 4
    assert result.failure is not None
    assert result.failure.details["returncode"] == 4
    assert "fake worker says hello" in result.failure.details["log_tail"]


def test_exit_zero_without_summary_is_job_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _fake_worker(monkeypatch, None, 0)
    result = _run({"kind": "command", "run": "true"}, tmp_path)
    assert _kind(result) is FailureKind.JOB_ERROR and result.returncode == 0 and result.summary == {}
    assert result.failure is not None and result.failure.details["returncode"] == 0


def test_missing_workdir_is_job_error(tmp_path: Path) -> None:
    result = run_job({"kind": "command", "run": "true"}, workdir=tmp_path / "gone", run_dir=tmp_path / "run",
                     artifacts_dir=tmp_path / "art")
    assert not result.ok and result.failure is not None and result.failure.kind is FailureKind.JOB_ERROR
    assert result.returncode is None and result.error == f"workdir does not exist: {tmp_path / 'gone'}"


def test_unstartable_worker_is_job_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(runner, "_worker_command", lambda jobfile: [str(tmp_path / "no-such-python")])
    result = _run({"kind": "command", "run": "true"}, tmp_path)
    assert _kind(result) is FailureKind.JOB_ERROR and result.returncode is None
    assert (result.error or "").startswith("could not start the job process")

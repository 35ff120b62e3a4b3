"""Test-only hook for job child processes: kill the job right after it writes a given checkpoint.

Put this directory on the job process's ``PYTHONPATH`` (the runner passes the environment on) and
set :data:`KILL_AFTER_CHECKPOINT_ENV` to an iteration: Python imports ``sitecustomize`` at start-up,
and this one wraps ``oodatcaa.jobs._training.save_checkpoint`` so that the process SIGKILLs itself
(no clean-up, like a machine losing power) once the checkpoint of that iteration is on disk. The
product code knows nothing of it. Tests call :func:`arm` / :func:`disarm`.

Without the variable nothing is imported or patched, so another Python child that inherits the
``PYTHONPATH`` only pays for reading this file.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pathlib import Path

    import pytest

#: The iteration after whose checkpoint the job process kills itself.
KILL_AFTER_CHECKPOINT_ENV = "OODATCAA_TEST_KILL_AFTER_CHECKPOINT"
#: The iteration after whose checkpoint the job process hangs (until the runner's timeout stops it).
STALL_AFTER_CHECKPOINT_ENV = "OODATCAA_TEST_STALL_AFTER_CHECKPOINT"


def _install_stall(iteration: int) -> None:
    import functools
    import time

    from oodatcaa.jobs import _training

    real = _training.save_checkpoint

    @functools.wraps(real)
    def save_checkpoint_then_hang(root: Path, step: int, **kwargs: Any) -> Path:
        path = real(root, step, **kwargs)
        if step == iteration:
            print(f"[test hook] hanging after the checkpoint of iteration {step}", flush=True)
            time.sleep(3600)
        return path

    _training.save_checkpoint = save_checkpoint_then_hang


def arm_stall(monkeypatch: pytest.MonkeyPatch, iteration: int) -> None:
    """Job processes started from now on hang after the checkpoint of ``iteration`` (a timeout's cause)."""
    monkeypatch.setenv("PYTHONPATH", os.path.dirname(os.path.abspath(__file__)), prepend=os.pathsep)
    monkeypatch.setenv(STALL_AFTER_CHECKPOINT_ENV, str(iteration))


def _install(iteration: int) -> None:
    import functools
    import signal

    from oodatcaa.jobs import _training

    real = _training.save_checkpoint

    @functools.wraps(real)
    def save_checkpoint_then_die(root: Path, step: int, **kwargs: Any) -> Path:
        path = real(root, step, **kwargs)
        if step == iteration:
            print(f"[test hook] killing the job after the checkpoint of iteration {step}", flush=True)
            os.kill(os.getpid(), signal.SIGKILL)
        return path

    _training.save_checkpoint = save_checkpoint_then_die


def arm(monkeypatch: pytest.MonkeyPatch, iteration: int) -> None:
    """Job processes started from now on SIGKILL themselves after the checkpoint of ``iteration``
    (``monkeypatch`` undoes it when the test ends; :func:`disarm` does it earlier)."""
    monkeypatch.setenv("PYTHONPATH", os.path.dirname(os.path.abspath(__file__)), prepend=os.pathsep)
    monkeypatch.setenv(KILL_AFTER_CHECKPOINT_ENV, str(iteration))


def disarm(monkeypatch: pytest.MonkeyPatch) -> None:
    """Job processes started from now on are not killed (the PYTHONPATH entry stays, inert)."""
    monkeypatch.delenv(KILL_AFTER_CHECKPOINT_ENV, raising=False)


_value = os.environ.get(KILL_AFTER_CHECKPOINT_ENV, "")
if _value.isdigit():
    _install(int(_value))
_stall = os.environ.get(STALL_AFTER_CHECKPOINT_ENV, "")
if _stall.isdigit():
    _install_stall(int(_stall))

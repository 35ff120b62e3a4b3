"""Builder jobs: specs, the child-process runner and the job kinds (model_check, inference_bench,
lora_train, memory_profile, evaluate, dataset, quantize, fuse, command). See ``docs/jobs.md``.

Light on purpose: importing :mod:`oodatcaa.jobs` imports nothing; the names below load on first use.
mlx is only ever imported inside job child processes (:mod:`oodatcaa.jobs.worker`).
"""

from __future__ import annotations

from typing import Any

__all__ = ["JobResult", "JobSpecError", "parse_job_spec", "run_job"]

_LAZY = {
    "JobResult": "oodatcaa.jobs.runner",
    "run_job": "oodatcaa.jobs.runner",
    "JobSpecError": "oodatcaa.jobs.spec",
    "parse_job_spec": "oodatcaa.jobs.spec",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'oodatcaa.jobs' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(module), name)

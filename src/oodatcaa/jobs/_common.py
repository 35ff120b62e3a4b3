"""Helpers shared by the job kinds and the worker (stdlib and :mod:`oodatcaa.core.failures` only; runs
inside the job child process)."""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import math
import os
import platform
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from oodatcaa.core.failures import FailureKind

DEFAULT_MODEL_ENV = "OODATCAA_DEFAULT_MODEL"


class JobFailure(Exception):
    """A job failed for a reason worth showing the user as is (written to error.json, exit status 1).

    Attributes:
        kind: what policies route on (:class:`~oodatcaa.core.failures.FailureKind`); the message is for
            people and may be reworded freely. Subclasses fix it (:class:`DivergedError`, ...).
        details: structured facts for ``kind``, JSON-serialisable (see ``FailureKind``).
        summary: (optional) still written to summary.json, e.g. a failed command's return code.
    """

    kind: FailureKind = FailureKind.JOB_ERROR

    def __init__(self, message: str, *, summary: dict[str, dict[str, Any]] | None = None,
                 details: dict[str, Any] | None = None, kind: FailureKind | None = None):
        super().__init__(message)
        self.summary = summary
        self.details: dict[str, Any] = dict(details or {})
        if kind is not None:
            self.kind = FailureKind(kind)


class DivergedError(JobFailure):
    """Training diverged (a non-finite loss, or one far above where it started): ``FailureKind.DIVERGED``.

    ``details``: ``iteration`` (the step where it was detected), ``loss`` (the offending value, None when
    not finite in JSON), ``initial_loss`` (``train.initial_loss``: the loss before the first update) and
    any further ``facts`` (lora_train: ``reason`` — ``non_finite``, ``loss_ratio``, ``val_increase`` or
    ``uniform`` — and the validation losses and limits it compared), each present when known.
    """

    kind = FailureKind.DIVERGED

    def __init__(self, message: str, *, iteration: int | None = None, loss: float | None = None,
                 initial_loss: float | None = None, summary: dict[str, dict[str, Any]] | None = None,
                 **facts: Any):
        facts = {"iteration": iteration, "loss": loss, "initial_loss": initial_loss, **facts}
        super().__init__(message, summary=summary, details={k: v for k, v in facts.items() if v is not None})


class OutOfMemoryJobError(JobFailure):
    """The job ran out of memory (an allocation refused, ``MemoryError``): ``FailureKind.OOM``.

    ``details`` are free-form (e.g. ``{"exception": "MemoryError"}``, ``{"requested_gb": 3.2}``).
    """

    kind = FailureKind.OOM


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def write_json(path: Path, data: Any) -> None:
    """Write JSON atomically (temp file + rename), so a reader never sees half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(_jsonable(data), indent=2, sort_keys=False) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def _jsonable(value: Any) -> Any:
    """Plain JSON values; NaN/inf floats become None (JSON has no NaN)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    if value is None or isinstance(value, (str, int, bool)):
        return value
    if hasattr(value, "item"):  # numpy / mlx scalars
        return _jsonable(value.item())
    return str(value)


def versions() -> dict[str, str | None]:
    """Versions of the interpreter and the libraries a job result depends on (no imports of them)."""
    out: dict[str, str | None] = {"python": platform.python_version(), "platform": platform.platform()}
    for dist in ("oodatcaa", "mlx", "mlx-cpu", "mlx-lm", "numpy", "transformers", "tokenizers", "cmeel-openblas",
                 "matplotlib", "jsonschema"):
        try:
            out[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            out[dist] = None
    if out["oodatcaa"] is None:  # running from a source checkout
        try:
            import oodatcaa

            out["oodatcaa"] = getattr(oodatcaa, "__version__", None)
        except ImportError:  # pragma: no cover
            pass
    return out


@dataclass
class JobContext:
    """Where a job runs and writes. Paths are absolute."""

    workdir: Path
    run_dir: Path
    artifacts_dir: Path
    started: float = field(default_factory=time.perf_counter)
    config_extra: dict[str, Any] = field(default_factory=dict)

    def resolve(self, value: str) -> Path:
        """A user path: ``~`` expanded, relative paths against the job's workdir."""
        p = Path(value).expanduser()
        return p if p.is_absolute() else (self.workdir / p)

    def resolve_model(self, model: str) -> Path:
        """The model directory for a spec's ``model`` field.

        ``"default"``: env ``OODATCAA_DEFAULT_MODEL`` when set, else
        ``oodatcaa.mlmodels.default_model.ensure_default_model()`` (builds the offline default once).
        Anything else is a local path (never a Hub download).

        Raises:
            JobFailure: ``"model path does not exist: <path>"``, or not an mlx-lm model directory.
        """
        if model == "default":
            env_model = os.environ.get(DEFAULT_MODEL_ENV, "").strip()
            if env_model:
                path = self.resolve(env_model)
            else:
                from oodatcaa.mlmodels.default_model import ensure_default_model

                path = Path(ensure_default_model())
        else:
            path = self.resolve(model)
        if not path.exists():
            raise JobFailure(f"model path does not exist: {path}")
        if not path.is_dir() or not (path / "config.json").is_file():
            raise JobFailure(f"not an mlx-lm model directory (no config.json): {path}")
        return path

    def resolve_adapter(self, adapter: str | None) -> Path | None:
        """The adapter directory for a spec's ``adapter`` field (``None`` stays ``None``).

        Raises:
            JobFailure: the path does not exist, or holds no ``adapter_config.json``.
        """
        if not adapter:
            return None
        path = self.resolve(adapter)
        if not path.exists():
            raise JobFailure(f"adapter path does not exist: {path}")
        if not (path / "adapter_config.json").is_file():
            raise JobFailure(f"not an adapter directory (no adapter_config.json): {path}")
        return path

    def metric(self, event: str, **values: Any) -> None:
        """Append one JSON line to run_dir/metrics.jsonl (``event``, ``elapsed_s`` since job start, values)."""
        record = {"event": event, "elapsed_s": round(time.perf_counter() - self.started, 4), **values}
        with open(self.run_dir / "metrics.jsonl", "a", encoding="utf-8") as fh:
            fh.write(json.dumps(_jsonable(record)) + "\n")
            fh.flush()

    def log(self, message: str) -> None:
        """A line in job.log (the worker's stdout)."""
        print(f"[oodatcaa job] {message}", flush=True)


def finite(x: float | None) -> bool:
    return x is not None and isinstance(x, (int, float)) and math.isfinite(x)


def median(values: list[float]) -> float:
    """Median (mean of the two middle values for an even count)."""
    s = sorted(values)
    if not s:
        return float("nan")
    mid = len(s) // 2
    return s[mid] if len(s) % 2 else (s[mid - 1] + s[mid]) / 2.0


def seed_everything(seed: int) -> None:
    """Seed Python's, numpy's and mlx's random generators (call inside the job process)."""
    import random

    random.seed(seed)
    try:
        import numpy as np

        np.random.seed(seed)
    except ImportError:  # pragma: no cover - numpy comes with mlx-lm
        pass
    import mlx.core as mx

    mx.random.seed(seed)


def device_name() -> str:
    """``"cpu"`` or ``"gpu"``: mlx's default device type (imports mlx)."""
    import mlx.core as mx

    dev = mx.default_device()
    return "gpu" if "gpu" in str(dev.type).lower() else "cpu"


def python_executable() -> str:
    return sys.executable


def record_format(record: dict[str, Any]) -> str | None:
    """mlx-lm's format of a JSONL record, with ``mlx_lm.tuner.datasets.create_dataset``'s precedence:
    ``prompt/completion``, else ``messages``, else ``text``; ``None`` when it has none of them."""
    if "prompt" in record and "completion" in record:
        return "prompt/completion"
    if "messages" in record:
        return "messages"
    if "text" in record:
        return "text"
    return None

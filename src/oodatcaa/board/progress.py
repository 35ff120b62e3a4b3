"""A running step's progress, as the Builder writes it into the queue (``result["progress"]``, every 10 s).

Shared by ``status`` (cli/render.py) and the board; stdlib only.
"""

from __future__ import annotations

import math
from typing import Any


def finite_number(value: object) -> float | None:
    """``value`` as a finite float, or None (bools, strings, NaN and infinities are not progress)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) else None


def step_progress(result: dict[str, Any] | None) -> dict[str, Any] | None:
    """A running step's progress from the record the Builder writes into ``result["progress"]`` (every 10 s).

    Returns ``{"step", "total", "loss", "tokens_per_second", "eta_s"}`` (any may be None; ``eta_s`` in
    seconds, from ``eta_s`` when the record has it, else from the remaining steps and ``steps_per_second``),
    or None when no progress was written yet. Non-finite numbers (NaN) are dropped, never shown.
    """
    raw = (result or {}).get("progress")
    if not isinstance(raw, dict):
        return None
    step = finite_number(raw.get("iteration", raw.get("step")))
    total = finite_number(raw.get("total_iterations", raw.get("total_steps", raw.get("total"))))
    eta = finite_number(raw.get("eta_s"))
    rate = finite_number(raw.get("steps_per_second"))
    if eta is None and rate and step is not None and total is not None:
        eta = max(0.0, (total - step) / rate)
    return {"step": None if step is None else int(step), "total": None if total is None else int(total),
            "loss": finite_number(raw.get("train_loss", raw.get("loss"))),
            "tokens_per_second": finite_number(raw.get("tokens_per_second")), "eta_s": eta}


def progress_text(progress: dict[str, Any] | None) -> str:
    """``12/100 loss 1.234 5,678 tok/s ETA 1m05s`` for the status table ("" without progress)."""
    if not progress:
        return ""
    parts = []
    if progress["step"] is not None:
        parts.append(f"{progress['step']}/{progress['total'] if progress['total'] is not None else '?'}")
    if progress["loss"] is not None:
        parts.append(f"loss {progress['loss']:.3f}")
    if progress["tokens_per_second"] is not None:
        parts.append(f"{progress['tokens_per_second']:,.0f} tok/s")
    if progress["eta_s"] is not None:
        minutes, seconds = divmod(int(progress["eta_s"]), 60)
        parts.append(f"ETA {minutes}m{seconds:02d}s")
    return " ".join(parts)

"""Read a run's ``metrics.jsonl`` (written by ``JobContext.metric``) without trusting it.

A torn last line (the job was killed mid-write) or a non-finite loss (``NaN``, ``Infinity``; Python's
json accepts them) is skipped and named in ``problems``, so the page can say so instead of crashing.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

#: Fields that are plotted; a non-finite value in one of them drops that point.
PLOTTED = ("train_loss", "val_loss", "peak_memory_gb", "tokens_per_second")


@dataclass
class RunMetrics:
    """The usable records of one metrics file and a human line for each one skipped."""

    path: Path
    records: list[dict[str, Any]] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    def events(self, event: str) -> list[dict[str, Any]]:
        """Records whose ``event`` is ``event`` (``train``, ``val``, ...), in file order."""
        return [r for r in self.records if r.get("event") == event]


def read_metrics(path: Path) -> RunMetrics:
    """Parse ``path`` line by line; bad lines are skipped and described in ``problems``.

    Raises nothing for bad content; a missing file gives an empty result with one problem.
    """
    out = RunMetrics(path)
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError as exc:
        out.problems.append(f"{path.name}: cannot be read ({exc.strerror or exc})")
        return out
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            out.problems.append(f"{path.name} line {number}: not valid JSON (torn write?), skipped")
            continue
        if not isinstance(record, dict):
            out.problems.append(f"{path.name} line {number}: not a JSON object, skipped")
            continue
        bad = [k for k in PLOTTED if isinstance(record.get(k), float) and not math.isfinite(record[k])]
        if bad:
            out.problems.append(f"{path.name} line {number}: non-finite {', '.join(bad)}, point skipped")
            continue
        out.records.append(record)
    return out

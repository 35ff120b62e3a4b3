"""Vega-Lite v5 specs (plain dicts) for one run, and storing them as JSON next to its metrics.

Specs are data: ``<run dir>/charts/<name>.vl.json`` can be diffed and checked in tests.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from oodatcaa.htmlreport.metrics import RunMetrics

SCHEMA = "https://vega.github.io/schema/vega-lite/v5.json"  # an identifier only; never fetched


def loss_chart(run: RunMetrics, title: str) -> dict[str, Any] | None:
    """Train and validation loss against iteration, the best validation checkpoint marked; None without data."""
    points = [{"iteration": r["iteration"], "loss": r["train_loss"], "series": "train"}
              for r in run.events("train") if isinstance(r.get("train_loss"), (int, float)) and "iteration" in r]
    val = [r for r in run.events("val") if isinstance(r.get("val_loss"), (int, float)) and "iteration" in r]
    points += [{"iteration": r["iteration"], "loss": r["val_loss"], "series": "validation"} for r in val]
    if not points:
        return None
    layers: list[dict[str, Any]] = [{
        "mark": {"type": "line", "point": True},
        "encoding": {"x": {"field": "iteration", "type": "quantitative"},
                     "y": {"field": "loss", "type": "quantitative"},
                     "color": {"field": "series", "type": "nominal"}},
    }]
    if val:
        best = min(val, key=lambda r: r["val_loss"])
        layers.append({"data": {"values": [{"iteration": best["iteration"], "loss": best["val_loss"],
                                            "label": f"best {best['val_loss']:.4f} @ {best['iteration']}"}]},
                       "mark": {"type": "point", "shape": "diamond", "size": 160, "color": "black", "filled": True},
                       "encoding": {"x": {"field": "iteration", "type": "quantitative"},
                                    "y": {"field": "loss", "type": "quantitative"},
                                    "tooltip": {"field": "label"}}})
    return {"$schema": SCHEMA, "title": title, "width": 420, "height": 220,
            "data": {"values": points}, "layer": layers}


def memory_chart(attempts: list[tuple[str, float]], target_gb: float | None, title: str) -> dict[str, Any] | None:
    """Peak memory (GB) of each attempt as bars, the target as a rule; None without attempts."""
    if not attempts:
        return None
    layers: list[dict[str, Any]] = [{
        "mark": "bar",
        "encoding": {"x": {"field": "attempt", "type": "nominal"},
                     "y": {"field": "peak_memory_gb", "type": "quantitative", "title": "peak memory (GB)"}},
    }]
    if target_gb is not None:
        layers.append({"data": {"values": [{"target": target_gb}]}, "mark": {"type": "rule", "color": "red"},
                       "encoding": {"y": {"field": "target", "type": "quantitative"}}})
    return {"$schema": SCHEMA, "title": title, "width": 300, "height": 180,
            "data": {"values": [{"attempt": a, "peak_memory_gb": g} for a, g in attempts]}, "layer": layers}


def throughput_chart(run: RunMetrics, title: str) -> dict[str, Any] | None:
    """Tokens/s per train report against iteration; None without data."""
    values = [{"iteration": r["iteration"], "tokens_per_second": r["tokens_per_second"]}
              for r in run.events("train") if isinstance(r.get("tokens_per_second"), (int, float)) and "iteration" in r]
    if not values:
        return None
    return {"$schema": SCHEMA, "title": title, "width": 420, "height": 160, "data": {"values": values},
            "mark": {"type": "line", "point": True},
            "encoding": {"x": {"field": "iteration", "type": "quantitative"},
                         "y": {"field": "tokens_per_second", "type": "quantitative", "title": "tokens/s"}}}


def store_spec(run_dir: Path, name: str, spec: dict[str, Any]) -> Path:
    """Write ``spec`` to ``run_dir/charts/<name>.vl.json`` (sorted keys, so diffs are stable); returns the path."""
    path = run_dir / "charts" / f"{name}.vl.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(spec, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return path

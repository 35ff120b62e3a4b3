"""Loss-curve PNG (matplotlib, Agg), drawn in a helper process that imports matplotlib while the job trains.

Importing matplotlib takes about 0.4 s of CPU, a noticeable share of a short job's wall time; the
helper (``python -m oodatcaa.jobs._plot``) imports it at the job's start, on another core, then waits
for one JSON request on stdin (``{"path", "train", "val", "title"}``), writes the PNG and exits 0. It
exits without writing anything when stdin closes without a request (the job died).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any


def plot_loss_curve(path: Path, train: list[dict[str, Any]], val: list[dict[str, Any]], title: str) -> bool:
    """Write a small PNG (6 x 4.5 in at 80 dpi, about 20 KB) of the train and validation loss
    (nats/token) and the learning rate by iteration. Returns False when matplotlib is missing or there
    is nothing to plot."""
    if not train and not val:
        return False
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        return False
    fig = Figure(figsize=(6, 4.5))
    FigureCanvasAgg(fig)
    ax, ax_lr = fig.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    if train:
        ax.plot([r["iteration"] for r in train], [r["train_loss"] for r in train], label="train", color="tab:blue")
        ax_lr.plot([r["iteration"] for r in train], [r["learning_rate"] for r in train], color="tab:green")
    if val:
        ax.plot([r["iteration"] for r in val], [r["val_loss"] for r in val], "o--", label="validation", color="tab:orange")
    ax.set_ylabel("loss (nats/token)")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    ax_lr.set_ylabel("lr", fontsize=8)
    ax_lr.set_xlabel("iteration")
    ax_lr.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    return True


class Plotter:
    """Starts the helper process now; :meth:`plot` hands it the data (or plots in-process if it failed)."""

    def __init__(self) -> None:
        try:
            self.proc: subprocess.Popen[bytes] | None = subprocess.Popen(
                [sys.executable, "-m", "oodatcaa.jobs._plot"], stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
            )
        except OSError:
            self.proc = None

    def plot(self, path: Path, train: list[dict[str, Any]], val: list[dict[str, Any]], title: str,
             timeout_s: float = 60.0) -> bool:
        """Write the PNG at ``path``; True when it exists afterwards."""
        request = json.dumps({"path": str(path), "train": train, "val": val, "title": title}).encode()
        if self.proc is not None:
            try:
                self.proc.communicate(request, timeout=timeout_s)
                if self.proc.returncode == 0 and path.is_file():
                    return True
            except (OSError, subprocess.TimeoutExpired):
                self.proc.kill()
                self.proc.wait()
        return plot_loss_curve(path, train, val, title)

    def close(self) -> None:
        """Stop the helper without plotting (closing its stdin makes it exit)."""
        if self.proc is not None and self.proc.returncode is None:
            try:
                self.proc.communicate(b"", timeout=10)
            except (OSError, subprocess.TimeoutExpired):
                self.proc.kill()
                self.proc.wait()


def main() -> int:
    try:
        import matplotlib

        matplotlib.use("Agg")
        from matplotlib.backends.backend_agg import FigureCanvasAgg  # noqa: F401 - import now, draw later
        from matplotlib.figure import Figure  # noqa: F401
    except ImportError:
        return 2
    data = sys.stdin.buffer.read()
    if not data.strip():
        return 0
    request = json.loads(data)
    ok = plot_loss_curve(Path(request["path"]), request["train"], request["val"], request["title"])
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())

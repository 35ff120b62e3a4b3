"""A rich progress bar for a running job, fed with its ``metrics.jsonl`` records (runner side).

:func:`oodatcaa.jobs.runner.run_job` shows it on stderr when stderr is a terminal (or when asked with
``progress=True``): the job's ``start`` record gives the total number of steps, each ``train`` record
the step reached, the training loss and tokens/s, each ``val`` record the validation loss. The time
left is rich's estimate from the recent rate of steps. Records with ``restored: true`` (the history a
resumed run replays) set the starting point without counting towards the rate.

Imports rich only when a bar is created; stdlib otherwise.
"""

from __future__ import annotations

from typing import Any


class JobProgress:
    """Callable ``on_progress`` observer that drives one rich progress bar.

    Args:
        description: the bar's label, e.g. ``"lora_train"``.
        console: a ``rich.console.Console`` (default: one on stderr).

    Use as a context manager, or call :meth:`close` when the job ends.
    """

    def __init__(self, description: str, console: Any = None):
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

        self.console = console if console is not None else Console(stderr=True)
        self.progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            TextColumn("step"),
            MofNCompleteColumn(),
            TextColumn("loss {task.fields[loss]}"),
            TextColumn("val {task.fields[val]}"),
            TextColumn("{task.fields[tps]} tok/s"),
            TimeElapsedColumn(),
            TextColumn("ETA"),
            TimeRemainingColumn(),
            console=self.console,
            transient=False,
        )
        self.description = description
        self.task: Any = None
        self.total: int | None = None
        self.started = False

    def __enter__(self) -> JobProgress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _ensure(self, total: int | None) -> None:
        if self.task is None:
            if not self.started:
                self.progress.start()
                self.started = True
            self.task = self.progress.add_task(self.description, total=total, loss="-", val="-", tps="-")

    def __call__(self, record: dict[str, Any]) -> None:
        """Update the bar from one metrics record (unknown events are ignored)."""
        event = record.get("event")
        if event == "start":
            total = record.get("total_iterations") or record.get("total_steps")
            self.total = int(total) if total else None
            self._ensure(self.total)
            self.progress.update(self.task, total=self.total)
            start = int(record.get("start_iteration") or 0)
            if start:  # a resumed run: the rate (and ETA) counts from here
                self.progress.reset(self.task, total=self.total, completed=start)
        elif event == "train":
            self._ensure(None)
            fields: dict[str, Any] = {"completed": int(record.get("iteration", 0))}
            loss = record.get("train_loss")
            if isinstance(loss, (int, float)):
                fields["loss"] = f"{loss:.3f}"
            tps = record.get("tokens_per_second")
            if isinstance(tps, (int, float)):
                fields["tps"] = f"{tps:,.0f}"
            if record.get("restored"):
                self.progress.reset(self.task, total=self.total, **fields)
            else:
                self.progress.update(self.task, **fields)
        elif event == "val" and self.task is not None:
            loss = record.get("val_loss")
            if isinstance(loss, (int, float)):
                self.progress.update(self.task, val=f"{loss:.3f}")

    def close(self) -> None:
        """Stop the live display (leaves the last state of the bar on the terminal)."""
        if self.started:
            self.progress.stop()
            self.started = False

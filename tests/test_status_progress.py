"""Issue 10 part 2: a progress column for running steps, headline metrics, the same fields in ``--json``."""

from __future__ import annotations

import math

from rich.console import Console

from oodatcaa.board.progress import progress_text, step_progress
from oodatcaa.cli.render import status_rows, status_table
from oodatcaa.core.models import Subtask
from oodatcaa.core.statuses import TaskStatus
from oodatcaa.core.store import QueueStore
from oodatcaa.core.workspace import find_workspace
from test_cli import _sprint_with_a_long_title


def test_step_progress_reads_the_builders_record_and_drops_nan():
    record = {"progress": {"event": "train", "iteration": 30, "total_iterations": 100, "train_loss": 1.23456,
                           "tokens_per_second": 5678.9, "steps_per_second": 2.0}}
    assert step_progress(record) == {"step": 30, "total": 100, "loss": 1.23456, "tokens_per_second": 5678.9,
                                     "eta_s": 35.0}
    assert progress_text(step_progress(record)) == "30/100 loss 1.235 5,679 tok/s ETA 0m35s"
    torn = step_progress({"progress": {"iteration": 5, "train_loss": math.nan, "tokens_per_second": "x"}})
    assert torn == {"step": 5, "total": None, "loss": None, "tokens_per_second": None, "eta_s": None}
    assert progress_text(torn) == "5/?"
    assert step_progress(None) is None and step_progress({"progress": "garbage"}) is None
    assert progress_text(None) == ""


def test_status_shows_progress_of_a_running_step_and_headline_metrics(tmp_path, capsys):
    repo = _sprint_with_a_long_title(tmp_path, capsys, "progress sprint")
    queue = QueueStore.for_workspace(find_workspace(repo)).read()
    task = queue.tasks[0]
    sub = Subtask(id=f"{task.id}-B01", kind="build", status=TaskStatus.IN_PROGRESS, title="train", step=1,
                  result={"progress": {"iteration": 12, "total_iterations": 40, "train_loss": 2.5,
                                       "tokens_per_second": 900}})
    task.subtasks.append(sub)
    task.metrics = {"command.returncode": 0, "zzz.unrelated": 9.0}
    rows = {r["id"]: r for r in status_rows(queue)}
    assert rows[sub.id]["progress"] == {"step": 12, "total": 40, "loss": 2.5, "tokens_per_second": 900.0,
                                        "eta_s": None}
    assert rows[task.id]["last_metric"] == "command.returncode=0"  # the kind's headline, not the last key
    console = Console(width=120, record=True)
    console.print(status_table(queue))
    text = console.export_text()
    assert "progress" in text and "12/40 loss 2.500 900 tok/s" in text

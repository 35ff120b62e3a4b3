"""``oodatcaa compare``: per-attempt rows from ``attempt_history``, differing params, bad input."""

from __future__ import annotations

import csv
import io
import json
from datetime import UTC, datetime

import pytest
from tests.support import store_with, workspace

from oodatcaa import compare
from oodatcaa.cli.main import main
from oodatcaa.core import lifecycle
from oodatcaa.core.criteria import Criterion, MetricCheck
from oodatcaa.core.failures import Failure, FailureKind
from oodatcaa.core.models import ATTEMPT_HISTORY_LIMIT, AttemptRecord, Queue, Sprint, Subtask, Task
from oodatcaa.core.statuses import TaskStatus
from oodatcaa.jobs.registry import numeric_metrics

S = TaskStatus
AT = datetime(2026, 1, 1, tzinfo=UTC)
#: The demo's T004 job (sprint-01.md): a memory profile at batch 4 against a 1.0 GB target.
JOB = {"kind": "memory_profile", "model": "default", "data": "data/procedures", "steps": 2, "batch_size": 4,
       "max_seq_length": 256, "num_layers": 8, "lora": {"rank": 8, "alpha": 16}, "target_gb": 1.0,
       "grad_checkpoint": False}
TRAIN_JOB = {"kind": "lora_train", "model": "default", "iters": 20, "batch_size": 4, "lora": {"rank": 8}}


def _summary(peak: float, train_peak: float, rss_gap: float) -> dict:
    return {"memory": {"peak_memory_gb": peak, "train_peak_gb": train_peak, "rss_minus_mlx_gb": rss_gap,
                       "target_gb": 1.0, "within_target": peak <= 1.0}}


def _t004() -> Task:
    """A story shaped like the demo's T004 before any build: one memory_profile step under a 1.0 GB ceiling."""
    crit = Criterion(id="AC1", text="peak memory stays under the target", critical=True,
                     check=MetricCheck(kind="metric", metric="memory.peak_memory_gb", op="<=", value=1.0))
    step = Subtask(id="T004-B01", kind="build", status=S.READY, title="train", step=1,
                   branch="feat/T004-step-01-train", job=dict(JOB), attempts=1)
    tester = Subtask(id="T004-T01", kind="test", status=S.BLOCKED, title="tests", step=1,
                     branch=step.branch, dependencies=[step.id])
    return Task(id="T004", title="fit the memory budget", status=S.IN_PROGRESS,
                acceptance_criteria=[crit], subtasks=[step, tester])


def _two_attempts(tmp_path):
    """Drive the lifecycle as the Builder and Refiner do: attempt 1 fails OOM at batch 4, attempt 2 builds at batch 2."""
    ws = workspace(tmp_path)
    sprint = Sprint(id="SPRINT-2026-001", number=1, title="s", created_at=AT)
    other = Task(id="T001", title="other")
    store = store_with(ws, Queue(sprint=sprint, tasks=[other, _t004()]))
    with store.transaction("builder") as tx:
        step = tx.queue.item("T004-B01")
        step.status = S.NEEDS_ADAPT  # the claim and its lease are not what is tested here
        lifecycle.on_build_failed(tx, step, Failure.of("oom", "ran out of memory", item=step.id),
                                  {"attempt": 1, "commit": "a" * 40, "summary": _summary(1.9, 1.9, 0.2),
                                   "max_rss_gb": 2.4}, numeric_metrics(_summary(1.9, 1.9, 0.2)))
    with store.transaction("refiner") as tx:
        task = tx.queue.task("T004")
        task.status = S.READY
        lifecycle.on_adapted(tx, task, "T004-B01", {**JOB, "batch_size": 2, "grad_checkpoint": True},
                             rebuild_all=False, what="halve batch", rule="memory.halve_batch")
    with store.transaction("builder") as tx:
        step = tx.queue.item("T004-B01")
        step.attempts = 2
        step.status = S.AWAITING_TEST
        tx.queue.task("T004").status = S.IN_PROGRESS
        lifecycle.on_build_done(tx, step, {"attempt": 2, "commit": "b" * 40, "summary": _summary(0.9, 0.9, 0.1)},
                                numeric_metrics(_summary(0.9, 0.9, 0.1)))
    with store.transaction("tester") as tx:
        tx.queue.item("T004-T01").result = {"verdict": {"decision": "accept", "passed": 1, "total": 1}}
    return ws, store


def test_t004_two_attempts_show_the_refiner_change_and_peak_memory(tmp_path):
    ws, store = _two_attempts(tmp_path)
    step = store.read().item("T004-B01")
    assert [a.attempt for a in step.attempt_history] == [1, 2]
    assert step.attempt_history[0].failure_kind == FailureKind.OOM and step.attempt_history[0].job["batch_size"] == 4
    rows = compare.collect_rows(ws, store.read(), ["T004"])
    assert [(r.step, r.attempt) for r in rows] == [("T004-B01", 1), ("T004-B01", 2)]
    assert [r.params["batch_size"] for r in rows] == [4, 2]
    assert compare.param_columns(rows, all_params=False) == ["batch_size", "grad_checkpoint"]
    assert [r.metrics["peak_memory_gb"] for r in rows] == [1.9, 0.9]
    assert rows[1].metrics["peak_memory_target_gb"] == 1.0
    assert rows[0].metrics["max_rss_gb"] == 2.4 and "max_rss_gb" not in rows[1].metrics
    assert "criteria" not in rows[0].metrics and rows[1].metrics["criteria"] == "1/1"
    headers, body = compare.table_cells(rows)
    assert headers[:7] == ["task", "step", "attempt", "kind", "outcome", "batch_size", "grad_checkpoint"]
    assert body[0][4] == "oom" and body[1][4] == "ok"
    assert body[0][headers.index("peak_memory_gb")] == "1.9 > 1"
    assert "lora.rank" not in headers and "lora.rank" in compare.table_cells(rows, all_params=True)[0]


def test_cli_formats(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "250")  # the terminal table folds cells narrower than its text
    ws, _ = _two_attempts(tmp_path)
    assert main(["-C", str(ws.root), "compare", "T004", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert [(d["task"], d["step"], d["attempt"]) for d in data] == [("T004", "T004-B01", 1), ("T004", "T004-B01", 2)]
    assert data[1]["params"]["lora.rank"] == 8 and data[1]["metrics"]["memory.peak_memory_gb"] == 0.9
    assert main(["-C", str(ws.root), "compare", "T004", "--csv", "--sort-by", "peak_memory_gb"]) == 0
    table = list(csv.reader(io.StringIO(capsys.readouterr().out)))
    assert table[0][5] == "batch_size" and [r[2] for r in table[1:]] == ["2", "1"]
    assert main(["-C", str(ws.root), "compare", "T004-B01", "--md"]) == 0
    md = capsys.readouterr().out.splitlines()
    assert md[0].startswith("| task | step | attempt") and md[1].startswith("|---|") and len(md) == 4
    assert main(["-C", str(ws.root), "compare", "T004"]) == 0
    out = capsys.readouterr().out
    assert "batch_size" in out and "1.9 > 1" in out


def test_unknown_task_names_it_and_the_known_ones(tmp_path, capsys):
    ws, _ = _two_attempts(tmp_path)
    assert main(["-C", str(ws.root), "compare", "T009"]) == 2
    err = capsys.readouterr().err
    assert "'T009'" in err and "T001, T004" in err
    with pytest.raises(compare.CompareError, match="T004-B07.*T004-B01"):
        compare.collect_rows(ws, _queue(), ["T004-B07"])
    with pytest.raises(compare.CompareError, match="no run has metric 'nope'"):
        compare.sort_rows(compare.collect_rows(ws, _queue(), ["T004"]), "nope")


def _queue() -> Queue:
    task = _t004()
    task.subtasks[0].attempt_history = [
        AttemptRecord(attempt=1, ok=True, job=dict(JOB), metrics=_flat(1.0), finished_at=AT)]
    return Queue(tasks=[task])


def _flat(peak: float) -> dict:
    return {"train.peak_memory_gb": peak, "train.final_loss": 1.5}


def test_runs_of_different_kinds_share_one_table_with_unrelated_params_blank():
    bench = {"kind": "inference_bench", "model": "default", "prompt": "hi", "max_tokens": 32}
    a, b = _t004(), Task(id="T002", title="bench")
    a.subtasks[0].attempt_history = [AttemptRecord(attempt=1, ok=True, job=dict(TRAIN_JOB), metrics=_flat(1.0),
                                                   finished_at=AT)]
    b.subtasks = [Subtask(id="T002-B01", kind="build", status=S.AWAITING_TEST, title="bench", step=1, job=bench,
                          attempt_history=[AttemptRecord(attempt=1, ok=True, job=bench, finished_at=AT,
                                                         metrics={"inference.generation_tps": 55.0})])]
    rows = compare.collect_rows(None, Queue(tasks=[a, b]), [])
    headers, body = compare.table_cells(rows)
    assert [r[3] for r in body] == ["lora_train", "inference_bench"]
    assert body[0][headers.index("final_train_loss")] == "1.5" and body[1][headers.index("final_train_loss")] == ""
    assert body[1][headers.index("batch_size")] == "" and body[0][headers.index("max_tokens")] == ""
    assert body[1][headers.index("tokens_per_second")] == "55"


def test_history_is_capped_and_a_legacy_result_is_one_row():
    task = _t004()
    step = task.subtasks[0]
    assert step.attempt_history == []
    step.result = {"attempt": 3, "summary": _summary(1.2, 1.2, 0.1)}
    rows = compare.collect_rows(None, Queue(tasks=[task]), ["T004"])
    assert [(r.attempt, r.metrics["peak_memory_gb"]) for r in rows] == [(3, 1.2)]

    class _Tx:  # record_attempt reads only the clock's time from the transaction
        now = AT

    for n in range(ATTEMPT_HISTORY_LIMIT + 3):
        step.attempts = n + 1
        lifecycle.record_attempt(_Tx(), step, {"attempt": n + 1}, None)  # type: ignore[arg-type]
    assert len(step.attempt_history) == ATTEMPT_HISTORY_LIMIT and step.attempt_history[-1].attempt == 13


def test_markup_in_params_is_literal():
    task = _t004()
    job = {**JOB, "prompt": "[bold]x[/] |pipe|"}
    task.subtasks[0].attempt_history = [
        AttemptRecord(attempt=1, ok=True, job=job, metrics={}, finished_at=AT),
        AttemptRecord(attempt=2, ok=True, job=dict(JOB), metrics={}, finished_at=AT)]
    rows = compare.collect_rows(None, Queue(tasks=[task]), [])
    from rich.console import Console

    console = Console(record=True, width=200)
    console.print(compare.rich_table(rows))
    assert "[bold]x[/]" in console.export_text()
    assert "\\|pipe\\|" in compare.markdown(rows)


def test_a_story_of_an_archived_sprint_and_the_change_against_the_baseline(tmp_path):
    from oodatcaa.baselines import record_story

    ws, store = _two_attempts(tmp_path)
    archived = store.read()
    archive = ws.sprint_archive_dir(1)
    archive.mkdir(parents=True)
    (archive / "SPRINT_QUEUE.json").write_text(json.dumps(archived.model_dump(mode="json"), indent=2) + "\n")
    current = Queue(sprint=Sprint(id="SPRINT-2026-002", number=2, title="s2", created_at=AT), tasks=[Task(id="T005", title="x")])
    rows = compare.collect_rows(ws, current, ["T004"])
    assert [r.params["batch_size"] for r in rows] == [4, 2]
    with pytest.raises(compare.CompareError, match="T001, T004, T005"):
        compare.collect_rows(ws, current, ["T009"])
    # a merged earlier story of the same kind and model is the baseline: peak memory 1.8 GB
    earlier = _t004().model_copy(update={"id": "T003", "subtasks": []})
    earlier.subtasks = [Subtask(id="T003-B01", kind="build", status=S.DONE, title="t", step=1, job=dict(JOB),
                                result={"summary": _summary(1.8, 1.8, 0.1)})]
    record_story(ws, earlier, "c" * 40)
    rows = compare.collect_rows(ws, current, ["T004"])
    assert rows[1].metrics["vs_baseline"]["memory.peak_memory_gb"] == pytest.approx(-0.5)
    headers, body = compare.table_cells(rows)
    assert "memory.peak_memory_gb -50.0%" in body[1][headers.index("vs baseline")]

"""``report --html``: the offline sprint page (issue 10 part 3): structure, escaping, stored specs, bad input."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from oodatcaa.core.models import Queue
from oodatcaa.core.workspace import Workspace
from oodatcaa.htmlreport import render_sprint_report, write_sprint_report
from oodatcaa.htmlreport.metrics import read_metrics
from support import add_steps, sample_queue, workspace


def _metrics_lines(n: int = 4) -> list[str]:
    """Real-format lora_train records (the fields ``JobContext.metric`` writes)."""
    lines = [json.dumps({"event": "start", "elapsed_s": 0.0, "total_iterations": n})]
    for it in range(1, n + 1):
        lines.append(json.dumps({"event": "train", "elapsed_s": it, "iteration": it, "train_loss": 3.0 - it * 0.4,
                                 "tokens_per_second": 100.0 + it, "peak_memory_gb": 1.0 + it / 10}))
        lines.append(json.dumps({"event": "val", "elapsed_s": it, "iteration": it, "val_loss": 3.1 - it * 0.3,
                                 "best": 1}))
    return lines


def _with_run(ws: Workspace, queue: Queue, lines: list[str], *, task_index: int = 0) -> Path:
    task = add_steps(queue.tasks[task_index])
    run_dir = ws.root / "runs" / task.subtasks[0].id
    run_dir.mkdir(parents=True)
    (run_dir / "metrics.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    task.subtasks[0].result = {"run_dir": f"runs/{task.subtasks[0].id}", "attempt": 1, "commit": "abc1234def"}
    return run_dir


def test_page_names_every_story_and_has_a_chart_per_plot(tmp_path: Path) -> None:
    ws, queue = workspace(tmp_path), sample_queue(3)
    run_dir = _with_run(ws, queue, _metrics_lines())
    page, stats = render_sprint_report(ws, queue)
    assert page.startswith("<!DOCTYPE html>")
    for task in queue.tasks:
        assert f'id="{task.id}"' in page and task.title in page
    assert stats.charts == 3  # loss, throughput, peak memory
    assert page.count('<div class="chart"') == 3 and page.count("<svg") >= 3
    assert "best 1.9000 @ 4" in json.dumps(json.loads((run_dir / "charts" / "loss.vl.json").read_text()))
    assert stats.problems == []
    assert "<code>abc1234def</code>" in page


def test_specs_are_stored_as_vega_lite_json_next_to_the_metrics(tmp_path: Path) -> None:
    ws, queue = workspace(tmp_path), sample_queue(1)
    run_dir = _with_run(ws, queue, _metrics_lines())
    render_sprint_report(ws, queue)
    spec = json.loads((run_dir / "charts" / "loss.vl.json").read_text(encoding="utf-8"))
    assert "vega-lite/v5" in spec["$schema"]
    series = {v["series"] for v in spec["data"]["values"]}
    assert series == {"train", "validation"}
    assert (run_dir / "charts" / "throughput.vl.json").is_file()


def test_page_makes_no_network_request(tmp_path: Path) -> None:
    ws, queue = workspace(tmp_path), sample_queue(2)
    _with_run(ws, queue, _metrics_lines())
    page, _ = render_sprint_report(ws, queue)
    assert "<script" not in page.lower()
    assert not re.search(r"""(src|href)\s*=\s*["']?\s*(https?:)?//""", page, re.I)
    assert "@import" not in page and "url(" not in page


def test_text_from_files_is_escaped(tmp_path: Path) -> None:
    ws, queue = workspace(tmp_path), sample_queue(1)
    queue.tasks[0].title = "<script>alert(1)</script>"
    assert queue.sprint is not None
    queue.sprint.goal = "<img src=x onerror=alert(2)>"
    page, _ = render_sprint_report(ws, queue)
    assert "<script>alert(1)" not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "<img src=x" not in page


def test_sprint_without_runs_is_a_valid_page_that_says_so(tmp_path: Path) -> None:
    ws, queue = workspace(tmp_path), sample_queue(2)
    path, stats = write_sprint_report(ws, queue)
    assert path == ws.work_dir / "reports" / "sprint_1.html"
    page = path.read_text(encoding="utf-8")
    assert stats.charts == 0 and "No runs yet" in page and page.rstrip().endswith("</html>")


def test_torn_last_line_and_nan_are_skipped_and_said(tmp_path: Path) -> None:
    ws, queue = workspace(tmp_path), sample_queue(1)
    lines = _metrics_lines()
    lines.insert(2, '{"event": "train", "iteration": 9, "train_loss": NaN}')
    lines.append('{"event": "val", "iteration": 5, "val_lo')
    run_dir = _with_run(ws, queue, lines)
    metrics = read_metrics(run_dir / "metrics.jsonl")
    assert len(metrics.problems) == 2
    assert "torn" in metrics.problems[1] and "non-finite train_loss" in metrics.problems[0]
    page, stats = render_sprint_report(ws, queue)
    assert len(stats.problems) == 2 and "skipped" in page and stats.charts == 3


def test_cli_report_html(tmp_path: Path, monkeypatch, capsys) -> None:
    from oodatcaa.cli.main import main
    from support import store_with

    ws, queue = workspace(tmp_path), sample_queue(1)
    store_with(ws, queue)
    monkeypatch.chdir(ws.root)
    out = tmp_path / "page.html"
    assert main(["report", "--html", str(out)]) == 0
    assert out.is_file() and "bytes" in capsys.readouterr().out


def _chromium() -> str | None:
    import shutil

    return next((p for p in (shutil.which(n) for n in ("chromium", "chromium-browser")) if p), None)


@pytest.mark.slow
def test_page_renders_offline_in_headless_chromium(tmp_path: Path) -> None:
    """Networking off (a dead proxy): every chart container holds an svg, the screenshot is not blank."""
    import subprocess
    import time

    import numpy as np
    from matplotlib.image import imread

    browser = _chromium()
    if browser is None:
        pytest.skip("chromium not found (Debian package `chromium`; .ci/run installs it when run as root)")
    ws, queue = workspace(tmp_path), sample_queue(2)
    _with_run(ws, queue, _metrics_lines())
    path, stats = write_sprint_report(ws, queue, tmp_path / "page.html")
    flags = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--proxy-server=127.0.0.1:9",
             "--proxy-bypass-list=<-loopback>", f"--user-data-dir={tmp_path / 'profile'}"]
    tic = time.perf_counter()
    dom = subprocess.run([*flags, "--dump-dom", path.as_uri()], capture_output=True, text=True, timeout=120).stdout
    rendered_s = time.perf_counter() - tic
    containers = re.findall(r'<div class="chart"[^>]*>(.*?)</div>', dom, re.S)
    assert len(containers) == stats.charts == 3
    assert all("<svg" in c for c in containers)
    for task in queue.tasks:
        assert task.title in dom
    shot = tmp_path / "shot.png"
    subprocess.run([*flags, f"--screenshot={shot}", "--window-size=1200,1600", path.as_uri()],
                   capture_output=True, timeout=120)
    pixels = np.asarray(imread(shot))
    assert pixels.std() > 0.01, "the screenshot is blank"
    print(f"page {stats.size_bytes} bytes, rendered {stats.seconds:.2f} s, chromium DOM {rendered_s:.2f} s")


def test_peak_memory_target_comes_from_the_story_criteria(tmp_path: Path) -> None:
    from oodatcaa.core.criteria import Criterion, MetricCheck
    from oodatcaa.htmlreport.page import memory_target

    ws, queue = workspace(tmp_path), sample_queue(1)
    task = queue.tasks[0]
    assert memory_target(task) is None
    task.acceptance_criteria.append(Criterion(id="AC2", text="memory", check=MetricCheck(
        kind="metric", metric="train.peak_memory_gb", op="<=", value=1.2)))
    assert memory_target(task) == 1.2
    _with_run(ws, queue, _metrics_lines())
    page, stats = render_sprint_report(ws, queue)
    assert stats.charts == 3 and 'data-spec="memory"' in page


def test_memory_chart_draws_the_target_as_a_rule() -> None:
    from oodatcaa.htmlreport.charts import memory_chart

    spec = memory_chart([("B01 attempt 1", 1.5), ("B01 attempt 2", 1.1)], 1.2, "memory")
    assert spec is not None and spec["layer"][1]["mark"]["type"] == "rule"
    assert spec["layer"][1]["data"]["values"] == [{"target": 1.2}]
    assert memory_chart([], 1.2, "memory") is None


def test_peak_memory_of_earlier_attempts_comes_from_the_attempt_history(tmp_path: Path) -> None:
    from datetime import UTC, datetime

    from oodatcaa.core.models import AttemptRecord

    ws, queue = workspace(tmp_path), sample_queue(1)
    _with_run(ws, queue, _metrics_lines())
    step = queue.tasks[0].subtasks[0]
    step.result = {**(step.result or {}), "attempt": 2}
    at = datetime(2026, 3, 1, tzinfo=UTC)
    step.attempt_history = [  # attempt 1 ran out of its target before the Refiner adapted it; 2 is the run dir's
        AttemptRecord(attempt=1, ok=True, metrics={"train.peak_memory_gb": 1.85, "train.final_loss": 1.2}, finished_at=at),
        AttemptRecord(attempt=2, ok=True, metrics={"train.peak_memory_gb": 1.4}, finished_at=at),
    ]
    page, _ = render_sprint_report(ws, queue)
    spec = json.loads((ws.root / "runs" / step.id / "charts" / "loss.vl.json").read_text())
    assert spec  # the run's own charts are still there
    memory = re.findall(rf"{step.id} attempt (\d)", page)
    assert "1" in memory and "2" in memory  # both attempts drawn in the memory chart


def test_cli_report_html_of_an_archived_sprint_and_of_one_that_is_not_there(tmp_path: Path, monkeypatch, capsys) -> None:
    from oodatcaa.cli.main import main
    from support import store_with

    ws, queue = workspace(tmp_path), sample_queue(2)
    store_with(ws, sample_queue(1))  # the current sprint holds T001 only
    archived = ws.archive_dir / "sprint_1"
    archived.mkdir(parents=True)
    queue.tasks[1].title = "only in the archived sprint"
    (archived / "SPRINT_QUEUE.json").write_text(queue.model_dump_json(), encoding="utf-8")
    monkeypatch.chdir(ws.root)
    out = tmp_path / "s1.html"
    assert main(["report", "--html", str(out), "--sprint", "1"]) == 0
    assert "only in the archived sprint" in out.read_text()
    capsys.readouterr()
    assert main(["report", "--html", str(tmp_path / "x.html"), "--sprint", "4"]) == 2
    assert "no archived queue of sprint 4 (archived sprints: 1;" in capsys.readouterr().err
    assert not (tmp_path / "x.html").exists()


def test_the_attempts_table_shows_what_each_attempt_changed_and_how_it_ended(tmp_path: Path) -> None:
    from datetime import UTC, datetime

    from oodatcaa.core.failures import FailureKind
    from oodatcaa.core.models import AttemptRecord

    ws, queue = workspace(tmp_path), sample_queue(1)
    step = add_steps(queue.tasks[0]).subtasks[0]
    at = datetime(2026, 3, 1, tzinfo=UTC)
    job = {"kind": "lora_train", "batch_size": 4, "lora": {"rank": 8}}
    step.attempt_history = [
        AttemptRecord(attempt=1, ok=False, job=job, failure_kind=FailureKind.OOM, finished_at=at),
        AttemptRecord(attempt=2, ok=True, job={**job, "batch_size": 2, "grad_checkpoint": True}, finished_at=at),
    ]
    page, _ = render_sprint_report(ws, queue)
    table = page.split("<h4>Attempts</h4>", 1)[1].split("</table>", 1)[0]
    assert "<td>oom</td><td>(as planned)</td>" in table
    assert "batch_size: 4 -&gt; 2; grad_checkpoint: - -&gt; true" in table


def test_exit_criteria_states_and_steps_without_metrics_are_on_the_page(tmp_path: Path) -> None:
    from datetime import UTC, datetime

    from oodatcaa.core.models import CriterionBrief

    ws, queue = workspace(tmp_path), sample_queue(2)
    queue.sprint.exit_criteria = ["T001 merged", "the team <agrees>"]
    queue.sprint.exit_states = [CriterionBrief(id="EC1", text="T001 merged", state="met", reason="T001 is done"),
                                CriterionBrief(id="EC2", text="the team <agrees>", state="needs_manual", reason="prose")]
    queue.sprint.exit_checked_at = datetime(2026, 12, 2, 12, 0, tzinfo=UTC)
    task = add_steps(queue.tasks[1])
    task.subtasks[0].result = {"attempt": 1, "commit": "feedbeef01"}  # a dataset/command job: no metrics.jsonl
    page, _stats = render_sprint_report(ws, queue)
    assert '<span class="PASS">met</span>' in page and '<span class="FAIL">needs_manual</span>' in page
    assert "the team &lt;agrees&gt;" in page and "evaluated 2026-12-02 12:00 UTC" in page
    assert "<code>feedbeef01</code> (its job records no metrics curve)" in page

"""``regression:`` criteria against the baselines of merged stories (issue 9, part 3).

Thresholds at their boundaries, both directions, no baseline, a missing metric, configured
thresholds, ``baselines.json`` (record, latest, forget, bad input), the Tester's typed failure for
the Refiner and the Integrator's record and "investigate" note.
"""

from __future__ import annotations

import json
import math
import subprocess

import pytest

from oodatcaa import baselines
from oodatcaa.core.clock import FakeClock
from oodatcaa.core.config import load_config
from oodatcaa.core.criteria import (
    CheckContext,
    CheckPolicy,
    Criterion,
    RegressionBaseline,
    RegressionCheck,
    decide,
    evaluate_criterion,
    parse_criterion_line,
)
from oodatcaa.core.errors import BacklogError, ConfigError
from oodatcaa.core.failures import FailureKind
from oodatcaa.core.models import Subtask, Task
from oodatcaa.core.statuses import TaskStatus
from oodatcaa.core.store import QueueStore
from oodatcaa.roles import AGENT_CLASSES
from oodatcaa.roles.base import AgentContext
from oodatcaa.roles.negotiator import promote
from oodatcaa.roles.tester import verdict_failure
from oodatcaa.sprints import new_sprint
from support import workspace

S = TaskStatus
TPS = "inference.generation_tps"


def _criterion(better: str = "higher", metric: str = TPS, critical: bool = False) -> Criterion:
    return Criterion(id="AC1", text="no slower", check=RegressionCheck(metric=metric, better=better), critical=critical)


def _check(value: float, base: float | None, better: str = "higher", policy: CheckPolicy | None = None):
    ns, key = TPS.split(".")
    baseline = None if base is None else RegressionBaseline(value=base, task="T001", source="T001 (merge abc)")
    ctx = CheckContext(metrics={ns: {key: value}}, baselines={TPS: baseline}, policy=policy)
    return evaluate_criterion(_criterion(better), ctx)


# -- parsing ------------------------------------------------------------------------------------

def test_parse_regression_check_and_round_trip():
    c = parse_criterion_line("- [ ] no slower `regression: inference.generation_tps higher` (critical)",
                             index=2, source="b.md", line=7)
    assert c.check == RegressionCheck(metric=TPS, better="higher") and c.critical and c.text == "no slower"
    assert c.to_markdown() == "- [ ] no slower `regression: inference.generation_tps higher` (critical)"
    low = parse_criterion_line("- [ ] loss `regression: train.final_loss LOWER`", index=1, source="b.md", line=1)
    assert low.check == RegressionCheck(metric="train.final_loss", better="lower")


@pytest.mark.parametrize("inline, words", [
    ("regression: inference.generation_tps", "expected `regression: NAME higher`"),
    ("regression: inference.generation_tps faster", "unknown direction 'faster'"),
    ("regression: tps higher", "bad metric name 'tps'"),
    ("regression: inference.generation_tps higher please", "expected `regression: NAME higher`"),
    ("regress: inference.generation_tps higher", "unknown check kind 'regress'"),
])
def test_bad_regression_check_names_line_and_fix(inline, words):
    with pytest.raises(BacklogError) as info:
        parse_criterion_line(f"- [ ] x `{inline}`", index=3, source="backlog.md", line=12)
    text = str(info.value)
    assert "backlog.md" in text and "12" in text and "AC3" in text and words in text


# -- thresholds -----------------------------------------------------------------------------------

@pytest.mark.parametrize("value, outcome, level", [
    (120.0, "PASS", "within"),       # better
    (100.0, "PASS", "within"),
    (80.0, "PASS", "within"),        # exactly 20 % worse: within
    (79.9, "PASS", "investigate"),
    (50.0, "PASS", "investigate"),   # exactly 50 % worse: still investigate
    (49.9, "FAIL", "regressed"),
    (0.0, "FAIL", "regressed"),
])
def test_higher_is_better_thresholds_at_the_boundaries(value, outcome, level):
    r = _check(value, 100.0, "higher")
    assert (r.outcome, r.regression.level) == (outcome, level), r.detail
    assert r.critical == (level == "regressed")
    assert r.regression.baseline == 100.0 and r.regression.value == value


@pytest.mark.parametrize("value, outcome, level", [
    (0.5, "PASS", "within"),
    (1.2, "PASS", "within"),        # 20 % worse
    (1.2001, "PASS", "investigate"),
    (1.5, "PASS", "investigate"),   # 50 % worse
    (1.5001, "FAIL", "regressed"),
])
def test_lower_is_better_thresholds_at_the_boundaries(value, outcome, level):
    r = _check(value, 1.0, "lower")
    assert (r.outcome, r.regression.level) == (outcome, level), r.detail


def test_decimal_boundary_is_not_pushed_over_by_binary_rounding():
    # 120 -> 96 is 20 % in decimal; in binary floats (120 - 96) / 120 may come out a hair above 0.2
    assert _check(96.0, 120.0).regression.level == "within"
    assert _check(0.6, 1.2, "higher").regression.level == "investigate"  # exactly 50 %


def test_detail_says_how_much_worse_and_against_what():
    r = _check(70.0, 100.0)
    assert "70 vs baseline 100 from T001 (merge abc)" in r.detail and "30 % worse" in r.detail
    assert "investigate" in r.detail
    assert "better" in _check(110.0, 100.0).detail


def test_zero_baseline_worse_is_a_regression_equal_is_not():
    assert _check(0.0, 0.0, "lower").regression.level == "within"
    r = _check(1.0, 0.0, "lower")
    assert r.outcome == "FAIL" and math.isinf(r.regression.worse_percent) and "infinitely" in r.detail


def test_a_critical_regression_sends_the_story_to_adapt_and_says_why():
    passing = [evaluate_criterion(Criterion(id=f"AC{i}", text="x"), CheckContext()) for i in range(2, 6)]
    passing = [p.model_copy(update={"outcome": "PASS"}) for p in passing]
    v = decide([_check(40.0, 100.0), *passing])
    assert v.decision == "adapt" and v.failed_critical == ["AC1"]  # 4/5 would otherwise be accepted
    assert "regressions: AC1 inference.generation_tps 60 % worse than the baseline 100" in v.reason


def test_an_investigate_regression_passes_and_is_named_in_the_reason():
    v = decide([_check(70.0, 100.0)])
    assert v.decision == "accept" and "(investigate)" in v.reason and "30 % worse" in v.reason


def test_no_baseline_passes_and_says_it_becomes_the_baseline():
    r = _check(42.0, None)
    assert r.outcome == "PASS" and r.regression.level == "no_baseline"
    assert "no baseline yet" in r.detail and "42 becomes the baseline when the story merges" in r.detail


def test_a_metric_the_run_does_not_produce_is_unverified_never_a_pass():
    ctx = CheckContext(metrics={"train": {"final_loss": 1.0}}, baselines={TPS: None})
    r = evaluate_criterion(_criterion(), ctx)
    assert r.outcome == "UNVERIFIED" and r.regression.level == "unverified"
    assert "metric inference.generation_tps not found" in r.detail
    assert decide([r]).decision == "needs_manual"


def test_without_baselines_the_check_is_unverified():
    r = evaluate_criterion(_criterion(), CheckContext(metrics={"inference": {"generation_tps": 5}}))
    assert r.outcome == "UNVERIFIED" and "baselines not available" in r.detail
    bad = CheckContext(metrics={"inference": {"generation_tps": 5}}, baseline_error="baselines.json: not valid JSON")
    assert "not valid JSON" in evaluate_criterion(_criterion(), bad).detail


@pytest.mark.parametrize("raw", [float("nan"), float("inf"), "fast"])
def test_a_broken_metric_fails(raw):
    r = evaluate_criterion(_criterion(), CheckContext(metrics={"inference": {"generation_tps": raw}}, baselines={}))
    assert r.outcome == "FAIL"


def test_configured_thresholds():
    policy = CheckPolicy(regression_investigate_percent=5, regression_fail_percent=10)
    assert _check(95.0, 100.0, policy=policy).regression.level == "within"
    assert _check(94.0, 100.0, policy=policy).regression.level == "investigate"
    assert _check(90.0, 100.0, policy=policy).regression.level == "investigate"
    assert _check(89.0, 100.0, policy=policy).regression.level == "regressed"
    with pytest.raises(ValueError, match="regression_investigate_percent"):
        CheckPolicy(regression_investigate_percent=60, regression_fail_percent=50)


def test_thresholds_are_read_from_config_toml(tmp_path):
    path = tmp_path / "config.toml"
    path.write_text("[check]\nregression_investigate_percent = 10\nregression_fail_percent = 30\n")
    check = load_config(path).check
    assert (check.regression_investigate_percent, check.regression_fail_percent) == (10, 30)
    path.write_text("[check]\nregression_investigate_percent = 40\nregression_fail_percent = 30\n")
    with pytest.raises(ConfigError, match="config.toml"):
        load_config(path)


def test_a_failed_regression_names_its_metric_for_the_refiner():
    crit = _criterion()
    r = _check(10.0, 100.0)
    v = decide([r])
    failure = verdict_failure("T002", "T002-T01", v, [r], [crit])
    assert failure.kind == FailureKind.CRITERIA_FAILED
    assert failure.details["failed_metrics"] == [TPS] and failure.details["failed_critical"] == ["AC1"]


# -- baselines.json -------------------------------------------------------------------------------

def _story(task_id: str, metrics: dict, *, kind: str = "inference_bench", model: str | None = None,
           steps: int = 1) -> Task:
    job = {"kind": kind} | ({"model": model} if model else {})
    subs = [Subtask(id=f"{task_id}-B{n:02d}", kind="build", status=S.DONE, title="s", step=n, job=job,
                    result={"summary": metrics}) for n in range(1, steps + 1)]
    subs.append(Subtask(id=f"{task_id}-T01", kind="test", status=S.DONE, title="t", step=1))
    return Task(id=task_id, title=f"story {task_id}", subtasks=subs)


def test_record_and_find_the_latest_baseline_of_the_same_kind_and_model(tmp_path):
    ws = workspace(tmp_path)
    clock = FakeClock()
    baselines.record_story(ws, _story("T001", {"inference": {"generation_tps": 100.0}}), "a" * 40, clock=clock)
    baselines.record_story(ws, _story("T002", {"inference": {"generation_tps": 80.0}}, model="models/other"), "b" * 40)
    baselines.record_story(ws, _story("T003", {"inference": {"generation_tps": 120.0, "trials": 3}}), "c" * 40)
    found = baselines.baseline_for(ws, TPS, "inference_bench", "default")
    assert found is not None and found.value == 120.0 and found.task == "T003" and "cccccccccc" in found.source
    assert baselines.baseline_for(ws, TPS, "inference_bench", "models/other").value == 80.0
    assert baselines.baseline_for(ws, TPS, "lora_train", "default") is None
    assert baselines.baseline_for(ws, "inference.prompt_tps", "inference_bench", "default") is None
    assert baselines.baseline_for(ws, TPS, "inference_bench", "default", exclude_task="T003").value == 100.0
    data = json.loads(baselines.baselines_path(ws).read_text())
    assert data["version"] == 1 and [e["task"] for e in data["entries"]] == ["T001", "T002", "T003"]
    assert data["entries"][0]["model"] == "default"  # the spec's default, though the block left it out


def test_recording_a_story_again_replaces_its_entries_and_makes_it_the_latest(tmp_path):
    ws = workspace(tmp_path)
    baselines.record_story(ws, _story("T001", {"inference": {"generation_tps": 100.0}}), "a" * 40)
    baselines.record_story(ws, _story("T002", {"inference": {"generation_tps": 90.0}}), "b" * 40)
    baselines.record_story(ws, _story("T001", {"inference": {"generation_tps": 101.0}}), "a" * 40)
    entries = baselines.load_baselines(ws).entries
    assert [e.task for e in entries] == ["T002", "T001"]
    assert baselines.baseline_for(ws, TPS, "inference_bench", "default").value == 101.0


def test_forget_story_falls_back_to_the_story_merged_before(tmp_path):
    ws = workspace(tmp_path)
    baselines.record_story(ws, _story("T001", {"inference": {"generation_tps": 100.0}}), "a" * 40)
    baselines.record_story(ws, _story("T002", {"inference": {"generation_tps": 60.0}}, steps=2), "b" * 40)
    assert baselines.forget_story(ws, "T002") == 2
    assert baselines.baseline_for(ws, TPS, "inference_bench", "default").value == 100.0
    assert baselines.forget_story(ws, "T002") == 0
    assert baselines.forget_story(ws, "T001") == 1
    assert baselines.baseline_for(ws, TPS, "inference_bench", "default") is None


def test_writes_keep_the_previous_version_as_a_backup(tmp_path):
    ws = workspace(tmp_path)
    baselines.record_story(ws, _story("T001", {"inference": {"generation_tps": 100.0}}), "a" * 40)
    first = baselines.baselines_path(ws).read_text()
    baselines.record_story(ws, _story("T002", {"inference": {"generation_tps": 90.0}}), "b" * 40)
    assert (ws.state_dir / "baselines.json.bak").read_text() == first


def test_a_story_without_metrics_records_nothing(tmp_path):
    ws = workspace(tmp_path)
    assert baselines.record_story(ws, _story("T001", {"command": {"output_tail": "x"}}, kind="command"), "a" * 40) == []
    assert not baselines.baselines_path(ws).exists()


def test_the_metric_comes_from_the_last_step_that_produced_it(tmp_path):
    ws = workspace(tmp_path)
    baselines.record_story(ws, _story("T001", {"eval": {"loss": 2.0}}, kind="evaluate"), "a" * 40)
    baselines.record_story(ws, _story("T002", {"eval": {"loss": 9.0}}, kind="evaluate", model="m2"), "b" * 40)
    task = _story("T003", {"eval": {"loss": 2.1}}, kind="evaluate")
    task.subtasks.insert(0, Subtask(id="T003-B02", kind="build", status=S.DONE, title="s", step=2,
                                    job={"kind": "evaluate", "model": "m2"}, result={"summary": {"eval": {"loss": 2.2}}}))
    found = baselines.baselines_for_story(ws, task, ["eval.loss", "eval.perplexity"])
    assert found["eval.loss"].value == 9.0 and found["eval.perplexity"] is None


@pytest.mark.parametrize("text, words", [
    ("{not json", "not valid JSON"),
    ('{"version": 1, "entries": [{"task": "T001"}]}', "field entries[0].step"),
    ('{"version": 1, "entries": [{"task": "T1", "step": "s", "kind": "k", "model": "m", "merge_commit": "c", '
     '"recorded_at": "2026-01-01T00:00:00Z", "metrics": {"a.b": "fast"}}]}', "field entries[0].metrics.a.b"),
    ('{"version": 2, "entries": []}', "field version"),
    ('{"entries": [], "extra": 1}', "field extra"),
])
def test_a_bad_baselines_file_is_named_with_its_field_and_never_overwritten(tmp_path, text, words):
    ws = workspace(tmp_path)
    path = baselines.baselines_path(ws)
    path.write_text(text)
    with pytest.raises(baselines.BaselinesError) as info:
        baselines.load_baselines(ws)
    message = str(info.value)
    assert str(path) in message and words in message and "git checkout" in message
    with pytest.raises(baselines.BaselinesError):
        baselines.record_story(ws, _story("T009", {"inference": {"generation_tps": 1.0}}), "a" * 40)
    with pytest.raises(baselines.BaselinesError):
        baselines.forget_story(ws, "T001")
    assert path.read_text() == text


def test_investigate_note_reads_the_testers_regressions():
    task = _story("T004", {})
    assert baselines.investigate_note(task) is None
    tester = task.tester()
    tester.result = {"regressions": [
        {"criterion_id": "AC1", "metric": TPS, "level": "investigate", "worse_percent": 35.0, "baseline": 120.0,
         "baseline_source": "T003 (merge abc)"},
        {"criterion_id": "AC2", "metric": "train.final_loss", "level": "within", "worse_percent": 1.0}]}
    note = baselines.investigate_note(task)
    assert note == "investigate: inference.generation_tps 35 % worse than 120.0 from T003 (merge abc)"


# -- through the Tester and the Integrator ----------------------------------------------------------

BACKLOG = """\
# Regression sprint

**Sprint Goal:** exercise regression criteria.

### T001: Time a command
**Type:** Story  **Complexity:** S  **Priority:** 1  **Dependencies:** None
**Description:** A command job.

```job
kind: command
run: "true"
```

**Acceptance Criteria:**
- [ ] the command succeeds `metric: command.returncode == 0` (critical)
- [ ] no slower than the last merge `regression: command.duration_s lower`
"""


def _run(ws, role: str) -> None:
    ctx = AgentContext.open(ws, f"{role}-t")
    AGENT_CLASSES[role](ctx).run(once=True, exit_when_complete=False)


def _to_tester(ws) -> None:
    _run(ws, "planner")
    with QueueStore.for_workspace(ws).transaction("negotiator") as tx:
        promote(tx)
    _run(ws, "builder")
    _run(ws, "tester")


@pytest.fixture
def sprint_ws(tmp_path):
    ws = workspace(tmp_path)
    backlog = tmp_path / "backlog.md"
    backlog.write_text(BACKLOG)
    new_sprint(ws, backlog)
    return ws


def _seed(ws, duration: float) -> None:
    baselines.record_story(ws, _story("T000", {"command": {"duration_s": duration}}, kind="command"), "f" * 40)


def test_tester_sends_a_critical_regression_to_adapt_with_the_metric(sprint_ws):
    _seed(sprint_ws, 1e-9)  # any real run is far slower than a nanosecond
    _to_tester(sprint_ws)
    q = QueueStore.for_workspace(sprint_ws).read()
    task = q.task("T001")
    assert task.status == S.NEEDS_ADAPT
    failure = task.tester().failure or task.failure
    assert failure.kind == FailureKind.CRITERIA_FAILED
    assert failure.details["failed_metrics"] == ["command.duration_s"] and failure.details["failed_critical"] == ["AC2"]
    report = (sprint_ws.report_dir("T001") / "tester_T001-T01.md").read_text()
    assert "critical regression" in report and "T000 (merge ffffffffff, command on -)" in report


def test_first_run_passes_and_its_merge_becomes_the_baseline(sprint_ws):
    _to_tester(sprint_ws)
    assert "up to 20 % worse than the baseline passes" in (sprint_ws.plan_dir("T001") / "TEST_PLAN.md").read_text()
    report = (sprint_ws.report_dir("T001") / "tester_T001-T01.md").read_text()
    assert "AC2 command.duration_s: no baseline yet" in report and "becomes the baseline" in report
    assert QueueStore.for_workspace(sprint_ws).read().task("T001").status == S.READY_FOR_INTEGRATOR
    _run(sprint_ws, "integrator")
    task = QueueStore.for_workspace(sprint_ws).read().task("T001")
    assert task.status == S.DONE
    found = baselines.baseline_for(sprint_ws, "command.duration_s", "command", "-")
    assert found is not None and found.task == "T001" and task.merged_commit[:10] in found.source
    tracked = subprocess.run(["git", "-C", str(sprint_ws.root), "ls-files"], capture_output=True, text=True).stdout
    assert ".oodatcaa/work/baselines.json" in tracked.split()
    assert "investigate" not in (sprint_ws.root / "CHANGELOG.md").read_text()


def test_an_investigate_regression_is_flagged_in_the_changelog_and_the_tag(sprint_ws):
    _seed(sprint_ws, 1e6)
    _to_tester(sprint_ws)
    store = QueueStore.for_workspace(sprint_ws)
    with store.transaction("test") as tx:  # a real run cannot be timed to land 20-50 % slower: set the finding
        tester = tx.queue.item("T001-T01")
        tester.result = dict(tester.result) | {"regressions": [
            {"criterion_id": "AC2", "metric": "command.duration_s", "better": "lower", "level": "investigate",
             "value": 1.3, "baseline": 1.0, "baseline_source": "T000", "worse_percent": 30.0}]}
    _run(sprint_ws, "integrator")
    assert store.read().task("T001").status == S.DONE
    assert "investigate: command.duration_s 30 % worse than 1.0 from T000" in (sprint_ws.root / "CHANGELOG.md").read_text()
    tag = subprocess.run(["git", "-C", str(sprint_ws.root), "tag", "-n30", "T001-complete"],
                         capture_output=True, text=True).stdout
    assert "Flag: investigate: command.duration_s 30 % worse" in tag


def test_an_unreadable_baselines_file_leaves_the_regression_unverified(sprint_ws):
    baselines.baselines_path(sprint_ws).write_text("{broken")
    _to_tester(sprint_ws)
    task = QueueStore.for_workspace(sprint_ws).read().task("T001")
    assert task.status == S.NEEDS_MANUAL  # 1/2 pass, nothing failed: only a person can settle it
    report = (sprint_ws.report_dir("T001") / "tester_T001-T01.md").read_text()
    assert "baselines not available" in report and "not valid JSON" in report


def test_sprint_new_names_a_misspelled_regression_metric(tmp_path):
    ws = workspace(tmp_path)
    backlog = tmp_path / "backlog.md"
    backlog.write_text(BACKLOG.replace("regression: command.duration_s lower", "regression: command.durations lower"))
    with pytest.raises(BacklogError, match="unknown metric 'command.durations'.*did you mean 'command.duration_s'"):
        new_sprint(ws, backlog)

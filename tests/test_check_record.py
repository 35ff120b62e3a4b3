"""The Check decision recorded as the original did (issue 9, part 8).

The rationale in the Tester's report (critical criteria, the pass ratio against 80 % / 60 %,
regressions, the gray-zone rule) and one ``SPRINT_DISCUSS.md`` entry per gray-zone or person
decision, appended under a lock and moved into the sprint's archive at ``sprint complete``.
"""

from __future__ import annotations

import re
import subprocess
import threading

import pytest

from oodatcaa import checkrecord
from oodatcaa.closing import complete_sprint
from oodatcaa.core.clock import FakeClock
from oodatcaa.core.criteria import (
    CheckContext,
    CheckPolicy,
    Criterion,
    CriterionResult,
    RegressionBaseline,
    RegressionCheck,
    decide,
    evaluate_criterion,
)
from oodatcaa.core.statuses import TaskStatus
from oodatcaa.core.store import QueueStore
from oodatcaa.roles import AGENT_CLASSES
from oodatcaa.roles.base import AgentContext
from oodatcaa.roles.negotiator import promote
from oodatcaa.sprints import new_sprint
from support import workspace

S = TaskStatus


def _results(pattern: str, *, critical: str = "") -> list[CriterionResult]:
    """``"ppfu"`` -> AC1 PASS, AC2 PASS, AC3 FAIL, AC4 UNVERIFIED; ``critical`` holds the critical indices (1-based)."""
    outcome = {"p": "PASS", "f": "FAIL", "u": "UNVERIFIED"}
    return [CriterionResult(criterion_id=f"AC{i}", text=f"c{i}", critical=str(i) in critical, outcome=outcome[ch],
                            observed="obs", expected="exp", detail=f"detail {i}")
            for i, ch in enumerate(pattern, 1)]


def _text(results: list[CriterionResult], policy: CheckPolicy | None = None) -> tuple[str, bool]:
    verdict = decide(results, policy)
    return "\n".join(checkrecord.rationale(results, verdict, policy)), checkrecord.needs_discussion(verdict)


def test_rationale_of_an_accept_quotes_the_ratio_and_the_critical_criteria():
    text, discuss = _text(_results("ppppf", critical="1"))
    assert "- **Critical criteria:** all 1 passed (AC1)" in text
    assert "- **Pass ratio:** 4/5 = 80 %, at or above the accept ratio 80 %" in text
    assert "- **Regressions:** none checked" in text and "- **Need a person (unverified):** none" in text
    assert "- **Decision:** `accept`" in text and "Gray-zone" not in text
    assert not discuss


def test_rationale_of_a_gray_zone_names_the_rule_and_the_policy():
    text, discuss = _text(_results("pppf"), CheckPolicy(gray_zone_decision="accept"))
    assert "3/4 = 75 %, in the gray zone (60 % to 80 %)" in text
    assert "- **Gray-zone decision:** `accept` (config `[check] gray_zone_decision`)" in text
    assert discuss  # a gray-zone decision is recorded even when it accepts


def test_rationale_of_a_critical_failure_lists_it_with_its_detail():
    text, discuss = _text(_results("fpppp", critical="1"))
    assert "- **Critical criteria not passing:** AC1 FAIL: `detail 1`" in text
    assert "- **Decision:** `adapt`" in text and not discuss


def test_rationale_below_the_gray_zone_and_with_unverified_criteria():
    text, _ = _text(_results("pffu"))
    assert "1/4 = 25 %, below the gray-zone ratio 60 %" in text
    assert "- **Need a person (unverified):** AC4" in text
    text, discuss = _text(_results("pu"))
    assert discuss and "- **Decision:** `needs_manual`" in text


def test_rationale_lists_each_regression_with_its_baseline_and_the_thresholds():
    crit = Criterion(id="AC1", text="fast", check=RegressionCheck(metric="inference.generation_tps", better="higher"))
    ctx = CheckContext(metrics={"inference": {"generation_tps": 70.0}}, policy=CheckPolicy(),
                       baselines={"inference.generation_tps": RegressionBaseline(value=100, task="T003", source="T003")})
    text, _ = _text([evaluate_criterion(crit, ctx)])
    assert "- **Regressions** (investigate above 20 % worse, fail above 50 %):" in text
    assert "  - `AC1 inference.generation_tps 30 % worse than the baseline 100 from T003 (investigate)`" in text


def test_backlog_text_in_the_rationale_stays_literal():
    results = _results("f", critical="1")
    results[0] = results[0].model_copy(update={"detail": "boom `x` **bold**\n# heading"})
    text, _ = _text(results)
    assert "`` boom `x` **bold** # heading ``" in text and "\n# heading" not in text


# -- SPRINT_DISCUSS.md ------------------------------------------------------------------------------

def _append(ws, task_id: str, pattern: str = "pppf", clock=None):
    results = _results(pattern)
    verdict = decide(results)
    return checkrecord.append_discussion(ws, task_id=task_id, title=f"story {task_id} [b]x[/b]", verdict=verdict,
                                         rationale_lines=checkrecord.rationale(results, verdict),
                                         evidence=[f"- **Tester report:** `reports/{task_id}/tester.md`"], clock=clock)


def test_one_entry_per_decision_with_date_story_verdict_rationale_and_evidence(tmp_path):
    ws = workspace(tmp_path)
    clock = FakeClock()
    path = _append(ws, "T001", clock=clock)
    _append(ws, "T002", "pu", clock=clock)
    text = path.read_text()
    assert path == ws.work_dir / "SPRINT_DISCUSS.md" and text.startswith(checkrecord.DISCUSS_HEADER)
    assert text.count("# SPRINT_DISCUSS") == 1
    headers = re.findall(r"^## .*$", text, re.M)
    assert headers == ["## 2026-01-01T00:00:00Z — T001 — ADAPT (gray zone)",
                       "## 2026-01-01T00:00:00Z — T002 — NEEDS_MANUAL (a person decides)"]
    first = text.split("## 2026")[1]
    assert "- **Story:** T001 `story T001 [b]x[/b]`" in first and "- **Verdict:** `adapt`" in first
    assert "### Rationale" in first and "in the gray zone" in first
    assert "### Evidence" in first and "reports/T001/tester.md" in first


def test_concurrent_appends_lose_no_entry(tmp_path):
    ws = workspace(tmp_path)
    threads = [threading.Thread(target=_append, args=(ws, f"T{i:03d}")) for i in range(1, 9)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    text = checkrecord.discuss_path(ws).read_text()
    assert sorted(re.findall(r"— (T\d{3}) —", text)) == [f"T{i:03d}" for i in range(1, 9)]


def test_archive_moves_the_entries_once(tmp_path):
    ws = workspace(tmp_path)
    _append(ws, "T001")
    _append(ws, "T002")
    archive = ws.sprint_archive_dir(1)
    archive.mkdir(parents=True)
    live = checkrecord.discuss_path(ws).read_text()
    assert checkrecord.archive_discussion(ws, archive) == 2
    assert not checkrecord.discuss_path(ws).exists() and (archive / "SPRINT_DISCUSS.md").read_text() == live
    assert checkrecord.archive_discussion(ws, archive) == 0
    # killed after writing the archive but before removing the live file: not appended twice
    checkrecord.discuss_path(ws).write_text(live)
    assert checkrecord.archive_discussion(ws, archive) == 2
    assert (archive / "SPRINT_DISCUSS.md").read_text() == live


# -- through the Tester and sprint complete -----------------------------------------------------------

BACKLOG = """\
# Record sprint

**Sprint Goal:** exercise the decision record.

### T001: Gray zone
**Type:** Story  **Complexity:** S  **Priority:** 1  **Dependencies:** None
**Description:** Three of four criteria pass.

```job
kind: command
run: "true"
```

**Acceptance Criteria:**
- [ ] the command succeeds `metric: command.returncode == 0` (critical)
- [ ] it ran `metric: command.duration_s >= 0`
- [ ] it did not time out `metric: command.returncode < 1`
- [ ] a file nobody writes `file: never/there.txt`
"""


def _run(ws, role: str) -> None:
    ctx = AgentContext.open(ws, f"{role}-t")
    AGENT_CLASSES[role](ctx).run(once=True, exit_when_complete=False)


@pytest.fixture
def tested(tmp_path):
    ws = workspace(tmp_path)
    backlog = tmp_path / "backlog.md"
    backlog.write_text(BACKLOG)
    new_sprint(ws, backlog)
    _run(ws, "planner")
    with QueueStore.for_workspace(ws).transaction("negotiator") as tx:
        promote(tx)
    _run(ws, "builder")
    _run(ws, "tester")
    return ws


def test_tester_report_carries_the_decision_record_and_the_gray_zone_is_discussed(tested):
    ws = tested
    task = QueueStore.for_workspace(ws).read().task("T001")
    assert task.status == S.NEEDS_ADAPT  # the default gray_zone_decision
    report = (ws.report_dir("T001") / "tester_T001-T01.md").read_text()
    record = report.split("## Decision record")[1].split("## Criteria")[0]
    assert "- **Critical criteria:** all 1 passed (AC1)" in record
    assert "3/4 = 75 %, in the gray zone (60 % to 80 %)" in record
    assert "- **Gray-zone decision:** `adapt`" in record
    discuss = checkrecord.discuss_path(ws).read_text()
    assert discuss.count("\n## ") == 1 and "— T001 — ADAPT (gray zone)" in discuss
    assert "`.oodatcaa/work/reports/T001/tester_T001-T01.md`" in discuss and "AC4 FAIL" in discuss


def test_sprint_complete_moves_the_discussion_into_the_archive(tested):
    ws = tested
    live = checkrecord.discuss_path(ws).read_text()
    complete_sprint(ws, force=True)
    archived = ws.sprint_archive_dir(1) / "SPRINT_DISCUSS.md"
    assert archived.read_text() == live and not checkrecord.discuss_path(ws).exists()
    tracked = subprocess.run(["git", "-C", str(ws.root), "ls-files"], capture_output=True, text=True).stdout.split()
    assert ".oodatcaa/work/archive/sprint_1/SPRINT_DISCUSS.md" in tracked

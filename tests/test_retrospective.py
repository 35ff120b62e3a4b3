"""The sprint retrospective and the project completion report: pure text from queues, checked after writing."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

import pytest

from oodatcaa.completion import ObjectiveReport
from oodatcaa.core.config import EstimatesSection
from oodatcaa.core.failures import Failure
from oodatcaa.core.models import AdaptationRecord, Estimate, ObjectiveSnapshot, Queue, Sprint, Task
from oodatcaa.core.objective import CriterionState, Evidence
from oodatcaa.core.statuses import TaskStatus
from oodatcaa.retrospective import (
    COMPLETION_SECTIONS,
    RETROSPECTIVE_SECTIONS,
    outcome_group,
    render_completion_report,
    render_retrospective,
    story_time,
    verify_completion_report,
    verify_retrospective,
)

S = TaskStatus
T0 = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)
NOW = T0 + timedelta(days=2)


def est(low: float, high: float) -> Estimate:
    return Estimate(low_minutes=low, high_minutes=high, source="backlog", text=f"{low:g}-{high:g} minutes")


def sprint_queue(number: int = 4, *, completed: bool = True, forced: bool = False) -> Queue:
    """Five stories: done (within), done (over, adapted, started over), cancelled, needs_manual, ready (never started)."""
    sprint = Sprint(id=f"SPRINT-2026-{number:03d}", number=number, title="Fine-tune | evaluate", goal="LoRA\non procedures",
                    start_date=date(2026, 3, 2), target_date=date(2026, 3, 12), created_at=T0,
                    completed_at=T0 + timedelta(days=1) if completed else None, forced=forced,
                    exit_criteria=["T001 done", "T004 done"])
    done = Task(id="T001", title="Load | benchmark", status=S.DONE, estimate=est(60, 120), plan_version=1,
                started_at=T0, finished_at=T0 + timedelta(minutes=90),
                metrics={"inference.generation_tps": 85.123456, "inference.peak_memory_gb": 0.51, "command.returncode": 0,
                         "inference.trials": 2})
    adapted = Task(id="T002", title="LoRA train", status=S.DONE, complexity="M", plan_version=2, adapt_loops=1,
                   started_at=T0, finished_at=T0 + timedelta(minutes=400),
                   adaptations=[
                       AdaptationRecord(loop=1, rule="reduce_peak_memory", step="T002-B01", failure_kind="criteria_failed",
                                        at=T0 + timedelta(minutes=60)),
                       AdaptationRecord(loop=2, rule="lower_learning_rate", step="T002-B02", failure_kind="diverged",
                                        at=T0 + timedelta(minutes=120)),
                       AdaptationRecord(loop=1, rule="smaller_batch", step="T002-B01", at=T0 + timedelta(minutes=200))],
                   metrics={"train.final_loss": 1.23456789, "train.peak_memory_gb": 12345.678})
    cancelled = Task(id="T003", title="GGUF export", status=S.CANCELLED, started_at=T0)
    manual = Task(id="T004", title="Judge the answers", status=S.NEEDS_MANUAL, estimate=est(300, 400), started_at=T0,
                  manual_reason="prose-only criteria:\n a person must check", adapt_loops=3,
                  failure=Failure.of("criteria_failed", "AC2 failed"))
    waiting = Task(id="T005", title="Quantize", status=S.READY, estimate=est(30, 60))
    return Queue(sprint=sprint, tasks=[done, adapted, cancelled, manual, waiting])


def exit_states() -> list[CriterionState]:
    return [
        CriterionState(id="EC1", text="T001 done", state="met", via="stories",
                       reason="every linked story is done and merged: T001",
                       evidence=[Evidence(task="T001", tag="T001-complete", commit="0123456789abcdef", status="done",
                                          detail="merged on the trunk")]),
        CriterionState(id="EC2", text="T004 done", state="unmet", via="stories",
                       reason="not merged on the trunk yet: T004",
                       evidence=[Evidence(task="T004", status="needs_manual", detail="not merged")]),
        CriterionState(id="EC3", text="answers read well", state="needs_manual", via="none",
                       reason="no machine check and no story linked to it; a person must decide"),
    ]


def snapshot() -> ObjectiveSnapshot:
    return ObjectiveSnapshot(percent=50.0, met=1, total=2, trunk_commit="feedface" * 5, checked_at=NOW)


def render(queue: Queue | None = None, *, forced: bool = False, states: list[CriterionState] | None = None,
           objective: ObjectiveSnapshot | None = None, rules: EstimatesSection | None = None) -> str:
    return render_retrospective(queue or sprint_queue(), exit_states() if states is None else states,
                                objective=objective, tag="sprint-4-complete", forced=forced, now=NOW, rules=rules)


def section(text: str, heading: str) -> str:
    """The body of one ``##`` section."""
    start = text.index(heading + "\n")
    end = text.find("\n## ", start + len(heading))
    return text[start:end if end != -1 else None]


def row(text: str, story: str) -> str:
    return next(line for line in text.splitlines() if line.startswith(f"| {story} |"))


# --------------------------------------------------------------------------------------------
# Retrospective
# --------------------------------------------------------------------------------------------


def test_header_sections_in_order_and_dates():
    text = render()
    assert text.startswith("# Retrospective — Sprint 4 (SPRINT-2026-004)\n")
    positions = [text.index(f"\n{h}\n") for h in RETROSPECTIVE_SECTIONS]
    assert positions == sorted(positions)
    head = text[:positions[0]]
    assert "- **Goal:** LoRA on procedures" in head  # a newline in the goal stays on its line
    assert "- **Created:** 2026-03-02 09:00 UTC" in head
    assert "- **Completed:** 2026-03-03 09:00 UTC" in head
    assert "- **Backlog start date:** 2026-03-02" in head and "- **Backlog target date:** 2026-03-12" in head
    assert "- **Tag:** sprint-4-complete" in head
    assert "--force" not in head
    verify_retrospective(text, sprint_queue())


def test_not_completed_sprint_says_when_written():
    text = render(sprint_queue(completed=False))
    assert "- **Written:** 2026-03-04 09:00 UTC (the sprint is not marked completed)" in text
    assert "**Completed:**" not in text


def test_no_sprint_is_a_value_error():
    with pytest.raises(ValueError, match="no sprint"):
        render(Queue())


def test_outcome_classification():
    queue = sprint_queue()
    assert [outcome_group(t) for t in queue.tasks] == ["done", "done", "cancelled", "needs_manual", "unfinished"]
    out = section(render(queue), "## Outcome")
    assert "Stories: 5 — 2 done, 1 cancelled, 1 needs_manual, 1 unfinished." in out
    done = out[out.index("### Done"):out.index("### Cancelled")]
    assert "- T001 Load | benchmark" in done and "- T002 LoRA train" in done
    assert "- T003 GGUF export" in out[out.index("### Cancelled"):out.index("### Left to a person")]
    assert "- T004 Judge the answers — prose-only criteria: a person must check" in out
    assert "- T005 Quantize (ready)" in out[out.index("### Unfinished"):]


def test_outcome_lists_say_none_and_manual_falls_back_to_the_failure():
    queue = sprint_queue()
    manual = queue.task("T004").model_copy(update={"manual_reason": None})
    queue = queue.model_copy(update={"tasks": [manual]})
    out = section(render(queue, states=[]), "## Outcome")
    assert "- T004 Judge the answers — criteria_failed: AC2 failed" in out
    for heading in ("### Done", "### Cancelled", "### Unfinished"):
        assert f"{heading}\n\nnone" in out


def test_adaptations_table():
    loops = section(render(), "## Loops and adaptations")
    assert "| Story | Adaptation loops | Plan version | Rules applied | Last failure |" in loops
    assert row(loops, "T002") == ("| T002 | 1 | 2 (started over) | reduce_peak_memory on T002-B01 (criteria_failed); "
                                  "lower_learning_rate on T002-B02 (diverged); smaller_batch on T002-B01 | - |")
    assert row(loops, "T004") == "| T004 | 3 | 0 | - | criteria_failed |"
    assert row(loops, "T001") == "| T001 | 0 | 1 | - | - |"


def test_time_against_estimate_verdicts():
    times = section(render(rules=EstimatesSection()), "## Time against estimate")
    assert row(times, "T001") == "| T001 | 2026-03-02 09:00 UTC | 90 | 60-120 min | within |"
    # M by complexity: 144-288 min with its 20 % buffer; 400 min is over
    assert row(times, "T002") == "| T002 | 2026-03-02 09:00 UTC | 400 | 144-288 min by complexity | over |"
    assert row(times, "T003") == "| T003 | 2026-03-02 09:00 UTC | - | none | - (cancelled; its end is not recorded) |"
    # needs_manual: the clock runs to the sprint's completion (a day): 1440 min > 400
    assert row(times, "T004") == "| T004 | 2026-03-02 09:00 UTC | 1440 (running) | 300-400 min | over so far |"
    assert row(times, "T005") == "| T005 | - | - | 30-60 min | - |"
    assert "Total: 1930 min (32.2 h) elapsed over 3 stories; estimated 504-808 min for the 3 of them with an estimate." in times


def test_under_estimate_and_no_rules_means_no_estimate():
    task = Task(id="T009", title="quick", status=S.DONE, estimate=est(60, 120), started_at=T0,
                finished_at=T0 + timedelta(minutes=20))
    assert story_time(task, NOW).verdict == "under"
    assert story_time(task, NOW).elapsed_minutes == pytest.approx(20.0)
    by_complexity = Task(id="T010", title="m", status=S.DONE, complexity="M", started_at=T0,
                         finished_at=T0 + timedelta(minutes=200))
    assert story_time(by_complexity, NOW).estimate is None
    assert story_time(by_complexity, NOW, EstimatesSection()).verdict == "within"
    assert "| T002 | 2026-03-02 09:00 UTC | 400 | none | - |" in render()


def test_metrics_table_escapes_titles_and_rounds_floats():
    metrics = section(render(), "## Metrics")
    assert "| Story | Title | Metrics |" in metrics
    # headline metrics and the ones the criteria check; inference.trials is neither
    assert row(metrics, "T001") == ("| T001 | Load \\| benchmark | command.returncode: 0; "
                                    "inference.generation_tps: 85.12; inference.peak_memory_gb: 0.51 |")
    assert row(metrics, "T002") == "| T002 | LoRA train | train.final_loss: 1.235; train.peak_memory_gb: 12346 |"
    assert row(metrics, "T005") == "| T005 | Quantize | - |"
    # every row has exactly the table's three cells: the escaped pipe does not split one
    for line in metrics.splitlines():
        if line.startswith("| T"):
            assert len(line.replace("\\|", "").split("|")) == 5


def test_newline_and_heading_in_a_title_cannot_fake_a_section():
    queue = sprint_queue()
    queue.tasks[0].title = "evil\n## Metrics\n| x | y |"
    text = render(queue)
    assert text.count("\n## Metrics\n") == 1
    assert "| T001 | evil<br>## Metrics<br>\\| x \\| y \\| |" in text
    assert "- T001 evil ## Metrics | x | y |" in text


def test_exit_criteria_met_and_unmet():
    crit = section(render(), "## Exit criteria")
    assert "- EC1 met: T001 done\n  - why: every linked story is done and merged: T001\n" \
           "  - evidence: T001 (tag T001-complete, commit 0123456789ab, done) — merged on the trunk" in crit
    assert "- EC2 unmet: T004 done" in crit and "- EC3 needs_manual: answers read well" in crit
    assert "1/3 met" in crit
    assert "none evaluated" in section(render(states=[]), "## Exit criteria")
    assert "0/0 met" in render(states=[])


def test_forced_lists_the_unmet_exit_criteria():
    text = render(forced=True)
    head = text[:text.index("## Outcome")]
    assert "**Completed with `--force`** while these exit criteria were not met:" in head
    assert "- EC2 unmet: T004 done" in head and "- EC3 needs_manual: answers read well" in head
    assert "EC1" not in head
    met_only = render(forced=True, states=exit_states()[:1])
    assert "every exit criterion below was met" in met_only


def test_objective_section():
    assert section(render(), "## Objective").strip().endswith("not evaluated")
    assert "objective 50.0 % (1/2 met) (checked 2026-03-04 09:00 UTC on trunk commit feedfacefeed)" in render(
        objective=snapshot())
    broken = ObjectiveSnapshot(percent=0, met=0, total=0, checked_at=NOW, error="OBJECTIVE.md is missing")
    assert "objective not evaluated: OBJECTIVE.md is missing" in render(objective=broken)


def test_verify_retrospective_refuses_empty_missing_section_and_missing_story():
    queue = sprint_queue()
    text = render(queue)
    verify_retrospective(text, queue)
    for empty in ("", "  \n\t\n"):
        with pytest.raises(ValueError, match="empty"):
            verify_retrospective(empty, queue)
    with pytest.raises(ValueError, match="missing section\\(s\\): ## Metrics$"):
        verify_retrospective(text.replace("## Metrics\n", "## Numbers\n"), queue)
    # a heading only mentioned inside a line does not count
    with pytest.raises(ValueError, match="## Objective"):
        verify_retrospective(text.replace("\n## Objective\n", "\nsee ## Objective\n"), queue)
    extra = queue.model_copy(update={"tasks": [*queue.tasks, Task(id="T006", title="x")]})
    # T0061 or XT006 is no mention of T006
    with pytest.raises(ValueError, match="story ID\\(s\\) not mentioned: T006$"):
        verify_retrospective(text + "\nT0061 XT006\n", extra)
    other = sprint_queue(number=5)
    with pytest.raises(ValueError, match="no title line naming SPRINT-2026-005"):
        verify_retrospective(text, other)


# --------------------------------------------------------------------------------------------
# Project completion report
# --------------------------------------------------------------------------------------------


def objective_report() -> ObjectiveReport:
    criteria = [
        CriterionState(id="SC1", text="MLX | chosen", state="met", via="check", reason="file exists",
                       evidence=[Evidence(check="file: docs/framework.md", commit="abcdef0123456789", observed="exists")]),
        CriterionState(id="SC2", text="loss is low", state="met", via="stories", reason="every linked story is merged",
                       evidence=[Evidence(task="T001", tag="T001-complete", status="done", detail="merged on the trunk"),
                                 Evidence(task="T002", status="done", detail="merged on the trunk")]),
        CriterionState(id="SC10", text="answers read well", state="needs_manual", via="none",
                       reason="no machine check and no story linked to it; a person must decide"),
    ]
    return ObjectiveReport(source="objectives/OBJECTIVE.md", trunk="main", trunk_commit="abcdef0123456789" * 2 + "abcdef01",
                           criteria=criteria, completion_percent=66.7, unmatched_links=["T003: OBJECTIVE.md → Nowhere"])


def two_sprints() -> list[Queue]:
    first = sprint_queue(number=1)
    second_sprint = Sprint(id="SPRINT-2026-002", number=2, title="carry on", created_at=T0 + timedelta(days=2),
                           completed_at=T0 + timedelta(days=3), forced=True)
    # T005 was unfinished in sprint 1 and carried over; its sprint-1 copy is not counted again
    carried = Task(id="T005", title="Quantize", status=S.DONE, carried_from="SPRINT-2026-001", plan_version=1,
                   started_at=T0 + timedelta(days=2), finished_at=T0 + timedelta(days=2, minutes=30))
    new = Task(id="T006", title="Fuse", status=S.DONE, plan_version=3,
               started_at=T0 + timedelta(days=2), finished_at=T0 + timedelta(days=2, minutes=60),
               adaptations=[AdaptationRecord(loop=1, rule="smaller_batch", step="T006-B01", at=T0 + timedelta(days=2))])
    return [Queue(sprint=second_sprint, tasks=[carried, new]), first]


def test_completion_report_content():
    text = render_completion_report(objective_report(), two_sprints(), now=NOW + timedelta(days=2))
    assert text.startswith("# Project completion report\n")
    assert "- **Date:** 2026-03-06 09:00 UTC" in text
    assert "- **Trunk:** main at " + "abcdef0123456789" * 2 + "abcdef01" in text
    assert "- **Completion:** 2/3 criteria met (66.7 %)" in text
    assert "- **Tag:** project-complete" in text
    crit = section(text, "## Success criteria")
    assert row(crit, "SC1") == "| SC1 | met | MLX \\| chosen | file: docs/framework.md (commit abcdef012345): exists |"
    assert row(crit, "SC2") == ("| SC2 | met | loss is low | T001 (tag T001-complete, done) — merged on the trunk; "
                                "T002 (done) — merged on the trunk |")
    assert row(crit, "SC10").startswith("| SC10 | needs_manual | answers read well | no machine check")
    assert "- T003: OBJECTIVE.md → Nowhere" in crit
    sprints = section(text, "## Sprints")
    assert sprints.index("SPRINT-2026-001") < sprints.index("SPRINT-2026-002")
    assert row(sprints, "SPRINT-2026-001") == "| SPRINT-2026-001 | 1 | Fine-tune \\| evaluate | 2/5 | 2026-03-03 09:00 UTC | no |"
    assert row(sprints, "SPRINT-2026-002") == "| SPRINT-2026-002 | 2 | carry on | 2/2 | 2026-03-05 09:00 UTC | yes |"
    totals = section(text, "## Totals")
    assert "- Stories: 6 — 4 done, 1 cancelled, 1 needs_manual, 0 unfinished" in totals
    assert "- Adaptation loops: 4" in totals
    assert "- Start overs: 3" in totals
    # 90 + 400 + 30 + 60 minutes of finished stories
    assert "- Elapsed story time: 9.7 h (started to merged, finished stories)" in totals
    assert "- Wall time: 72.0 h (2026-03-02 09:00 UTC to 2026-03-05 09:00 UTC)" in totals
    verify_completion_report(text, objective_report())
    for heading in COMPLETION_SECTIONS:
        assert f"\n{heading}\n" in text


def test_completion_report_without_a_completed_sprint_runs_to_now():
    queue = sprint_queue(number=1, completed=False)
    text = render_completion_report(objective_report(), [queue], now=NOW, tag="v1.0.0")
    assert "- Wall time: 48.0 h (2026-03-02 09:00 UTC to 2026-03-04 09:00 UTC, to now: no sprint is marked completed)" in text
    assert "- **Tag:** v1.0.0" in text
    with pytest.raises(ValueError, match="no sprint"):
        render_completion_report(objective_report(), [Queue()], now=NOW)


def test_verify_completion_report():
    report = objective_report()
    text = render_completion_report(report, two_sprints(), now=NOW)
    with pytest.raises(ValueError, match="empty"):
        verify_completion_report(" \n", report)
    with pytest.raises(ValueError, match="missing section\\(s\\): ## Totals"):
        verify_completion_report(text.replace("## Totals", "## Sums"), report)
    # SC1 is no mention of SC10 and the other way round
    with pytest.raises(ValueError, match="criterion ID\\(s\\) not mentioned: SC10$"):
        verify_completion_report(text.replace("SC10", "SCX"), report)

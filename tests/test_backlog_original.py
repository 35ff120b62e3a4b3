"""The original backlog format, as people write it (DESIGN.md §4, issue 8 part 1), and the estimate rules (part 2).

``tests/fixtures/original_backlog.md`` carries every item field of the original (Type, Complexity,
Status, Priority, Dependencies, Description, Acceptance Criteria, Links to Objective, Estimated Time),
the sprint-level ``>`` lines, ``---`` separators and a ``## Sprint Summary``: all of it is read, nothing refused.
"""

from __future__ import annotations

import textwrap
import tomllib
from datetime import date
from pathlib import Path

import pytest

from oodatcaa.backlog import load_backlog, parse_backlog, parse_duration_range, status_kind
from oodatcaa.core.config import ComplexityEstimate, EstimatesSection, complexity_key, default_config_toml, load_config
from oodatcaa.core.errors import BacklogError, ConfigError

FIXTURE = Path(__file__).resolve().parent / "fixtures" / "original_backlog.md"


def md(text: str) -> str:
    return textwrap.dedent(text).lstrip("\n")


def line_of(text: str, fragment: str) -> int:
    return next(i for i, line in enumerate(text.splitlines(), 1) if fragment in line)


# --------------------------------------------------------------------------------------------
# The fixture: the whole original format
# --------------------------------------------------------------------------------------------


def test_original_backlog_is_read_whole_without_warnings():
    b = load_backlog(FIXTURE, strict=True)  # strict: not even a warning
    assert b.warnings == []
    assert b.ids == ["T001", "T002", "T003", "T004"]
    assert b.goal == "Stand up the QLoRA training system on the bundled model and measure it end to end."
    assert (b.start_date, b.target_date) == (date(2025, 10, 5), date(2025, 10, 15))
    assert b.exit_criteria == ["T001 and T002 merged and tagged", "training peak memory measured and under 16 GB"]

    t1, t2, t3, t4 = b.items
    assert (t1.type, t1.complexity, t1.status, t1.priority, t1.dependencies) == ("Story", "S", "needs_plan", 1, [])
    assert t1.objective_links == ["OBJECTIVE.md → Training System (Core) → QLoRA Setup → Framework selection"]
    assert (t1.estimate.low_minutes, t1.estimate.high_minutes, t1.estimate.source, t1.estimate.text) == (
        45, 45, "backlog", "45 min")
    assert [j.kind for j in t1.jobs] == ["model_check"] and len(t1.acceptance_criteria) == 2
    assert t1.description.endswith("so that the training framework choice is settled.")

    assert (t2.status, t2.status_kind, t2.dependencies) == ("blocked", "blocked", ["T001"])
    assert t2.objective_links == ["OBJECTIVE.md → Training System (Core) → QLoRA Setup → Adapter training",
                                  "OBJECTIVE.md → Memory → Peak under 16 GB"]
    assert (t2.estimate.low_minutes, t2.estimate.high_minutes) == (120, 180)

    # no Estimated Time: `sprint new` estimates it from its complexity
    assert (t3.type, t3.status_kind, t3.estimate, t3.jobs) == ("Spike", "open", None, [])
    assert t3.objective_links == ["OBJECTIVE.md → Evaluation → Human review"]
    assert [c.check for c in t3.acceptance_criteria] == [None, None]  # prose only: a person decides

    assert (t4.status_kind, t4.estimate.low_minutes, t4.estimate.high_minutes) == ("cancelled", 60, 120)
    # the `---` separators are not text of any item
    assert all("---" not in it.description for it in b.items)


def test_original_backlog_summary_is_kept_as_notes():
    notes = load_backlog(FIXTURE).notes
    assert "Sprint 4 Start: 2025-10-05" in notes
    assert "Target Completion: 2025-10-15 (7-10 working days)" in notes
    for expected in ("Total Items: 4", "Type Breakdown: 3 Stories, 1 Spike", "Complexity Breakdown: 2 S, 1 M, 1 L",
                     "Estimated Total Time: 8-12 hours", "Critical Path: T001 → T002 → T003",
                     "Parallel Opportunities:\n- T004 can run beside T002 once T001 is done",
                     "Priority Order:\n1. T001 (unblocks everything)\n2. T002\n3. T003",
                     "Next Steps:\n- Run the Planner on T001\n- Book a reviewer for T003"):
        assert expected in notes, (expected, notes)


# --------------------------------------------------------------------------------------------
# Links to Objective
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("body,links", [
    ("**Links to Objective:** OBJECTIVE.md → A → B", ["OBJECTIVE.md → A → B"]),
    ("**Links to Objective:** OBJECTIVE.md → A, B; OBJECTIVE.md → C", ["OBJECTIVE.md → A, B", "OBJECTIVE.md → C"]),
    ("**Links to Objective:**\n- OBJECTIVE.md → A\n- OBJECTIVE.md → B\n\nMore prose.", ["OBJECTIVE.md → A", "OBJECTIVE.md → B"]),
    ("**Links to Objective:**\n\n* OBJECTIVE.md → A\n  → continued", ["OBJECTIVE.md → A → continued"]),
    ("**Links to Objective:**\n- [ ] OBJECTIVE.md → A", ["OBJECTIVE.md → A"]),
    ("**Links to Objective:** None", []),
    ("**Links to Objectives:** OBJECTIVE.md → A\n**Estimated Time:** 2h", ["OBJECTIVE.md → A"]),
])
def test_links_to_objective(body, links):
    b = parse_backlog(f"### T001: x\n**Type:** Story\n{body}\n")
    assert b.items[0].objective_links == links
    assert b.warnings == []


def test_prose_after_links_is_description():
    b = parse_backlog("### T001: x\n**Links to Objective:**\n- OBJECTIVE.md → A\n\nMore prose.\n")
    assert b.items[0].description == "More prose."


# --------------------------------------------------------------------------------------------
# Estimated Time
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("text,minutes", [
    ("120-180 minutes", (120, 180)),
    ("120–180 min", (120, 180)),
    ("2h", (120, 120)),
    ("45 min", (45, 45)),
    ("1-2 hours", (60, 120)),
    ("1.5 h", (90, 90)),
    ("90m", (90, 90)),
    ("1h 30m", (90, 90)),
    ("1h30m-2h", (90, 120)),
    ("30m - 2h", (30, 120)),
    ("2 to 3 hours", (120, 180)),
    ("2-3 days", (960, 1440)),
    ("1 working day", (480, 480)),
    ("~2 HOURS", (120, 120)),
    ("120-180 minutes (2-3 hours)", (120, 180)),
    ("None", None), ("TBD", None), ("", None), ("-", None),
])
def test_duration_forms(text, minutes):
    assert parse_duration_range(text) == minutes


@pytest.mark.parametrize("text,why", [
    ("soon", "cannot read"), ("2 weeks", "unknown unit"), ("120-180", "no unit"), ("3-2 hours", "above the high end"),
    ("0 min", "more than zero"), ("1-2-3 h", "two ends"), ("1h 30", "needs a unit"), ("1,5 h", "cannot read"),
])
def test_duration_refused(text, why):
    with pytest.raises(ValueError, match=why):
        parse_duration_range(text)


def test_malformed_estimated_time_names_file_line_and_forms(tmp_path):
    text = md("""
        ### T001: x
        **Type:** Story
        **Estimated Time:** a couple of hours
        """)
    path = tmp_path / "SPRINT_BACKLOG.md"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(BacklogError) as info:
        load_backlog(path)
    err = info.value
    assert err.line == 3
    assert str(err).startswith(f"{path}:3: **Estimated Time:** 'a couple of hours' of T001 is not a duration")
    for form in ("`120-180 minutes`", "`2h`", "`45 min`", "`1-2 hours`"):
        assert form in str(err)


# --------------------------------------------------------------------------------------------
# Status, complexity and sprint-level lines: warnings, never errors
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("written,kind", [
    (None, "open"), ("needs_plan", "open"), ("Not Started", "open"), ("in progress", "open"), ("ready", "open"),
    ("Blocked", "blocked"), ("done", "done"), ("✅ Completed", "done"), ("Cancelled", "cancelled"),
    ("canceled", "cancelled"), ("won't do", "cancelled"),
])
def test_status_kinds(written, kind):
    assert status_kind(written) == kind


def test_blocked_without_dependencies_is_a_warning():
    text = "### T001: a\n**Status:** blocked\n\n### T002: b\n**Status:** blocked\n**Dependencies:** T001\n"
    [w] = parse_backlog(text).warnings
    assert w.line == 2 and "T001 is written blocked but names no **Dependencies:**" in w.message


def test_done_item_is_a_warning():
    text = "### T001: a\n**Status:** Done\n\n### T002: b\n**Dependencies:** T001\n"
    [w] = parse_backlog(text).warnings
    assert w.line == 2 and "does not run it again" in w.message


def test_complexity_without_rule_is_a_warning_unless_estimated():
    text = "### T001: a\n**Complexity:** 5 points\n\n### T002: b\n**Complexity:** 8\n**Estimated Time:** 2h\n"
    [w] = parse_backlog(text).warnings
    assert w.line == 2 and "complexity '5 points' of T001 has no estimate rule" in w.message


def test_sprint_date_without_a_date_is_a_warning_and_a_note():
    text = "> **Sprint 4 Start:** next Monday\n> **Target Completion:** 2025-02-30\n\n### T001: a\n"
    b = parse_backlog(text)
    assert (b.start_date, b.target_date) == (None, None)
    assert [w.line for w in b.warnings] == [1, 2]
    assert "Sprint 4 Start: next Monday" in b.notes
    with pytest.raises(BacklogError, match=r"YYYY-MM-DD.*line 2: .*--strict") as info:
        parse_backlog(text, strict=True)
    assert info.value.line == 1


@pytest.mark.parametrize("label", ["Sprint Start", "Start Date", "Sprint 12 Start", "Sprint Start Date", "Started"])
def test_start_labels(label):
    assert parse_backlog(f"**{label}:** 2026-01-05\n\n### T001: a\n").start_date == date(2026, 1, 5)


@pytest.mark.parametrize("label", ["Target Completion", "Target Date", "End Date", "Sprint 3 End", "Deadline", "Due"])
def test_target_labels(label):
    assert parse_backlog(f"**{label}:** 2026-01-15\n\n### T001: a\n").target_date == date(2026, 1, 15)


def test_other_sections_and_labels_are_notes_not_errors():
    text = md("""
        # Sprint
        **Sprint:** SPRINT-2026-004  **Team:** ana, bo

        ### T001: a
        **Type:** Story

        ## Notes
        **Risk:** the data may be late
        - ask for it early

        ## Retrospective Hooks
        Plain prose here is ignored.
        """)
    b = parse_backlog(text, strict=True)
    assert b.notes == ["Sprint: SPRINT-2026-004", "Team: ana, bo", "Risk: the data may be late\n- ask for it early"]


# --------------------------------------------------------------------------------------------
# The estimate rules (config [estimates])
# --------------------------------------------------------------------------------------------


def test_complexity_heuristics_of_the_original():
    rules = EstimatesSection()
    got = {c: (e.low_minutes, e.high_minutes, e.source) for c in ("S", "M", "L", "XL")
           if (e := rules.for_complexity(c)) is not None}
    assert got == {"S": (30, 120, "complexity"), "M": (144, 288, "complexity"),  # 2-4 h + 20 %
                   "L": (312, 624, "complexity"), "XL": (624, 1248, "complexity")}  # +30 %
    assert rules.for_complexity(None) is None and rules.for_complexity("5") is None


@pytest.mark.parametrize("written,key", [("m", "M"), ("Medium", "M"), (" small ", "S"), ("Extra Large", "XL"),
                                         ("xl", "XL"), ("large", "L"), ("3", None), ("", None)])
def test_complexity_words(written, key):
    assert complexity_key(written) == key


def test_estimates_are_configurable(tmp_path):
    cfg = tmp_path / "config.toml"
    cfg.write_text("[estimates]\nM = {low_minutes = 60, high_minutes = 90, buffer_percent = 50}\n", encoding="utf-8")
    rules = load_config(cfg).estimates
    m = rules.for_complexity("M")
    assert (m.low_minutes, m.high_minutes) == (90, 135)
    assert rules.L == EstimatesSection().L  # the rest keep their defaults


@pytest.mark.parametrize("table,what", [
    ("M = {low_minutes = 60, high_minutes = 90}", "buffer_percent"),  # never drops a buffer silently
    ("M = {low_minutes = 90, high_minutes = 60, buffer_percent = 0}", "below low_minutes"),
    ("XXL = {low_minutes = 1, high_minutes = 2, buffer_percent = 0}", "XXL"),
])
def test_bad_estimates_config(tmp_path, table, what):
    cfg = tmp_path / "config.toml"
    cfg.write_text(f"[estimates]\n{table}\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=what):
        load_config(cfg)


def test_default_config_shows_the_rules_commented_out():
    text = default_config_toml()
    section = text[text.index("[estimates]"):].split("\n\n")[0].splitlines()
    assert all(line.startswith("# ") for line in section[1:])
    uncommented = "[estimates]\n" + "\n".join(line[2:].split("  #")[0] for line in section[1:])
    assert EstimatesSection(**tomllib.loads(uncommented)["estimates"]) == EstimatesSection()
    assert ComplexityEstimate(low_minutes=1, high_minutes=1, buffer_percent=0).estimate().high_minutes == 1

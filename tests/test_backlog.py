"""Unit tests of oodatcaa.backlog: the Markdown backlog parser and writer."""

from __future__ import annotations

import re
import textwrap
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from oodatcaa.backlog import (
    Backlog,
    BacklogItem,
    JobBlock,
    format_backlog,
    load_backlog,
    parse_backlog,
)
from oodatcaa.core.criteria import CommandCheck, Criterion, FileCheck, MetricCheck
from oodatcaa.core.errors import BacklogError
from oodatcaa.core.models import Estimate

DOCS = Path(__file__).resolve().parents[1] / "docs" / "backlog-format.md"

DESIGN_EXAMPLE = """\
### T004: LoRA fine-tune on the procedures dataset
**Type:** Story  **Complexity:** M  **Priority:** 2  **Dependencies:** T003

```job
kind: lora_train
model: default            # the bundled offline model, or an HF id / local path
data: data/procedures
profile: fast_dev         # fast_dev | balanced | max_quality
lora: {rank: 16, alpha: 32}
iters: 60
```

**Acceptance Criteria:**
- [ ] peak memory stays under target `metric: train.peak_memory_gb <= 16` (critical)
- [ ] loss goes down `metric: train.final_loss < train.first_loss`
- [ ] adapter saved `file: adapters/adapter_config.json`
"""


def md(text: str) -> str:
    return textwrap.dedent(text).lstrip("\n")


def item(i: int = 1, body: str = "", deps: str = "None", title: str | None = None) -> str:
    return f"### T{i:03d}: {title or f'Item {i}'}\n**Type:** Story  **Dependencies:** {deps}\n{body}\n"


def bad(text: str) -> BacklogError:
    with pytest.raises(BacklogError) as info:
        parse_backlog(text, source="SPRINT_BACKLOG.md")
    assert info.value.source == "SPRINT_BACKLOG.md"
    return info.value


def line_of(text: str, needle: str, nth: int = 1) -> int:
    hits = [i for i, line in enumerate(text.splitlines(), start=1) if needle in line]
    return hits[nth - 1]


# --------------------------------------------------------------------------------------------
# The documented examples
# --------------------------------------------------------------------------------------------


def test_design_example_item():
    text = "### T003: Prerequisite\n\n" + DESIGN_EXAMPLE
    b = parse_backlog(text)
    t4 = b.item("T004")
    assert t4.title == "LoRA fine-tune on the procedures dataset"
    assert (t4.type, t4.complexity, t4.priority, t4.dependencies) == ("Story", "M", 2, ["T003"])
    assert t4.line == 3
    assert [j.line for j in t4.jobs] == [line_of(text, "```job")]
    assert t4.jobs[0].data == {"kind": "lora_train", "model": "default", "data": "data/procedures",
                               "profile": "fast_dev", "lora": {"rank": 16, "alpha": 32}, "iters": 60}
    assert t4.jobs[0].kind == "lora_train"
    ac = t4.acceptance_criteria
    assert [c.id for c in ac] == ["AC1", "AC2", "AC3"]
    assert ac[0] == Criterion(id="AC1", text="peak memory stays under target", critical=True,
                              check=MetricCheck(metric="train.peak_memory_gb", op="<=", value=16))
    assert ac[1].check == MetricCheck(metric="train.final_loss", op="<", value="train.first_loss")
    assert ac[2].check == FileCheck(path="adapters/adapter_config.json")
    assert t4.description == ""


def docs_example() -> tuple[str, int]:
    text = DOCS.read_text(encoding="utf-8")
    m = re.search(r"^````markdown\n(.*?)^````$", text, re.S | re.M)
    assert m, "docs/backlog-format.md has no ````markdown example"
    return m.group(1), text[: m.start(1)].count("\n")


def test_docs_full_example_parses():
    text, _ = docs_example()
    b = parse_backlog(text, source="docs")
    assert b.title == "Sprint 4: fine-tuning on procedures"
    assert b.goal == "Fine-tune the default model on the procedures dataset within 16 GB of memory."
    assert b.exit_criteria == ["T002 merged and tagged `T002-complete`", "the adapter is documented in the CHANGELOG"]
    assert b.ids == ["T001", "T002", "T003"]
    t1, t2, t3 = b.items
    assert t1.status == "needs_plan" and t1.priority == 1
    assert t1.description == "Load the bundled model, count its parameters and check that\nthe tokenizer round-trips text."
    assert [j.kind for j in t2.jobs] == ["lora_train", "inference_bench"]
    assert t2.jobs[0].line < t2.jobs[1].line
    assert t2.acceptance_criteria[4].check == CommandCheck(run="python scripts/check_data.py data/procedures")
    assert t2.objective_links == ["OBJECTIVE.md → Training System (Core) → QLoRA Setup → Adapter training"]
    assert (t2.estimate.low_minutes, t2.estimate.high_minutes) == (120, 180)
    assert b.start_date.isoformat() == "2025-10-05" and b.target_date.isoformat() == "2025-10-15"
    assert b.warnings == []
    assert t3.type == "Spike" and t3.jobs == []
    assert all(c.check is None for c in t3.acceptance_criteria)
    assert t3.acceptance_criteria[0].critical
    assert [i.id for i in b.ordered()] == ["T001", "T002", "T003"]


def test_docs_error_example_is_real():
    text = DOCS.read_text(encoding="utf-8")
    shown = re.search(r"^SPRINT_BACKLOG\.md:31: (.*)$", text, re.M).group(1)
    backlog = "\n" * 28 + "### T001: x\n**Acceptance Criteria:**\n- [ ] loss `metric: train.loss = 2`\n"
    assert str(bad(backlog)) == f"SPRINT_BACKLOG.md:31: {shown}"


# --------------------------------------------------------------------------------------------
# Header: title, goal, exit criteria
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("header,goal", [
    ("# Sprint 4\n\nShip the adapter\nwithin budget.\n\nMore text.\n", "Ship the adapter within budget."),
    ("# Sprint 4\n**Sprint:** SPRINT-2026-004\n\nShip it.\n", "Ship it."),
    ("# Sprint 4\n\nA paragraph.\n\n**Sprint Goal:** The real goal.\n", "The real goal."),
    ("# Sprint 4\n**Goal:**\nOn the next line\nand the one after.\n", "On the next line and the one after."),
    ("# Sprint 4\n\n## Goal\n\nFrom a section.\n", "From a section."),
    ("# Sprint 4\n\n## Sprint Goal\nFrom a section.\n\n## Items\n", "From a section."),
    ("# Sprint 4\n\n- a list, not a goal\n", None),
    ("# Sprint 4\n\n## Notes\n\nnot a goal\n", None),
    ("", None),
    ("Some text before any title.\n", None),
])
def test_goal(header, goal):
    b = parse_backlog(header + "\n" + item(1))
    assert b.goal == goal


def test_title_is_first_h1_and_optional():
    assert parse_backlog("# One\n# Two\n" + item(1)).title == "One"
    assert parse_backlog(item(1)).title is None
    assert parse_backlog("# Closed heading ##\n" + item(1)).title == "Closed heading"


def test_exit_criteria():
    text = md("""
        # S
        ## Exit Criteria
        - [ ] first
        - [x] second, checked
          continued here
        * third as a bullet

        Some prose that is not a criterion.

        ## Items
        - [ ] not an exit criterion
        """) + item(1)
    assert parse_backlog(text).exit_criteria == ["first", "second, checked continued here", "third as a bullet"]


def test_exit_criteria_label():
    text = "# S\n**Exit Criteria:**\n- [ ] a\n- [ ] b\n\n" + item(1)
    assert parse_backlog(text).exit_criteria == ["a", "b"]


# --------------------------------------------------------------------------------------------
# Items and fields
# --------------------------------------------------------------------------------------------


def test_fields_in_many_forms():
    text = md("""
        ### T001: First
        - **Type:** Bug
        - **Complexity**: L
        **status:** in_progress  **PRIORITY:** -1  **Depends On:** None
        """) + item(2, deps="T001")
    t1 = parse_backlog(text).items[0]
    assert (t1.type, t1.complexity, t1.status, t1.priority, t1.dependencies) == ("Bug", "L", "in_progress", -1, [])


def test_defaults():
    t = parse_backlog("### T001: Bare\n").items[0]
    assert t == BacklogItem(id="T001", title="Bare", line=1)
    assert (t.type, t.complexity, t.priority, t.status, t.dependencies, t.description) == (
        "Story", None, None, None, [], "")


@pytest.mark.parametrize("raw,deps", [
    ("None", []), ("none", []), ("-", []), ("", []), ("—", []), ("N/A", []),
    ("T001", ["T001"]), ("T001, T002", ["T001", "T002"]), ("`T001`,`T002`", ["T001", "T002"]),
    ("T002; T001, T002", ["T002", "T001"]),
])
def test_dependencies(raw, deps):
    text = item(1) + item(2) + f"### T003: Three\n**Dependencies:** {raw}\n"
    assert parse_backlog(text).item("T003").dependencies == deps


def test_priority_empty_is_none():
    assert parse_backlog("### T001: a\n**Priority:**\n").items[0].priority is None


def test_description_continues_and_stops():
    text = md("""
        ### T001: Item
        **Type:** Story
        **Description:** first line
        second line

        a second paragraph


        a third paragraph
        **Complexity:** S
        ### T002: Next
        **Description:** short
        ```job
        kind: command
        run: "true"
        ```
        **Acceptance Criteria:**
        - [ ] ok
        """)
    b = parse_backlog(text)
    assert b.items[0].description == "first line\nsecond line\n\na second paragraph\n\na third paragraph"
    assert b.items[0].complexity == "S"
    assert b.items[1].description == "short"
    assert len(b.items[1].jobs) == 1 and len(b.items[1].acceptance_criteria) == 1


def test_prose_without_label_and_code_blocks_join_the_description():
    text = md("""
        ### T001: Item
        **Type:** Story
        Free prose goes to the description.

        ```bash
        ### not a heading
        - [ ] not a criterion
        ```
        #### A subheading
        """)
    t = parse_backlog(text).items[0]
    assert t.description == (
        "Free prose goes to the description.\n\n```bash\n### not a heading\n- [ ] not a criterion\n```\n"
        "#### A subheading"
    )
    assert t.acceptance_criteria == []


def test_multiple_job_blocks_in_order_with_lines():
    text = md("""
        ### T001: Steps
        ```job
        kind: model_check
        ```
        Between the steps.
        ~~~~job
        kind: inference_bench
        prompts: [a, b]
        ~~~~
        ```JOB
        kind: command
        run: [echo, hi]
        ```
        """)
    t = parse_backlog(text).items[0]
    assert [j.kind for j in t.jobs] == ["model_check", "inference_bench", "command"]
    assert [j.line for j in t.jobs] == [2, 6, 10]
    assert t.jobs[1].data["prompts"] == ["a", "b"]
    assert t.description == "Between the steps."


def test_job_fields_are_not_validated_here():
    t = parse_backlog("### T001: x\n```job\nkind: nonsense_kind\nwhatever: {a: 1}\n```\n").items[0]
    assert t.jobs == [JobBlock(line=2, data={"kind": "nonsense_kind", "whatever": {"a": 1}})]


def test_yaml_merge_keys_are_not_duplicates():
    text = "### T001: x\n```job\nbase: &b {iters: 1}\nkind: lora_train\nsettings:\n  <<: *b\n  iters: 2\n```\n"
    assert parse_backlog(text).items[0].jobs[0].data["settings"] == {"iters": 2}


def test_criteria_lists():
    text = md("""
        ### T001: x
        **Acceptance Criteria:**
        Intro prose is fine.
        - [ ] one `metric: a.b < 1`
          continues `(not a check)` here (critical)

        - [x] two, checked
        * [ ] three `file: out/x.txt`
        **Priority:** 3
        """)
    t = parse_backlog(text).items[0]
    assert [c.id for c in t.acceptance_criteria] == ["AC1", "AC2", "AC3"]
    assert t.acceptance_criteria[0].text == "one continues `(not a check)` here"
    assert t.acceptance_criteria[0].critical
    assert t.acceptance_criteria[1].text == "two, checked"
    assert t.priority == 3
    assert t.description == "Intro prose is fine."


def test_acceptance_criteria_none_is_allowed():
    assert parse_backlog("### T001: x\n**Acceptance Criteria:** None\n").items[0].acceptance_criteria == []


def test_other_sections_end_items_and_are_ignored():
    text = item(1) + "## Notes\n\nSome notes.\n- [ ] a note checkbox\n\n" + item(2)
    b = parse_backlog(text)
    assert b.ids == ["T001", "T002"]
    assert b.items[0].description == ""


def test_non_item_level3_heading_before_items_is_ignored():
    b = parse_backlog("### Context\nwhy we do this\n\n" + item(1))
    assert b.ids == ["T001"]


def test_crlf_and_bom():
    text = "\ufeff# Title\r\n\r\n" + DESIGN_EXAMPLE.replace("\n", "\r\n") + "### T003: p\r\n"
    b = parse_backlog(text)
    assert b.title == "Title"
    assert b.item("T004").jobs[0].data["iters"] == 60


def test_load_backlog(tmp_path):
    path = tmp_path / "SPRINT_BACKLOG.md"
    path.write_text(item(1), encoding="utf-8")
    b = load_backlog(path)
    assert b.source == str(path) and b.ids == ["T001"]
    with pytest.raises(BacklogError, match="not found"):
        load_backlog(tmp_path / "missing.md")
    path.write_bytes(b"### T001: \xff\xfe\n")
    with pytest.raises(BacklogError, match="not UTF-8"):
        load_backlog(path)
    with pytest.raises(BacklogError) as info:
        path.write_text("### T001: a\n**Priority:** high\n", encoding="utf-8")
        load_backlog(path)
    assert str(info.value).startswith(f"{path}:2: ")


def test_ordered_respects_dependencies_then_priority():
    text = md("""
        ### T001: a
        **Priority:** 5  **Dependencies:** T003
        ### T002: b
        **Priority:** 9
        ### T003: c
        **Priority:** 7
        ### T004: d
        ### T005: e
        **Priority:** 1  **Dependencies:** T002
        """)
    b = parse_backlog(text)
    assert [i.id for i in b.ordered()] == ["T003", "T001", "T002", "T005", "T004"]


def test_backlog_item_lookup():
    b = parse_backlog(item(1) + item(2))
    assert b.item("T002").id == "T002"
    with pytest.raises(KeyError):
        b.item("T009")


# --------------------------------------------------------------------------------------------
# Errors: each names the line and the fix
# --------------------------------------------------------------------------------------------


def assert_error(text: str, line: int | None, *fragments: str) -> BacklogError:
    err = bad(text)
    assert err.line == line, str(err)
    for fragment in fragments:
        assert fragment in str(err), str(err)
    return err


@pytest.mark.parametrize("heading", ["../x", "T1:2", "t001", "T0001", "T001-B01", "Notes"])
def test_invalid_id(heading):
    text = item(1) + f"\n### {heading}: Title\n"
    assert_error(text, line_of(text, f"### {heading}:"), "invalid story ID", "like T001")


@pytest.mark.parametrize("heading", ["T002 Title", "T002:Title", "T002 - Title", "S2 two"])
def test_heading_missing_colon(heading):
    text = f"### {heading}\n"
    assert_error(text, 1, "missing ': '", "### T001: Title")


def test_item_without_title():
    assert_error("### T001:\n", 1, "no title")


def test_level3_non_item_after_items():
    text = item(1) + "### Notes\n"
    assert_error(text, line_of(text, "### Notes"), "level-3 headings are items", "####")


def test_duplicate_id():
    text = item(1) + item(2) + item(1, title="Again")
    assert_error(text, line_of(text, "### T001", 2), "duplicate item ID T001", "first defined on line 1")


def test_unknown_dependency():
    text = item(1) + item(2, deps="T001, T009")
    assert_error(text, line_of(text, "T009"), "T002 depends on T009", "neither in this backlog",
                 "nor a story of an earlier sprint", "T001, T002")


def test_invalid_dependency():
    text = item(1) + item(2, deps="T001 (soft)")
    assert_error(text, line_of(text, "(soft)"), "invalid dependency 'T001 (soft)'", "`None`")


def test_dependency_cycle():
    text = item(1, deps="T003") + item(2, deps="T001") + item(3, deps="T002") + item(4, deps="T001")
    err = bad(text)
    cycle = re.search(r"dependency cycle: ([T0-9 ->]+);", str(err)).group(1)
    nodes = cycle.split(" -> ")
    assert nodes[0] == nodes[-1] and sorted(nodes[:-1]) == ["T001", "T002", "T003"]
    assert err.line == line_of(text, "Dependencies", int(nodes[0][1:]))


def test_self_dependency():
    text = item(1, deps="T001")
    assert_error(text, 2, "dependency cycle: T001 -> T001")


def test_invalid_yaml_reports_the_line_inside_the_file():
    text = md("""
        ### T001: x

        ```job
        kind: lora_train
        lora: {rank: 16
        iters: 60
        ```
        """)
    err = bad(text)
    fence = line_of(text, "```job")
    assert fence < err.line <= fence + 4
    assert "not valid YAML" in str(err) and f"fence on line {fence}" in str(err)


def test_yaml_error_line_is_exact():
    text = "### T001: x\n```job\nkind: command\nrun: a\n\tbad: tab\n```\n"
    assert_error(text, 5, "not valid YAML")


def test_yaml_duplicate_key():
    text = "### T001: x\n```job\nkind: command\nrun: a\nrun: b\n```\n"
    assert_error(text, 5, "duplicate key 'run'", "first given on line 2 of the block")


@pytest.mark.parametrize("body,what", [
    ("- lora_train", "got a list"),
    ("just text", "got a str"),
    ("", "got empty"),
    ("data: x", "has no `kind`"),
    ("kind: 3", "must be a non-empty string"),
    ("kind: ''", "must be a non-empty string"),
    ("kind: [a]", "must be a non-empty string"),
])
def test_job_block_shape(body, what):
    text = f"### T001: x\n\n```job\n{body}\n```\n"
    assert_error(text, 3, what)


def test_unclosed_fence():
    text = "### T001: x\n```job\nkind: command\n"
    assert_error(text, 2, "never closed")
    text = item(1) + "```python\nprint(1)\n~~~\n"
    assert_error(text, line_of(text, "```python"), "never closed")


def test_fence_closed_by_longer_fence_is_fine():
    assert parse_backlog("### T001: x\n```job\nkind: command\n`````\n").items[0].jobs[0].kind == "command"


def test_job_outside_item():
    text = "# S\n```job\nkind: command\n```\n" + item(1)
    assert_error(text, 2, "job block outside an item")


def test_yaml_fence_that_looks_like_a_job():
    text = "### T001: x\n```yaml\nkind: lora_train\n```\n"
    assert_error(text, 2, "looks like a job", "```job")


def test_unknown_label_is_a_warning_listing_known_ones():
    text = item(1) + "**Owner:** ana\n"
    b = parse_backlog(text, source="SPRINT_BACKLOG.md")
    [w] = b.warnings
    assert w.line == line_of(text, "Owner") and w.source == "SPRINT_BACKLOG.md"
    for fragment in ("unknown field **Owner:**", "is ignored", "**Type:**", "**Acceptance Criteria:**",
                     "**Links to Objective:**", "**Estimated Time:**"):
        assert fragment in w.message
    assert str(w).startswith(f"SPRINT_BACKLOG.md:{w.line}: unknown field")
    assert b.items[0].description == ""  # the value is not mistaken for prose


def test_unknown_label_is_an_error_when_strict():
    text = item(1) + "**Owner:** ana\n"
    with pytest.raises(BacklogError) as info:
        parse_backlog(text, source="SPRINT_BACKLOG.md", strict=True)
    assert info.value.line == line_of(text, "Owner")
    assert "unknown field **Owner:**" in str(info.value) and "--strict" in str(info.value)


def test_unknown_label_later_on_a_line():
    b = parse_backlog("### T001: x\n**Type:** Spike  **Reviewer:** ana  **Priority:** 2\n")
    assert [(w.line, "unknown field **Reviewer:**" in w.message) for w in b.warnings] == [(2, True)]
    assert (b.items[0].type, b.items[0].priority) == ("Spike", 2)


def test_duplicate_field():
    assert_error("### T001: x\n**Priority:** 1\n**Priority:** 2\n", 3, "given twice", "first on line 2")


@pytest.mark.parametrize("value", ["high", "1.5", "P2", "2 (urgent)"])
def test_non_integer_priority(value):
    assert_error(f"### T001: x\n**Type:** Story  **Priority:** {value}\n", 2, "must be an integer", "**Priority:** 2")


def test_no_items():
    assert_error("# Sprint\n\nNothing here.\n", None, "no items", "### T001: Title")
    assert_error("", None, "no items")


def test_checkbox_outside_criteria():
    assert_error("### T001: x\n**Description:** a\n- [ ] stray\n", 3, "outside an **Acceptance Criteria:** list")


def test_plain_bullet_in_criteria():
    assert_error("### T001: x\n**Acceptance Criteria:**\n- [ ] ok\n- loss goes down\n", 4,
                 "not a checkbox", "`- [ ] loss goes down`")


def test_text_after_criteria_label():
    assert_error("### T001: x\n**Acceptance Criteria:** fast enough\n", 2, "its own `- [ ] ...` line")


def test_bad_check_in_criterion_names_its_line():
    text = "### T001: x\n**Acceptance Criteria:**\n- [ ] fine\n- [ ] mem `metric: train.peak_memory_gb <= 16GB`\n"
    assert_error(text, 4, "AC2", "unparsable value '16GB'", "metric: train.peak_memory_gb <= 16")


def test_empty_criterion_line():
    assert_error("### T001: x\n**Acceptance Criteria:**\n- [ ] ok\n- [ ]\n", 4, "AC2", "criterion is empty")


def test_core_imports_stay_light():
    import subprocess
    import sys

    code = ("import sys, oodatcaa.backlog, oodatcaa.core.criteria; "
            "heavy = [m for m in ('mlx', 'numpy', 'git', 'mlx_lm') if m in sys.modules]; "
            "assert not heavy, heavy")
    src = Path(__file__).resolve().parents[1] / "src"
    subprocess.run([sys.executable, "-c", code], check=True, env={"PYTHONPATH": str(src)})


def test_bad_file_check_in_criterion():
    text = "### T001: x\n**Acceptance Criteria:**\n- [ ] `file: ../secret`\n"
    assert_error(text, 3, "'..'")


# --------------------------------------------------------------------------------------------
# Round trip and fuzz
# --------------------------------------------------------------------------------------------

_word = st.text(alphabet="abcdefghijklmnopqrstuvwxyz", min_size=1, max_size=8)
_sentence = st.lists(_word, min_size=1, max_size=6).map(" ".join)
_metric = st.builds(
    MetricCheck,
    metric=st.tuples(_word, _word).map(".".join),
    op=st.sampled_from(["<", "<=", ">", ">=", "==", "!="]),
    value=st.one_of(st.integers(-1000, 1000).map(float), st.tuples(_word, _word).map(".".join)),
)
_check = st.one_of(st.none(), _metric, st.builds(FileCheck, path=st.tuples(_word, _word).map("/".join)),
                   st.builds(CommandCheck, run=_sentence))
_yaml_scalar = st.one_of(st.integers(-100, 100), _word, st.booleans(), st.floats(0.001, 10, allow_nan=False))
_job = st.builds(
    lambda kind, extra: JobBlock(line=1, data={"kind": kind, **extra}),
    st.sampled_from(["model_check", "inference_bench", "lora_train", "command"]),
    st.dictionaries(_word.filter(lambda w: w != "kind"), st.one_of(_yaml_scalar, st.lists(_yaml_scalar, max_size=3)),
                    max_size=4),
)


_link = _sentence.map(lambda text: f"OBJECTIVE.md → {text} → Part; more")
_estimate = st.one_of(st.none(), st.sampled_from([("45 min", 45, 45), ("120-180 minutes", 120, 180), ("1-2 hours", 60, 120)]).map(
    lambda e: Estimate(low_minutes=e[1], high_minutes=e[2], source="backlog", text=e[0])))


@st.composite
def backlogs(draw):
    n = draw(st.integers(1, 5))
    ids = [f"T{i:03d}" for i in draw(st.lists(st.integers(1, 999), min_size=n, max_size=n, unique=True))]
    items = []
    for k, item_id in enumerate(ids):
        deps = draw(st.lists(st.sampled_from(ids[:k]), unique=True, max_size=k)) if k else []
        criteria = [
            Criterion(id=f"AC{j + 1}", text=draw(_sentence), check=draw(_check), critical=draw(st.booleans()))
            for j in range(draw(st.integers(0, 4)))
        ]
        paragraphs = draw(st.lists(_sentence, max_size=3))
        items.append(BacklogItem(
            id=item_id,
            title=draw(_sentence),
            type=draw(st.sampled_from(["Story", "Spike", "Bug"])),
            complexity=draw(st.sampled_from([None, "S", "M", "L"])),
            priority=draw(st.one_of(st.none(), st.integers(0, 9))),
            status=draw(st.sampled_from([None, "needs_plan", "done"])),
            dependencies=deps,
            description="\n\n".join(paragraphs),
            acceptance_criteria=criteria,
            jobs=draw(st.lists(_job, max_size=2)),
            objective_links=draw(st.lists(_link, max_size=2, unique=True)),
            estimate=draw(_estimate),
        ))
    return Backlog(
        source="<backlog>",
        title=draw(st.one_of(st.none(), _sentence)),
        goal=draw(st.one_of(st.none(), _sentence)),
        exit_criteria=draw(st.lists(_sentence, max_size=3)),
        items=items,
    )


def _without_lines(backlog: Backlog) -> dict:
    data = backlog.model_dump()
    data.pop("warnings")  # about statuses and fields, not content (tested on their own)
    for it in data["items"]:
        it.pop("line")
        for job in it["jobs"]:
            job.pop("line")
    return data


@given(backlogs())
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_roundtrip_format_parse(backlog):
    text = format_backlog(backlog)
    back = parse_backlog(text)
    assert _without_lines(back) == _without_lines(backlog)
    # Lines point where they say.
    lines = text.splitlines()
    for it in back.items:
        assert lines[it.line - 1].startswith(f"### {it.id}: ")
        for job in it.jobs:
            assert lines[job.line - 1] == "```job"


_fuzz_lines = st.sampled_from([
    "", "# T", "## Exit Criteria", "## Notes", "### T001: a", "### T002: b", "### ../x: c", "### Notes",
    "**Type:** Story", "**Priority:** 2", "**Priority:** x", "**Dependencies:** T001", "**Dependencies:** T002",
    "**Description:** text", "**Acceptance Criteria:**", "- [ ] ok `metric: a.b < 1`", "- [x] prose",
    "- [ ] `metric: a.b = 1`", "- plain", "```job", "```", "kind: command", "run: x", "{bad", "```yaml",
    "**Owner:** x", "  indented", "**Goal:** g", "~~~", "- [ ] `file: /x`",
])


@given(st.lists(_fuzz_lines, max_size=25))
@settings(max_examples=400, deadline=None)
def test_fuzz_only_backlog_errors(lines):
    text = "\n".join(lines)
    try:
        b = parse_backlog(text, source="fuzz")
    except BacklogError as err:
        assert err.source == "fuzz"
        assert err.line is None or 1 <= err.line <= max(1, len(lines))
    else:
        assert b.items
        b.ordered()  # parsed backlogs are acyclic


@given(st.text(max_size=200))
@settings(max_examples=300, deadline=None)
def test_fuzz_arbitrary_text(text):
    try:
        parse_backlog(text)
    except BacklogError:
        pass


def test_a_margin_is_parsed_and_its_reference_metric_checked_against_the_job_kinds():
    from oodatcaa.sprints import _validate_jobs

    text = ("### T001: x\n```job\nkind: lora_train\ndata: d\n```\n**Acceptance Criteria:**\n"
            "- [ ] loss down by 0.1 `metric: train.final_loss <= train.first_loss - 0.1` (critical)\n")
    backlog = parse_backlog(text, source="B.md")
    check = backlog.items[0].acceptance_criteria[0].check
    assert check == MetricCheck(metric="train.final_loss", op="<=", value="train.first_loss", offset=-0.1)
    _validate_jobs(backlog)
    typo = parse_backlog(text.replace("train.first_loss - 0.1", "train.first_los - 0.1"), source="B.md")
    with pytest.raises(BacklogError, match=r"did you mean 'train\.first_loss'"):
        _validate_jobs(typo)
    with pytest.raises(BacklogError, match=r"B\.md:7: acceptance criterion AC1: margin \+ 1 after the plain number 2"):
        parse_backlog(text.replace("train.first_loss - 0.1", "2 + 1"), source="B.md")

"""Unit tests of oodatcaa.core.criteria: parsing, evaluation, the verdict and the table."""

from __future__ import annotations

import math
import sys
import time
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from oodatcaa.core.criteria import (
    OPERATORS,
    CheckContext,
    CheckPolicy,
    CommandCheck,
    Criterion,
    CriterionResult,
    FileCheck,
    MetricCheck,
    Verdict,
    decide,
    evaluate_criterion,
    format_check,
    format_results_table,
    parse_criterion_line,
)
from oodatcaa.core.errors import BacklogError

PY = sys.executable


def parse(text: str, index: int = 1, line: int = 7) -> Criterion:
    return parse_criterion_line(text, index=index, source="backlog.md", line=line)


def bad(text: str, line: int = 7) -> BacklogError:
    with pytest.raises(BacklogError) as info:
        parse(text, line=line)
    err = info.value
    assert err.source == "backlog.md"
    assert err.line == line
    assert str(err).startswith(f"backlog.md:{line}: ")
    return err


# --------------------------------------------------------------------------------------------
# Parsing
# --------------------------------------------------------------------------------------------


def test_design_example_metric_critical():
    c = parse("- [ ] peak memory stays under target `metric: train.peak_memory_gb <= 16` (critical)", index=3)
    assert c.id == "AC3"
    assert c.text == "peak memory stays under target"
    assert c.critical is True
    assert c.check == MetricCheck(metric="train.peak_memory_gb", op="<=", value=16.0)


def test_metric_against_other_metric():
    c = parse("- [ ] loss goes down `metric: train.final_loss < train.first_loss`")
    assert c.check == MetricCheck(metric="train.final_loss", op="<", value="train.first_loss")
    assert c.critical is False


@pytest.mark.parametrize("op", OPERATORS)
@pytest.mark.parametrize("spacing", ["{n} {op} {v}", "{n}{op}{v}", "{n}  {op}   {v}"])
def test_all_operators_and_spacing(op, spacing):
    expr = spacing.format(n="inference.generation_tps", op=op, v="-1.5e2")
    c = parse(f"- [ ] speed `metric: {expr}`")
    assert c.check == MetricCheck(metric="inference.generation_tps", op=op, value=-150.0)


@pytest.mark.parametrize("raw,value", [("16", 16.0), ("0.5", 0.5), (".5", 0.5), ("1e-3", 0.001),
                                        ("+2", 2.0), ("3.", 3.0), ("2.5E+9", 2.5e9)])
def test_number_forms(raw, value):
    assert parse(f"- [ ] x `metric: a.b >= {raw}`").check.value == value


@pytest.mark.parametrize("right,offset,factor", [
    ("T006.eval.loss + 0.3", 0.3, 1.0),
    ("T006.eval.loss+0.3", 0.3, 1.0),
    ("T006.eval.loss  +   0.3", 0.3, 1.0),
    ("T006.eval.loss - 0.1", -0.1, 1.0),
    ("T006.eval.loss-.1", -0.1, 1.0),
    ("T006.eval.loss - 1e-3", -0.001, 1.0),
    ("T006.eval.loss * 1.05", 0.0, 1.05),
    ("T006.eval.loss*2", 0.0, 2.0),
    ("T006.eval.loss + 0", 0.0, 1.0),  # no margin at all
    ("T006.eval.loss * 1", 0.0, 1.0),
])
def test_metric_margin(right, offset, factor):
    c = parse(f"- [ ] no worse than the base `metric: T007.eval.loss <= {right}` (critical)")
    assert c.check == MetricCheck(metric="T007.eval.loss", op="<=", value="T006.eval.loss", offset=offset,
                                  factor=factor)
    assert c.critical is True and c.text == "no worse than the base"


@pytest.mark.parametrize("op", OPERATORS)
def test_metric_margin_with_every_operator(op):
    c = parse(f"- [ ] x `metric: a.b{op}a.c*0.5`")
    assert c.check == MetricCheck(metric="a.b", op=op, value="a.c", factor=0.5)


@pytest.mark.parametrize("value,words,fix", [
    ("2 + 1", "after the plain number 2", "`metric: train.loss < 3`"),
    ("2-0.5", "after the plain number 2", "`metric: train.loss < 1.5`"),
    ("2 * 3", "after the plain number 2", "`metric: train.loss < 6`"),
    ("train.base + abc", "unparsable margin 'abc'", "`metric: train.loss < train.base + 0.3`"),
    ("train.base + train.other", "unparsable margin 'train.other'", "`metric: train.loss < train.base + 0.3`"),
    ("train.base + 0.3 GB", "unparsable margin '0.3 GB'", "without units, like `metric: train.loss < train.base + 0.3`"),
    ("train.base * 1.05x", "unparsable factor '1.05x'", "`metric: train.loss < train.base * 1.05`"),
    ("train.base + 0.3 * 2", "two margins", "one margin"),
    ("train.base * 1.05 + 0.1", "two margins", "one margin"),
    ("train.base + 0.3 - 0.1", "two margins", "one margin"),
    ("train.base +", "missing number after '+'", "`metric: train.loss < train.base + 0.3`"),
    ("train.base*", "missing number after '*'", "`metric: train.loss < train.base * 1.05`"),
    ("train.base + -0.1", "signed margin", "`metric: train.loss < train.base - 0.1`"),
    ("train.base - -0.1", "signed margin", "`metric: train.loss < train.base + 0.1`"),
    ("train.base * -1", "signed factor", "positive number"),
    ("train.base * 0", "factor 0", "positive factor"),
    ("train.base + 1e999", "out of range", "finite number"),
])
def test_bad_metric_margin(value, words, fix):
    err = bad(f"- [ ] x `metric: train.loss < {value}`")
    assert str(err).startswith("backlog.md:7: acceptance criterion AC1: ")
    assert words in str(err)
    assert fix in str(err)
    assert f"`metric: train.loss < {value}`" in str(err)


def test_file_and_command_checks():
    f = parse("- [ ] adapter saved `file: adapters/adapter_config.json`")
    assert f.check == FileCheck(path="adapters/adapter_config.json")
    c = parse('- [ ] runs `command: python -c "print(1)"`')
    assert c.check == CommandCheck(run='python -c "print(1)"')
    assert c.check.timeout_s == 300 and c.check.expect_exit == 0


def test_double_backtick_span_allows_backticks_in_command():
    c = parse("- [ ] echo works ``command: echo `date` > /dev/null``")
    assert c.check == CommandCheck(run="echo `date` > /dev/null")
    assert c.text == "echo works"


@pytest.mark.parametrize("marker", ["(critical)", "(CRITICAL)", "( Critical )", "**(critical)**", "_(critical)_"])
@pytest.mark.parametrize("where", ["start", "middle", "end"])
def test_critical_marker_anywhere(marker, where):
    line = {
        "start": f"- [ ] {marker} loss falls `metric: train.final_loss < 2`",
        "middle": f"- [ ] loss {marker} falls `metric: train.final_loss < 2`",
        "end": f"- [ ] loss falls `metric: train.final_loss < 2` {marker}",
    }[where]
    c = parse(line)
    assert c.critical is True
    assert "critical" not in c.text.lower()
    assert c.text in ("loss falls",)


def test_critical_inside_code_span_does_not_count():
    c = parse('- [ ] prints `command: echo "(critical)"`')
    assert c.critical is False
    assert c.check.run == 'echo "(critical)"'


@pytest.mark.parametrize("box", ["- [x]", "- [X]", "* [ ]", "+ [x]", "  - [ ]"])
def test_checked_and_other_boxes_are_criteria(box):
    c = parse(f"{box} adapter saved `file: a/b.json`")
    assert c.text == "adapter saved"
    assert c.check == FileCheck(path="a/b.json")


def test_prose_only_and_text_without_box():
    assert parse("- [ ] answers read naturally") == Criterion(id="AC1", text="answers read naturally")
    assert parse("answers read naturally").text == "answers read naturally"


def test_other_code_spans_stay_prose():
    c = parse("- [ ] the `adapters/` dir has `metric: train.iters >= 60` and `x: y`")
    assert c.check == MetricCheck(metric="train.iters", op=">=", value=60.0)
    assert c.text == "the `adapters/` dir has and `x: y`"


def test_check_only_line_has_empty_text():
    c = parse("- [ ] `file: out.txt`")
    assert c.text == ""
    assert c.to_markdown() == "- [ ] `file: out.txt`"


def test_kind_is_case_insensitive():
    assert parse("- [ ] x `Metric: a.b < 1`").check == MetricCheck(metric="a.b", op="<", value=1.0)


@pytest.mark.parametrize("op,hint", [("=", "=="), ("=>", ">="), ("=<", "<="), ("<>", "!="), ("~=", None)])
def test_unknown_operator(op, hint):
    err = bad(f"- [ ] x `metric: train.loss {op} 3`")
    assert f"unknown operator {op!r}" in str(err)
    assert "< <= > >= == !=" in str(err)
    assert "AC1" in str(err)
    if hint:
        assert f"did you mean {hint!r}" in str(err)


@pytest.mark.parametrize("value,fix", [
    ("16GB", "`metric: train.peak_memory_gb <= 16`"),
    ("16 GB", "`metric: train.peak_memory_gb <= 16`"),
    ("1.2.3", "without units"),
    ("inf", "plain number"),
    ("nan", "plain number"),
    ("lots", "plain number"),
    ("'16'", "plain number"),
])
def test_unparsable_value(value, fix):
    err = bad(f"- [ ] mem `metric: train.peak_memory_gb <= {value}`")
    assert "unparsable value" in str(err)
    assert fix in str(err)


@pytest.mark.parametrize("text", [
    "- [ ] x `metric: train.loss`",
    "- [ ] x `metric: <= 3`",
    "- [ ] x `metric: `",
    "- [ ] x `metric: train.loss <=`",
])
def test_incomplete_metric(text):
    err = bad(text)
    assert "metric: NAME OP VALUE" in str(err) or "missing value" in str(err)


def test_undotted_metric_name():
    err = bad("- [ ] x `metric: loss < 3`")
    assert "dotted name" in str(err)


@pytest.mark.parametrize("path,why", [
    ("/etc/passwd", "absolute"),
    ("~/x", "absolute"),
    ("C:\\x\\y", "absolute"),
    ("\\\\server\\share", "absolute"),
    ("../secret", "'..'"),
    ("a/../../b", "'..'"),
    ("a\\..\\b", "'..'"),
])
def test_bad_file_paths(path, why):
    err = bad(f"- [ ] x `file: {path}`")
    assert why in str(err)
    assert "relative" in str(err)


@pytest.mark.parametrize("text", ["- [ ]", "- [x]   ", "- [ ] (critical)", ""])
def test_empty_criterion(text):
    assert "criterion is empty" in str(bad(text))


def test_empty_file_and_command():
    assert "empty" in str(bad("- [ ] x `file: `"))
    assert "empty command" in str(bad("- [ ] x `command:`"))


@pytest.mark.parametrize("word,hint", [("metrics", "metric"), ("cmd", "command"), ("files", "file"),
                                       ("comand", "command")])
def test_misspelled_check_kind(word, hint):
    err = bad(f"- [ ] x `{word}: a.b < 3`")
    assert f"unknown check kind {word!r}" in str(err)
    assert f"did you mean `{hint}:" in str(err)


def test_two_checks_on_one_line():
    err = bad("- [ ] x `file: a` and `metric: a.b < 1`")
    assert "2 checks on one line" in str(err)


def test_index_must_be_positive():
    with pytest.raises(ValueError):
        parse("- [ ] x", index=0)


def test_model_validation():
    with pytest.raises(ValidationError):
        MetricCheck(metric="loss", op="<", value=1)
    with pytest.raises(ValidationError):
        MetricCheck(metric="a.b", op="=", value=1)
    with pytest.raises(ValidationError):
        MetricCheck(metric="a.b", op="<", value="16")  # a string value is a metric name
    with pytest.raises(ValidationError):
        MetricCheck(metric="a.b", op="<", value=math.nan)
    with pytest.raises(ValidationError, match="only when value is a metric name"):
        MetricCheck(metric="a.b", op="<", value=2, offset=1)
    with pytest.raises(ValidationError, match="only when value is a metric name"):
        MetricCheck(metric="a.b", op="<", value=2, factor=2)
    with pytest.raises(ValidationError, match="not both"):
        MetricCheck(metric="a.b", op="<", value="a.c", offset=1, factor=2)
    with pytest.raises(ValidationError):
        MetricCheck(metric="a.b", op="<", value="a.c", factor=0)
    with pytest.raises(ValidationError):
        MetricCheck(metric="a.b", op="<", value="a.c", factor=-1)
    with pytest.raises(ValidationError):
        MetricCheck(metric="a.b", op="<", value="a.c", offset=math.inf)
    with pytest.raises(ValidationError):
        MetricCheck(metric="a.b", op="<", value="a.c", factor=math.nan)
    with pytest.raises(ValidationError):
        FileCheck(path="/abs")
    with pytest.raises(ValidationError):
        FileCheck(path="a/../../b")
    with pytest.raises(ValidationError):
        CommandCheck(run="")
    with pytest.raises(ValidationError):
        CommandCheck(run="x", timeout_s=0)
    with pytest.raises(ValidationError):
        Criterion(id="X1", text="t")
    with pytest.raises(ValidationError):
        Criterion(id="AC1", text="t", extra=1)


def test_criterion_json_roundtrip_keeps_check_kind():
    items = [
        Criterion(id="AC1", text="a", check=MetricCheck(metric="a.b", op="<", value=2), critical=True),
        Criterion(id="AC2", text="b", check=MetricCheck(metric="a.b", op="<", value="a.c")),
        Criterion(id="AC3", text="c", check=FileCheck(path="x/y")),
        Criterion(id="AC4", text="d", check=CommandCheck(run="true", timeout_s=5, expect_exit=1)),
        Criterion(id="AC5", text="e"),
        Criterion(id="AC6", text="f", check=MetricCheck(metric="a.b", op="<=", value="a.c", offset=-0.1)),
        Criterion(id="AC7", text="g", check=MetricCheck(metric="a.b", op=">", value="a.c", factor=1.05)),
    ]
    for c in items:
        assert Criterion.model_validate_json(c.model_dump_json()) == c
        assert Criterion.model_validate(c.model_dump()) == c


def test_format_check():
    assert format_check(MetricCheck(metric="a.b", op="<=", value=16)) == "metric: a.b <= 16"
    assert format_check(MetricCheck(metric="a.b", op="<=", value=0.25)) == "metric: a.b <= 0.25"
    assert format_check(MetricCheck(metric="a.b", op="<", value="a.c")) == "metric: a.b < a.c"
    assert format_check(MetricCheck(metric="a.b", op="<=", value="a.c", offset=0.3)) == "metric: a.b <= a.c + 0.3"
    assert format_check(MetricCheck(metric="a.b", op="<=", value="a.c", offset=-0.1)) == "metric: a.b <= a.c - 0.1"
    assert format_check(MetricCheck(metric="a.b", op=">", value="a.c", factor=1.05)) == "metric: a.b > a.c * 1.05"
    assert format_check(MetricCheck(metric="a.b", op=">", value="a.c", offset=2)) == "metric: a.b > a.c + 2"
    assert format_check(FileCheck(path="a")) == "file: a"


def test_checks_without_margin_dump_as_before():
    old = {"kind": "metric", "metric": "a.b", "op": "<", "value": "a.c"}
    check = MetricCheck.model_validate(old)
    assert check.offset == 0.0 and check.factor == 1.0 and not check.has_margin
    assert check.model_dump(exclude_defaults=True) == {"metric": "a.b", "op": "<", "value": "a.c"}
    assert MetricCheck(metric="a.b", op="<", value=2).model_dump(exclude_defaults=True) == {
        "metric": "a.b", "op": "<", "value": 2.0}
    assert MetricCheck(metric="a.b", op="<", value="a.c", offset=-0.1).model_dump(exclude_defaults=True) == {
        "metric": "a.b", "op": "<", "value": "a.c", "offset": -0.1}
    assert format_check(CommandCheck(run="pytest -q")) == "command: pytest -q"


# Round trip: Criterion -> Markdown line -> Criterion.
_words = st.text(alphabet="abcdefghij klmnop,.-_()'\"", min_size=0, max_size=30).map(
    lambda s: " ".join(s.replace("(", "").replace(")", "").split())
)
_name = st.from_regex(r"[a-z_][a-z0-9_]{0,6}\.[a-z0-9_]{1,8}", fullmatch=True)
_margin_number = st.one_of(
    st.floats(allow_nan=False, allow_infinity=False, min_value=1e-9, max_value=1e12),
    st.integers(1, 10**6).map(float),
)
_metric = st.one_of(
    st.builds(
        MetricCheck,
        metric=_name,
        op=st.sampled_from(OPERATORS),
        value=st.one_of(
            st.floats(allow_nan=False, allow_infinity=False, min_value=-1e12, max_value=1e12),
            st.integers(-10**6, 10**6).map(float),
            _name,
        ),
    ),
    # a margin on a metric-name value: + N, - N or * N
    st.builds(MetricCheck, metric=_name, op=st.sampled_from(OPERATORS), value=_name,
              offset=st.one_of(_margin_number, _margin_number.map(lambda x: -x))),
    st.builds(MetricCheck, metric=_name, op=st.sampled_from(OPERATORS), value=_name, factor=_margin_number),
)
_file = st.builds(FileCheck, path=st.from_regex(r"[A-Za-z0-9_][A-Za-z0-9_./-]{0,20}", fullmatch=True).filter(
    lambda p: ".." not in p.split("/") and not p.endswith(" ")))
_command = st.builds(CommandCheck, run=st.text(alphabet="abc xyz=|&\"'`-$", min_size=1, max_size=20).map(
    str.strip).filter(bool))
_criterion = st.builds(
    Criterion,
    id=st.integers(1, 30).map(lambda i: f"AC{i}"),
    text=_words,
    check=st.one_of(st.none(), _metric, _file, _command),
    critical=st.booleans(),
)


@given(_criterion, st.booleans())
@settings(max_examples=300, deadline=None)
def test_roundtrip_markdown(criterion, checked):
    line = criterion.to_markdown(checked=checked)
    if criterion.check is None and not criterion.text:
        with pytest.raises(BacklogError, match="criterion is empty"):
            parse_criterion_line(line, index=1, source="x", line=1)
        return
    back = parse_criterion_line(line, index=int(criterion.id[2:]), source="x", line=1)
    assert back == criterion


@given(st.text(max_size=80))
@settings(max_examples=300, deadline=None)
def test_fuzz_parse_raises_only_backlog_error(text):
    try:
        c = parse_criterion_line(text, index=1, source="f", line=3)
    except BacklogError as err:
        assert err.line == 3
    else:
        assert c.id == "AC1"


# --------------------------------------------------------------------------------------------
# Evaluation
# --------------------------------------------------------------------------------------------

METRICS = {
    "train": {"peak_memory_gb": 1.2, "first_loss": 3.0, "final_loss": 1.5, "iters": 60, "grad_checkpoint": True,
              "label": "fast", "numeric_text": "2.5", "bad": float("nan")},
    "model": {"tokenizer_roundtrip": 1, "dtype": "float32"},
}


def ctx(tmp_path: Path | None = None, **kw) -> CheckContext:
    base = {"metrics": METRICS, "workdir": tmp_path or Path.cwd()}
    base.update(kw)
    return CheckContext(**base)


def crit(check, critical=False, text="t", id="AC1") -> Criterion:
    return Criterion(id=id, text=text, check=check, critical=critical)


@pytest.mark.parametrize("op,value,outcome", [
    ("<=", 16, "PASS"), ("<", 1.2, "FAIL"), ("<=", 1.2, "PASS"), (">", 1.0, "PASS"), (">=", 1.3, "FAIL"),
    ("==", 1.2, "PASS"), ("!=", 1.2, "FAIL"), ("!=", 1.3, "PASS"), ("==", 1.2 + 1e-12, "PASS"),
])
def test_metric_ops(op, value, outcome):
    r = evaluate_criterion(crit(MetricCheck(metric="train.peak_memory_gb", op=op, value=value)), ctx())
    assert r.outcome == outcome
    assert r.expected.startswith(f"train.peak_memory_gb {op} ")
    assert r.observed == "train.peak_memory_gb = 1.2"


def test_metric_against_metric():
    r = evaluate_criterion(crit(MetricCheck(metric="train.final_loss", op="<", value="train.first_loss")), ctx())
    assert r.outcome == "PASS"
    assert r.observed == "train.final_loss = 1.5, train.first_loss = 3.0"
    r = evaluate_criterion(crit(MetricCheck(metric="train.first_loss", op="<", value="train.final_loss")), ctx())
    assert r.outcome == "FAIL"


@pytest.mark.parametrize("check,outcome,observed,detail", [
    (MetricCheck(metric="train.final_loss", op="<=", value="train.first_loss", offset=-1.5), "PASS",
     "train.final_loss = 1.5, train.first_loss = 3.0 (- 1.5 = 1.5)", "1.5 <= 3 - 1.5 (= 1.5) is true"),
    (MetricCheck(metric="train.final_loss", op="<", value="train.first_loss", offset=-1.5), "FAIL",
     "train.final_loss = 1.5, train.first_loss = 3.0 (- 1.5 = 1.5)", "1.5 < 3 - 1.5 (= 1.5) is false"),
    (MetricCheck(metric="train.first_loss", op="<=", value="train.final_loss", offset=1.6), "PASS",
     "train.first_loss = 3.0, train.final_loss = 1.5 (+ 1.6 = 3.1)", "3 <= 1.5 + 1.6 (= 3.1) is true"),
    (MetricCheck(metric="train.first_loss", op="<=", value="train.final_loss", factor=1.5), "FAIL",
     "train.first_loss = 3.0, train.final_loss = 1.5 (* 1.5 = 2.25)", "3 <= 1.5 * 1.5 (= 2.25) is false"),
    (MetricCheck(metric="train.first_loss", op="==", value="train.final_loss", factor=2), "PASS",
     "train.first_loss = 3.0, train.final_loss = 1.5 (* 2 = 3)", "3 == 1.5 * 2 (= 3) is true"),
])
def test_metric_against_metric_with_margin(check, outcome, observed, detail):
    r = evaluate_criterion(crit(check), ctx())
    assert (r.outcome, r.observed, r.detail) == (outcome, observed, detail)
    assert r.expected == format_check(check).removeprefix("metric: ")


def test_margin_detail_shows_the_computed_right_side():
    metrics = {"T007": {"eval": {"loss": 1.92}}, "T006": {"eval": {"loss": 1.85}}}
    check = parse("- [ ] x `metric: T007.eval.loss <= T006.eval.loss + 0.3`").check
    r = evaluate_criterion(crit(check), CheckContext(metrics=metrics))
    assert r.outcome == "PASS"
    assert r.detail == "1.92 <= 1.85 + 0.3 (= 2.15) is true"
    assert r.expected == "T007.eval.loss <= T006.eval.loss + 0.3"
    assert r.observed == "T007.eval.loss = 1.92, T006.eval.loss = 1.85 (+ 0.3 = 2.15)"
    metrics["T007"]["eval"]["loss"] = 2.2
    r = evaluate_criterion(crit(check), CheckContext(metrics=metrics))
    assert r.outcome == "FAIL" and r.detail == "2.2 <= 1.85 + 0.3 (= 2.15) is false"


def test_margin_with_missing_or_bad_reference_fails():
    r = evaluate_criterion(crit(MetricCheck(metric="train.final_loss", op="<", value="train.nope", offset=1)), ctx())
    assert r.outcome == "FAIL" and "metric train.nope not found" in r.detail
    r = evaluate_criterion(crit(MetricCheck(metric="train.final_loss", op="<", value="train.bad", factor=2)), ctx())
    assert r.outcome == "FAIL" and "NaN" in r.detail
    r = evaluate_criterion(crit(MetricCheck(metric="train.final_loss", op="<", value="model.dtype", offset=1)),
                           ctx())
    assert r.outcome == "FAIL" and "model.dtype is not a number" in r.detail


@pytest.mark.parametrize("check", [MetricCheck(metric="a.b", op=">", value="a.c", offset=1),
                                   MetricCheck(metric="a.c", op="<", value="a.b", factor=2),
                                   MetricCheck(metric="a.b", op=">", value=1)])
def test_an_infinite_metric_fails_with_a_reason(check):
    r = evaluate_criterion(crit(check), CheckContext(metrics={"a": {"b": math.inf, "c": 1.0}}))
    assert r.outcome == "FAIL" and "infinite value" in r.detail


def test_missing_metric_lists_available():
    r = evaluate_criterion(crit(MetricCheck(metric="train.x", op="<", value=1)), ctx())
    assert r.outcome == "FAIL"
    assert r.observed == "missing"
    assert r.detail.startswith("metric train.x not found; available: train.")
    assert "model.tokenizer_roundtrip" in r.detail


def test_missing_metric_suggests_close_name():
    r = evaluate_criterion(crit(MetricCheck(metric="train.final_los", op="<", value=1)), ctx())
    assert "did you mean train.final_loss?" in r.detail


def test_missing_namespace_and_empty_metrics():
    r = evaluate_criterion(crit(MetricCheck(metric="inference.generation_tps", op=">", value=1)),
                           CheckContext(metrics={}))
    assert r.outcome == "FAIL"
    assert r.detail == "metric inference.generation_tps not found; available: none"


def test_missing_reference_metric():
    r = evaluate_criterion(crit(MetricCheck(metric="train.final_loss", op="<", value="train.nope")), ctx())
    assert r.outcome == "FAIL"
    assert "metric train.nope not found" in r.detail


def test_non_numeric_and_nan_metrics_fail():
    r = evaluate_criterion(crit(MetricCheck(metric="train.label", op="==", value=1)), ctx())
    assert r.outcome == "FAIL" and "not a number" in r.detail
    r = evaluate_criterion(crit(MetricCheck(metric="train.bad", op="!=", value=1)), ctx())
    assert r.outcome == "FAIL" and "NaN" in r.detail
    r = evaluate_criterion(crit(MetricCheck(metric="train.iters", op="<", value="model.dtype")), ctx())
    assert r.outcome == "FAIL" and "model.dtype is not a number" in r.detail


def test_bool_and_numeric_text_metrics():
    assert evaluate_criterion(crit(MetricCheck(metric="train.grad_checkpoint", op="==", value=1)),
                              ctx()).outcome == "PASS"
    assert evaluate_criterion(crit(MetricCheck(metric="train.numeric_text", op=">", value=2)),
                              ctx()).outcome == "PASS"


def test_nested_metric_namespace_is_not_a_value():
    r = evaluate_criterion(crit(MetricCheck(metric="model.dtype", op="==", value=1)),
                           CheckContext(metrics={"model": {"dtype": {"x": 1}}}))
    assert r.outcome == "FAIL"


def test_prose_only_is_unverified():
    r = evaluate_criterion(Criterion(id="AC2", text="reads well", critical=True), ctx())
    assert r.outcome == "UNVERIFIED"
    assert "needs a person" in r.detail
    assert r.critical is True and r.criterion_id == "AC2"


def test_file_check(tmp_path):
    first, second = tmp_path / "a", tmp_path / "b"
    (second / "adapters").mkdir(parents=True)
    first.mkdir()
    (second / "adapters" / "adapter_config.json").write_text("{}")
    c = crit(FileCheck(path="adapters/adapter_config.json"))
    r = evaluate_criterion(c, CheckContext(file_roots=[first, second], workdir=first))
    assert r.outcome == "PASS" and r.observed == "exists"
    r = evaluate_criterion(c, CheckContext(file_roots=[first], workdir=second))
    assert r.outcome == "FAIL" and r.observed == "missing" and str(first) in r.detail
    # No roots: the workdir is the root.
    assert evaluate_criterion(c, CheckContext(workdir=second)).outcome == "PASS"
    # Directories count too.
    assert evaluate_criterion(crit(FileCheck(path="adapters")), CheckContext(workdir=second)).outcome == "PASS"


def test_command_pass_fail_and_expected_exit(tmp_path):
    ok = evaluate_criterion(crit(CommandCheck(run=f'"{PY}" -c "print(41+1)"')), ctx(tmp_path))
    assert ok.outcome == "PASS" and ok.observed == "exit 0" and "42" in ok.detail
    no = evaluate_criterion(crit(CommandCheck(run="exit 3")), ctx(tmp_path))
    assert no.outcome == "FAIL" and no.observed == "exit 3"
    assert no.expected == "`exit 3` exits 0"
    yes = evaluate_criterion(crit(CommandCheck(run="exit 3", expect_exit=3)), ctx(tmp_path))
    assert yes.outcome == "PASS"


def test_command_runs_in_workdir_with_env(tmp_path):
    (tmp_path / "marker.txt").write_text("x")
    r = evaluate_criterion(crit(CommandCheck(run='test -f marker.txt && test "$OODA_X" = 7')),
                           ctx(tmp_path, env={"OODA_X": "7"}))
    assert r.outcome == "PASS", r.detail
    # env is an overlay: PATH is still there.
    r = evaluate_criterion(crit(CommandCheck(run='test -n "$PATH"')), ctx(tmp_path, env={}))
    assert r.outcome == "PASS"


def test_command_timeout_kills_the_process_group(tmp_path):
    start = time.monotonic()
    r = evaluate_criterion(crit(CommandCheck(run="echo started; sleep 30 & echo $! > bg.pid; sleep 30", timeout_s=0.5)),
                           ctx(tmp_path))
    assert time.monotonic() - start < 10
    assert r.outcome == "FAIL"
    assert r.observed == "timed out after 0.5 s"
    assert r.timed_out  # the Tester can tell a hung check from a failing one without reading text
    assert "started" in r.detail
    bg = int((tmp_path / "bg.pid").read_text())

    def gone() -> bool:  # no such process, or only a zombie left (Linux /proc)
        try:
            return Path(f"/proc/{bg}/stat").read_text().rsplit(")", 1)[1].split()[0] in ("Z", "X")
        except OSError:
            return True

    deadline = time.monotonic() + 10
    while not gone():
        assert time.monotonic() < deadline, "the background grandchild survived the timeout"
        time.sleep(0.05)


def test_command_not_timed_out_unless_it_was(tmp_path):
    assert not evaluate_criterion(crit(CommandCheck(run="exit 1")), ctx(tmp_path)).timed_out
    assert not evaluate_criterion(crit(CommandCheck(run="true")), ctx(tmp_path)).timed_out
    assert not evaluate_criterion(crit(MetricCheck(metric="train.final_loss", op="<", value=1)), ctx(tmp_path)).timed_out


def test_command_runs_under_bash_with_the_child_env_rules(tmp_path, monkeypatch):
    # a bashism that /bin/sh (dash) rejects
    r = evaluate_criterion(crit(CommandCheck(run='[[ 1 == 1 ]] && set -o pipefail && echo "$BASH_VERSION"')), ctx(tmp_path))
    assert r.outcome == "PASS", r.detail
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    r = evaluate_criterion(crit(CommandCheck(run='test "$MLX_DISABLE_COMPILE$HF_HUB_OFFLINE$PYTHONUNBUFFERED" = 111')),
                           ctx(tmp_path))
    assert r.outcome == "PASS", r.detail


def test_command_killed_by_a_signal_is_fail(tmp_path):
    r = evaluate_criterion(crit(CommandCheck(run="kill -KILL $$")), ctx(tmp_path))
    assert r.outcome == "FAIL" and r.observed == "killed by SIGKILL" and not r.timed_out


def test_command_without_bash_is_fail_not_exception(tmp_path):
    r = evaluate_criterion(crit(CommandCheck(run="true")), ctx(tmp_path, env={"PATH": str(tmp_path)}))
    assert r.outcome == "FAIL" and r.observed == "error"
    assert "could not run" in r.detail and "bash" in r.detail


def test_command_output_tail_is_bounded(tmp_path):
    r = evaluate_criterion(crit(CommandCheck(run=f'"{PY}" -c "print(\'y\' * 10000)"')), ctx(tmp_path))
    assert r.outcome == "PASS"
    assert len(r.detail) < 2200
    # 10 MB of output: still only the tail, and the real end of it
    r = evaluate_criterion(crit(CommandCheck(run=f'"{PY}" -c "print(\'z\' * 10_000_000); print(\'END\')"')), ctx(tmp_path))
    assert r.outcome == "PASS" and len(r.detail) < 2200 and r.detail.endswith("END")


def test_broken_workdir_is_fail_not_exception(tmp_path):
    r = evaluate_criterion(crit(CommandCheck(run="true")), CheckContext(workdir=tmp_path / "missing"))
    assert r.outcome == "FAIL"
    assert "could not run" in r.detail


# --------------------------------------------------------------------------------------------
# Verdict
# --------------------------------------------------------------------------------------------


def outcomes(spec: str) -> list[CriterionResult]:
    """P/F/U, upper case = critical: 'PpfU' -> critical PASS, PASS, FAIL, critical UNVERIFIED."""
    out = []
    for n, ch in enumerate(spec, start=1):
        outcome = {"p": "PASS", "f": "FAIL", "u": "UNVERIFIED"}[ch.lower()]
        out.append(CriterionResult(criterion_id=f"AC{n}", text="t", critical=ch.isupper(), outcome=outcome,
                                   observed="", expected="", detail=""))
    return out


@pytest.mark.parametrize("spec,decision", [
    ("", "needs_manual"),
    ("ppppp", "accept"),
    ("ppppf", "accept"),          # 80 % -> accept
    ("pppf", "adapt"),            # 75 % -> gray zone -> default adapt
    ("pppff", "adapt"),           # 60 % -> gray zone
    ("ppfff", "adapt"),           # 40 %
    ("Fpppp", "adapt"),           # critical failing beats the ratio
    ("Ppppp", "accept"),
    ("u", "needs_manual"),        # prose only: a person decides, never silently passed
    ("uu", "needs_manual"),
    ("pppu", "needs_manual"),     # 75 %, nothing failed: only a person can settle it
    ("ppppu", "accept"),          # 80 % passing; the unverified one is reported in the reason
    ("Upppp", "needs_manual"),    # critical unverified, nothing failed
    ("Upppf", "adapt"),           # critical unverified and something failed: fix the failure first
    ("Fu", "adapt"),
])
def test_decide_table(spec, decision):
    v = decide(outcomes(spec), CheckPolicy())
    assert v.decision == decision, v.reason
    assert v.total == len(spec)
    assert v.passed == sum(ch.lower() == "p" for ch in spec)


def test_decide_reports_failed_critical_and_ratio():
    v = decide(outcomes("FpUp"), CheckPolicy())
    assert v.failed_critical == ["AC1", "AC3"]
    assert v.pass_ratio == 0.5
    assert "AC1" in v.reason


@pytest.mark.parametrize("gray", ["accept", "adapt", "needs_manual"])
def test_gray_zone_decision_is_recorded(gray):
    v = decide(outcomes("pppf"), CheckPolicy(gray_zone_decision=gray))
    assert v.decision == gray
    assert "gray zone" in v.reason and f"gray_zone_decision = {gray}" in v.reason


def test_nothing_passing_is_never_accepted_even_by_a_lax_policy():
    lax = CheckPolicy(accept_ratio=0.01, gray_zone_ratio=0.0, gray_zone_decision="accept")
    assert decide(outcomes("uuu"), lax).decision == "needs_manual"
    assert decide(outcomes("fu"), lax).decision == "adapt"
    assert decide(outcomes("f"), lax).decision == "adapt"


def test_policy_thresholds():
    assert decide(outcomes("pf"), CheckPolicy(accept_ratio=0.5, gray_zone_ratio=0.4)).decision == "accept"
    assert decide(outcomes("pff"), CheckPolicy(accept_ratio=0.9, gray_zone_ratio=0.3,
                                               gray_zone_decision="needs_manual")).decision == "needs_manual"
    assert decide(outcomes("pfff"), CheckPolicy(gray_zone_ratio=0.3)).decision == "adapt"


def test_policy_validation():
    with pytest.raises(ValidationError):
        CheckPolicy(accept_ratio=0.5, gray_zone_ratio=0.7)
    with pytest.raises(ValidationError):
        CheckPolicy(accept_ratio=1.5)
    with pytest.raises(ValidationError):
        CheckPolicy(accept_ratio=0, gray_zone_ratio=0)
    with pytest.raises(ValidationError):
        CheckPolicy(gray_zone_decision="maybe")
    with pytest.raises(ValidationError):
        CheckPolicy(acept_ratio=0.8)


@given(st.text(alphabet="pfuPFU", max_size=12),
       st.floats(0.01, 1), st.floats(0, 1), st.sampled_from(["accept", "adapt", "needs_manual"]))
@settings(max_examples=400, deadline=None)
def test_decide_invariants(spec, a, b, gray):
    policy = CheckPolicy(accept_ratio=max(a, b), gray_zone_ratio=min(a, b), gray_zone_decision=gray)
    results = outcomes(spec)
    v = decide(results, policy)
    assert isinstance(v, Verdict)
    crit_not_pass = [r.criterion_id for r in results if r.critical and r.outcome != "PASS"]
    assert v.failed_critical == crit_not_pass
    if not results:
        assert v.decision == "needs_manual"
        return
    assert v.pass_ratio == pytest.approx(v.passed / v.total)
    if any(r.critical and r.outcome == "FAIL" for r in results):
        assert v.decision == "adapt"
    if v.decision == "accept":
        assert v.passed >= 1
        # Never accept with a critical criterion not passing, or below the accept ratio
        # (unless the policy itself sends the gray zone to accept).
        assert not crit_not_pass
        assert v.pass_ratio >= policy.gray_zone_ratio
        if gray != "accept":
            assert v.pass_ratio >= policy.accept_ratio
    if all(r.outcome == "PASS" for r in results):
        assert v.decision == "accept"
    if all(r.outcome == "UNVERIFIED" for r in results):
        assert v.decision == "needs_manual"


# --------------------------------------------------------------------------------------------
# Table
# --------------------------------------------------------------------------------------------


def test_results_table():
    rows = [
        CriterionResult(criterion_id="AC1", text="mem | under", critical=True, outcome="PASS",
                        observed="train.peak_memory_gb = 1.2", expected="train.peak_memory_gb <= 16", detail=""),
        CriterionResult(criterion_id="AC2", text="reads well", critical=False, outcome="UNVERIFIED",
                        observed="line1\nline2", expected="", detail=""),
    ]
    table = format_results_table(rows)
    lines = table.strip().splitlines()
    assert lines[0] == "| AC | Criterion | Critical | Expected | Observed | Outcome |"
    assert len(lines) == 4
    assert "mem \\| under" in lines[2] and "| yes |" in lines[2] and lines[2].endswith("| PASS |")
    assert "line1<br>line2" in lines[3] and lines[3].endswith("| UNVERIFIED |")
    # Every row has the same number of unescaped cell separators.
    import re
    counts = {len(re.findall(r"(?<!\\)\|", line)) for line in lines}
    assert counts == {7}


def test_end_to_end_parse_evaluate_decide(tmp_path):
    (tmp_path / "adapters").mkdir()
    (tmp_path / "adapters" / "adapter_config.json").write_text("{}")
    lines = [
        "- [ ] peak memory `metric: train.peak_memory_gb <= 16` (critical)",
        "- [ ] loss goes down `metric: train.final_loss < train.first_loss`",
        "- [ ] adapter saved `file: adapters/adapter_config.json`",
        "- [ ] runs `command: exit 0`",
        "- [ ] a person likes it",
    ]
    criteria = [parse(line, index=i) for i, line in enumerate(lines, start=1)]
    results = [evaluate_criterion(c, ctx(tmp_path)) for c in criteria]
    assert [r.outcome for r in results] == ["PASS", "PASS", "PASS", "PASS", "UNVERIFIED"]
    v = decide(results, CheckPolicy())
    assert v.decision == "accept" and v.passed == 4 and v.total == 5
    assert "AC5" in v.reason

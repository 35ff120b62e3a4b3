"""Acceptance criteria a machine can check, their evaluation, and the Tester's verdict (Check).

A criterion is one checkbox line of a backlog item. It may carry one inline check in backticks::

    - [ ] peak memory under target `metric: train.peak_memory_gb <= 16` (critical)
    - [ ] loss goes down `metric: train.final_loss < train.first_loss`
    - [ ] no worse than the base `metric: T007.eval.loss <= T006.eval.loss + 0.3`
    - [ ] adapter saved `file: adapters/adapter_config.json`
    - [ ] the script runs `command: python -c "print(1)"`
    - [ ] no slower than the last merged run `regression: inference.generation_tps higher`
    - [ ] the answers read naturally                       (prose only: a person decides)

Evaluation (:func:`evaluate_criterion`) gives ``PASS``, ``FAIL`` or ``UNVERIFIED`` for one
criterion against a :class:`CheckContext` (the job's namespaced metric summary, the roots where
files are looked up, the working directory of commands, the baselines of ``regression:`` checks).
:func:`decide` turns the results into a
:class:`Verdict` under a :class:`CheckPolicy`, following the check rules of the original process
(DESIGN.md §2): any critical criterion failing → adapt; all critical passing and at least 80 % of
all criteria passing → accept; 60–80 % → a recorded decision; below 60 % → adapt.
``UNVERIFIED`` never counts as passing. A ``regression:`` check compares a metric with its baseline
(the same metric of the latest story merged with the same job kind and model): up to
``regression_investigate_percent`` (20 %) worse passes, up to ``regression_fail_percent`` (50 %)
worse passes flagged "investigate", more than that is a critical ``FAIL``.

This module imports only the standard library, pydantic and :mod:`oodatcaa.core.process` (stdlib).
"""

from __future__ import annotations

import difflib
import math
import re
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Annotated, Any, Literal, cast

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from oodatcaa.core.errors import BacklogError
from oodatcaa.core.process import child_env, run_process

__all__ = [
    "OPERATORS",
    "CheckContext",
    "CheckPolicy",
    "CommandCheck",
    "Criterion",
    "CriterionResult",
    "FileCheck",
    "MetricCheck",
    "RegressionBaseline",
    "RegressionCheck",
    "RegressionOutcome",
    "Verdict",
    "decide",
    "evaluate_criterion",
    "format_check",
    "format_results_table",
    "parse_criterion_line",
    "regression_summary",
]

OPERATORS: tuple[str, ...] = ("<", "<=", ">", ">=", "==", "!=")
"""Comparison operators of a metric check."""

Op = Literal["<", "<=", ">", ">=", "==", "!="]
Outcome = Literal["PASS", "FAIL", "UNVERIFIED"]
Decision = Literal["accept", "adapt", "needs_manual"]

# A dotted metric name: a namespace and a key ("train.peak_memory_gb"), possibly deeper.
METRIC_NAME_PATTERN = r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z0-9_]+)+$"
_METRIC_NAME = re.compile(METRIC_NAME_PATTERN)
# A plain decimal number: 16, -2, 0.5, .5, 1e-3, 2.5E+9 (no units, no inf/nan).
_UNSIGNED_BODY = r"(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?"
_NUMBER_BODY = r"[+-]?" + _UNSIGNED_BODY
_NUMBER = re.compile(rf"^{_NUMBER_BODY}$")
_UNSIGNED = re.compile(rf"^{_UNSIGNED_BODY}$")
_NUMBER_PREFIX = re.compile(rf"^{_NUMBER_BODY}")
# A margin after a metric name on the right side: "train.first_loss + 0.3", "a.b*1.05" (N read later).
_MARGIN_OPS = ("+", "-", "*")
_WITH_MARGIN = re.compile(
    r"^(?P<ref>[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z0-9_]+)+)\s*(?P<mop>[-+*])\s*(?P<n>.*)$", re.S)
# A number followed by a margin operator: "2 + 1" (refused: a margin needs a metric to apply to).
_NUMBER_THEN_MARGIN = re.compile(rf"^(?P<num>{_NUMBER_BODY})\s*(?P<mop>[-+*])\s*(?P<n>.*)$", re.S)
# Equality of floats is relative: |a - b| <= 1e-9 * max(|a|, |b|) (math.isclose default).
_EQ_REL_TOL = 1e-9

_OUTPUT_TAIL_CHARS = 2000


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


def _check_relative_path(path: str) -> str | None:
    """Return a reason why ``path`` is not an acceptable relative path, or ``None`` if it is."""
    if not path or not path.strip():
        return "the path is empty"
    if path != path.strip():
        return "the path has leading or trailing spaces"
    if "\x00" in path:
        return "the path contains a NUL character"
    if path.startswith(("/", "\\", "~")) or PurePosixPath(path).is_absolute() or PureWindowsPath(path).drive:
        return f"{path!r} is an absolute path"
    parts = re.split(r"[\\/]+", path)
    if ".." in parts:
        return f"{path!r} contains '..'"
    return None


class MetricCheck(_Strict):
    """Compare a metric of the job summary with a number or with another metric.

    ``metric`` and a string ``value`` are dotted names ``namespace.key`` looked up in the job's
    namespaced summary (``train.peak_memory_gb`` is ``summary["train"]["peak_memory_gb"]``); units
    are whatever the job reports (GB = 1e9 bytes, seconds, tokens/s). ``==`` and ``!=`` compare
    numbers with a relative tolerance of 1e-9 (``math.isclose``).

    When ``value`` is a metric name the right side may carry one margin: the check compares
    ``metric OP factor * value + offset``. ``offset`` is in the units of the metric (written
    ``+ 0.3`` or ``- 0.1``), ``factor`` is a positive ratio without unit (written ``* 1.05``). The
    defaults (``offset`` 0.0, ``factor`` 1.0) mean no margin: checks stored before margins existed
    still validate, and their ``model_dump(exclude_defaults=True)`` is what it was.

    Raises :class:`pydantic.ValidationError` for an undotted name, a string ``value`` that is not a
    metric name, a non-finite number, a factor that is not > 0, a margin on a plain-number
    ``value``, or both an offset and a factor.
    """

    kind: Literal["metric"] = "metric"
    metric: str
    op: Op
    value: float | str
    offset: float = Field(default=0.0, description="Added to the compared metric (its units); only with a "
                                                     "metric-name value.")
    factor: float = Field(default=1.0, gt=0, description="Multiplies the compared metric (a ratio); only with a "
                                                         "metric-name value.")

    @field_validator("metric")
    @classmethod
    def _metric_name(cls, value: str) -> str:
        if not _METRIC_NAME.fullmatch(value):
            raise ValueError(f"metric name {value!r} must be dotted, like train.peak_memory_gb")
        return value

    @field_validator("value")
    @classmethod
    def _value(cls, value: float | str) -> float | str:
        if isinstance(value, str):
            if not _METRIC_NAME.fullmatch(value):
                raise ValueError(f"value {value!r} must be a number or a dotted metric name like train.first_loss")
            return value
        if not math.isfinite(value):
            raise ValueError("value must be a finite number")
        return float(value)

    @field_validator("offset", "factor")
    @classmethod
    def _finite_margin(cls, value: float) -> float:
        if not math.isfinite(value):
            raise ValueError("a margin must be a finite number")
        return float(value)

    @model_validator(mode="after")
    def _one_margin(self) -> MetricCheck:
        has_offset, has_factor = self.offset != 0.0, self.factor != 1.0
        if (has_offset or has_factor) and not isinstance(self.value, str):
            raise ValueError("a margin (offset or factor) applies only when value is a metric name; "
                             "fold it into the number instead")
        if has_offset and has_factor:
            raise ValueError("give one margin: an offset or a factor, not both")
        return self

    @property
    def has_margin(self) -> bool:
        """Whether the right side carries a margin (an offset other than 0 or a factor other than 1)."""
        return self.offset != 0.0 or self.factor != 1.0

    def right_side(self) -> str:
        """The right side as written inline: ``16``, ``train.first_loss``, ``T006.eval.loss + 0.3``."""
        return _format_value(self.value) + self.margin_text()

    def margin_text(self) -> str:
        """The margin as written inline, with a leading space (``" + 0.3"``, ``" * 1.05"``), or ``""``."""
        if self.factor != 1.0:
            return f" * {_format_value(self.factor)}"
        if self.offset > 0:
            return f" + {_format_value(self.offset)}"
        if self.offset < 0:
            return f" - {_format_value(-self.offset)}"
        return ""


class FileCheck(_Strict):
    """A file or directory that must exist, relative to one of the context's file roots.

    Absolute paths and paths with ``..`` are refused (a check never looks outside its roots).
    """

    kind: Literal["file"] = "file"
    path: str

    @field_validator("path")
    @classmethod
    def _path(cls, value: str) -> str:
        reason = _check_relative_path(value)
        if reason:
            raise ValueError(f"{reason}; use a path relative to the workspace, like adapters/adapter_config.json")
        return value


class RegressionCheck(_Strict):
    """A metric that must not regress against its baseline (inline ``regression: NAME higher``).

    ``better`` says which direction is better: ``higher`` (tokens/s) or ``lower`` (loss, seconds,
    peak memory). The baseline is the same metric recorded for the latest story merged on the trunk
    whose job had the same kind and model (:mod:`oodatcaa.baselines`); the thresholds are
    :attr:`CheckPolicy.regression_investigate_percent` and :attr:`CheckPolicy.regression_fail_percent`.
    """

    kind: Literal["regression"] = "regression"
    metric: str
    better: Literal["higher", "lower"]

    @field_validator("metric")
    @classmethod
    def _metric_name(cls, value: str) -> str:
        if not _METRIC_NAME.fullmatch(value):
            raise ValueError(f"metric name {value!r} must be dotted, like inference.generation_tps")
        return value


class CommandCheck(_Strict):
    """A shell command that must exit with ``expect_exit`` within ``timeout_s`` seconds."""

    kind: Literal["command"] = "command"
    run: str = Field(min_length=1)
    timeout_s: float = Field(default=300.0, gt=0, description="Seconds before the command is killed (FAIL).")
    expect_exit: int = 0


AnyCheck = MetricCheck | FileCheck | CommandCheck | RegressionCheck
Check = Annotated[AnyCheck, Field(discriminator="kind")]


class Criterion(_Strict):
    """One acceptance criterion of a backlog item.

    ``check`` is ``None`` for a prose-only criterion: no machine can decide it, so it evaluates
    to ``UNVERIFIED`` and needs a person. ``critical`` criteria must pass for the item to be
    accepted. ``text`` is the prose of the line without the checkbox, the inline check and the
    ``(critical)`` marker.
    """

    id: str = Field(pattern=r"^AC[1-9][0-9]*$")
    text: str
    check: Check | None = None
    critical: bool = False

    def to_markdown(self, *, checked: bool = False) -> str:
        """The criterion as a backlog checkbox line (inverse of :func:`parse_criterion_line`)."""
        parts = [f"- [{'x' if checked else ' '}]"]
        if self.text:
            parts.append(self.text)
        if self.check is not None:
            parts.append(_code_span(format_check(self.check)))
        if self.critical:
            parts.append("(critical)")
        return " ".join(parts)


def format_check(check: AnyCheck) -> str:
    """The inline form of a check, without backticks: ``metric: train.final_loss < 2``."""
    if isinstance(check, MetricCheck):
        return f"metric: {check.metric} {check.op} {check.right_side()}"
    if isinstance(check, FileCheck):
        return f"file: {check.path}"
    if isinstance(check, RegressionCheck):
        return f"regression: {check.metric} {check.better}"
    return f"command: {check.run}"


def _format_value(value: float | str) -> str:
    if isinstance(value, str):
        return value
    if math.isfinite(value) and value == int(value) and abs(value) < 1e15:
        return str(int(value))
    return repr(value)


def _code_span(content: str) -> str:
    """A Markdown code span holding ``content`` (more backticks when it contains backticks)."""
    longest = max((len(m) for m in re.findall(r"`+", content)), default=0)
    fence = "`" * (longest + 1)
    if longest or content.startswith(" ") or content.endswith(" "):
        return f"{fence} {content} {fence}"
    return f"{fence}{content}{fence}"


# --------------------------------------------------------------------------------------------
# Parsing
# --------------------------------------------------------------------------------------------

_CHECKBOX_PREFIX = re.compile(r"^\s*[-*+]\s+\[[ xX]\]\s*")
# CommonMark code span: a run of N backticks, content, a run of exactly N backticks.
_CODE_SPAN = re.compile(r"(?<!`)(?P<ticks>`+)(?!`)(?P<body>.*?)(?<!`)(?P=ticks)(?!`)", re.S)
_CRITICAL = re.compile(r"\*\*\(\s*critical\s*\)\*\*|([*_])\(\s*critical\s*\)\1|\(\s*critical\s*\)", re.I)
_KIND_PREFIX = re.compile(r"^\s*(?P<word>[A-Za-z_][A-Za-z_ ]*?)\s*:\s*(?P<rest>.*)$", re.S)
_KINDS = ("metric", "file", "command", "regression")
_KIND_MISSPELLINGS = {"metrics", "files", "cmd", "commands", "shell", "exists", "run", "regress", "regressions",
                      "baseline"}
_METRIC_EXPR = re.compile(r"^(?P<name>\S*?)\s*(?P<op>[<>=!~]+)\s*(?P<value>.*)$", re.S)


def parse_criterion_line(text: str, *, index: int, source: str, line: int) -> Criterion:
    """Parse one acceptance-criterion line into a :class:`Criterion` with id ``AC<index>``.

    ``text`` is the checkbox line (``- [ ] ...`` or ``- [x] ...``; a checked box is still a
    criterion) or just the text after the box. At most one backticked check (``metric:``,
    ``file:`` or ``command:``) is read; other code spans stay part of the prose. ``(critical)``
    anywhere outside code spans, in any case, marks the criterion critical. ``index`` is 1-based.

    A metric check is ``metric: NAME OP VALUE`` where ``VALUE`` is a plain number or a dotted
    metric name; a metric name may be followed by one margin ``+ N``, ``- N`` or ``* N`` (``N`` an
    unsigned plain number, spaces optional): ``metric: T007.eval.loss <= T006.eval.loss + 0.3``
    compares with ``T006.eval.loss + 0.3`` (:attr:`MetricCheck.offset` 0.3), ``... * 1.05`` with
    1.05 times it (:attr:`MetricCheck.factor`).

    Raises :class:`BacklogError` (``source``, ``line``, the problem and the fix) for a check with
    bad syntax: an unknown operator, a value that is not a number or a metric name, a margin after
    a plain number, a margin that is not one unsigned plain number (units, a sign, a second
    margin, a zero factor), a ``file:`` path that is absolute or contains ``..``, an empty command,
    a misspelled check kind, or two checks on one line, or an empty criterion. Raises :class:`ValueError` if ``index`` < 1.
    """
    if index < 1:
        raise ValueError(f"criterion index must be >= 1, got {index}")
    body = _CHECKBOX_PREFIX.sub("", text, count=1).strip()

    def fail(message: str) -> BacklogError:
        return BacklogError(source, line, f"acceptance criterion AC{index}: {message}")

    checks: list[tuple[re.Match[str], AnyCheck]] = []
    for match in _CODE_SPAN.finditer(body):
        content = match.group("body")
        if len(content) >= 2 and content.startswith(" ") and content.endswith(" ") and content.strip():
            content = content[1:-1]  # CommonMark strips one space on each side
        parsed = _parse_check(content, fail)
        if parsed is not None:
            checks.append((match, parsed))
    if len(checks) > 1:
        raise fail(
            f"{len(checks)} checks on one line; write one check per criterion "
            "(split the line into several `- [ ]` lines)"
        )

    prose = body
    check = None
    if checks:
        match, check = checks[0]
        prose = body[: match.start()] + " " + body[match.end() :]
    critical = False
    # Look for "(critical)" outside code spans only.
    outside = _CODE_SPAN.sub(lambda m: " " * len(m.group(0)), prose)
    if _CRITICAL.search(outside):
        critical = True
        pieces: list[str] = []
        last = 0
        for m in _CRITICAL.finditer(outside):
            pieces.append(prose[last : m.start()])
            last = m.end()
        pieces.append(prose[last:])
        prose = " ".join(pieces)
    prose = re.sub(r"\s+", " ", prose).strip()
    if not prose and check is None:
        raise fail("the criterion is empty; write what must hold (and a check), or remove the line")
    return Criterion(id=f"AC{index}", text=prose, check=check, critical=critical)


def _parse_check(content: str, fail: Any) -> AnyCheck | None:
    """Parse the inside of one code span; ``None`` when it is not a check (plain code)."""
    m = _KIND_PREFIX.match(content)
    if not m:
        return None
    word = m.group("word").strip().lower()
    rest = m.group("rest").strip()
    if word not in _KINDS:
        close = difflib.get_close_matches(word, _KINDS, n=1, cutoff=0.8)
        if word in _KIND_MISSPELLINGS or close:
            hint = {"cmd": "command", "run": "command", "shell": "command", "exists": "file",
                    "baseline": "regression"}.get(
                word, close[0] if close else "command"
            )
            raise fail(
                f"unknown check kind {word!r} in `{content}`; the kinds are metric:, file:, command: and "
                "regression: "
                f"(did you mean `{hint}: {rest}`?)"
            )
        return None
    if word == "metric":
        return _parse_metric(rest, content, fail)
    if word == "regression":
        return _parse_regression(rest, content, fail)
    if word == "file":
        reason = _check_relative_path(rest)
        if reason:
            raise fail(
                f"bad file check `{content}`: {reason}; use a path relative to the workspace, "
                "like `file: adapters/adapter_config.json`"
            )
        return FileCheck(path=rest)
    if not rest:
        raise fail(f"empty command in `{content}`; write the shell command after it, like `command: pytest -q`")
    return CommandCheck(run=rest)


def _parse_metric(expr: str, content: str, fail: Any) -> MetricCheck:
    syntax = "`metric: NAME OP VALUE`, like `metric: train.peak_memory_gb <= 16`"
    m = _METRIC_EXPR.match(expr)
    if not m or not m.group("name"):
        raise fail(f"bad metric check `{content}`: expected {syntax} with OP one of {' '.join(OPERATORS)}")
    name, op, value = m.group("name"), m.group("op"), m.group("value").strip()
    if not _METRIC_NAME.fullmatch(name):
        raise fail(
            f"bad metric name {name!r} in `{content}`: use a dotted name namespace.key, "
            "like train.peak_memory_gb or inference.generation_tps"
        )
    if op not in OPERATORS:
        hint = {"=": "==", "=>": ">=", "=<": "<=", "<>": "!=", "!": "!=", "===": "=="}.get(op)
        raise fail(
            f"unknown operator {op!r} in `{content}`; use one of {' '.join(OPERATORS)}"
            + (f" (did you mean {hint!r}?)" if hint else "")
        )
    if not value:
        raise fail(f"missing value in `{content}`; expected {syntax}")
    if _NUMBER.fullmatch(value):
        number = float(value)
        if not math.isfinite(number):
            raise fail(f"value {value!r} in `{content}` is out of range; use a finite number")
        return MetricCheck(metric=name, op=cast(Op, op), value=number)
    if _METRIC_NAME.fullmatch(value):
        return MetricCheck(metric=name, op=cast(Op, op), value=value)
    margin = _WITH_MARGIN.match(value)
    if margin:
        return _parse_margin(name, op, margin.group("ref"), margin.group("mop"), margin.group("n").strip(),
                             content, fail)
    after_number = _NUMBER_THEN_MARGIN.match(value)
    if after_number and re.match(r"^[+-]?[\d.]", after_number.group("n").strip()):
        num, mop, n = after_number.group("num"), after_number.group("mop"), after_number.group("n").strip()
        if _NUMBER.fullmatch(n):
            a, b = float(num), float(n)
            computed = a + b if mop == "+" else a - b if mop == "-" else a * b
            like = f"`metric: {name} {op} {_format_computed(computed) if math.isfinite(computed) else num}`"
        else:
            like = f"`metric: {name} {op} {num}`"
        raise fail(
            f"margin {mop} {n} after the plain number {num} in `{content}`: a margin applies only to another "
            f"metric (like `metric: {name} {op} train.first_loss {mop} {n}`); with a number, write "
            f"the number itself, like {like}"
        )
    number_like = _NUMBER_PREFIX.match(value)
    if number_like and number_like.group(0):
        fix = f"write a plain number without units, like `metric: {name} {op} {number_like.group(0)}`"
    else:
        fix = ("write a plain number (16, 0.5, 1e-3) or another dotted metric name (train.first_loss), "
               "optionally with one margin (train.first_loss + 0.3)")
    raise fail(f"unparsable value {value!r} in `{content}`: {fix}")


def _parse_regression(expr: str, content: str, fail: Any) -> RegressionCheck:
    """``NAME higher`` or ``NAME lower``; raises ``fail(...)`` naming the right form otherwise."""
    form = "`regression: NAME higher` (or `lower` when lower is better), like `regression: inference.generation_tps higher`"
    words = expr.split()
    if len(words) != 2:
        raise fail(f"bad regression check `{content}`: expected {form}")
    name, better = words[0], words[1].lower()
    if not _METRIC_NAME.fullmatch(name):
        raise fail(f"bad metric name {name!r} in `{content}`: use a dotted name namespace.key, "
                   "like inference.generation_tps or train.final_loss")
    if better not in ("higher", "lower"):
        raise fail(f"unknown direction {words[1]!r} in `{content}`: write `higher` (more is better, like "
                   "tokens/s) or `lower` (less is better, like a loss or peak memory)")
    return RegressionCheck(metric=name, better=cast(Literal["higher", "lower"], better))


def _parse_margin(name: str, op: str, ref: str, mop: str, n: str, content: str, fail: Any) -> MetricCheck:
    """The check ``name op ref mop n`` (``mop`` one of ``+ - *``); raises ``fail(...)`` for a bad ``n``."""
    example = {"+": "0.3", "-": "0.1", "*": "1.05"}[mop]
    form = f"`metric: {name} {op} {ref} {mop} {example}`"
    what = "factor" if mop == "*" else "margin"
    if not n:
        raise fail(f"missing number after {mop!r} in `{content}`: write one plain number, like {form}")
    if _UNSIGNED.fullmatch(n):
        number = float(n)
        if not math.isfinite(number):
            raise fail(f"{what} {n!r} in `{content}` is out of range; use a finite number, like {form}")
        if mop == "*":
            if number == 0:
                raise fail(f"factor 0 in `{content}` compares with 0, not with {ref}; use a positive factor, "
                           f"like {form}, or compare with the number: `metric: {name} {op} 0`")
            return MetricCheck(metric=name, op=cast(Op, op), value=ref, factor=number)
        return MetricCheck(metric=name, op=cast(Op, op), value=ref, offset=number if mop == "+" else -number)
    if _NUMBER.fullmatch(n):  # signed: "+ -0.1", "* -1"
        if mop == "*":
            raise fail(f"negative or signed factor {n!r} in `{content}`: a factor is a positive number "
                       f"without a sign, like {form}")
        flipped = "-" if (mop == "+") == n.startswith("-") else "+"
        raise fail(f"signed margin {mop} {n} in `{content}`: write the number without a sign, "
                   f"like `metric: {name} {op} {ref} {flipped} {n.lstrip('+-')}`")
    prefix = _NUMBER_PREFIX.match(n)
    if prefix and prefix.group(0):
        rest = n[prefix.end():].lstrip()
        if rest[:1] in _MARGIN_OPS:
            raise fail(f"two margins in `{content}`: write one margin (`+ N`, `- N` or `* N`) after {ref}, "
                       f"like {form}; fold the others into its number")
        raise fail(f"unparsable {what} {n!r} in `{content}`: write a plain number without units, "
                   f"like `metric: {name} {op} {ref} {mop} {prefix.group(0).lstrip('+-')}`")
    raise fail(f"unparsable {what} {n!r} in `{content}`: a margin is one plain number (0.3, 1e-3), not a "
               f"name or an expression; write it like {form}")


# --------------------------------------------------------------------------------------------
# Evaluation
# --------------------------------------------------------------------------------------------


@dataclass
class CheckContext:
    """What a criterion is checked against.

    ``metrics``: the job's namespaced summary, ``{"train": {"peak_memory_gb": 1.2, ...}}``
    (units as the job reports them: GB = 1e9 bytes, seconds, tokens/s). ``file_roots``: a
    :class:`FileCheck` passes when its path exists under any of them; when empty, ``workdir`` is
    the only root. ``workdir``: the working directory of commands. ``env``: extra environment
    variables for commands, added last to the environment every child gets
    (:func:`oodatcaa.core.process.child_env`: the current environment plus ``MLX_DISABLE_COMPILE=1``,
    ``HF_HUB_OFFLINE=1``, ...), so they override it; ``None`` adds nothing.

    ``baselines``: for ``regression:`` checks, the baseline of each metric name (``None`` for a
    metric that has none yet, which passes and becomes the baseline when the story merges); the
    mapping itself is ``None`` where no baselines were looked up (outside the Tester), and then a
    regression check is ``UNVERIFIED`` with ``baseline_error`` (or a default) as the reason.
    ``policy``: the regression thresholds (the defaults when ``None``).
    """

    metrics: dict[str, dict[str, Any]] = field(default_factory=dict)
    file_roots: list[Path] = field(default_factory=list)
    workdir: Path = field(default_factory=Path.cwd)
    env: dict[str, str] | None = None
    baselines: dict[str, RegressionBaseline | None] | None = None
    baseline_error: str | None = None
    policy: CheckPolicy | None = None


class RegressionBaseline(_Strict):
    """The baseline of one metric: its value and where it comes from (for the report).

    ``source`` is prose for people, like ``T003 (merge 1a2b3c4d5e, inference_bench on default)``;
    ``task`` is the story that recorded it.
    """

    value: float
    task: str
    source: str


RegressionLevel = Literal["within", "investigate", "regressed", "no_baseline", "unverified"]


class RegressionOutcome(_Strict):
    """What a ``regression:`` check found: the run's value, the baseline and how much worse.

    ``worse_percent`` is ``100 * (baseline - value) / |baseline|`` when higher is better (the mirror
    when lower is better): negative means better than the baseline; ``None`` without a baseline.
    ``level``: ``within`` (at most ``regression_investigate_percent`` worse: pass), ``investigate``
    (at most ``regression_fail_percent`` worse: pass, flagged), ``regressed`` (more: a critical
    ``FAIL``), ``no_baseline`` (pass; the value becomes the baseline), ``unverified`` (the metric or
    the baselines are missing).
    """

    metric: str
    better: Literal["higher", "lower"]
    level: RegressionLevel
    value: float | None = None
    baseline: float | None = None
    baseline_source: str | None = None
    worse_percent: float | None = None


class CriterionResult(_Strict):
    """The outcome of one criterion: ``PASS``, ``FAIL`` or ``UNVERIFIED`` (needs a person).

    ``timed_out`` is true only for a command check whose command was killed at its ``timeout_s``
    (then ``outcome`` is ``FAIL``): the Tester can tell a hung check from a failing one without
    reading ``observed``, which is for people.
    """

    criterion_id: str
    text: str
    critical: bool
    outcome: Outcome
    observed: str
    expected: str
    detail: str = ""
    timed_out: bool = False
    regression: RegressionOutcome | None = None


def evaluate_criterion(criterion: Criterion, ctx: CheckContext) -> CriterionResult:
    """Check one criterion against ``ctx``; never raises for a problem of the checked work.

    - prose only → ``UNVERIFIED`` ("needs a person"), never a pass;
    - metric → ``FAIL`` when the metric (or the compared metric) is missing — the detail names
      the available metrics — or is not a finite number (NaN, inf); with a margin the right side
      ``factor * other + offset`` is what is compared, and ``observed`` and ``detail`` show it;
    - file → ``PASS`` when ``root / path`` exists under any root;
    - regression → the metric against ``ctx.baselines`` (:func:`_eval_regression`); a metric the run
      does not produce, or no baselines in ``ctx``, is ``UNVERIFIED`` (never a pass); more than
      ``regression_fail_percent`` worse is a ``FAIL`` whose result is ``critical`` whatever the
      criterion says (the original's rule: such a regression sends the story to adapt);
    - command → run by ``bash -c`` (:func:`oodatcaa.core.process.run_process`: cwd ``ctx.workdir``,
      the child environment rules plus ``ctx.env``, its own process group); ``PASS`` when the exit
      status equals ``expect_exit``; past ``timeout_s`` seconds the command's whole process group
      gets SIGTERM, then SIGKILL 5 s later, and the result is a ``FAIL`` with ``timed_out`` set; the
      detail holds the output tail (at most 2000 characters, the rest is never kept in memory). A
      command that cannot start (no bash, a missing workdir) is a ``FAIL`` whose detail says so.
    """
    base: dict[str, Any] = {"criterion_id": criterion.id, "text": criterion.text, "critical": criterion.critical}
    check = criterion.check
    if check is None:
        return CriterionResult(
            **base,
            outcome="UNVERIFIED",
            observed="not checked by a machine",
            expected=criterion.text or "(prose criterion)",
            detail="needs a person: prose-only criterion (add a `metric:`, `file:` or `command:` check to automate it)",
        )
    timed_out = False
    if isinstance(check, RegressionCheck):
        outcome, observed, detail, regression = _eval_regression(check, ctx)
        if regression.level == "regressed":
            base["critical"] = True
        return CriterionResult(**base, outcome=outcome, observed=observed, expected=_expected(check), detail=detail,
                               regression=regression)
    try:
        if isinstance(check, MetricCheck):
            outcome, observed, detail = _eval_metric(check, ctx)
        elif isinstance(check, FileCheck):
            outcome, observed, detail = _eval_file(check, ctx)
        else:
            outcome, observed, detail, timed_out = _eval_command(check, ctx)
    except Exception as exc:  # noqa: BLE001 - a broken environment is a FAIL, reported truthfully
        outcome, observed, detail = "FAIL", "error", f"check could not run: {type(exc).__name__}: {exc}"
    return CriterionResult(**base, outcome=outcome, observed=observed, expected=_expected(check), detail=detail,
                           timed_out=timed_out)


def _expected(check: AnyCheck) -> str:
    if isinstance(check, MetricCheck):
        return f"{check.metric} {check.op} {check.right_side()}"
    if isinstance(check, RegressionCheck):
        return f"{check.metric} not regressed against its baseline ({check.better} is better)"
    if isinstance(check, FileCheck):
        return f"{check.path} exists"
    return f"`{check.run}` exits {check.expect_exit}"


def _flatten(metrics: Any, prefix: str = "") -> list[str]:
    names: list[str] = []
    if isinstance(metrics, dict):
        for key in sorted(metrics, key=str):
            value = metrics[key]
            name = f"{prefix}.{key}" if prefix else str(key)
            if isinstance(value, dict):
                names.extend(_flatten(value, name))
            elif prefix:
                names.append(name)
    return names


def _lookup(metrics: dict[str, Any], name: str) -> tuple[bool, Any]:
    node: Any = metrics
    for part in name.split("."):
        if not isinstance(node, dict) or part not in node:
            return False, None
        node = node[part]
    return True, node


def _missing(name: str, ctx: CheckContext) -> str:
    available = _flatten(ctx.metrics)
    namespace = name.split(".", 1)[0]
    same = [a for a in available if a.startswith(namespace + ".")]
    ordered = same + [a for a in available if a not in same]
    shown = ", ".join(ordered[:25]) + (f", ... ({len(ordered) - 25} more)" if len(ordered) > 25 else "")
    text = f"metric {name} not found; available: {shown or 'none'}"
    close = difflib.get_close_matches(name, available, n=1, cutoff=0.75)
    if close:
        text += f" (did you mean {close[0]}?)"
    return text


def _as_number(value: Any) -> float | None:
    if isinstance(value, bool):
        return float(value)
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, str) and _NUMBER.fullmatch(value.strip()):
        return float(value)
    return None


def _compare(left: float, op: str, right: float) -> bool:
    if op == "==":
        return math.isclose(left, right, rel_tol=_EQ_REL_TOL, abs_tol=0.0)
    if op == "!=":
        return not math.isclose(left, right, rel_tol=_EQ_REL_TOL, abs_tol=0.0)
    return {"<": left < right, "<=": left <= right, ">": left > right, ">=": left >= right}[op]


def _eval_metric(check: MetricCheck, ctx: CheckContext) -> tuple[Outcome, str, str]:
    found, raw = _lookup(ctx.metrics, check.metric)
    if not found:
        return "FAIL", "missing", _missing(check.metric, ctx)
    left = _as_number(raw)
    observed = f"{check.metric} = {raw!r}" if not isinstance(raw, (int, float)) else f"{check.metric} = {raw}"
    if left is None:
        return "FAIL", observed, f"metric {check.metric} is not a number: {raw!r}"
    shown_right = ""
    if isinstance(check.value, str):
        found_r, raw_r = _lookup(ctx.metrics, check.value)
        if not found_r:
            return "FAIL", observed, _missing(check.value, ctx)
        other = _as_number(raw_r)
        observed += f", {check.value} = {raw_r!r}" if other is None else f", {check.value} = {raw_r}"
        if other is None:
            return "FAIL", observed, f"metric {check.value} is not a number: {raw_r!r}"
        right = check.factor * other + check.offset
        shown_right = _format_value(other)
        if check.has_margin and not math.isnan(right):
            observed += f" ({check.margin_text().strip()} = {_format_computed(right)})"
            shown_right += f"{check.margin_text()} (= {_format_computed(right)})"
    else:
        right = check.value
        shown_right = _format_value(right)
    if math.isnan(left) or math.isnan(right):
        return "FAIL", observed, "NaN never satisfies a comparison"
    if math.isinf(left) or math.isinf(right):
        return "FAIL", observed, "an infinite value never satisfies a check (a diverged or overflowed metric)"
    ok = _compare(left, check.op, right)
    detail = f"{_format_value(left)} {check.op} {shown_right} is {'true' if ok else 'false'}"
    return ("PASS" if ok else "FAIL"), observed, detail


def _eval_regression(check: RegressionCheck, ctx: CheckContext) -> tuple[Outcome, str, str, RegressionOutcome]:
    """Compare the run's metric with its baseline under ``ctx.policy``'s thresholds (percent of the baseline).

    At the thresholds the better outcome holds: exactly 20 % worse is within, exactly 50 % is
    "investigate". A baseline of 0 makes any worse value infinitely worse (``regressed``).
    """
    policy = ctx.policy or CheckPolicy()
    out: dict[str, Any] = {"metric": check.metric, "better": check.better}
    found, raw = _lookup(ctx.metrics, check.metric)
    if not found:
        return ("UNVERIFIED", "missing", _missing(check.metric, ctx) + "; a regression check never passes without "
                "its metric", RegressionOutcome(**out, level="unverified"))
    value = _as_number(raw)
    observed = f"{check.metric} = {raw!r}" if not isinstance(raw, (int, float)) else f"{check.metric} = {raw}"
    if value is None or not math.isfinite(value):
        what = "not a number" if value is None else "not finite (a diverged or overflowed metric)"
        return "FAIL", observed, f"metric {check.metric} is {what}: {raw!r}", RegressionOutcome(**out, level="unverified")
    out["value"] = value
    if ctx.baselines is None:
        why = ctx.baseline_error or "no baselines in this check (only the Tester looks them up)"
        return "UNVERIFIED", observed, f"baselines not available: {why}", RegressionOutcome(**out, level="unverified")
    baseline = ctx.baselines.get(check.metric)
    if baseline is None:
        return ("PASS", observed, f"no baseline yet for {check.metric} (same job kind and model); "
                f"{_format_computed(value)} becomes the baseline when the story merges",
                RegressionOutcome(**out, level="no_baseline"))
    base, worse = baseline.value, (baseline.value - value if check.better == "higher" else value - baseline.value)
    pct = worse * 100.0 / abs(base) if base != 0 else (0.0 if worse <= 0 else math.inf)
    out.update(baseline=base, baseline_source=baseline.source, worse_percent=pct)
    # a hair of tolerance so 120 -> 96 (exactly 20 % in decimal) is not pushed over by binary rounding
    eps = 1e-9
    inv, fail = policy.regression_investigate_percent, policy.regression_fail_percent
    compared = f"{_format_computed(value)} vs baseline {_format_computed(base)} from {baseline.source}"
    if pct <= inv + eps:
        how = f"{-pct:.3g} % better" if pct < 0 else f"{pct:.3g} % worse, within {inv:g} %"
        return "PASS", observed, f"{compared}: {how}", RegressionOutcome(**out, level="within")
    if pct <= fail + eps:
        return ("PASS", observed, f"{compared}: {pct:.3g} % worse, between {inv:g} % and {fail:g} %: investigate",
                RegressionOutcome(**out, level="investigate"))
    shown = "infinitely" if math.isinf(pct) else f"{pct:.3g} %"
    return ("FAIL", observed, f"{compared}: {shown} worse, more than {fail:g} %: a critical regression",
            RegressionOutcome(**out, level="regressed"))


def regression_summary(result: CriterionResult) -> str:
    """One line for a regression result: ``AC3 inference.generation_tps 35 % worse than 120 (T003 ...)``."""
    r = result.regression
    if r is None:
        return f"{result.criterion_id}: not a regression check"
    if r.level == "no_baseline" and r.value is not None:
        return (f"{result.criterion_id} {r.metric}: no baseline yet (same job kind and model); "
                f"{_format_computed(r.value)} becomes the baseline when the story merges")
    if r.worse_percent is None or r.baseline is None:
        return f"{result.criterion_id} {r.metric}: {r.level}: {result.detail}"
    pct = "infinitely" if math.isinf(r.worse_percent) else f"{abs(r.worse_percent):.3g} %"
    direction = "better" if r.worse_percent < 0 else "worse"
    return (f"{result.criterion_id} {r.metric} {pct} {direction} than the baseline {_format_computed(r.baseline)} "
            f"from {r.baseline_source} ({r.level})")


def _format_computed(value: float) -> str:
    """A computed right side for people: 12 significant digits (``1.85 + 0.3`` shows ``2.15``)."""
    if math.isfinite(value) and value == int(value) and abs(value) < 1e15:
        return str(int(value))
    return f"{value:.12g}"


def _eval_file(check: FileCheck, ctx: CheckContext) -> tuple[Outcome, str, str]:
    roots = list(ctx.file_roots) or [ctx.workdir]
    for root in roots:
        candidate = Path(root) / check.path
        if candidate.exists():
            return "PASS", "exists", f"found {candidate}"
    where = ", ".join(str(r) for r in roots)
    return "FAIL", "missing", f"{check.path} not found under: {where}"


def _eval_command(check: CommandCheck, ctx: CheckContext) -> tuple[Outcome, str, str, bool]:
    """Run the check's command line; returns (outcome, observed, detail, timed_out).

    Raises what :func:`oodatcaa.core.process.run_process` raises when the command cannot start (no
    bash, a missing workdir); :func:`evaluate_criterion` reports that as a ``FAIL`` that could not run.
    """
    result = run_process(
        check.run,
        cwd=ctx.workdir,
        env=child_env(ctx.env),
        timeout_s=check.timeout_s,
        tail_chars=_OUTPUT_TAIL_CHARS,
    )
    tail = result.output_tail.rstrip()
    shown = f"; output tail:\n{tail}" if tail else ""
    if result.timed_out:
        return "FAIL", f"timed out after {check.timeout_s:g} s", f"command killed after {check.timeout_s:g} s{shown}", True
    if result.signal_name is not None:
        observed = f"killed by {result.signal_name}"
    else:
        observed = f"exit {result.returncode}"
    ok = result.returncode == check.expect_exit
    return ("PASS" if ok else "FAIL"), observed, f"{observed} after {result.duration_s:.2f} s{shown}", False


# --------------------------------------------------------------------------------------------
# Verdict
# --------------------------------------------------------------------------------------------


class CheckPolicy(_Strict):
    """Thresholds of the Tester's verdict (config.toml ``[check]``); ratios are fractions 0..1.

    Defaults are the original process: accept at >= 80 % passing, a recorded decision between
    60 % and 80 % (``gray_zone_decision``), adapt below 60 %.
    """

    accept_ratio: float = Field(default=0.8, gt=0.0, le=1.0)
    gray_zone_ratio: float = Field(default=0.6, ge=0.0, le=1.0)
    gray_zone_decision: Decision = "adapt"
    regression_investigate_percent: float = Field(
        default=20.0, ge=0.0, allow_inf_nan=False,
        description="a `regression:` metric up to this % worse than its baseline passes")
    regression_fail_percent: float = Field(
        default=50.0, ge=0.0, allow_inf_nan=False,
        description="up to this % worse passes flagged investigate; more is a critical fail")

    @model_validator(mode="after")
    def _ordered(self) -> CheckPolicy:
        if self.gray_zone_ratio > self.accept_ratio:
            raise ValueError(
                f"gray_zone_ratio ({self.gray_zone_ratio}) must not exceed accept_ratio ({self.accept_ratio})"
            )
        if self.regression_investigate_percent > self.regression_fail_percent:
            raise ValueError(
                f"regression_investigate_percent ({self.regression_investigate_percent:g}) must not exceed "
                f"regression_fail_percent ({self.regression_fail_percent:g})"
            )
        return self


class Verdict(_Strict):
    """The Check step's decision for one item, with the numbers behind it and a reason."""

    decision: Decision
    pass_ratio: float
    passed: int
    total: int
    failed_critical: list[str] = Field(default_factory=list, description="Critical criteria not passing.")
    reason: str
    gray_zone: bool = Field(default=False, description="Decided by the gray-zone rule (policy gray_zone_decision).")


def _pct(ratio: float) -> str:
    return f"{ratio * 100:.4g}%"


def decide(results: list[CriterionResult], policy: CheckPolicy | None = None) -> Verdict:
    """Turn criterion results into a verdict (the check rules of DESIGN.md §2).

    In order:

    1. no criteria at all → ``needs_manual`` (nothing a machine could accept);
    2. a critical criterion ``FAIL`` → ``adapt``;
    3. nothing ``FAIL`` but ``UNVERIFIED`` criteria stand between the item and acceptance (a
       critical one, or the pass ratio below ``accept_ratio``) → ``needs_manual``: only a person
       can settle them, adapting the work cannot;
    4. a critical criterion ``UNVERIFIED`` while other criteria fail → ``adapt``;
       no criterion passing at all is never accepted, whatever the policy (``adapt`` when
       something failed);
    5. pass ratio >= ``accept_ratio`` → ``accept``;
    6. ``gray_zone_ratio`` <= ratio < ``accept_ratio`` → ``policy.gray_zone_decision`` (recorded
       in the reason);
    7. otherwise → ``adapt``.

    The pass ratio is PASS / all criteria; ``UNVERIFIED`` counts as not passing, so it is never
    silently passed. ``failed_critical`` lists every critical criterion that did not pass (a
    ``regression:`` result more than ``regression_fail_percent`` worse counts as critical). Every
    reason ends with the regressions flagged ``investigate`` or ``regressed``, if any.
    """
    policy = policy or CheckPolicy()
    total = len(results)
    if total == 0:
        return Verdict(
            decision="needs_manual", pass_ratio=0.0, passed=0, total=0, failed_critical=[],
            reason="no acceptance criteria to check; a person must decide (add checkable criteria to the item)",
        )
    passed = sum(1 for r in results if r.outcome == "PASS")
    ratio = passed / total
    failed = [r.criterion_id for r in results if r.outcome == "FAIL"]
    unverified = [r.criterion_id for r in results if r.outcome == "UNVERIFIED"]
    crit_fail = [r.criterion_id for r in results if r.critical and r.outcome == "FAIL"]
    crit_unverified = [r.criterion_id for r in results if r.critical and r.outcome == "UNVERIFIED"]
    failed_critical = [r.criterion_id for r in results if r.critical and r.outcome != "PASS"]
    counts = f"{passed}/{total} criteria passed ({_pct(ratio)})"
    unverified_note = f"; unverified (need a person): {', '.join(unverified)}" if unverified else ""
    flagged = [regression_summary(r) for r in results if r.regression and r.regression.level in ("regressed", "investigate")]
    # every reason names the flagged regressions, so the record says why a story slowed down
    regression_note = ("; regressions: " + "; ".join(flagged)) if flagged else ""

    def verdict(decision: Decision, reason: str, *, gray_zone: bool = False) -> Verdict:
        return Verdict(decision=decision, pass_ratio=ratio, passed=passed, total=total,
                       failed_critical=failed_critical, reason=reason + regression_note, gray_zone=gray_zone)

    if crit_fail:
        return verdict("adapt", f"critical criteria failed: {', '.join(crit_fail)}; {counts}{unverified_note}")
    if not failed and unverified and (crit_unverified or ratio < policy.accept_ratio):
        what = f"critical criteria {', '.join(crit_unverified)} unverified" if crit_unverified else (
            f"{counts}, below the accept ratio {_pct(policy.accept_ratio)}")
        return verdict("needs_manual", f"no criterion failed but {what}; a person must check "
                                       f"{', '.join(unverified)}")
    if crit_unverified:
        return verdict("adapt", f"critical criteria unverified: {', '.join(crit_unverified)} and failed: "
                                f"{', '.join(failed)}; {counts}")
    failed_note = f"; failed: {', '.join(failed)}" if failed else ""
    if passed == 0:  # whatever the policy says, nothing passing is never accepted
        if failed:
            return verdict("adapt", f"no criterion passed; failed: {', '.join(failed)}{unverified_note}")
        return verdict("needs_manual", f"no criterion passed or failed; a person must check {', '.join(unverified)}")
    if ratio >= policy.accept_ratio:
        return verdict("accept", f"all critical criteria passed and {counts} >= accept ratio "
                                 f"{_pct(policy.accept_ratio)}{failed_note}{unverified_note}")
    if ratio >= policy.gray_zone_ratio:
        return verdict(policy.gray_zone_decision,
                       f"gray zone: {counts}, between {_pct(policy.gray_zone_ratio)} and "
                       f"{_pct(policy.accept_ratio)}; policy gray_zone_decision = {policy.gray_zone_decision}"
                       f"{failed_note}{unverified_note}", gray_zone=True)
    return verdict("adapt", f"{counts} < gray-zone ratio {_pct(policy.gray_zone_ratio)}{failed_note}{unverified_note}")


def _cell(text: str) -> str:
    text = text.replace("\\", "\\\\").replace("|", "\\|")
    return re.sub(r"\s*\n\s*", "<br>", text.strip()) or " "


def format_results_table(results: list[CriterionResult]) -> str:
    """A Markdown table of results: AC, criterion, critical, expected, observed, outcome.

    Pipes are escaped and newlines become ``<br>`` so every result stays on one row.
    """
    lines = [
        "| AC | Criterion | Critical | Expected | Observed | Outcome |",
        "|----|-----------|----------|----------|----------|---------|",
    ]
    for r in results:
        cells = [r.criterion_id, r.text, "yes" if r.critical else "no", r.expected, r.observed, r.outcome]
        lines.append("| " + " | ".join(_cell(c) for c in cells) + " |")
    return "\n".join(lines) + "\n"

"""What the backlog parser recognises: field labels, line patterns and the YAML of job blocks."""

from __future__ import annotations

import re
from typing import Any

import yaml

from oodatcaa.backlog.model import JobBlock
from oodatcaa.core.errors import BacklogError
from oodatcaa.jobs.registry import kinds as job_kinds

# Known item field labels (as written, case-insensitive) -> field name.
FIELD_LABELS: dict[str, str] = {
    "type": "type",
    "complexity": "complexity",
    "status": "status",
    "priority": "priority",
    "dependencies": "dependencies",
    "depends on": "dependencies",
    "description": "description",
    "acceptance criteria": "acceptance_criteria",
    "links to objective": "objective_links",
    "links to objectives": "objective_links",
    "link to objective": "objective_links",
    "objective links": "objective_links",
    "estimated time": "estimated_time",
    "estimate": "estimated_time",
    "time estimate": "estimated_time",
    "approval": "approval",
}
_KNOWN_LABELS_TEXT = ", ".join(
    f"**{label}:**"
    for label in ("Type", "Complexity", "Status", "Priority", "Dependencies", "Description", "Acceptance Criteria",
                  "Links to Objective", "Estimated Time", "Approval")
)
_GOAL_LABELS = ("sprint goal", "goal")
# Sprint-level dates: `**Sprint 4 Start:**`, `**Start Date:**`; `**Target Completion:**`, `**End Date:**`.
_START_LABEL = re.compile(r"^(?:sprint(?:\s+\d+)?\s+)?start(?:s|ed)?(?:\s+date)?$")
_TARGET_LABEL = re.compile(
    r"^(?:sprint(?:\s+\d+)?\s+)?(?:target(?:\s+(?:completion|date|end|end\s+date))?|end(?:\s+date)?|due(?:\s+date)?|deadline)$")
_ISO_DATE = re.compile(r"\b(\d{4})-(\d{2})-(\d{2})\b")
_EXIT_LABELS = ("exit criteria", "sprint exit criteria")
_NO_DEPENDENCIES = {"", "none", "-", "--", "—", "–", "n/a", "na", "no"}

_ID_FIX = "IDs are a capital letter and three digits, like T001"

# --------------------------------------------------------------------------------------------
# Line patterns
# --------------------------------------------------------------------------------------------

_HEADING = re.compile(r"^ {0,3}(?P<level>#{1,6})(?:[ \t]+(?P<text>.*?))?[ \t]*$")
_FENCE_OPEN = re.compile(r"^(?P<indent> {0,3})(?P<fence>`{3,}|~{3,})[ \t]*(?P<info>[^\s`]*)[^`]*$")
_CHECKBOX = re.compile(r"^(?P<indent>\s*)[-*+][ \t]+\[(?P<mark>[ xX])\](?:[ \t]+(?P<text>.*))?$")
_BULLET = re.compile(r"^(?P<indent>\s*)[-*+][ \t]+(?P<text>.*)$")
# a list marker, or the `>` of a block quote (`> **Sprint Goal:** ...`), before a label
_LIST_PREFIX = re.compile(r"^\s*(?:>[ \t]*)*(?:[-*+][ \t]+)?")
_QUOTE_PREFIX = re.compile(r"^\s*(?:>[ \t]?)+")
_NUMBERED = re.compile(r"^\s*\d{1,3}[.)][ \t]+\S")
# a thematic break (`---`, `***`, `___`): a visual separator between items, read as a blank line
_RULE = re.compile(r"^ {0,3}([-*_])(?:[ \t]*\1){2,}[ \t]*$")
_LABEL = re.compile(r"\*\*[ \t]*(?P<name>[^*\n]+?)[ \t]*(?::[ \t]*\*\*|\*\*[ \t]*:)")
_ITEM_HEADING = re.compile(r"^(?P<id>.+?):(?:[ \t]+(?P<title>.*))?$")
_ID_LIKE = re.compile(r"^[A-Za-z]{1,3}[-_]?[0-9]+(?![A-Za-z])")
_JOB_KINDS_TEXT = ", ".join(job_kinds())
_JOB_LIKE = re.compile(rf"^kind:[ \t]*({'|'.join(map(re.escape, job_kinds()))})\b", re.M)


def _heading(line: str) -> tuple[int, str] | None:
    m = _HEADING.match(line)
    if not m:
        return None
    text = m.group("text") or ""
    text = re.sub(r"(^|[ \t]+)#+[ \t]*$", "", text).strip()
    return len(m.group("level")), text


def _labels(line: str) -> list[tuple[str, str]] | None:
    """``[(label, value), ...]`` when the line starts with a bold label, else ``None``."""
    start = _LIST_PREFIX.match(line)
    rest = line[start.end() if start else 0 :]
    matches = list(_LABEL.finditer(rest))
    if not matches or matches[0].start() != 0:
        return None
    out = []
    for i, m in enumerate(matches):
        end = matches[i + 1].start() if i + 1 < len(matches) else len(rest)
        out.append((m.group("name").strip(), rest[m.end() : end].strip()))
    return out


def _norm_label(label: str) -> str:
    return re.sub(r"\s+", " ", label.strip().lower())


# --------------------------------------------------------------------------------------------
# YAML of job blocks
# --------------------------------------------------------------------------------------------


class _JobLoader(yaml.SafeLoader):
    """SafeLoader that refuses duplicate keys (YAML would silently keep the last one)."""


def _construct_mapping(loader: _JobLoader, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
    seen: dict[Any, int] = {}
    for key_node, _ in node.value:
        if key_node.tag == "tag:yaml.org,2002:merge":
            continue
        key = loader.construct_object(key_node, deep=True)
        try:
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None,
                    f"duplicate key {key!r} (first given on line {seen[key] + 1} of the block)",
                    key_node.start_mark,
                )
            seen[key] = key_node.start_mark.line
        except TypeError:  # unhashable key: SafeLoader reports it below
            pass
    return yaml.SafeLoader.construct_mapping(loader, node, deep=deep)


_JobLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def _parse_job(lines: list[str], fence_line: int, item_id: str, source: str) -> JobBlock:
    text = "\n".join(lines)
    try:
        data = yaml.load(text, Loader=_JobLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
        line = fence_line + 1 + mark.line if mark is not None else fence_line
        problem = getattr(exc, "problem", None) or str(exc)
        context = getattr(exc, "context", None)
        what = f"{context}: {problem}" if context else problem
        col = f", column {mark.column + 1}" if mark is not None else ""
        raise BacklogError(
            source, line,
            f"job block of {item_id} (fence on line {fence_line}) is not valid YAML{col}: {what}; "
            "fix the YAML (one `key: value` per line, indent with spaces, quote values containing ': ' or '#')",
        ) from None
    if not isinstance(data, dict):
        got = "empty" if data is None else f"a {type(data).__name__}"
        raise BacklogError(
            source, fence_line,
            f"job block of {item_id} must be a YAML mapping with a `kind`, got {got}; "
            f"write `kind: lora_train` (or one of: {_JOB_KINDS_TEXT}) and its fields",
        )
    if "kind" not in data:
        raise BacklogError(
            source, fence_line,
            f"job block of {item_id} has no `kind`; add a line like `kind: lora_train` "
            f"(kinds: {_JOB_KINDS_TEXT})",
        )
    if not isinstance(data["kind"], str) or not data["kind"]:
        raise BacklogError(
            source, fence_line,
            f"job block of {item_id}: `kind` must be a non-empty string, got {data['kind']!r}; "
            "write e.g. `kind: lora_train`",
        )
    return JobBlock(line=fence_line, data=data)

"""The project objective (``objectives/OBJECTIVE.md``), how its criteria link to stories, and their states.

This module is pure: it parses text, matches links and decides a criterion's state from facts
it is given (:class:`StoryFact`, a check's result). Reading the trunk, the queues and running
checks in a clean checkout of the trunk is :mod:`oodatcaa.completion`'s job.

The file::

    # OBJECTIVE
    ## Vision
    A paragraph.
    ## Outcome
    ...
    ## Success Criteria
    ### Training System (Core)
    - [ ] **Framework selection:** MLX is chosen and written down `file: docs/framework.md`
    - [ ] fine-tuned loss is low `metric: T005.eval.loss < 2.0`
    - [ ] the adapter answers the procedure questions well
    ## Constraints
    ## Non-Goals

Section headings are matched case-insensitively and ignoring punctuation (``## Success criteria``,
``## SUCCESS CRITERIA:`` and ``## Non goals`` all work). Each ``- [ ]`` (or ``- [x]``) line under
``## Success Criteria`` is one success criterion, numbered ``SC1``, ``SC2`` ... in file order;
headings below it (``###``, ``####``) group criteria, and an indented line continues the one above.
A criterion may carry one machine check in the acceptance-criteria syntax
(:func:`oodatcaa.core.criteria.parse_criterion_line`); a ``metric:`` check must name the merged
task whose recorded metrics it reads as its first part: ``T005.eval.loss`` is the metric
``eval.loss`` of story ``T005``.

How a story links to a criterion (:func:`criteria_for_link`): a story's ``Links to Objective`` is
a path such as ``OBJECTIVE.md → Training System (Core) → Framework selection`` (``→``, ``->`` or
``>`` between segments). Its **last** segment names the criterion, compared after normalising
(case, spaces, ``*_``` emphasis and trailing ``.:;`` are ignored) with the criterion's id
(``SC1``), its bold label (``**Framework selection:**`` at the start of the line) or its whole
text. When that matches several criteria, the earlier segments pick those under headings of the
same names. A link that names no criterion matches nothing (and is reported, never guessed).

States: ``met``, ``unmet`` or ``needs_manual`` (:class:`CriterionState`). ``needs_manual`` is
never counted as met; a ticked box (``- [x]``) alone does not make a criterion met either.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from oodatcaa.core.criteria import (
    CommandCheck,
    FileCheck,
    MetricCheck,
    RegressionCheck,
    format_check,
    parse_criterion_line,
)
from oodatcaa.core.errors import BacklogError
from oodatcaa.core.ids import STORY_ID_PATTERN
from oodatcaa.core.models import Task

__all__ = [
    "CriterionState",
    "Evidence",
    "Objective",
    "ObjectiveError",
    "State",
    "StoryFact",
    "SuccessCriterion",
    "completion_percent",
    "default_exit_criteria",
    "criteria_for_link",
    "link_segments",
    "linked_stories_state",
    "no_criteria_message",
    "normalize_name",
    "parse_objective",
    "sprint_exit_ready",
    "stories_still_moving",
    "story_ids_named",
]

State = Literal["met", "unmet", "needs_manual"]
Via = Literal["check", "stories", "none"]
Check = MetricCheck | FileCheck | CommandCheck

#: Section names (normalised) and the field each fills; other ``##`` sections are kept as they are.
_SECTIONS = {
    "vision": "vision",
    "outcome": "outcome",
    "outcomes": "outcome",
    "expected outcome": "outcome",
    "success criteria": "success",
    "constraints": "constraints",
    "non goals": "non_goals",
    "nongoals": "non_goals",
}
_HEADING = re.compile(r"^(?P<hashes>#{1,6})\s+(?P<title>.*?)\s*#*\s*$")
_CHECKBOX = re.compile(r"^(?P<indent>\s*)[-*+]\s+\[(?P<mark>[ xX])\]\s*(?P<text>.*)$")
_BULLET = re.compile(r"^\s*[-*+]\s+\S")
_FENCE = re.compile(r"^\s*(```|~~~)")
_LABEL = re.compile(r"^\*\*(?P<label>[^*]+?)\s*(?::\s*\*\*|\*\*\s*:)\s*(?P<rest>.*)$")
#: The placeholder line of ``oodatcaa init``'s template (``sprints.OBJECTIVE_TEMPLATE``): not a criterion.
_PLACEHOLDER = re.compile(r"^_A measurable criterion\b.*_$")
_LINK_SPLIT = re.compile(r"\s*(?:→|->|>|»)\s*")
_STORY_IN_TEXT = re.compile(r"(?<![A-Za-z0-9])([A-Z][0-9]{3})(?![0-9A-Za-z]|-[A-Z][0-9])")
_STORY_ID = re.compile(STORY_ID_PATTERN)


class ObjectiveError(BacklogError):
    """``OBJECTIVE.md`` is malformed or has no success criteria; names the file, the line and the fix."""


class _Frozen(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SuccessCriterion(_Frozen):
    """One ``- [ ]`` line of ``## Success Criteria``.

    ``text`` is the prose without the checkbox and the inline check (the bold label included, as
    written); ``label`` the bold lead label without its colon, if any; ``group`` the headings
    (outermost first) it sits under inside the section; ``line`` its 1-based line in the file;
    ``checked`` whether the box is ticked (informational: never counted as met by itself).
    """

    id: str = Field(pattern=r"^SC[1-9][0-9]*$")
    text: str
    label: str | None = None
    group: list[str] = Field(default_factory=list)
    check: Check | None = None
    checked: bool = False
    line: int = Field(ge=1)

    def names(self) -> set[str]:
        """The normalised names a link's last segment may use: id, label, text, text without the label."""
        out = {normalize_name(self.id), normalize_name(self.text)}
        if self.label:
            out.add(normalize_name(self.label))
            m = _LABEL.match(self.text)
            if m and m.group("rest").strip():
                out.add(normalize_name(m.group("rest")))
        out.discard("")
        return out

    def display(self) -> str:
        """The text, or the check's inline form when the line is only a check."""
        if self.text:
            return self.text
        return format_check(self.check) if self.check is not None else self.id


class Objective(_Frozen):
    """A parsed ``OBJECTIVE.md``: the named sections as text (as written, stripped) and the criteria.

    ``other_sections`` maps the title of any other ``##`` section to its text.
    """

    source: str
    title: str | None = None
    vision: str = ""
    outcome: str = ""
    constraints: str = ""
    non_goals: str = ""
    criteria: list[SuccessCriterion] = Field(default_factory=list)
    other_sections: dict[str, str] = Field(default_factory=dict)
    has_success_section: bool = False
    plain_bullets: int = Field(default=0, ge=0, description="Bullets without a checkbox under Success Criteria.")


def normalize_name(text: str) -> str:
    """Case-, space- and emphasis-insensitive form of a name, for matching links to criteria.

    ``"**Framework  Selection:**"`` and ``"framework selection"`` give the same string.
    """
    text = re.sub(r"[*_`]", "", text)
    text = text.replace("\u2014", "-").replace("\u2013", "-")
    text = re.sub(r"\s+", " ", text).strip().casefold()
    return text.rstrip(".:;,").strip()


def _section_key(title: str) -> str:
    # "## Non-Goals:" -> "non goals"; "## 3. Success Criteria" -> "success criteria"
    key = normalize_name(title)
    key = re.sub(r"^\d+[.)]\s*", "", key)
    return re.sub(r"[\s\-]+", " ", key).strip()


@dataclass
class _Box:
    """One checkbox line under Success Criteria while parsing; indented continuation lines joined to ``text``."""

    line: int
    text: str
    checked: bool
    group: list[str]


def _section_name(title: str) -> str | None:
    """The field a heading fills (``"success"``, ``"vision"`` ...), or ``None`` for another section.

    ``Success Criteria (measurable)`` counts: a known name followed by a parenthesis or a dash.
    """
    key = _section_key(title)
    if key in _SECTIONS:
        return _SECTIONS[key]
    head = re.split(r"\s*\(|\s+-\s+", normalize_name(title), maxsplit=1)[0]
    return _SECTIONS.get(_section_key(head))


def parse_objective(text: str, source: str) -> Objective:
    """Parse the text of ``OBJECTIVE.md`` (``source`` names the file in errors).

    Lines inside fenced code blocks are skipped. The placeholder criterion of ``oodatcaa init``'s
    template (an italic line starting ``_A measurable criterion``) is not a criterion.

    Raises :class:`ObjectiveError` (``source:line``) for a malformed machine check (bad syntax, see
    :func:`~oodatcaa.core.criteria.parse_criterion_line`, or a ``metric:`` name whose first part is
    not a story ID). An objective without criteria is *not* an error here (see
    :func:`no_criteria_message`): ``init`` writes one, and a view can still show its sections.
    """
    sections: dict[str, list[str]] = {}
    other: dict[str, list[str]] = {}
    title: str | None = None
    current: list[str] | None = None
    in_success = False
    has_success = False
    groups: list[tuple[int, str]] = []  # (heading level, title) inside Success Criteria
    boxes: list[_Box] = []
    plain_bullets = 0
    in_fence = False
    for number, raw in enumerate(text.splitlines(), start=1):
        if _FENCE.match(raw):
            in_fence = not in_fence
            continue
        if in_fence:
            continue
        heading = _HEADING.match(raw)
        if heading:
            level = len(heading.group("hashes"))
            name = heading.group("title").strip()
            key = _section_name(name)
            if level == 1 and title is None and key is None:
                title, current, in_success = name, None, False
                continue
            if level <= 2:
                in_success = key == "success"
                has_success = has_success or in_success
                groups = []
                if key is None:
                    current = other.setdefault(name, [])
                elif key == "success":
                    current = None
                else:
                    current = sections.setdefault(key, [])
                continue
            if in_success:
                groups = [(lv, t) for lv, t in groups if lv < level] + [(level, name)]
                continue
        if in_success:
            box = _CHECKBOX.match(raw)
            if box:
                boxes.append(_Box(number, box.group("text").strip(), box.group("mark") in "xX",
                                  [t for _, t in groups]))
            elif boxes and raw.strip() and raw[:1] in (" ", "\t") and not _BULLET.match(raw):
                boxes[-1].text = f"{boxes[-1].text} {raw.strip()}"
            elif _BULLET.match(raw):
                plain_bullets += 1
            continue
        if current is not None:
            current.append(raw)

    criteria: list[SuccessCriterion] = []
    for b in boxes:
        if not b.text or _PLACEHOLDER.match(b.text):
            continue
        criteria.append(_criterion(b.text, index=len(criteria) + 1, source=source, line=b.line,
                                   checked=b.checked, group=b.group))
    return Objective(
        source=source, title=title,
        vision=_join(sections.get("vision")), outcome=_join(sections.get("outcome")),
        constraints=_join(sections.get("constraints")), non_goals=_join(sections.get("non_goals")),
        criteria=criteria, other_sections={k: _join(v) for k, v in other.items()},
        has_success_section=has_success, plain_bullets=plain_bullets,
    )


def _join(lines: list[str] | None) -> str:
    return "\n".join(lines or []).strip()


def _criterion(body: str, *, index: int, source: str, line: int, checked: bool, group: list[str]) -> SuccessCriterion:
    try:
        parsed = parse_criterion_line(body, index=index, source=source, line=line)
    except BacklogError as exc:
        # the criteria parser speaks of acceptance criteria AC<n>; here it is success criterion SC<n>
        message = str(exc)
        where = f"{exc.source}:{exc.line}: " if exc.line is not None else f"{exc.source}: "
        message = message[len(where):] if message.startswith(where) else message
        message = re.sub(r"^acceptance criterion AC\d+: ", "", message)
        raise ObjectiveError(source, line, f"success criterion SC{index}: {message}") from None
    check = parsed.check
    if isinstance(check, RegressionCheck):
        raise ObjectiveError(
            source, line,
            f"success criterion SC{index}: a `regression:` check compares a story's run with its baseline and "
            f"belongs in a backlog item's acceptance criteria; in an objective compare merged stories, like "
            f"`metric: T007.{check.metric} >= T006.{check.metric} * 0.8`")
    if isinstance(check, MetricCheck):
        for name in (check.metric, check.value):
            if isinstance(name, str) and not _STORY_ID.fullmatch(name.split(".", 1)[0]):
                raise ObjectiveError(
                    source, line,
                    f"success criterion SC{index}: metric {name!r} names no task; an objective reads the metrics "
                    f"recorded for a merged story, so start the name with its ID, like "
                    f"`metric: T005.{name} {check.op} ...`")
    label_match = _LABEL.match(parsed.text)
    label = label_match.group("label").strip() if label_match else None
    return SuccessCriterion(id=f"SC{index}", text=parsed.text, label=label or None, group=group,
                            check=check, checked=checked, line=line)


def no_criteria_message(objective: Objective) -> str:
    """What to write when an objective has no success criteria (for :class:`ObjectiveError`)."""
    if not objective.has_success_section:
        problem = "has no `## Success Criteria` section"
    elif objective.plain_bullets:
        problem = (f"has {objective.plain_bullets} bullet(s) under `## Success Criteria` but no checkbox; "
                   "write each criterion as a checkbox")
    else:
        problem = "has no success criteria (only the template's placeholder, or nothing)"
    return (f"{problem}. Write one `- [ ]` line per criterion under `## Success Criteria`, each with a machine "
            "check or linked to stories, e.g.:\n"
            "## Success Criteria\n"
            "- [ ] the guide is written `file: docs/guide.md`\n"
            "- [ ] fine-tuned loss is low `metric: T005.eval.loss < 2.0`\n"
            "- [ ] the tests pass `command: pytest -q`\n"
            "- [ ] **Framework selection:** MLX is chosen (stories link to it with "
            "`**Links to Objective:** OBJECTIVE.md → Framework selection`)")


# --------------------------------------------------------------------------------------------
# Links
# --------------------------------------------------------------------------------------------


def link_segments(link: str) -> list[str]:
    """The segments of a ``Links to Objective`` path, without a leading ``OBJECTIVE.md``.

    ``"OBJECTIVE.md → Training → QLoRA Setup"`` gives ``["Training", "QLoRA Setup"]``.
    """
    parts = [p.strip() for p in _LINK_SPLIT.split(link.strip()) if p.strip()]
    if parts and normalize_name(parts[0]).removesuffix(".md") in ("objective", "objectives/objective"):
        parts = parts[1:]
    return parts


def criteria_for_link(objective: Objective, link: str) -> list[SuccessCriterion]:
    """The success criteria a ``Links to Objective`` path names (see the module docstring); may be empty."""
    segments = link_segments(link)
    if not segments:
        return []
    last = normalize_name(segments[-1])
    found = [c for c in objective.criteria if last in c.names()]
    if len(found) > 1 and len(segments) > 1:
        wanted = {normalize_name(s) for s in segments[:-1]}
        narrowed = [c for c in found if wanted <= {normalize_name(g) for g in c.group}]
        if narrowed:
            found = narrowed
    return found


def story_ids_named(text: str) -> list[str]:
    """Story IDs (``T003``) written in a text, in order, without repeats.

    Subtask IDs (``T003-B01``) are not story mentions; ``T003-complete`` (its tag) is.
    """
    seen: list[str] = []
    for match in _STORY_IN_TEXT.finditer(text):
        if match.group(1) not in seen:
            seen.append(match.group(1))
    return seen


# --------------------------------------------------------------------------------------------
# States
# --------------------------------------------------------------------------------------------


class Evidence(_Frozen):
    """One piece of evidence behind a criterion's state.

    ``task``: the story (``T005``); ``tag``: its ``<TASK>-complete`` tag when it exists; ``commit``:
    the trunk commit a check ran on, or the story's merge commit; ``status``: the story's status;
    ``check``: the machine check's inline form; ``observed``: the value measured (``T005.eval.loss
    = 1.7``, ``exit 0``, ``exists``); ``detail``: the rest, for people.
    """

    task: str | None = None
    tag: str | None = None
    commit: str | None = None
    status: str | None = None
    check: str | None = None
    observed: str | None = None
    detail: str = ""

    def describe(self) -> str:
        """One line: ``T005 (tag T005-complete, commit 1a2b3c4d5e6f): T005.eval.loss = 1.7 — ...``."""
        refs = [f"tag {self.tag}" if self.tag else "", f"commit {self.commit[:12]}" if self.commit else "",
                self.status or ""]
        head = self.task or self.check or "-"
        if self.task and self.check:
            head = f"{self.task} {self.check}"
        inner = ", ".join(r for r in refs if r)
        text = f"{head} ({inner})" if inner else head
        if self.observed:
            text += f": {self.observed}"
        if self.detail:
            text += f" — {self.detail}"
        return text


class CriterionState(_Frozen):
    """A criterion (success or exit) with its state and the evidence behind it.

    ``id``: ``SC1`` (success criterion) or ``EC1`` (exit criterion); ``via``: how it was decided —
    ``check`` (its machine check), ``stories`` (the stories linked to it) or ``none`` (neither:
    ``needs_manual``); ``reason``: one sentence why it is in this state.
    """

    id: str
    text: str
    state: State
    via: Via
    evidence: list[Evidence] = Field(default_factory=list)
    reason: str = ""

    def to_json(self) -> dict[str, object]:
        """``{"id", "text", "state", "via", "reason", "evidence": [{...}]}`` (evidence without empty keys)."""
        return {"id": self.id, "text": self.text, "state": self.state, "via": self.via, "reason": self.reason,
                "evidence": [e.model_dump(exclude_defaults=True) for e in self.evidence]}


class StoryFact(_Frozen):
    """What is known about one story from the queues and the trunk.

    ``merged``: its status is ``done`` and its merge commit (or its ``<TASK>-complete`` tag) is an
    ancestor of the trunk's tip. ``metrics``: the flat metrics recorded for it (``{"eval.loss": 1.7}``).
    ``sprint``: the number of the sprint whose queue holds it. ``reverted``: ``oodatcaa revert`` undid
    its merge (it is then not ``merged``, and its metrics are no evidence).
    """

    task: str
    title: str = ""
    status: str
    merged: bool = False
    merged_commit: str | None = None
    tag: str | None = None
    sprint: int | None = None
    metrics: dict[str, object] = Field(default_factory=dict)
    objective_links: list[str] = Field(default_factory=list)
    reverted: bool = False


def linked_stories_state(cid: str, text: str, stories: Sequence[StoryFact], unknown: Iterable[str] = ()) -> CriterionState:
    """The state of a criterion decided by its linked stories: ``met`` when every one is merged on the trunk.

    ``unknown`` are story IDs the criterion names that no queue holds: they keep it ``unmet``.
    With no stories and nothing unknown the criterion ``needs_manual``.
    """
    missing = list(unknown)
    if not stories and not missing:
        return CriterionState(id=cid, text=text, state="needs_manual", via="none",
                              reason="no machine check and no story linked to it; a person must decide")
    evidence = [Evidence(task=s.task, tag=s.tag, commit=s.merged_commit, status=s.status,
                         detail="merged on the trunk" if s.merged else _not_merged(s)) for s in stories]
    evidence += [Evidence(task=m, detail="no queue of this workspace holds this story") for m in missing]
    waiting = [s.task for s in stories if not s.merged] + missing
    if waiting:
        return CriterionState(id=cid, text=text, state="unmet", via="stories", evidence=evidence,
                              reason=f"not merged on the trunk yet: {', '.join(waiting)}")
    return CriterionState(id=cid, text=text, state="met", via="stories", evidence=evidence,
                          reason=f"every linked story is done and merged: {', '.join(s.task for s in stories)}")


def _not_merged(story: StoryFact) -> str:
    if story.reverted:
        return "reverted: its merge was undone on the trunk"
    if story.status == "done":
        return "done, but its merge commit is not on the trunk"
    if story.status == "cancelled":
        return "cancelled: it will never be merged (unlink it, or link another story)"
    return "not merged on the trunk yet"  # the status is shown next to it


def completion_percent(states: Sequence[CriterionState]) -> float:
    """Met criteria / all criteria, in percent (0–100); ``needs_manual`` counts as not met; 0.0 for none."""
    if not states:
        return 0.0
    return 100.0 * sum(1 for s in states if s.state == "met") / len(states)


# --------------------------------------------------------------------------------------------
# Sprint exit
# --------------------------------------------------------------------------------------------

#: Statuses in which a story no longer moves by itself (a person or nothing moves it on).
_SETTLED = frozenset({"done", "cancelled", "needs_manual"})


def stories_still_moving(tasks: Sequence[Task]) -> list[str]:
    """IDs of the stories that can still progress without a person, in queue order.

    A story is settled when its status is ``done``, ``cancelled`` or ``needs_manual``, or when it
    waits (directly or not) on a story that is settled without being ``done``: that dependency will
    never be merged without a person, so neither will it. Every other story is still moving.
    """
    statuses = {t.id: t.status.value for t in tasks}
    dependencies = {t.id: list(t.dependencies) for t in tasks}
    stuck: dict[str, bool] = {}

    def blocked_forever(task: str, trail: frozenset[str]) -> bool:
        if task in stuck:
            return stuck[task]
        status = statuses.get(task)
        if status is None or task in trail:
            return False  # an unknown dependency or a cycle: the queue invariants report those
        if status in _SETTLED:
            result = status != "done"
        else:
            result = any(blocked_forever(d, trail | {task}) for d in dependencies.get(task, []))
        stuck[task] = result
        return result

    return [t for t, s in statuses.items()
            if s not in _SETTLED and not any(blocked_forever(d, frozenset({t})) for d in dependencies.get(t, []))]


def default_exit_criteria(tasks: Sequence[Task]) -> list[str]:
    """The exit criteria of a sprint whose backlog wrote none: one per story not cancelled.

    ``T001 <title> is done and merged`` names the story, so each is decided by that story.
    ``SPRINT_GOAL.md`` shows the same list, in the same order.
    """
    return [f"{t.id} {t.title} is done and merged" for t in tasks if t.status.value != "cancelled"]


def sprint_exit_ready(states: Sequence[CriterionState], tasks: Sequence[Task]) -> bool:
    """True when the sprint may complete: every exit criterion ``met`` and no story still moving.

    ``states``: the sprint's exit criteria, from :func:`oodatcaa.completion.evaluate_exit_criteria`
    (which turns a sprint without written exit criteria into one criterion per story, so an empty
    list only comes from a queue without a sprint: never ready). ``tasks``: the queue's stories
    (see :func:`stories_still_moving`). Stories left in ``needs_manual`` do not hold the sprint
    open; they are carried into its retrospective.
    """
    return bool(states) and all(s.state == "met" for s in states) and not stories_still_moving(tasks)

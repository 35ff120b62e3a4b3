"""The sprint retrospective and the project completion report, as Markdown text built from data.

Pure: nothing here reads git, the workspace or the clock, and nothing is written. The caller
writes the text (``work/archive/sprint_<N>/RETROSPECTIVE.md``,
``objectives/PROJECT_COMPLETION_REPORT.md``) and then checks what it wrote with
:func:`verify_retrospective` / :func:`verify_completion_report`: the hand-run original once wrote
an empty retrospective, and nobody noticed.

Titles, goals, reasons and failure messages come from user backlogs and job output: they are
data. In table cells ``|`` is escaped and newlines become ``<br>``; on list lines whitespace runs
(newlines included) collapse to one space, so no text from a file can start a line of its own
(a heading, a row) in the document.

Times are shown in UTC to the minute; durations in minutes (stories) and hours (totals).
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from oodatcaa.completion import ObjectiveReport
from oodatcaa.core.config import EstimatesSection
from oodatcaa.core.criteria import MetricCheck, _cell
from oodatcaa.core.models import Estimate, ObjectiveSnapshot, Queue, Sprint, Task
from oodatcaa.core.objective import CriterionState
from oodatcaa.core.statuses import TaskStatus
from oodatcaa.jobs.registry import headline

__all__ = [
    "COMPLETION_SECTIONS",
    "RETROSPECTIVE_SECTIONS",
    "StoryTime",
    "outcome_group",
    "render_completion_report",
    "render_retrospective",
    "story_time",
    "verify_completion_report",
    "verify_retrospective",
]

S = TaskStatus

#: The ``##`` headings of a retrospective, in the order they are written.
RETROSPECTIVE_SECTIONS = (
    "## Outcome",
    "## Loops and adaptations",
    "## Time against estimate",
    "## Metrics",
    "## Exit criteria",
    "## Objective",
)
#: The ``##`` headings of a project completion report, in the order they are written.
COMPLETION_SECTIONS = ("## Success criteria", "## Sprints", "## Totals")

_OUTCOME_GROUPS = ("done", "cancelled", "needs_manual", "unfinished")
_OUTCOME_HEADINGS = {"done": "### Done", "cancelled": "### Cancelled", "needs_manual": "### Left to a person",
                     "unfinished": "### Unfinished"}


# --------------------------------------------------------------------------------------------
# Small formatting helpers
# --------------------------------------------------------------------------------------------


def _line(text: object) -> str:
    """Text from data on one Markdown line: whitespace runs (newlines too) become one space."""
    return " ".join(str(text).split())


def _utc(moment: datetime) -> datetime:
    """``moment`` in UTC; a naive datetime is taken to be UTC already."""
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def _when(moment: datetime | None) -> str:
    """``2026-01-01 09:30 UTC``, or ``-``."""
    return _utc(moment).strftime("%Y-%m-%d %H:%M UTC") if moment is not None else "-"


def _minutes(start: datetime, end: datetime) -> float:
    return (_utc(end) - _utc(start)).total_seconds() / 60.0


def _number(value: float) -> str:
    """A float with up to 4 significant digits (``0.1235``, ``1.5``, ``12346`` — never ``1.235e+04``)."""
    if not math.isfinite(value):
        return str(value)
    text = f"{value:.4g}"
    if "e" in text and abs(value) >= 1:
        text = f"{value:.0f}"
    return text


def _value(value: object) -> str:
    """A metric value as text: floats by :func:`_number`, the rest as ``str``."""
    if isinstance(value, float):
        return _number(value)
    return str(value)


def _table(header: Sequence[str], rows: Iterable[Sequence[object]]) -> list[str]:
    """A Markdown table; every cell escaped (``|``, backslashes, newlines as ``<br>``)."""
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(_cell(str(c)) for c in row) + " |" for row in rows]
    return lines


def _none_or(lines: list[str]) -> list[str]:
    return lines or ["none"]


# --------------------------------------------------------------------------------------------
# Facts about stories
# --------------------------------------------------------------------------------------------


def outcome_group(task: Task) -> str:
    """``done``, ``cancelled``, ``needs_manual`` or ``unfinished`` (any other status, e.g. ``ready``)."""
    if task.status in (S.DONE, S.CANCELLED, S.NEEDS_MANUAL):
        return task.status.value
    return "unfinished"


@dataclass(frozen=True)
class StoryTime:
    """A story's elapsed time against its estimate.

    ``elapsed_minutes``: ``started_at`` to ``finished_at``, or to ``end`` (the sprint's
    ``completed_at`` or now) while the story is not finished; ``None`` when it never started, or
    was cancelled without a recorded end (its real end is unknown, so none is made up).
    ``verdict``: ``within``, ``over`` (elapsed above the high end), ``under`` (below the low end)
    or ``-`` (no elapsed time or no estimate); ``running`` is true when the clock is still open.
    """

    elapsed_minutes: float | None
    estimate: Estimate | None
    verdict: str
    running: bool


def story_time(task: Task, end: datetime, rules: EstimatesSection | None = None) -> StoryTime:
    """How long ``task`` took (minutes) against its estimate (``task.estimate``, else by complexity under ``rules``)."""
    estimate = task.estimate
    if estimate is None and rules is not None:
        estimate = rules.for_complexity(task.complexity)
    running = task.finished_at is None
    elapsed: float | None = None
    if task.started_at is not None and not (running and task.status == S.CANCELLED):
        elapsed = max(0.0, _minutes(task.started_at, task.finished_at or end))
    verdict = "-"
    if elapsed is not None and estimate is not None:
        verdict = ("over" if elapsed > estimate.high_minutes
                   else "under" if elapsed < estimate.low_minutes else "within")
    return StoryTime(elapsed, estimate, verdict, running and task.started_at is not None)


def _rules_applied(task: Task) -> str:
    """``memory.halve_batch on T004-B01 (criteria_failed); ...`` in the order applied, or ``-``."""
    parts = [f"{a.rule} on {a.step}" + (f" ({a.failure_kind.value})" if a.failure_kind else "")
             for a in task.adaptations]
    return "; ".join(parts) or "-"


def _metrics_text(metrics: dict[str, object]) -> str:
    """``eval.loss: 1.235; train.peak_memory_gb: 3.2`` (sorted by name), or ``-``."""
    return "; ".join(f"{k}: {_value(v)}" for k, v in sorted(metrics.items())) or "-"


def _story_label(task: Task) -> str:
    return f"{task.id} {_line(task.title)}"


# --------------------------------------------------------------------------------------------
# The retrospective
# --------------------------------------------------------------------------------------------


def _header(sprint: Sprint, states: Sequence[CriterionState], *, tag: str, forced: bool, now: datetime) -> list[str]:
    lines = [f"# Retrospective — Sprint {sprint.number} ({sprint.id})", "",
             f"- **Title:** {_line(sprint.title)}",
             f"- **Goal:** {_line(sprint.goal) or 'none written'}",
             f"- **Created:** {_when(sprint.created_at)}"]
    if sprint.completed_at is not None:
        lines.append(f"- **Completed:** {_when(sprint.completed_at)}")
    else:
        lines.append(f"- **Written:** {_when(now)} (the sprint is not marked completed)")
    if sprint.start_date is not None:
        lines.append(f"- **Backlog start date:** {sprint.start_date.isoformat()}")
    if sprint.target_date is not None:
        lines.append(f"- **Backlog target date:** {sprint.target_date.isoformat()}")
    lines.append(f"- **Tag:** {_line(tag)}")
    if forced:
        unmet = [s for s in states if s.state != "met"]
        lines += ["", "**Completed with `--force`** while these exit criteria were not met:"
                  if unmet else "**Completed with `--force`**; every exit criterion below was met when this was written."]
        lines += [f"- {s.id} {s.state}: {_line(s.text)}" for s in unmet]
    return lines


def _outcome(queue: Queue) -> list[str]:
    groups: dict[str, list[Task]] = {g: [] for g in _OUTCOME_GROUPS}
    for task in queue.tasks:
        groups[outcome_group(task)].append(task)
    counts = ", ".join(f"{len(groups[g])} {g}" for g in _OUTCOME_GROUPS)
    lines = ["## Outcome", "", f"Stories: {len(queue.tasks)} — {counts}."]
    for group in _OUTCOME_GROUPS:
        items = []
        for task in groups[group]:
            if group == "needs_manual":
                why = task.manual_reason or (task.failure.short() if task.failure else "no reason recorded")
                items.append(f"- {_story_label(task)} — {_line(why)}")
            elif group == "unfinished":
                items.append(f"- {_story_label(task)} ({task.status.value})")
            else:
                items.append(f"- {_story_label(task)}")
        lines += ["", _OUTCOME_HEADINGS[group], "", *_none_or(items)]
    return lines


def _loops(queue: Queue) -> list[str]:
    rows = [(t.id, t.adapt_loops, f"{t.plan_version} (started over)" if t.plan_version > 1 else t.plan_version,
             _rules_applied(t), t.failure.kind.value if t.failure else "-") for t in queue.tasks]
    header = ("Story", "Adaptation loops", "Plan version", "Rules applied", "Last failure")
    return ["## Loops and adaptations", "", *(_table(header, rows) if rows else ["none"])]


def _time_row(task: Task, t: StoryTime) -> tuple[str, str, str, str, str]:
    if t.elapsed_minutes is None:
        elapsed = "-"
        verdict = "- (cancelled; its end is not recorded)" if task.started_at and task.status == S.CANCELLED else "-"
    else:
        elapsed = f"{t.elapsed_minutes:.0f}" + (" (running)" if t.running else "")
        verdict = t.verdict + (" so far" if t.running and t.verdict != "-" else "")
    return task.id, _when(task.started_at), elapsed, t.estimate.describe() if t.estimate else "none", verdict


def _times(queue: Queue, end: datetime, rules: EstimatesSection | None) -> list[str]:
    times = [(task, story_time(task, end, rules)) for task in queue.tasks]
    rows = [_time_row(task, t) for task, t in times]
    timed = [t for _task, t in times if t.elapsed_minutes is not None]
    total = sum(t.elapsed_minutes or 0.0 for t in timed)
    estimated = [t.estimate for t in timed if t.estimate is not None]
    against = ""
    if estimated:
        low, high = sum(e.low_minutes for e in estimated), sum(e.high_minutes for e in estimated)
        against = f"; estimated {low:.0f}-{high:.0f} min for the {len(estimated)} of them with an estimate"
    header = ("Story", "Started", "Elapsed (min)", "Estimate", "Verdict")
    return ["## Time against estimate", "", *(_table(header, rows) if rows else ["none"]), "",
            f"Total: {total:.0f} min ({total / 60:.1f} h) elapsed over {len(timed)} stories{against}."]


def shown_metrics(task: Task) -> dict[str, object]:
    """The metrics a retrospective shows for ``task``: its job kinds' headline metrics and every metric
    its acceptance criteria check (``Task.metrics`` holds every number its jobs reported)."""
    named = {c.check.metric for c in task.acceptance_criteria if isinstance(c.check, MetricCheck)}
    named |= {c.check.value for c in task.acceptance_criteria
              if isinstance(c.check, MetricCheck) and isinstance(c.check.value, str)}
    return {**headline(task.metrics), **{k: v for k, v in task.metrics.items() if k in named}}


def _metrics(queue: Queue) -> list[str]:
    rows = [(t.id, t.title, _metrics_text(shown_metrics(t))) for t in queue.tasks]
    return ["## Metrics", "", "Headline metrics and the metrics the acceptance criteria check "
            "(every recorded metric is in the archived queue).", "",
            *(_table(("Story", "Title", "Metrics"), rows) if rows else ["none"])]


def _exit_criteria(states: Sequence[CriterionState]) -> list[str]:
    lines = ["## Exit criteria", ""]
    for s in states:
        lines.append(f"- {s.id} {s.state}: {_line(s.text)}")
        if s.reason:
            lines.append(f"  - why: {_line(s.reason)}")
        lines += [f"  - evidence: {_line(e.describe())}" for e in s.evidence]
    if not states:
        lines.append("none evaluated")
    met = sum(1 for s in states if s.state == "met")
    return [*lines, "", f"{met}/{len(states)} met"]


def _objective(objective: ObjectiveSnapshot | None) -> list[str]:
    if objective is None:
        return ["## Objective", "", "not evaluated"]
    where = f" on trunk commit {objective.trunk_commit[:12]}" if objective.trunk_commit else ""
    return ["## Objective", "", f"{_line(objective.describe())} (checked {_when(objective.checked_at)}{where})"]


def render_retrospective(queue: Queue, exit_states: Sequence[CriterionState], *, objective: ObjectiveSnapshot | None,
                         tag: str, forced: bool, now: datetime, rules: EstimatesSection | None = None) -> str:
    """The Markdown of ``work/archive/sprint_<N>/RETROSPECTIVE.md`` for ``queue``'s sprint.

    ``exit_states``: the sprint's exit criteria as evaluated (``EC1`` ...); ``objective``: the last
    objective snapshot, or ``None`` (shown as not evaluated); ``tag``: the sprint's tag name
    (``sprint-4-complete``); ``forced``: completed with ``--force`` (the unmet exit criteria are
    listed at the top); ``now``: when it is written (timezone-aware; the end of the clock for
    stories still open when the sprint has no ``completed_at``); ``rules``: complexity estimates
    for stories without a backlog estimate (``None``: those have no estimate). Elapsed times are
    in minutes. Sections: :data:`RETROSPECTIVE_SECTIONS`, in order. Raises ``ValueError`` when the
    queue has no sprint.
    """
    sprint = queue.sprint
    if sprint is None:
        raise ValueError("the queue has no sprint: there is nothing to write a retrospective of")
    end = sprint.completed_at or now
    parts = [_header(sprint, exit_states, tag=tag, forced=forced, now=now), _outcome(queue), _loops(queue),
             _times(queue, end, rules), _metrics(queue), _exit_criteria(exit_states), _objective(objective)]
    return "\n\n".join("\n".join(p) for p in parts) + "\n"


def _missing_headings(text: str, headings: Iterable[str]) -> list[str]:
    """The headings that are not a line of ``text`` by themselves."""
    return [h for h in headings if not re.search(rf"^{re.escape(h)}[ \t]*$", text, re.MULTILINE)]


def _mentions(text: str, word: str) -> bool:
    """``word`` appears in ``text`` as a whole ID: ``T001`` is not found inside ``T0012`` or ``XT001``."""
    return re.search(rf"(?<![A-Za-z0-9]){re.escape(word)}(?![0-9A-Za-z])", text) is not None


def verify_retrospective(text: str, queue: Queue) -> None:
    """Check a written retrospective; raises ``ValueError`` naming everything missing.

    Refused: empty or whitespace-only text; a title line without the sprint's ID; any heading of
    :data:`RETROSPECTIVE_SECTIONS` absent as a line of its own; a story ID of ``queue`` not
    mentioned. Returns ``None`` when all is there.
    """
    sprint = queue.sprint
    title = None
    if sprint is not None and not re.search(rf"^# Retrospective .*\({re.escape(sprint.id)}\)[ \t]*$", text, re.MULTILINE):
        title = f"no title line naming {sprint.id}"
    _verify(text, "the retrospective", RETROSPECTIVE_SECTIONS, "story", [t.id for t in queue.tasks], title)


def _verify(text: str, what: str, headings: Sequence[str], id_kind: str, ids: Sequence[str], problem: str | None) -> None:
    """Raise ``ValueError`` when ``text`` is empty, lacks a heading or an ID, or ``problem`` is set."""
    if not text.strip():
        raise ValueError(f"{what} is empty")
    problems = [problem] if problem else []
    missing = _missing_headings(text, headings)
    if missing:
        problems.append(f"missing section(s): {', '.join(missing)}")
    absent = [i for i in ids if not _mentions(text, i)]
    if absent:
        problems.append(f"{id_kind} ID(s) not mentioned: {', '.join(absent)}")
    if problems:
        raise ValueError(f"{what} is incomplete: " + "; ".join(problems))


# --------------------------------------------------------------------------------------------
# The project completion report
# --------------------------------------------------------------------------------------------


def _ordered_sprints(sprints: Sequence[Queue]) -> list[tuple[Sprint, Queue]]:
    out = []
    for queue in sprints:
        if queue.sprint is None:
            raise ValueError("a queue given to the completion report has no sprint")
        out.append((queue.sprint, queue))
    return sorted(out, key=lambda pair: pair[0].number)


def _counted_stories(pairs: Sequence[tuple[Sprint, Queue]]) -> list[Task]:
    """Every story once: a copy carried over to a later sprint (``carried_from``) replaces the earlier one."""
    superseded = {(t.carried_from, t.id) for _s, q in pairs for t in q.tasks if t.carried_from}
    return [t for s, q in pairs for t in q.tasks if (s.id, t.id) not in superseded]


def _criteria_rows(report: ObjectiveReport) -> list[str]:
    rows = [(c.id, c.state, c.text, "; ".join(_line(e.describe()) for e in c.evidence) or _line(c.reason) or "-")
            for c in report.criteria]
    lines = ["## Success criteria", "", *(_table(("ID", "State", "Criterion", "Evidence"), rows) if rows else ["none"])]
    if report.unmatched_links:
        lines += ["", "Links that name no success criterion:"]
        lines += [f"- {_line(link)}" for link in report.unmatched_links]
    return lines


def _sprint_rows(pairs: Sequence[tuple[Sprint, Queue]]) -> list[str]:
    rows = [(s.id, s.number, s.title, f"{sum(1 for t in q.tasks if t.status == S.DONE)}/{len(q.tasks)}",
             _when(s.completed_at), "yes" if s.forced else "no") for s, q in pairs]
    header = ("Sprint", "Number", "Title", "Stories done", "Completed", "Forced")
    return ["## Sprints", "", *(_table(header, rows) if rows else ["none"])]


def _totals(pairs: Sequence[tuple[Sprint, Queue]], now: datetime) -> list[str]:
    stories = _counted_stories(pairs)
    count = {g: sum(1 for t in stories if outcome_group(t) == g) for g in _OUTCOME_GROUPS}
    loops = sum(len(t.adaptations) for t in stories)
    start_overs = sum(max(0, t.plan_version - 1) for t in stories)
    worked = sum(_minutes(t.started_at, t.finished_at) for t in stories if t.started_at and t.finished_at) / 60
    lines = ["## Totals", "", f"- Stories: {len(stories)} — {count['done']} done, {count['cancelled']} cancelled, "
             f"{count['needs_manual']} needs_manual, {count['unfinished']} unfinished",
             f"- Adaptation loops: {loops}", f"- Start overs: {start_overs}",
             f"- Elapsed story time: {worked:.1f} h (started to merged, finished stories)"]
    if pairs:
        first = min(s.created_at for s, _q in pairs)
        ends = [s.completed_at for s, _q in pairs if s.completed_at is not None]
        last, note = (max(ends), "") if ends else (now, ", to now: no sprint is marked completed")
        lines.append(f"- Wall time: {_minutes(first, last) / 60:.1f} h "
                     f"({_when(first)} to {_when(last)}{note})")
    return lines


def render_completion_report(report: ObjectiveReport, sprints: Sequence[Queue], *, now: datetime,
                             tag: str = "project-complete") -> str:
    """The Markdown of ``objectives/PROJECT_COMPLETION_REPORT.md``.

    ``report``: the objective as evaluated on the trunk; ``sprints``: every sprint's queue (the
    archived final ones and the current one, any order: sorted by sprint number); ``now``: when it
    is written (timezone-aware); ``tag``: the project's tag name. Totals count each story once (a
    copy carried over to a later sprint replaces the earlier one); adaptation loops are the
    Refiner loops recorded (``Task.adaptations``, kept across a start over); times are in hours.
    Sections: :data:`COMPLETION_SECTIONS`. Raises ``ValueError`` for a queue without a sprint.
    """
    pairs = _ordered_sprints(sprints)
    at = f"{_line(report.trunk)} at {report.trunk_commit}" if report.trunk_commit else f"{_line(report.trunk)} (no commit yet)"
    header = ["# Project completion report", "", f"- **Date:** {_when(now)}", f"- **Objective:** {_line(report.source)}",
              f"- **Trunk:** {at}",
              f"- **Completion:** {report.met}/{len(report.criteria)} criteria met ({report.completion_percent:.1f} %)",
              f"- **Tag:** {_line(tag)}"]
    parts = [header, _criteria_rows(report), _sprint_rows(pairs), _totals(pairs, now)]
    return "\n\n".join("\n".join(p) for p in parts) + "\n"


def verify_completion_report(text: str, report: ObjectiveReport) -> None:
    """Check a written completion report; raises ``ValueError`` naming everything missing.

    Refused: empty or whitespace-only text; a heading of :data:`COMPLETION_SECTIONS` absent as a
    line of its own; a success criterion ID of ``report`` not mentioned.
    """
    _verify(text, "the project completion report", ("# Project completion report", *COMPLETION_SECTIONS),
            "success criterion", [c.id for c in report.criteria], None)

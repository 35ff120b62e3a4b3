"""Is the objective met, and may the sprint complete? Criteria evaluated against the trunk.

Two evaluations share one engine:

- :func:`evaluate_objective`: every success criterion of ``objectives/OBJECTIVE.md``
  (:mod:`oodatcaa.core.objective`) with its state and evidence, and the completion percentage;
- :func:`evaluate_exit_criteria`: the exit criteria of the queue's sprint (``Sprint.exit_criteria``).

A criterion is decided, in this order:

1. by its machine check, on the trunk's **current commit** only — never a feature branch, never
   the person's checkout: ``file:`` and ``command:`` run in a clean detached checkout of the
   trunk's tip under ``state/checks/`` (made and removed here); ``metric: T005.eval.loss < 2.0``
   reads the metrics recorded in the queue for story ``T005`` (``Task.metrics``, flat
   ``namespace.key``), and only when ``T005`` is merged (status ``done`` and its merge commit, or
   its ``T005-complete`` tag, an ancestor of the trunk's tip);
2. else by the stories linked to it: ``met`` when every one is merged on the trunk;
3. else ``needs_manual``.

Stories of earlier sprints count: their queues are read from ``work/archive/sprint_<N>/SPRINT_QUEUE.json``
(the current queue wins for an ID held by both).

Links. A story links to a **success criterion** through its ``Links to Objective`` paths
(:func:`oodatcaa.core.objective.criteria_for_link`: the path's last segment is the criterion's id
``SC<n>``, its bold label or its text), or through an exit criterion of any sprint that names both:
an exit criterion holding an objective path (``OBJECTIVE.md → Framework selection``, written last
in the criterion or in a code span) links the stories it names by ID (``T003``) to that success
criterion. A story links to an **exit criterion** when the exit criterion names its ID (``T003``,
or its tag ``T003-complete``), or when the exit criterion holds an objective path and the story's
``Links to Objective`` names the same success criterion (or is the same path). A sprint without
written exit criteria gets one per story that is not cancelled (``T001 <title> is done and merged``),
as ``SPRINT_GOAL.md`` shows them.

This module reads git through :mod:`oodatcaa.gitops` and the queues through :mod:`oodatcaa.core`;
it writes nothing but the temporary checkout (removed before it returns).
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from oodatcaa.archive import archived_sprints
from oodatcaa.core.criteria import (
    CheckContext,
    CommandCheck,
    Criterion,
    FileCheck,
    MetricCheck,
    RegressionCheck,
    evaluate_criterion,
    format_check,
    parse_criterion_line,
)
from oodatcaa.core.errors import BacklogError, GitOperationError, OodatcaaError
from oodatcaa.core.ids import STORY_ID_PATTERN
from oodatcaa.core.leases import pid_alive
from oodatcaa.core.models import CriterionBrief, ObjectiveSnapshot, Queue
from oodatcaa.core.objective import (
    CriterionState,
    Evidence,
    Objective,
    ObjectiveError,
    StoryFact,
    SuccessCriterion,
    completion_percent,
    criteria_for_link,
    default_exit_criteria,
    link_segments,
    linked_stories_state,
    no_criteria_message,
    normalize_name,
    parse_objective,
    sprint_exit_ready,
    stories_still_moving,
    story_ids_named,
)
from oodatcaa.core.store import QueueStore
from oodatcaa.core.workspace import Workspace
from oodatcaa.gitops import GitRepo

__all__ = [
    "ObjectiveReport",
    "StoryBook",
    "TrunkCheckout",
    "detect_completion",
    "briefs",
    "evaluate_exit_criteria",
    "evaluate_objective",
    "format_report",
    "load_objective",
    "objective_path",
    "read_story_book",
    "sprint_exit_ready",
    "sprint_exit_ready_now",
    "stories_still_moving",
]

_STORY_ID = re.compile(STORY_ID_PATTERN)
_CODE_SPAN = re.compile(r"`([^`]+)`")
_OBJECTIVE_PATH = re.compile(r"(?:objectives/)?OBJECTIVE\.md\s*(?:→|->|>|»).*$", re.I)
Check = MetricCheck | FileCheck | CommandCheck


def objective_path(ws: Workspace) -> Path:
    """``.oodatcaa/objectives/OBJECTIVE.md`` of ``ws``."""
    return ws.objectives_dir / "OBJECTIVE.md"


def load_objective(ws: Workspace, *, require_criteria: bool = True) -> Objective:
    """Read and parse the workspace's ``OBJECTIVE.md`` (from the checkout, where people edit it).

    Raises :class:`ObjectiveError` naming the file (and line) when it is missing, has a malformed
    machine check, or — with ``require_criteria`` — has no success criteria (saying what to write).
    """
    path = objective_path(ws)
    source = ws.relative(path) if path.is_relative_to(ws.root) else str(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ObjectiveError(source, None, "no objective file; " + no_criteria_message(parse_objective("", source))) from None
    objective = parse_objective(text, source)
    if require_criteria and not objective.criteria:
        raise ObjectiveError(source, None, no_criteria_message(objective))
    return objective


# --------------------------------------------------------------------------------------------
# What the trunk and the queues say
# --------------------------------------------------------------------------------------------


class StoryBook(BaseModel):
    """Every story of the workspace (current and archived sprints) with its trunk facts.

    ``trunk_commit`` is ``None`` when the trunk branch has no commit (or does not exist);
    ``exit_criteria`` holds ``(sprint number, text)`` for every sprint's exit criteria.
    """

    model_config = ConfigDict(extra="forbid")

    trunk: str
    trunk_commit: str | None
    stories: dict[str, StoryFact] = Field(default_factory=dict)
    exit_criteria: list[tuple[int, str]] = Field(default_factory=list)


def read_story_book(ws: Workspace, git: GitRepo, queue: Queue | None = None) -> StoryBook:
    """Collect the stories of the archived queues and of ``queue`` (default: the workspace's
    current queue, or none when no sprint was started), later sprints winning for one ID.

    A story is merged when its status is ``done`` and its ``merged_commit`` — or, for a queue
    without one, its ``<TASK>-complete`` tag — is an ancestor of the trunk's tip, and it was not
    reverted (``oodatcaa revert``).
    """
    if queue is None:
        store = QueueStore.for_workspace(ws)
        queue = store.read() if store.exists() else Queue()
    trunk_commit = git.head_sha(git.trunk) if git.has_commits() and git.branch_exists(git.trunk) else None
    stories: dict[str, StoryFact] = {}
    # sprint id -> (number, exit criteria); a completed sprint's queue is also archived, so later wins
    exits: dict[str, tuple[int, list[str]]] = {}
    for q in [*(a.queue for a in archived_sprints(ws)), queue]:
        number = q.sprint.number if q.sprint else 0
        if q.sprint is not None:
            exits[q.sprint.id] = (number, list(q.sprint.exit_criteria))
        for task in q.tasks:
            tag = f"{task.id}-complete"
            has_tag = git.tag_exists(tag)
            merged = False
            if task.status.value == "done" and trunk_commit is not None:
                merged = bool(task.merged_commit and git.is_ancestor(task.merged_commit, trunk_commit)) or (
                    has_tag and git.is_ancestor(tag, trunk_commit))
            # a reverted story's merge is still in the history but undone: its metrics no longer count
            merged = merged and task.reverted is None
            stories[task.id] = StoryFact(
                task=task.id, title=task.title, status=task.status.value, merged=merged,
                reverted=task.reverted is not None,
                merged_commit=task.merged_commit, tag=tag if has_tag else None, sprint=number or None,
                metrics=dict(task.metrics), objective_links=list(task.objective_links))
    flat = [(n, text) for n, texts in exits.values() for text in texts]
    return StoryBook(trunk=git.trunk, trunk_commit=trunk_commit, stories=stories, exit_criteria=flat)


class TrunkCheckout:
    """A clean detached checkout of the trunk's tip under ``state/checks/``, made on first use.

    One per evaluation, shared by its ``file:`` and ``command:`` checks; :meth:`close` removes it.
    The directory name carries the process id, so a CLI call and the Negotiator never share one.
    """

    def __init__(self, ws: Workspace, git: GitRepo, commit: str):
        self.git = git
        self.commit = commit
        self.path = ws.state_dir / "checks" / f"trunk-{os.getpid()}"
        self._made = False

    def root(self) -> Path:
        """The checkout's directory (created now if needed). Raises :class:`GitOperationError`."""
        if not self._made:
            self._remove_leftovers()
            self.git.add_detached_worktree(self.path, self.commit)
            self._made = True
        return self.path

    def _remove_leftovers(self) -> None:
        # a process killed mid-evaluation leaves its checkout (and its worktree registration) behind
        for old in self.path.parent.glob("trunk-*") if self.path.parent.is_dir() else []:
            m = re.fullmatch(r"trunk-([0-9]+)", old.name)
            if m and old != self.path and not pid_alive(int(m.group(1))):
                self.git.remove_worktree(old)

    def close(self) -> None:
        if self._made:
            self.git.remove_worktree(self.path)
            self._made = False


@contextmanager
def _checkout(ws: Workspace, git: GitRepo, commit: str | None) -> Iterator[TrunkCheckout | None]:
    checkout = TrunkCheckout(ws, git, commit) if commit else None
    try:
        yield checkout
    finally:
        if checkout is not None:
            checkout.close()


def _nest(flat: dict[str, Any]) -> dict[str, Any]:
    """``{"eval.loss": 1.7}`` as ``{"eval": {"loss": 1.7}}`` (nested input is merged as it is)."""
    out: dict[str, Any] = {}
    for key, value in flat.items():
        node = out
        parts = str(key).split(".")
        for part in parts[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                break  # "eval" and "eval.loss" both recorded: keep the first, the lookup reports it
            node = child
        else:
            if isinstance(value, dict) and isinstance(node.get(parts[-1]), dict):
                node[parts[-1]].update(_nest(value))
            else:
                node.setdefault(parts[-1], _nest(value) if isinstance(value, dict) else value)
    return out


def _evaluate_check(cid: str, text: str, check: Check, book: StoryBook, checkout: TrunkCheckout | None,
                    env: dict[str, str] | None) -> CriterionState:
    """Decide one criterion by its machine check (see the module docstring)."""
    shown = format_check(check)
    criterion = Criterion(id="AC1", text=text, check=check)
    if isinstance(check, MetricCheck):
        names = [check.metric] + ([check.value] if isinstance(check.value, str) else [])
        tasks = list(dict.fromkeys(n.split(".", 1)[0] for n in names))
        if not all(_STORY_ID.fullmatch(t) for t in tasks):
            return CriterionState(id=cid, text=text, state="needs_manual", via="check",
                                  evidence=[Evidence(check=shown, detail="the metric names no story")],
                                  reason=f"`{shown}` names no story; write the story ID first, like "
                                         f"`metric: T005.{check.metric} ...`")
        facts = [book.stories.get(t) for t in tasks]
        waiting = [(t, f) for t, f in zip(tasks, facts, strict=True) if f is None or not f.merged]
        if waiting:
            evidence = [Evidence(task=t, status=f.status if f else None, check=shown,
                                 detail="no queue of this workspace holds this story" if f is None
                                 else "reverted: its metrics no longer count" if f.reverted
                                 else "its metrics count once it is merged on the trunk") for t, f in waiting]
            return CriterionState(id=cid, text=text, state="unmet", via="check", evidence=evidence,
                                  reason=f"not merged on the trunk yet: {', '.join(t for t, _ in waiting)}")
        metrics = {t: _nest(f.metrics) for t, f in zip(tasks, facts, strict=True) if f is not None}
        result = evaluate_criterion(criterion, CheckContext(metrics=metrics))
        first = facts[0]
        assert first is not None
        evidence = [Evidence(task=first.task, tag=first.tag, commit=first.merged_commit, check=shown,
                             observed=result.observed, detail=result.detail)]
        met = result.outcome == "PASS"
        return CriterionState(id=cid, text=text, state="met" if met else "unmet", via="check", evidence=evidence,
                              reason=f"`{shown}`: {result.detail}")
    if checkout is None:
        return CriterionState(id=cid, text=text, state="unmet", via="check",
                              evidence=[Evidence(check=shown, detail=f"the trunk {book.trunk!r} has no commit")],
                              reason=f"nothing merged yet: the trunk {book.trunk!r} has no commit to check")
    try:
        root = checkout.root()
    except GitOperationError as exc:
        return CriterionState(id=cid, text=text, state="unmet", via="check",
                              evidence=[Evidence(commit=checkout.commit, check=shown, detail=str(exc))],
                              reason=f"the trunk could not be checked out: {exc}")
    result = evaluate_criterion(criterion, CheckContext(file_roots=[root], workdir=root, env=env))
    # the checkout's path is temporary; say where on the trunk instead
    detail = result.detail.replace(str(root), f"{book.trunk}@{checkout.commit[:12]}")
    if detail.startswith(result.observed + " "):
        detail = detail[len(result.observed) + 1:]  # "exit 1 after 0.05 s" under observed "exit 1"
    met = result.outcome == "PASS"
    return CriterionState(id=cid, text=text, state="met" if met else "unmet", via="check",
                          evidence=[Evidence(commit=checkout.commit, check=shown, observed=result.observed,
                                             detail=detail)],
                          reason=f"`{shown}` on {book.trunk} at {checkout.commit[:12]}: {result.observed}")


def _objective_paths(text: str) -> list[str]:
    """Objective paths written in an exit criterion: in code spans, or running to its end."""
    paths = [m.group(1).strip() for m in _CODE_SPAN.finditer(text) if _OBJECTIVE_PATH.match(m.group(1).strip())]
    outside = _CODE_SPAN.sub(" ", text)
    tail = _OBJECTIVE_PATH.search(outside)
    if tail:
        paths.append(tail.group(0).strip())
    return paths


# --------------------------------------------------------------------------------------------
# The objective
# --------------------------------------------------------------------------------------------


class ObjectiveReport(BaseModel):
    """Every success criterion with its state, and the completion percentage (met / all, 0–100).

    ``unmatched_links`` lists ``"T004: OBJECTIVE.md → ..."`` for each story link naming no criterion.
    """

    model_config = ConfigDict(extra="forbid")

    source: str
    trunk: str
    trunk_commit: str | None
    criteria: list[CriterionState]
    completion_percent: float = Field(ge=0.0, le=100.0)
    unmatched_links: list[str] = Field(default_factory=list)

    @property
    def met(self) -> int:
        return sum(1 for c in self.criteria if c.state == "met")

    def to_json(self) -> dict[str, Any]:
        """``{"completion_percent", "criteria": [{"text", "state", "evidence", ...}], ...}`` (what ``--json`` prints)."""
        return {
            "completion_percent": self.completion_percent,
            "met": self.met,
            "total": len(self.criteria),
            "source": self.source,
            "trunk": self.trunk,
            "trunk_commit": self.trunk_commit,
            "criteria": [c.to_json() for c in self.criteria],
            "unmatched_links": list(self.unmatched_links),
        }


def evaluate_objective(ws: Workspace, *, git: GitRepo | None = None, queue: Queue | None = None,
                       objective: Objective | None = None, env: dict[str, str] | None = None) -> ObjectiveReport:
    """Evaluate every success criterion of the workspace's objective on the trunk's current commit.

    ``git`` defaults to the workspace's repository and trunk (``[git] trunk``); ``queue`` to the
    current queue (none yet is fine); ``objective`` to :func:`load_objective`; ``env``: extra
    environment for ``command:`` checks. Raises :class:`ObjectiveError` (file and line) for a
    missing objective, a malformed check or no success criteria, and what the git and queue layers
    raise for a broken repository or a corrupt queue. ``command:`` checks run for up to their
    timeout (300 s by default) each.
    """
    objective = objective or load_objective(ws)
    if not objective.criteria:
        raise ObjectiveError(objective.source, None, no_criteria_message(objective))
    git = git or GitRepo.for_workspace(ws, "objective")
    book = read_story_book(ws, git, queue)
    linked: dict[str, list[str]] = {c.id: [] for c in objective.criteria}
    unknown: dict[str, list[str]] = {c.id: [] for c in objective.criteria}
    unmatched: list[str] = []
    for story in book.stories.values():
        for link in story.objective_links:
            found = criteria_for_link(objective, link)
            if not found:
                unmatched.append(f"{story.task}: {link}")
            for c in found:
                if story.task not in linked[c.id]:
                    linked[c.id].append(story.task)
    for _sprint, text in book.exit_criteria:
        for path in _objective_paths(text):
            for c in criteria_for_link(objective, path):
                for task in story_ids_named(text):
                    target = linked[c.id] if task in book.stories else unknown[c.id]
                    if task not in target:
                        target.append(task)
    states: list[CriterionState] = []
    with _checkout(ws, git, book.trunk_commit) as checkout:
        for c in objective.criteria:
            states.append(_criterion_state(c, book, checkout, env, linked[c.id], unknown[c.id]))
    return ObjectiveReport(source=objective.source, trunk=book.trunk, trunk_commit=book.trunk_commit, criteria=states,
                           completion_percent=completion_percent(states), unmatched_links=unmatched)


def _criterion_state(c: SuccessCriterion, book: StoryBook, checkout: TrunkCheckout | None, env: dict[str, str] | None,
                     linked: list[str], unknown: list[str]) -> CriterionState:
    text = c.display()
    if c.check is not None:
        return _evaluate_check(c.id, text, c.check, book, checkout, env)
    state = linked_stories_state(c.id, text, [book.stories[t] for t in linked], unknown)
    if state.state == "needs_manual" and c.checked:
        # a ticked box is a person's claim, not evidence a machine can repeat: shown, never counted
        return state.model_copy(update={"reason": state.reason + " (the box is ticked in the file; that is not "
                                                  "counted: add a check or link stories)"})
    return state


def format_report(report: ObjectiveReport) -> list[str]:
    """The report as lines of plain text (print them literally: they carry text from files).

    One block per criterion — ``SC1  met  <text>`` then its reason and each piece of evidence
    indented — then ``Completion: 1/3 criteria met (33.3 %)``.
    """
    at = f"{report.trunk} at {report.trunk_commit[:12]}" if report.trunk_commit else f"{report.trunk} (no commit yet)"
    lines = [f"Objective {report.source}, checked on {at}", ""]
    width = max(len(c.state) for c in report.criteria)
    for c in report.criteria:
        lines.append(f"{c.id:<4} {c.state:<{width}}  {c.text}")
        lines.append(f"     {c.reason}")
        lines += [f"     - {e.describe()}" for e in c.evidence]
    lines.append("")
    manual = sum(1 for c in report.criteria if c.state == "needs_manual")
    lines.append(f"Completion: {report.met}/{len(report.criteria)} criteria met ({report.completion_percent:.1f} %)"
                 + (f"; {manual} need a person" if manual else ""))
    for link in report.unmatched_links:
        lines.append(f"warning: a link names no success criterion: {link}")
    return lines


# --------------------------------------------------------------------------------------------
# Sprint exit criteria
# --------------------------------------------------------------------------------------------


def evaluate_exit_criteria(ws: Workspace, queue: Queue, *, git: GitRepo | None = None,
                           env: dict[str, str] | None = None) -> list[CriterionState]:
    """The exit criteria of ``queue``'s sprint (ids ``EC1`` ...), each ``met``, ``unmet`` or ``needs_manual``.

    A criterion with a machine check is decided by it on the trunk's current commit; one naming
    stories (or an objective path, see the module docstring) by those stories; one that cannot
    be evaluated — prose only, a malformed check (the reason quotes the parse error), a metric
    naming no story — is ``needs_manual``. A sprint without written exit criteria gets one per
    story not cancelled. No sprint: ``[]``. The objective is read only to resolve objective paths;
    when it is missing or malformed those paths link nothing.
    """
    sprint = queue.sprint
    if sprint is None:
        return []
    texts = list(sprint.exit_criteria) or default_exit_criteria(queue.tasks)
    try:
        objective: Objective | None = load_objective(ws, require_criteria=False)
    except ObjectiveError:
        objective = None
    git = git or GitRepo.for_workspace(ws, "negotiator")
    book = read_story_book(ws, git, queue)
    states: list[CriterionState] = []
    with _checkout(ws, git, book.trunk_commit) as checkout:
        for index, text in enumerate(texts, start=1):
            states.append(_exit_state(f"EC{index}", text, index, book, objective, checkout, env))
    return states


def _exit_state(cid: str, text: str, index: int, book: StoryBook, objective: Objective | None,
                checkout: TrunkCheckout | None, env: dict[str, str] | None) -> CriterionState:
    try:
        criterion = parse_criterion_line(text, index=index, source="exit criteria", line=index)
    except BacklogError as exc:
        return CriterionState(id=cid, text=text, state="needs_manual", via="none",
                              reason=f"its check cannot be evaluated ({exc}); a person must decide, or fix the backlog")
    shown = criterion.text or text
    if isinstance(criterion.check, RegressionCheck):  # a story's check: no run or baseline to compare here
        return CriterionState(id=cid, text=text, state="needs_manual", via="none",
                              reason=f"`{format_check(criterion.check)}` compares a story's run with its baseline; "
                                     "an exit criterion cannot check it, a person must decide")
    if criterion.check is not None:
        return _evaluate_check(cid, shown, criterion.check, book, checkout, env)
    named = story_ids_named(text)
    tasks = [t for t in named if t in book.stories]
    unknown = [t for t in named if t not in book.stories]
    for path in _objective_paths(text):
        wanted = {c.id for c in criteria_for_link(objective, path)} if objective else set()
        same_path = [normalize_name(s) for s in link_segments(path)]
        for story in book.stories.values():
            for link in story.objective_links:
                hit = [normalize_name(s) for s in link_segments(link)] == same_path or bool(
                    objective and wanted & {c.id for c in criteria_for_link(objective, link)})
                if hit and story.task not in tasks:
                    tasks.append(story.task)
    return linked_stories_state(cid, shown, [book.stories[t] for t in tasks], unknown)


def sprint_exit_ready_now(ws: Workspace, queue: Queue, *, git: GitRepo | None = None) -> tuple[bool, list[CriterionState]]:
    """``(ready, exit criterion states)``: :func:`evaluate_exit_criteria` then :func:`sprint_exit_ready`."""
    states = evaluate_exit_criteria(ws, queue, git=git)
    return sprint_exit_ready(states, queue.tasks), states



# --------------------------------------------------------------------------------------------
# The Completion Detector
# --------------------------------------------------------------------------------------------


def detect_completion(ws: Workspace, now: datetime, *, git: GitRepo | None = None,
                      queue: Queue | None = None) -> tuple[ObjectiveSnapshot, ObjectiveReport | None]:
    """The original's Completion Detector: the objective evaluated now, as a queue snapshot and the full report.

    Never raises for a workspace problem: a missing or malformed objective, a broken trunk or a
    corrupt archive gives a snapshot whose ``error`` says why (counts 0) and no report, so the
    Negotiator can run it after every merge without stopping a sprint.
    """
    try:
        report = evaluate_objective(ws, git=git, queue=queue)
    except OodatcaaError as exc:
        return ObjectiveSnapshot(percent=0.0, met=0, total=0, checked_at=now, error=str(exc)[:500]), None
    manual = sum(1 for c in report.criteria if c.state == "needs_manual")
    snapshot = ObjectiveSnapshot(percent=round(report.completion_percent, 2), met=report.met, total=len(report.criteria),
                                 needs_manual=manual, trunk_commit=report.trunk_commit, checked_at=now,
                                 criteria=briefs(report.criteria))
    return snapshot, report


def briefs(states: list[CriterionState]) -> list[CriterionBrief]:
    """Each state as the :class:`CriterionBrief` kept in the queue (text cut to 500 characters, reason to 300)."""
    return [CriterionBrief(id=s.id, text=s.text[:500], state=s.state, reason=s.reason[:300]) for s in states]

"""The parsed backlog: :class:`Backlog`, its :class:`BacklogItem` sections and their :class:`JobBlock` steps."""

from __future__ import annotations

import heapq
import re
from datetime import date
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from oodatcaa.core.criteria import Criterion
from oodatcaa.core.errors import BacklogError
from oodatcaa.core.ids import validate_story_id
from oodatcaa.core.models import Estimate

__all__ = ["Backlog", "BacklogItem", "BacklogWarning", "JobBlock", "StatusKind", "status_kind"]

#: What a written ``**Status:**`` means to ``sprint new``: ``open`` (planned and run), ``blocked``
#: (planned, then waits for its dependencies), ``done`` (not run again) or ``cancelled``.
StatusKind = Literal["open", "blocked", "done", "cancelled"]
_STATUS_WORDS: dict[str, StatusKind] = {
    "blocked": "blocked",
    "done": "done", "complete": "done", "completed": "done", "finished": "done", "merged": "done",
    "cancelled": "cancelled", "canceled": "cancelled", "dropped": "cancelled", "wont_do": "cancelled",
    "won't_do": "cancelled", "wontfix": "cancelled",
}


def status_kind(status: str | None) -> StatusKind:
    """The meaning of a written status (case, spaces, ``-`` and emoji ignored): see :data:`StatusKind`.

    Any other word (``needs_plan``, ``Not Started``, ``ready``, ``in progress``) is ``open``: every
    story of a new sprint is planned first, whatever the backlog says it was.
    """
    if not status:
        return "open"
    word = re.sub(r"[\s-]+", "_", re.sub(r"[^\w\s'-]", "", status).strip().lower())
    return _STATUS_WORDS.get(word, "open")


class BacklogWarning(BaseModel):
    """Something in a backlog that is read but probably not what the writer meant (never fatal).

    ``line`` is 1-based (``None`` for the file as a whole). ``str()`` gives ``source:line: message``.
    ``sprint new --strict`` turns warnings into a :class:`~oodatcaa.core.errors.BacklogError`.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    source: str
    line: int | None = None
    message: str

    def __str__(self) -> str:
        where = f"{self.source}:{self.line}" if self.line is not None else self.source
        return f"{where}: {self.message}"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class JobBlock(_Strict):
    """One fenced ``job`` block of an item: one Builder step.

    ``line`` is the 1-based line of the opening fence; ``data`` the YAML mapping (with a string
    ``kind``; the other fields are validated by ``oodatcaa.jobs.spec``).
    """

    line: int = Field(ge=1)
    data: dict[str, Any]

    @field_validator("data")
    @classmethod
    def _kind(cls, value: dict[str, Any]) -> dict[str, Any]:
        if not isinstance(value.get("kind"), str) or not value["kind"]:
            raise ValueError("a job block needs a string `kind`")
        return value

    @property
    def kind(self) -> str:
        """The job kind, e.g. ``lora_train``."""
        return self.data["kind"]


class BacklogItem(_Strict):
    """One ``### ID: Title`` section; ``line`` is 1-based.

    ``status`` is kept as written (see :func:`status_kind` for what ``sprint new`` makes of it).
    ``objective_links`` are the ``**Links to Objective:**`` paths into OBJECTIVE.md, as written.
    ``estimate`` is the ``**Estimated Time:**`` range in minutes (source ``"backlog"``), or ``None``
    when none is written (``sprint new`` then derives one from ``complexity``).
    ``approval_required`` is ``**Approval:** required``: a person approves the story before its merge.
    """

    id: str
    title: str = Field(min_length=1)
    type: str = "Story"
    complexity: str | None = None
    priority: int | None = None
    status: str | None = None
    dependencies: list[str] = Field(default_factory=list)
    description: str = ""
    acceptance_criteria: list[Criterion] = Field(default_factory=list)
    jobs: list[JobBlock] = Field(default_factory=list)
    objective_links: list[str] = Field(default_factory=list)
    estimate: Estimate | None = None
    approval_required: bool = False
    line: int = Field(default=1, ge=1)

    @property
    def status_kind(self) -> StatusKind:
        """What the written status means to ``sprint new`` (:func:`status_kind`)."""
        return status_kind(self.status)

    @field_validator("id")
    @classmethod
    def _id(cls, value: str) -> str:
        return validate_story_id(value)

    @field_validator("dependencies")
    @classmethod
    def _deps(cls, value: list[str]) -> list[str]:
        return [validate_story_id(v) for v in value]


class Backlog(_Strict):
    """A parsed backlog: title, goal, exit criteria, items in file order, and sprint metadata.

    ``start_date`` / ``target_date`` come from sprint-level lines such as ``> **Sprint 4 Start:**
    2025-10-05`` and ``> **Target Completion:** 2025-10-15 (7-10 working days)``. ``notes`` keeps
    every other labelled line outside the items as ``"Label: value"`` (with its continuation lines),
    for example the ``## Sprint Summary`` lines (``Total Items: 4``, ``Critical Path: ...``).
    ``warnings`` lists what was read but looks unintended (unknown item fields, ...), never fatal.
    """

    source: str
    title: str | None = None
    goal: str | None = None
    exit_criteria: list[str] = Field(default_factory=list)
    items: list[BacklogItem]
    start_date: date | None = None
    target_date: date | None = None
    notes: list[str] = Field(default_factory=list)
    warnings: list[BacklogWarning] = Field(default_factory=list)

    @property
    def ids(self) -> list[str]:
        """Item IDs in file order."""
        return [item.id for item in self.items]

    def item(self, item_id: str) -> BacklogItem:
        """The item with ``item_id``; raises :class:`KeyError` when there is none."""
        for item in self.items:
            if item.id == item_id:
                return item
        raise KeyError(item_id)

    def ordered(self) -> list[BacklogItem]:
        """Items in an order that respects dependencies (a dependency comes first).

        Among items that are ready at the same time: lower ``priority`` first (no priority goes
        last), then file order. Dependencies outside the backlog are ignored (the parser refuses
        them; a hand-built :class:`Backlog` may not).
        """
        index = {item.id: i for i, item in enumerate(self.items)}
        waiting = {item.id: {d for d in item.dependencies if d in index} for item in self.items}
        users: dict[str, list[str]] = {item.id: [] for item in self.items}
        for item in self.items:
            for dep in waiting[item.id]:
                users[dep].append(item.id)

        def key(item_id: str) -> tuple[float, int, str]:
            priority = self.items[index[item_id]].priority
            return (float("inf") if priority is None else priority, index[item_id], item_id)

        ready = [key(i) for i, deps in waiting.items() if not deps]
        heapq.heapify(ready)
        out: list[BacklogItem] = []
        while ready:
            _, i, item_id = heapq.heappop(ready)
            out.append(self.items[i])
            for user in users[item_id]:
                waiting[user].discard(item_id)
                if not waiting[user]:
                    heapq.heappush(ready, key(user))
        if len(out) != len(self.items):
            stuck = sorted(set(index) - {item.id for item in out})
            raise BacklogError(self.source, None, f"dependency cycle among {', '.join(stuck)}")
        return out

"""The parsed backlog: :class:`Backlog`, its :class:`BacklogItem` sections and their :class:`JobBlock` steps."""

from __future__ import annotations

import heapq
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from oodatcaa.core.criteria import Criterion
from oodatcaa.core.errors import BacklogError
from oodatcaa.core.ids import validate_story_id

__all__ = ["Backlog", "BacklogItem", "JobBlock"]


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
    """One ``### ID: Title`` section. ``status`` is informational (as written); ``line`` is 1-based."""

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
    line: int = Field(default=1, ge=1)

    @field_validator("id")
    @classmethod
    def _id(cls, value: str) -> str:
        return validate_story_id(value)

    @field_validator("dependencies")
    @classmethod
    def _deps(cls, value: list[str]) -> list[str]:
        return [validate_story_id(v) for v in value]


class Backlog(_Strict):
    """A parsed backlog: title, goal, exit criteria and items in file order."""

    source: str
    title: str | None = None
    goal: str | None = None
    exit_criteria: list[str] = Field(default_factory=list)
    items: list[BacklogItem]

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

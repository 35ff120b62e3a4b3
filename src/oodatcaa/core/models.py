"""Pydantic models of ``SPRINT_QUEUE.json``: sprint, task (story), subtask and lease.

The queue is the single source of truth. Counters (how many items in each status) are derived
from the tasks on every dump and ignored on load, so they can never disagree with the tasks.
The JSON Schema in ``schemas/sprint_queue.schema.json`` is generated from these models
(:func:`queue_json_schema`); a test fails when the committed file drifts.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from datetime import date, datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, computed_field, field_validator, model_validator

from oodatcaa.core.criteria import Criterion
from oodatcaa.core.failures import Failure, FailureKind
from oodatcaa.core.ids import (
    validate_sprint_id,
    validate_story_id,
    validate_subtask_id,
    validate_task_id,
)
from oodatcaa.core.statuses import ItemKind, Role, SprintStatus, TaskStatus, valid_statuses

SCHEMA_VERSION: Literal[1] = 1

#: Role names as strings (the values of :class:`~oodatcaa.core.statuses.Role`).
ROLES = tuple(r.value for r in Role)


class _Model(BaseModel):
    # NaN / Infinity are written as the JSON constants Python's json reads back, never as null
    model_config = ConfigDict(extra="forbid", validate_assignment=True, ser_json_inf_nan="constants")


def _migrate_legacy(data: Any) -> Any:
    """Read queues written by earlier versions: nothing a person ran before an upgrade is refused.

    - ``last_error`` (free text, before typed failures) becomes a ``job_error`` failure;
    - ``estimate_minutes`` (a single number, before estimate ranges) becomes an :class:`Estimate`.
    """
    if not isinstance(data, dict) or not ({"last_error", "estimate_minutes"} & data.keys()):
        return data
    data = dict(data)
    text = data.pop("last_error", None)
    if text and not data.get("failure"):
        data["failure"] = {"kind": FailureKind.JOB_ERROR.value, "message": str(text)[:4000]}
    minutes = data.pop("estimate_minutes", None)
    if isinstance(minutes, (int, float)) and minutes > 0 and not data.get("estimate"):
        data["estimate"] = {"low_minutes": minutes, "high_minutes": minutes, "source": "backlog"}
    return data


class _FailureCarrier(_Model):
    """An item that can carry a :class:`~oodatcaa.core.failures.Failure`."""

    failure: Failure | None = Field(default=None, description="Why the item last failed (typed); cleared on success.")

    @model_validator(mode="before")
    @classmethod
    def _old_last_error(cls, data: Any) -> Any:
        return _migrate_legacy(data)

    @property
    def last_error(self) -> str | None:
        """The failure's human message (read-only; set :attr:`failure` instead)."""
        return self.failure.message if self.failure else None


class Lease(_Model):
    """Who holds an item, and until when.

    ``claim_id`` fences writes: an agent must present it on every change, and a change carrying a
    superseded claim id is refused (:class:`~oodatcaa.core.errors.LeaseError`). ``expires_at`` is
    ``heartbeat_at + ttl_seconds``; a lease past it is stale and the Negotiator reclaims the item.
    """

    owner: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    role: Role
    pid: int = Field(gt=0)
    host: str = Field(min_length=1)
    claim_id: str = Field(pattern=r"^[0-9a-f]{32}$")
    claimed_at: datetime
    heartbeat_at: datetime
    ttl_seconds: float = Field(gt=0, description="Lease time-to-live in seconds; must be positive.")
    expires_at: datetime

    def is_expired(self, now: datetime) -> bool:
        """True when ``now`` is past ``expires_at``."""
        return now >= self.expires_at


class Estimate(_Model):
    """A story's expected duration: a range in minutes and where it came from.

    ``source`` is ``"backlog"`` (the item's ``**Estimated Time:**``, e.g. ``120-180 minutes``, kept in
    ``text``) or ``"complexity"`` (the original's heuristics from ``**Complexity:**``).
    """

    low_minutes: float = Field(gt=0)
    high_minutes: float = Field(gt=0)
    source: Literal["backlog", "complexity"]
    text: str | None = None

    def minutes(self) -> str:
        """``120-180 min``, or ``45 min`` when both ends round to the same minute."""
        low, high = self.low_minutes, self.high_minutes
        return f"{low:.0f} min" if round(low) == round(high) else f"{low:.0f}-{high:.0f} min"

    def describe(self) -> str:
        """:meth:`minutes`, plus ``by complexity`` when it does not come from the backlog."""
        return self.minutes() if self.source == "backlog" else f"{self.minutes()} by complexity"

    @model_validator(mode="after")
    def _ordered(self) -> Estimate:
        if self.high_minutes < self.low_minutes:
            raise ValueError(f"estimate {self.low_minutes:g}-{self.high_minutes:g} min: the high end is below the low end")
        return self


class AdaptationRecord(_Model):
    """One Refiner loop applied to a story: which rule changed which step, and why (for the retrospective)."""

    loop: int = Field(ge=1, description="The adaptation loop this was (1 = the first).")
    rule: str = Field(min_length=1, description="The Refiner rule applied, as <policy>.<rung>, e.g. memory.halve_batch.")
    step: str = Field(description="The builder step whose job changed (T004-B01).")
    failure_kind: FailureKind | None = Field(default=None, description="The kind of failure it answered.")
    rationale: str = ""
    at: datetime

    @field_validator("step")
    @classmethod
    def _step(cls, value: str) -> str:
        return validate_subtask_id(value)


#: How many attempts a builder step keeps in ``attempt_history`` (the oldest are dropped): the queue stays small.
ATTEMPT_HISTORY_LIMIT = 10


class AttemptRecord(_Model):
    """One finished run of a builder step, kept so attempts can be compared (``oodatcaa compare``).

    ``job`` is the job spec the attempt ran (as the queue held it), ``metrics`` the flat numeric
    metrics of its summary (:func:`oodatcaa.jobs.registry.numeric_metrics`), ``failure_kind`` why it
    failed (``None`` when it built). Written by :mod:`oodatcaa.core.lifecycle`.
    """

    attempt: int = Field(ge=0)
    ok: bool
    job: dict[str, Any] | None = None
    metrics: dict[str, Any] = Field(default_factory=dict)
    failure_kind: FailureKind | None = None
    max_rss_gb: float | None = None
    commit: str | None = None
    finished_at: datetime


class RevertRecord(_Model):
    """A story's merge undone on the trunk by ``oodatcaa revert`` (:mod:`oodatcaa.revert`).

    ``commit`` is the landed revert commit (tagged ``<TASK>-reverted``), ``reverted_merge`` the
    story's merge commit it undoes, ``by`` who asked (git ``user.name <user.email>``), ``at`` when.
    A reverted story's metrics no longer count as objective evidence.
    """

    commit: str = Field(min_length=7, max_length=64)
    reverted_merge: str = Field(min_length=7, max_length=64)
    reason: str = Field(min_length=1, max_length=2000)
    by: str = Field(max_length=400)
    at: datetime


class CriterionBrief(_Model):
    """One criterion's state as last evaluated, kept in the queue so views (``watch``) need not re-run checks.

    ``id``: ``SC1`` (a success criterion of the objective) or ``EC1`` (a sprint exit criterion);
    ``state``: ``met``, ``unmet`` or ``needs_manual`` (:class:`oodatcaa.core.objective.CriterionState`);
    ``reason``: its one-sentence reason, cut to 300 characters.
    """

    id: str
    text: str
    state: Literal["met", "unmet", "needs_manual"]
    reason: str = ""


class ObjectiveSnapshot(_Model):
    """The objective's completion as last detected (the Completion Detector, after a merge or a sprint).

    ``percent`` is met / total x 100 over the success criteria of ``OBJECTIVE.md``, evaluated on the
    trunk at ``trunk_commit``; ``error`` says why it could not be evaluated (then the counts are 0).
    """

    percent: float = Field(ge=0.0, le=100.0)
    met: int = Field(ge=0)
    total: int = Field(ge=0)
    needs_manual: int = Field(default=0, ge=0)
    trunk_commit: str | None = None
    checked_at: datetime
    error: str | None = None
    criteria: list[CriterionBrief] = Field(
        default_factory=list, description="Each success criterion's state at `checked_at` (for views).")

    def describe(self) -> str:
        """``objective 50.0 % (2/4 met)``, or ``objective not evaluated: <why>``."""
        if self.error:
            return f"objective not evaluated: {self.error}"
        manual = f", {self.needs_manual} need a person" if self.needs_manual else ""
        return f"objective {self.percent:.1f} % ({self.met}/{self.total} met{manual})"


class ApprovalRecord(_Model):
    """A person's decision on a story: approved for integration, rejected, or accepted from the gray zone.

    ``by_name`` / ``by_email`` are the repository's git ``user.name`` / ``user.email`` when the command
    ran (:meth:`oodatcaa.gitops.GitRepo.person_identity`); ``at`` is the clock's time. ``commit`` is the
    Tester's results commit the decision was made on: an approval holds only for that commit, so work
    rebuilt and re-tested after it waits for a new approval (:func:`oodatcaa.person.is_approved`).
    """

    decision: Literal["approved", "rejected"]
    by_name: str = Field(min_length=1, max_length=200)
    by_email: str = Field(default="", max_length=200)
    at: datetime
    note: str = Field(default="", max_length=2000)
    commit: str | None = Field(default=None, description="The Tester's results commit the decision was made on.")

    def who(self) -> str:
        """``Ada Lovelace <ada@example.org>`` (the name alone without an email)."""
        return f"{self.by_name} <{self.by_email}>" if self.by_email else self.by_name


class Subtask(_FailureCarrier):
    """A Builder step (``T001-B01``, one job, one branch) or the Tester subtask (``T001-T01``)."""

    id: str
    kind: Literal["build", "test"]
    status: TaskStatus
    title: str
    step: int = Field(ge=1, le=99)
    branch: str | None = None
    job: dict[str, Any] | None = Field(default=None, description="Validated job spec (builder steps).")
    dependencies: list[str] = Field(default_factory=list)
    lease: Lease | None = None
    attempts: int = Field(default=0, ge=0, description="Times this subtask was claimed.")
    result: dict[str, Any] | None = Field(
        default=None, description="Builder: commit, run dir, summary metrics, artifacts; Tester: verdict."
    )
    attempt_history: list[AttemptRecord] = Field(
        default_factory=list,
        description=f"Builder steps: each finished attempt's job spec and metrics, oldest first (last {ATTEMPT_HISTORY_LIMIT}).")

    @field_validator("id")
    @classmethod
    def _id(cls, value: str) -> str:
        return validate_subtask_id(value)

    @field_validator("dependencies")
    @classmethod
    def _deps(cls, value: list[str]) -> list[str]:
        return [validate_task_id(v) for v in value]

    @model_validator(mode="after")
    def _consistent(self) -> Subtask:
        letter = self.id[5]
        if (letter == "B") != (self.kind == "build"):
            raise ValueError(f"subtask {self.id} has kind {self.kind!r}; B-steps are 'build', T-steps 'test'")
        if self.status not in valid_statuses(ItemKind(self.kind)):
            raise ValueError(f"status {self.status.value!r} is not valid for a {self.kind} subtask")
        return self

    @property
    def item_kind(self) -> ItemKind:
        return ItemKind(self.kind)


class Task(_FailureCarrier):
    """A story from the backlog (``T001``) with its plan's subtasks."""

    id: str
    title: str
    status: TaskStatus = TaskStatus.NEEDS_PLAN
    type: str = "Story"
    complexity: str | None = None
    priority: int | None = None
    dependencies: list[str] = Field(default_factory=list)
    description: str = ""
    acceptance_criteria: list[Criterion] = Field(default_factory=list)
    jobs: list[dict[str, Any]] = Field(default_factory=list, description="Job blocks from the backlog, validated.")
    estimate: Estimate | None = Field(
        default=None, description="Expected duration (minutes), from the backlog or the complexity.")
    objective_links: list[str] = Field(
        default_factory=list,
        description="`Links to Objective` as written: paths into OBJECTIVE.md such as 'OBJECTIVE.md → Training → QLoRA'.")
    backlog_status: str | None = Field(
        default=None, description="`**Status:**` as written in the backlog (the queue's status is `status`).")
    started_at: datetime | None = Field(
        default=None, description="When the story was first claimed (planning began); elapsed time counts from here.")
    finished_at: datetime | None = Field(default=None, description="When the story was merged (done).")
    prior_dependencies: list[str] = Field(
        default_factory=list,
        description="Dependencies done in earlier sprints: never waited for; their artifacts are looked up by the Builder.")
    carried_from: str | None = Field(
        default=None, description="The sprint this unfinished story was carried over from (`sprint new --carry-over`).")
    adaptations: list[AdaptationRecord] = Field(
        default_factory=list, description="Every Refiner loop applied, oldest first (kept across a start over).")
    plan_version: int = Field(default=0, ge=0)
    adapt_loops: int = Field(default=0, ge=0, description="Adaptation loops used (Refiner).")
    attempts: int = Field(default=0, ge=0, description="Times the story itself was claimed.")
    baseline_tag: str | None = None
    lease: Lease | None = None
    subtasks: list[Subtask] = Field(default_factory=list)
    manual_reason: str | None = None
    metrics: dict[str, Any] = Field(default_factory=dict, description="Key metrics of the last build (flat).")
    merged_commit: str | None = None
    approval_required: bool = Field(
        default=False, description="`**Approval:** required` in the backlog: a person approves before the merge.")
    approval: ApprovalRecord | None = Field(
        default=None, description="The latest approval or rejection by a person (`oodatcaa approve` / `reject`).")
    reverted: RevertRecord | None = Field(
        default=None, description="Set when `oodatcaa revert` undid the story's merge on the trunk.")

    @field_validator("id")
    @classmethod
    def _id(cls, value: str) -> str:
        return validate_story_id(value)

    @field_validator("dependencies", "prior_dependencies")
    @classmethod
    def _deps(cls, value: list[str]) -> list[str]:
        return [validate_story_id(v) for v in value]

    @field_validator("carried_from")
    @classmethod
    def _carried(cls, value: str | None) -> str | None:
        return None if value is None else validate_sprint_id(value)

    @model_validator(mode="after")
    def _subtasks_belong(self) -> Task:
        for sub in self.subtasks:
            if not sub.id.startswith(self.id + "-"):
                raise ValueError(f"subtask {sub.id} does not belong to {self.id}")
        return self

    @property
    def item_kind(self) -> ItemKind:
        return ItemKind.STORY

    def builds(self) -> list[Subtask]:
        """Builder steps in step order."""
        return sorted((s for s in self.subtasks if s.kind == "build"), key=lambda s: s.step)

    def tester(self) -> Subtask | None:
        """The Tester subtask, if planned."""
        return next((s for s in self.subtasks if s.kind == "test"), None)


class Sprint(_Model):
    """The current sprint (``SPRINT-YYYY-NNN``)."""

    id: str
    number: int = Field(ge=1)
    title: str
    goal: str = ""
    status: SprintStatus = SprintStatus.IN_PROGRESS
    exit_criteria: list[str] = Field(default_factory=list)
    backlog_source: str | None = None
    start_date: date | None = Field(default=None, description="The backlog's sprint start line (`**Sprint 4 Start:**`).")
    target_date: date | None = Field(default=None, description="The backlog's `**Target Completion:**` date.")
    notes: list[str] = Field(
        default_factory=list, description="Other sprint-level and summary lines of the backlog, 'Label: value'.")
    created_at: datetime
    completed_at: datetime | None = None
    forced: bool = Field(default=False, description="Completed with `sprint complete --force` (exit criteria unmet).")
    exit_states: list[CriterionBrief] = Field(
        default_factory=list, description="Each exit criterion's state as the Negotiator last evaluated it (for views).")
    exit_checked_at: datetime | None = Field(default=None, description="When `exit_states` were evaluated.")

    @field_validator("id")
    @classmethod
    def _id(cls, value: str) -> str:
        return validate_sprint_id(value)


Item = Task | Subtask


class Queue(_Model):
    """The whole of ``SPRINT_QUEUE.json``."""

    schema_version: Literal[1] = SCHEMA_VERSION
    sprint: Sprint | None = None
    tasks: list[Task] = Field(default_factory=list)
    revision: int = Field(default=0, ge=0, description="Incremented on every write.")
    outbox: list[str] = Field(
        default_factory=list,
        description="AGENT_LOG.md rows of the latest write; re-appended by the next write if a crash lost them.")
    objective: ObjectiveSnapshot | None = Field(
        default=None, description="The objective's completion as last detected (after a merge or a sprint).")

    @model_validator(mode="before")
    @classmethod
    def _drop_derived(cls, data: Any) -> Any:
        # counters are derived on dump; a stored copy is never trusted
        if isinstance(data, dict) and "counters" in data:
            data = {k: v for k, v in data.items() if k != "counters"}
        return data

    @model_validator(mode="after")
    def _unique_ids(self) -> Queue:
        seen: set[str] = set()
        for item in self.items():
            if item.id in seen:
                raise ValueError(f"duplicate task ID {item.id}")
            seen.add(item.id)
        return self

    @computed_field  # type: ignore[prop-decorator]
    @property
    def counters(self) -> dict[str, dict[str, int]]:
        """Derived: stories and subtasks per status, and totals. Never stored by hand."""
        # count the enum members and take .value once per status: .value per item is most of the cost
        story_counts = Counter(t.status for t in self.tasks)
        sub_counts = Counter(s.status for t in self.tasks for s in t.subtasks)
        stories = {status.value: n for status, n in story_counts.items()}
        subs = {status.value: n for status, n in sub_counts.items()}
        return {
            "stories": dict(sorted(stories.items())),
            "subtasks": dict(sorted(subs.items())),
            "totals": {
                "stories": len(self.tasks),
                "subtasks": sum(sub_counts.values()),
                "done": stories.get("done", 0),
            },
        }

    def items(self) -> Iterator[Item]:
        """Every story and subtask, stories first within each task."""
        for task in self.tasks:
            yield task
            yield from task.subtasks

    def task(self, task_id: str) -> Task:
        """The story with this ID; ``KeyError`` if absent."""
        for task in self.tasks:
            if task.id == task_id:
                return task
        raise KeyError(task_id)

    def item(self, item_id: str) -> Item:
        """The story or subtask with this ID; ``KeyError`` if absent."""
        validate_task_id(item_id)
        for item in self.items():
            if item.id == item_id:
                return item
        raise KeyError(item_id)

    def parent(self, item: Item) -> Task:
        """The story an item belongs to (itself for a story)."""
        return item if isinstance(item, Task) else self.task(item.id[:4])


def queue_json_schema() -> dict[str, Any]:
    """JSON Schema of ``SPRINT_QUEUE.json`` (serialization mode, so derived counters appear)."""
    schema = Queue.model_json_schema(mode="serialization")
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "SPRINT_QUEUE.json"
    return schema

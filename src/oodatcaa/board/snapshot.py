"""A read-only snapshot of a workspace for the board (issue 10 part 1): plain dataclasses, no IPC.

Reads only files: the queue (``QueueStore.read``), the agents' pid files (``processes.read_agents``),
the progress the Builder writes into the queue every 10 s, the objective, and the newest
``AGENT_LOG.md`` entries. Never imports textual.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from oodatcaa.board.jobs import JobRow, running_jobs
from oodatcaa.board.progress import step_progress
from oodatcaa.core.config import Config, load_config, load_role_definitions
from oodatcaa.core.errors import ConfigError
from oodatcaa.core.eventlog import EventLog, LogEntry
from oodatcaa.core.models import Queue, Subtask, Task
from oodatcaa.core.store import QueueStore
from oodatcaa.core.workspace import Workspace
from oodatcaa.person import waiting_for_person
from oodatcaa.processes import read_agents


@dataclass(frozen=True)
class AgentRow:
    """One agent: ``alive`` False means its pid is gone (dead); ``item`` None with alive True means idle."""

    owner: str
    role: str
    pid: int
    alive: bool
    item: str | None
    heartbeat_age_s: float | None


@dataclass(frozen=True)
class ItemRow:
    """One story (``kind == "story"``) or subtask, with its lease time left in seconds (None: no lease)."""

    id: str
    kind: str
    status: str
    owner: str | None
    lease_left_s: float | None
    attempt: int
    loops: int | None
    dependencies: tuple[str, ...]
    progress: dict[str, Any] | None = None
    awaiting_approval: bool = False


@dataclass(frozen=True)
class CriterionRow:
    """An objective success criterion (``SC1``) or sprint exit criterion (``EC1``) and its last known state.

    ``state``: ``met``, ``unmet``, ``needs_manual``, or ``not checked`` when the Negotiator has not
    evaluated it yet (the board never runs checks itself: they may run commands for minutes).
    """

    id: str
    text: str
    state: str
    reason: str = ""


def criterion_rows(queue: Queue) -> list[CriterionRow]:
    """The objective's success criteria then the sprint's exit criteria, as last evaluated and kept in the queue."""
    rows = [CriterionRow(c.id, c.text, c.state, c.reason) for c in (queue.objective.criteria if queue.objective else [])]
    sprint = queue.sprint
    if sprint is not None:
        if sprint.exit_states:
            rows += [CriterionRow(c.id, c.text, c.state, c.reason) for c in sprint.exit_states]
        else:
            rows += [CriterionRow(f"EC{n}", text, "not checked") for n, text in enumerate(sprint.exit_criteria, 1)]
    return rows


@dataclass(frozen=True)
class Snapshot:
    """Everything one board frame shows, taken at ``taken_at`` (UTC): header, agents, items, running jobs,
    the objective's and the sprint's criteria, and the newest log entries."""

    taken_at: datetime
    sprint: str
    objective: str | None
    max_loops: int = 3
    waiting: list[str] = field(default_factory=list)
    agents: list[AgentRow] = field(default_factory=list)
    items: list[ItemRow] = field(default_factory=list)
    jobs: list[JobRow] = field(default_factory=list)
    criteria: list[CriterionRow] = field(default_factory=list)
    log: list[LogEntry] = field(default_factory=list)


def take_snapshot(ws: Workspace, *, now: datetime | None = None, log_entries: int = 8,
                  store: QueueStore | None = None) -> Snapshot:
    """Read the workspace's files into a :class:`Snapshot` (``now`` defaults to the wall clock, UTC).

    ``store``: keep one between refreshes and the queue is parsed only when its file changed
    (:meth:`QueueStore.peek`, no lock). Raises what ``QueueStore.peek`` raises for a missing or
    malformed queue (an ``OodatcaaError`` naming the file), the same error ``status`` shows.
    """
    now = now or datetime.now(UTC)
    queue = (store or QueueStore.for_workspace(ws)).peek()
    try:
        config = load_config(ws.config_path, ws.agents_dir)
    except ConfigError:  # the board still shows the queue; `status` names the config error
        config = Config(roles=load_role_definitions())
    waiting = waiting_for_person(queue, config)
    approval = {w.task_id for w in waiting if w.awaiting_approval}
    held: dict[str, tuple[str, datetime]] = {}
    items: list[ItemRow] = []
    for task in queue.tasks:
        chain: list[Task | Subtask] = [task, *task.subtasks]
        for item in chain:
            lease = item.lease
            if lease is not None:
                held[lease.owner] = (item.id, lease.heartbeat_at)
            is_story = item is task
            items.append(ItemRow(
                id=item.id, kind="story" if is_story else str(getattr(item, "kind", "")), status=item.status.value,
                owner=lease.owner if lease else None,
                lease_left_s=(lease.expires_at - now).total_seconds() if lease else None,
                attempt=int(getattr(item, "attempts", 0) or 0), loops=task.adapt_loops if is_story else None,
                dependencies=tuple(item.dependencies),
                progress=None if is_story else step_progress(getattr(item, "result", None)),
                awaiting_approval=is_story and item.id in approval,
            ))
    agents = [AgentRow(owner=r.owner, role=r.role, pid=r.pid, alive=r.is_running(),
                       item=held[r.owner][0] if r.owner in held else None,
                       heartbeat_age_s=(now - held[r.owner][1]).total_seconds() if r.owner in held else None)
              for r in read_agents(ws)]
    sprint = queue.sprint
    entries = EventLog(ws.agent_log_path, ws.lock_path("agent_log")).entries()[-log_entries:]
    return Snapshot(taken_at=now, sprint=f"{sprint.id} — {sprint.title} [{sprint.status.value}]" if sprint else "no sprint",
                    objective=queue.objective.describe() if queue.objective else None,
                    max_loops=config.loop.max_adapt_loops, waiting=[w.describe() for w in waiting],
                    agents=agents, items=items, jobs=running_jobs(ws, queue.tasks), criteria=criterion_rows(queue),
                    log=entries)

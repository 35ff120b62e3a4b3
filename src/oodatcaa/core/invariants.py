"""Invariants of a queue beyond its schema, checked before every write and by ``queue validate``.

- every dependency names an existing story (subtasks: a sibling subtask) and there is no cycle;
- an item holds a lease exactly when its status is a claimed one (at most one live lease per item);
- a ``done`` story's subtasks are all ``done`` or ``cancelled``, and a story not yet planned has no
  subtask in progress (the pairs a person could write by hand that no agent would produce);
- stored counters, when present in the file, equal a recount of the tasks.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from oodatcaa.core.models import Item, Queue
from oodatcaa.core.statuses import TaskStatus, claimed_statuses

S = TaskStatus
_UNPLANNED = (S.NEEDS_PLAN, S.PLANNING)


@dataclass(frozen=True)
class Violation:
    """One broken invariant: where (a JSON path such as ``tasks[2].dependencies``) and what."""

    location: str
    message: str
    fix: str

    def __str__(self) -> str:
        return f"{self.location}: {self.message} (fix: {self.fix})"


def _cycle(graph: dict[str, list[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in graph.get(node, []):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if state.get(nxt) is None:
                found = visit(nxt)
                if found:
                    return found
        stack.pop()
        state[node] = 2
        return None

    for node in graph:
        if state.get(node) is None:
            found = visit(node)
            if found:
                return found
    return None


def _lease_violations(item: Item, where: str) -> list[Violation]:
    """A lease exactly when the item's status is one its kind holds a lease in."""
    claimed = claimed_statuses(item.item_kind)
    if item.status in claimed and item.lease is None:
        return [Violation(f"{where}.lease", f"{item.id} is {item.status.value} but has no lease",
                          "set it back to its claimable status or let the Negotiator reclaim it")]
    if item.status not in claimed and item.lease is not None:
        return [Violation(f"{where}.lease", f"{item.id} is {item.status.value} but holds a lease of {item.lease.owner}",
                          "remove the lease")]
    return []


def check_invariants(queue: Queue, stored_counters: Any = None) -> list[Violation]:
    """Every violated invariant of ``queue`` (empty list when it is sound)."""
    out: list[Violation] = []
    ids = {t.id for t in queue.tasks}
    for ti, task in enumerate(queue.tasks):
        where = f"tasks[{ti}]"
        for dep in task.dependencies:
            if dep not in ids:
                out.append(Violation(f"{where}.dependencies", f"{task.id} depends on {dep}, which is not in the queue",
                                     f"remove {dep} from {task.id}'s dependencies or add the task"))
        out += _lease_violations(task, where)
        sub_ids = {s.id for s in task.subtasks}
        for si, sub in enumerate(task.subtasks):
            swhere = f"{where}.subtasks[{si}]"
            for dep in sub.dependencies:
                if dep not in sub_ids:
                    out.append(Violation(f"{swhere}.dependencies", f"{sub.id} depends on {dep}, not a subtask of {task.id}",
                                         f"remove {dep}"))
            out += _lease_violations(sub, swhere)
            if task.status == S.DONE and sub.status not in (S.DONE, S.CANCELLED):
                out.append(Violation(f"{swhere}.status", f"{task.id} is done but {sub.id} is {sub.status.value}",
                                     f"set {sub.id} to done, or {task.id} back to ready_for_integrator"))
            if task.status in _UNPLANNED and sub.status in (S.IN_PROGRESS, S.TESTING):
                out.append(Violation(f"{swhere}.status", f"{task.id} is {task.status.value} but {sub.id} is {sub.status.value}",
                                     f"set {task.id} to in_progress, or {sub.id} back to ready"))
        cycle = _cycle({s.id: list(s.dependencies) for s in task.subtasks})
        if cycle:
            out.append(Violation(f"{where}.subtasks", "dependency cycle " + " -> ".join(cycle), "break the cycle"))
    cycle = _cycle({t.id: [d for d in t.dependencies if d in ids] for t in queue.tasks})
    if cycle:
        out.append(Violation("tasks", "dependency cycle " + " -> ".join(cycle), "remove one of these dependencies"))
    if stored_counters is not None and stored_counters != queue.counters:
        out.append(Violation("counters", f"stored counters {stored_counters} disagree with the tasks {queue.counters}",
                             "delete the counters field; it is derived on every write"))
    return out


def validate_queue_file(path: Path) -> list[Violation]:
    """Schema and invariant check of a queue file; every problem found, with its location.

    Unlike loading, this reports all schema errors, not just the first.
    """
    import json

    from pydantic import ValidationError

    from oodatcaa.core.store import RESTORE_FIX, format_loc

    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return [Violation(str(path), "file does not exist", "pass the path of a SPRINT_QUEUE.json")]
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        return [Violation(f"line {exc.lineno} column {exc.colno}", f"not valid JSON: {exc.msg}", RESTORE_FIX)]
    try:
        queue = Queue.model_validate(data)
    except ValidationError as exc:
        return [Violation(format_loc(e["loc"]), e["msg"], RESTORE_FIX) for e in exc.errors()]
    stored = data.get("counters") if isinstance(data, dict) else None
    return check_invariants(queue, stored_counters=stored)

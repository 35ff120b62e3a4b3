"""One board frame rendered with rich (``oodatcaa watch --once``, and each refresh of ``watch``).

Every cell is a :class:`rich.text.Text` taken literally: ids, owners and log text are data, never markup.
"""

from __future__ import annotations

from rich.console import Group
from rich.table import Table
from rich.text import Text

from oodatcaa.board.progress import progress_text
from oodatcaa.board.snapshot import Snapshot

#: Colour of a status cell (as in ``status``); other statuses are unstyled.
STATUS_COLOURS = {"done": "green", "needs_manual": "red", "needs_adapt": "yellow", "cancelled": "grey50"}


def cell(value: object, style: str = "") -> Text:
    """A cell showing ``value`` literally (``None`` -> empty), never parsed as markup."""
    return Text("" if value is None else str(value), style=style)


def _age(seconds: float | None) -> str:
    return "" if seconds is None else f"{int(seconds)}s"


def agents_panel(snap: Snapshot) -> Table:
    """Agents: a dead one reads ``dead`` in red, an idle live one ``idle`` in yellow, a busy one ``busy``."""
    table = Table(title="agents", expand=True)
    for col in ("owner", "role", "pid", "state", "heartbeat", "item"):
        table.add_column(col, no_wrap=col in ("owner", "state"), overflow="fold")
    for a in snap.agents:
        state = cell("dead", "bold red") if not a.alive else cell("busy", "green") if a.item else cell("idle", "yellow")
        table.add_row(cell(a.owner), cell(a.role), cell(a.pid), state, cell(_age(a.heartbeat_age_s)), cell(a.item))
    if not snap.agents:
        table.add_row(cell("(no agents recorded)", "dim"), *[cell("")] * 5)
    return table


def items_panel(snap: Snapshot) -> Table:
    """Stories (bold) and subtasks (indented): status, owner, lease left, attempt, loops n/3, deps, progress."""
    table = Table(title="stories and subtasks", expand=True)
    for col in ("item", "status", "owner", "lease", "try", "loops", "deps", "progress"):
        table.add_column(col, no_wrap=col in ("item", "status"), overflow="fold")
    for r in snap.items:
        story = r.kind == "story"
        table.add_row(cell(r.id if story else f"  {r.id}"), cell(r.status, STATUS_COLOURS.get(r.status, "")),
                      cell(r.owner), cell(_age(r.lease_left_s)), cell(r.attempt or ""),
                      cell(f"{r.loops}/3" if r.loops is not None else ""), cell(",".join(r.dependencies)),
                      cell(progress_text(r.progress)), style="bold" if story else "")
    return table


def log_panel(snap: Snapshot) -> Table:
    """The newest ``AGENT_LOG.md`` entries, oldest first."""
    table = Table(title="log", expand=True)
    for col in ("time", "agent", "task", "what"):
        table.add_column(col, overflow="fold")
    for e in snap.log:
        table.add_row(cell(e.time.strftime("%H:%M:%S")), cell(e.agent), cell(e.task), cell(e.what))
    return table


def frame(snap: Snapshot) -> Group:
    """The whole frame: header (sprint, objective, time), agents, items, log."""
    header = Text(snap.sprint, style="bold")
    header.append(f"  {snap.taken_at.strftime('%H:%M:%S')}Z", style="dim")
    parts: list[object] = [header]
    if snap.objective:
        parts.append(Text(snap.objective))
    parts += [agents_panel(snap), items_panel(snap), log_panel(snap)]
    return Group(*parts)  # type: ignore[arg-type]

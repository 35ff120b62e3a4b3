"""One board frame rendered with rich (``oodatcaa watch --once``, and each refresh of ``watch``).

Every cell is a :class:`rich.text.Text` taken literally: ids, owners and log text are data, never markup.
"""

from __future__ import annotations

from rich import box
from rich.console import Group
from rich.table import Table
from rich.text import Text

from oodatcaa.board.jobs import JobRow, sparkline
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
    table = Table(title="agents", expand=True, box=box.SIMPLE_HEAD, pad_edge=False, padding=(0, 1), collapse_padding=True)
    for col in ("owner", "role", "pid", "state", "heartbeat", "item"):
        table.add_column(col, no_wrap=True, overflow="ellipsis")
    for a in snap.agents:
        state = cell("dead", "bold red") if not a.alive else cell("busy", "green") if a.item else cell("idle", "yellow")
        table.add_row(cell(a.owner), cell(a.role), cell(a.pid), state, cell(_age(a.heartbeat_age_s)), cell(a.item))
    if not snap.agents:
        table.add_row(cell("(no agents recorded)", "dim"), *[cell("")] * 5)
    return table


def items_panel(snap: Snapshot) -> Table:
    """Stories (bold) and subtasks (indented): status, owner, lease left, attempt, loops n/3, deps, progress."""
    # no vertical rules: at 80 columns every character goes to the cells
    table = Table(title="stories and subtasks", box=box.SIMPLE_HEAD, pad_edge=False, padding=(0, 1), collapse_padding=True)
    # short columns never wrap (a header cut to "owne/r" reads as noise at 80 columns); the rest is cut
    for col in ("item", "status", "owner", "lease", "try", "loops", "deps", "progress"):
        width = {"item": 10, "progress": 8, "status": 12, "deps": 4}.get(col, len(col))
        most = {"item": 12, "status": 16, "owner": 14, "deps": 12}.get(col)
        table.add_column(col, no_wrap=True, overflow="ellipsis", min_width=width, max_width=most)
    for r in snap.items:
        story = r.kind == "story"
        status = cell(r.status, STATUS_COLOURS.get(r.status, ""))
        if r.awaiting_approval:
            status.append(" (approval)", style="bold magenta")
        table.add_row(cell(r.id if story else f"  {r.id}"), status,
                      cell(r.owner), cell(_age(r.lease_left_s)), cell(r.attempt or ""),
                      cell(f"{r.loops}/{snap.max_loops}" if r.loops is not None else ""), cell(",".join(r.dependencies)),
                      cell(progress_text(r.progress)), style="bold" if story else "")
    return table


def _memory(job: JobRow) -> Text:
    """``0.98/1.00 GB``, red when the peak so far is over the target; ``0.98 GB`` without a target."""
    if job.peak_memory_gb is None:
        return cell("")
    if job.target_gb is None:
        return cell(f"{job.peak_memory_gb:.2f} GB")
    over = job.peak_memory_gb > job.target_gb
    return cell(f"{job.peak_memory_gb:.2f}/{job.target_gb:.2f} GB", "bold red" if over else "green")


def _eta(seconds: float | None) -> str:
    if seconds is None:
        return ""
    minutes, rest = divmod(int(seconds), 60)
    return f"{minutes}m{rest:02d}s"


def jobs_panel(snap: Snapshot) -> Table:
    """Running jobs: step / total, last loss with a sparkline, tokens/s, peak memory against the target, ETA.

    Metrics lines skipped (torn or NaN) are counted in the last column, so a bad file is visible.
    """
    table = Table(title="running jobs", box=box.SIMPLE_HEAD, pad_edge=False, padding=(0, 1), collapse_padding=True)
    for col in ("step", "at", "loss", "trend", "tok/s", "peak mem", "ETA", "note"):
        table.add_column(col, no_wrap=True, overflow="ellipsis", max_width=16 if col in ("trend", "step") else None)
    for job in snap.jobs:
        at = "" if job.step is None else f"{job.step}/{job.total if job.total is not None else '?'}"
        table.add_row(cell(job.step_id), cell(at), cell("" if job.last_loss is None else f"{job.last_loss:.3f}"),
                      cell(sparkline(job.losses, 12), "cyan"),
                      cell("" if job.tokens_per_second is None else f"{job.tokens_per_second:,.0f}"),
                      _memory(job), cell(_eta(job.eta_s)),
                      cell(f"{job.skipped} line(s) skipped" if job.skipped else "", "yellow"))
    if not snap.jobs:
        table.add_row(cell("(no job running)", "dim"), *[cell("")] * 7)
    return table


#: Colour of a criterion's state.
CRITERION_COLOURS = {"met": "green", "unmet": "yellow", "needs_manual": "red", "not checked": "dim"}


def criteria_panel(snap: Snapshot) -> Table:
    """The objective's success criteria (``SC``) and the sprint's exit criteria (``EC``) with their state."""
    table = Table(title="criteria", box=box.SIMPLE_HEAD, pad_edge=False, padding=(0, 1), collapse_padding=True,
                  expand=True)
    table.add_column("id", no_wrap=True)
    table.add_column("state", no_wrap=True)
    table.add_column("criterion", no_wrap=True, overflow="ellipsis", ratio=1)
    for c in snap.criteria:
        first_line = c.text.splitlines()[0] if c.text else ""
        table.add_row(cell(c.id), cell(c.state, CRITERION_COLOURS.get(c.state, "")), cell(first_line))
    if not snap.criteria:
        table.add_row(cell(""), cell(""), cell("(no objective or exit criteria)", "dim"))
    return table


def log_panel(snap: Snapshot) -> Table:
    """The newest ``AGENT_LOG.md`` entries, oldest first."""
    table = Table(title="log", expand=True, box=box.SIMPLE_HEAD, pad_edge=False, padding=(0, 1), collapse_padding=True)
    for col in ("time", "agent", "task", "what"):  # one line per entry: the newest must fit in 24 rows
        table.add_column(col, no_wrap=True, overflow="ellipsis", ratio=3 if col == "what" else None)
    for e in snap.log:
        table.add_row(cell(e.time.strftime("%H:%M:%S")), cell(e.agent), cell(e.task), cell(e.what))
    return table


def frame(snap: Snapshot) -> Group:
    """The whole frame: header (sprint, objective, time), agents, items, running jobs, criteria, log."""
    header = Text(snap.sprint, style="bold")
    header.append(f"  {snap.taken_at.strftime('%H:%M:%S')}Z", style="dim")
    parts: list[object] = [header]
    if snap.objective:  # one line: a long objective message is for `oodatcaa objective`
        parts.append(Text(snap.objective.splitlines()[0], no_wrap=True, overflow="ellipsis"))
    for line in snap.waiting:
        parts.append(Text("waiting for a person: " + line, style="magenta", no_wrap=True, overflow="ellipsis"))
    parts += [agents_panel(snap), items_panel(snap), jobs_panel(snap), criteria_panel(snap), log_panel(snap)]
    return Group(*parts)  # type: ignore[arg-type]

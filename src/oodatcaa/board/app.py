"""The interactive board (Textual): the stories table refreshed once a second from the workspace's files.

Keys: arrows select a row, ``enter`` shows the selected story's Markdown reports (``reports.reports_for``),
``a`` approves the selected story when it awaits approval (``person.approve``, git identity from
``person.person_of``), ``q`` quits. Textual is imported only here.
"""

from __future__ import annotations

from collections.abc import Callable

from rich.text import Text
from textual.app import App, ComposeResult
from textual.containers import VerticalScroll
from textual.screen import Screen
from textual.widgets import DataTable, Footer, Markdown, Static

from oodatcaa.board.frame import agents_panel, criteria_panel, jobs_panel, log_panel
from oodatcaa.board.snapshot import Snapshot, take_snapshot
from oodatcaa.core.store import QueueStore
from oodatcaa.core.workspace import Workspace
from oodatcaa.reports import reports_for


class ReportsScreen(Screen[None]):
    """One story's Markdown reports; ``escape`` or ``q`` goes back."""

    BINDINGS = [("escape", "app.pop_screen", "back"), ("q", "app.pop_screen", "back")]

    def __init__(self, ws: Workspace, task_id: str):
        super().__init__()
        self.ws, self.task_id = ws, task_id

    def compose(self) -> ComposeResult:
        paths = reports_for(self.ws, self.task_id)
        text = "\n\n---\n\n".join(p.read_text(encoding="utf-8") for p in paths) or f"no reports for {self.task_id} yet"
        yield VerticalScroll(Markdown(text))
        yield Footer()


def _at(progress: dict[str, object] | None) -> str:
    """``40/100`` for a running step (the running-jobs panel has its loss, tokens/s and ETA)."""
    if not progress or progress.get("step") is None:
        return ""
    total = progress.get("total")
    return f"{progress['step']}/{total if total is not None else '?'}"


class BoardApp(App[None]):
    """The live board over workspace ``ws``; ``interval_s`` between refreshes (at most 1 s).

    ``source`` takes the snapshot (default: :func:`take_snapshot` of ``ws``); tests pass a fixed one so an
    SVG screenshot of the board can be compared byte for byte.
    """

    BINDINGS = [("q", "quit", "quit"), ("enter", "reports", "reports"), ("r", "reports", "reports (enter)"),
                ("a", "approve", "approve")]
    CSS = """
    #body { height: 1fr; }
    #items { height: auto; max-height: 12; }
    #header, #agents, #jobs, #criteria, #log { height: auto; }
    #message { height: auto; color: $warning; }
    """

    def __init__(self, ws: Workspace, interval_s: float = 1.0, source: Callable[[], Snapshot] | None = None):
        super().__init__()
        self.ws, self.interval_s = ws, min(interval_s, 1.0)
        store = QueueStore.for_workspace(ws)  # one store: each refresh parses only a changed queue file
        self.source = source or (lambda: take_snapshot(ws, store=store))
        self.snapshot: Snapshot | None = None

    def compose(self) -> ComposeResult:
        yield Static(id="header")
        with VerticalScroll(id="body"):  # at 80x24 the panels below the stories scroll
            table: DataTable[str | Text] = DataTable(id="items", cursor_type="row")
            table.add_columns("item", "status", "owner", "lease", "try", "loops", "deps", "at")
            yield table
            yield Static(id="jobs")
            yield Static(id="criteria")
            yield Static(id="agents")
            yield Static(id="log")
        yield Static(id="message")
        yield Footer()

    def on_mount(self) -> None:
        self.query_one("#items", DataTable).focus()  # arrows select stories; tab reaches the scrolling panels
        self.refresh_board()
        self.set_interval(self.interval_s, self.refresh_board)

    def refresh_board(self) -> None:
        """Re-read the files and redraw, keeping the selected row."""
        snap = self.snapshot = self.source()
        header = Text(snap.sprint, style="bold")
        header.append(f"  {snap.taken_at.strftime('%H:%M:%S')}Z", style="dim")
        for line in ([snap.objective.splitlines()[0]] if snap.objective else []) + \
                [f"waiting for a person: {w}" for w in snap.waiting]:
            header.append("\n" + line)
        self.query_one("#header", Static).update(header)
        table = self.query_one("#items", DataTable)
        row = table.cursor_row
        table.clear()
        for r in snap.items:
            status = Text(r.status)
            if r.awaiting_approval:
                status.append(" ⚑appr", style="bold magenta")  # short: the header line names the wait
            table.add_row(r.id if r.kind == "story" else f"  {r.id}", status, r.owner or "",
                          "" if r.lease_left_s is None else f"{int(r.lease_left_s)}s", str(r.attempt or ""),
                          f"{r.loops}/{snap.max_loops}" if r.loops is not None else "", ",".join(r.dependencies),
                          _at(r.progress), key=r.id)
        if snap.items:
            table.move_cursor(row=min(row, len(snap.items) - 1))
        self.query_one("#jobs", Static).update(jobs_panel(snap))
        self.query_one("#criteria", Static).update(criteria_panel(snap))
        self.query_one("#agents", Static).update(agents_panel(snap))
        self.query_one("#log", Static).update(log_panel(snap))

    def selected_story(self) -> str | None:
        """The story of the selected row (a subtask's story), or None with no rows."""
        table = self.query_one("#items", DataTable)
        if self.snapshot is None or not self.snapshot.items:
            return None
        return self.snapshot.items[table.cursor_row].id.split("-")[0]

    def on_data_table_row_selected(self, event: DataTable.RowSelected) -> None:
        """``enter`` on the table (the table takes the key): the selected story's reports."""
        self.action_reports()

    def action_reports(self) -> None:
        story = self.selected_story()
        if story:
            self.push_screen(ReportsScreen(self.ws, story))

    def action_approve(self) -> None:
        from oodatcaa.core.config import load_config
        from oodatcaa.core.errors import OodatcaaError
        from oodatcaa.person import approve, open_store, person_of

        story = self.selected_story()
        message = self.query_one("#message", Static)
        if story is None:
            return
        try:
            config = load_config(self.ws.config_path, self.ws.agents_dir)
            approve(open_store(self.ws), story, person_of(self.ws, config), config, note="approved on the board")
            message.update(f"approved {story}")
        except OodatcaaError as exc:  # not awaiting approval, no git identity, ...: shown, not raised
            message.update(str(exc))
        self.refresh_board()

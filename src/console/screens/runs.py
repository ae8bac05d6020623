"""Every run you started, wherever it lives, with status, duration, final metric and disk use;
`/` filters, `o` changes the order, Enter attaches, `esc` goes back."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.screen import Screen
from textual.widgets import DataTable, Footer, Input, Static

from graftline.console.formats import ago, duration, human_bytes
from graftline.console.messages import OpenRun, RunsListed, ShowLaunch, WorkerFailures

if TYPE_CHECKING:
    from graftline.engine.run import RunDetails, RunInfo

REFRESH = 2.0
SORTS = ("newest", "name", "status", "duration", "disk")
EMPTY = ("No runs yet. Press n to pick a pipeline file and launch it, or in a shell run "
         "`graftline demo` (a tiny offline model, minutes on a CPU) or `graftline init` "
         "(a commented starter pipeline).")


@dataclass(frozen=True)
class Row:
    """One run as the table shows it (read in a worker thread)."""

    path: Path
    run_id: str
    status: str
    stage: str
    progress: str
    duration: float | None
    metric: str
    disk: int
    started: float | None

    def cells(self, now: float) -> tuple[str, ...]:
        return (self.run_id, self.status, self.stage, self.progress,
                duration(self.duration, unknown="—"), self.metric, human_bytes(self.disk),
                ago(now - self.started) if self.started else "—", str(self.path.parent))

    def matches(self, needle: str) -> bool:
        needle = needle.lower()
        return any(needle in text.lower() for text in
                   (self.run_id, self.status, self.stage, self.metric, str(self.path)))


def sort_rows(rows: list[Row], key: str) -> list[Row]:
    if key == "name":
        return sorted(rows, key=lambda r: r.run_id)
    if key == "status":
        return sorted(rows, key=lambda r: (r.status, -(r.started or 0)))
    if key == "duration":
        return sorted(rows, key=lambda r: -(r.duration or 0))
    if key == "disk":
        return sorted(rows, key=lambda r: -r.disk)
    return sorted(rows, key=lambda r: -(r.started or 0))


class RunsScreen(WorkerFailures, Screen[None]):
    BINDINGS: ClassVar = [
        Binding("enter", "attach", "Attach", priority=True),
        Binding("n", "launch", "New run"),
        Binding("l", "lineage", "Lineage"),
        Binding("slash", "filter", "Filter", key_display="/"),
        Binding("o", "sort", "Order"),
        Binding("escape", "back", "Back"),
        Binding("g", "refresh", "Refresh", show=False),
    ]
    DEFAULT_CSS = """
    RunsScreen #runs-filter { display: none; height: 3; }
    RunsScreen #runs-filter.shown { display: block; }
    RunsScreen #runs-empty { padding: 1 2; color: $text-muted; }
    """

    def __init__(self, runs_dir: Path) -> None:
        super().__init__()
        self.runs_dir = Path(runs_dir)
        self.paths: list[Path] = []
        self.rows: list[Row] = []
        self.sort = SORTS[0]
        self.needle = ""
        self.listed = 0  # refreshes applied (tests wait on this)
        self._details: dict[Path, tuple[float, RunDetails]] = {}

    def compose(self) -> ComposeResult:
        yield Static("your runs", id="runs-title", markup=False)
        yield Input(placeholder="filter: part of a run id, status, stage or path; esc clears",
                    id="runs-filter")
        yield DataTable(id="runs", cursor_type="row")
        yield Static("", id="runs-empty", markup=False)
        yield Footer()

    def on_mount(self) -> None:
        table = self.query_one(DataTable)
        for label in ("run", "status", "stage", "progress", "duration", "metric", "disk",
                      "started", "location"):
            table.add_column(label, key=label)
        table.focus()
        self.action_refresh()
        self.set_interval(REFRESH, self.action_refresh)

    # -- reading (a worker thread) ------------------------------------------------------------

    def _row(self, info: RunInfo, now: float) -> Row:
        from graftline.engine.run import run_details

        path = Path(info.path)
        cached = self._details.get(path)
        # a finished run does not change: its disk walk and log tail are read once
        if cached is not None and not info.live:
            details = cached[1]
        else:
            details = run_details(info, now)
            self._details[path] = (now, details)
        progress = info.progress
        return Row(path, info.run_id, info.status, info.stage or "",
                   f"{progress * 100:.0f}%" if progress is not None else "",
                   details.duration, details.metric or "", details.disk_bytes, info.started)

    @work(thread=True, exclusive=True, group="runs", exit_on_error=False)
    def action_refresh(self) -> None:
        from graftline.engine.run import known_runs

        now = time.time()
        try:
            known_runs(self.runs_dir)  # the runs under this directory join the index
            rows = [self._row(info, now) for info in known_runs()]
            problem = None
        except Exception as exc:  # a listing problem must not take the console down
            rows, problem = [], f"cannot list runs: {exc}"
        self.post_message(RunsListed(rows, problem))

    # -- showing ------------------------------------------------------------------------------

    @on(RunsListed)
    def _listed(self, message: RunsListed) -> None:
        self._show(message.rows, message.problem)

    def _show(self, rows: list[Row], problem: str | None = None) -> None:
        self.rows = rows
        table = self.query_one(DataTable)
        cursor = table.cursor_row
        table.clear()
        shown = sort_rows([r for r in rows if not self.needle or r.matches(self.needle)],
                          self.sort)
        self.paths = [r.path for r in shown]
        now = time.time()
        for row in shown:
            table.add_row(*row.cells(now), key=str(row.path))
        if table.row_count:
            table.move_cursor(row=min(max(cursor, 0), table.row_count - 1))
        empty = self.query_one("#runs-empty", Static)
        if not rows:
            empty.update(problem or EMPTY)
        elif not shown:
            empty.update(f"No run matches '{self.needle}'. esc clears the filter.")
        else:
            empty.update("")
        filtered = f", {len(shown)} shown (filter: {self.needle})" if self.needle else ""
        title = self.query_one("#runs-title", Static)
        title.update(problem or f"your runs — {len(rows)} run(s){filtered}, by {self.sort} · "
                     "Enter attaches, / filters, o orders, n starts a new one")
        self.listed += 1

    def action_filter(self) -> None:
        box = self.query_one("#runs-filter", Input)
        box.add_class("shown")
        box.focus()

    def on_input_changed(self, event: Input.Changed) -> None:
        self.needle = event.value.strip()
        self._show(self.rows)

    def on_input_submitted(self, event: Input.Submitted) -> None:
        self.query_one(DataTable).focus()

    def action_sort(self) -> None:
        self.sort = SORTS[(SORTS.index(self.sort) + 1) % len(SORTS)]
        self._show(self.rows)
        self.notify(f"ordered by {self.sort}", timeout=1.5)

    def action_back(self) -> None:
        """esc: first the filter (clear it), then the screen below (if any)."""
        box = self.query_one("#runs-filter", Input)
        if box.has_class("shown"):
            box.value = ""
            box.remove_class("shown")
            self.needle = ""
            self._show(self.rows)
            self.query_one(DataTable).focus()
            return
        if len(self.app.screen_stack) > 2:
            self.app.pop_screen()

    def action_attach(self) -> None:
        if isinstance(self.focused, Input):
            self.query_one(DataTable).focus()
            return
        table = self.query_one(DataTable)
        if not self.paths or table.cursor_row < 0:
            self.notify("No run selected.", severity="warning")
            return
        self.post_message(OpenRun(self.paths[table.cursor_row]))

    def action_launch(self) -> None:
        self.post_message(ShowLaunch())

    def action_lineage(self) -> None:
        from graftline.console.screens.lineage import LineageScreen

        self.app.push_screen(LineageScreen(self.runs_dir))

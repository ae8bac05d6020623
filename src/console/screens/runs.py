"""Every run under the runs directory with its status; Enter attaches."""

from __future__ import annotations

import time
from pathlib import Path
from typing import ClassVar

from textual import work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.screen import Screen
from textual.widgets import DataTable, Footer, Static

from graftline.engine.run import EVENTS

REFRESH = 2.0


def has_runs(runs_dir: Path) -> bool:
    try:
        return any((child / EVENTS).is_file() for child in Path(runs_dir).iterdir())
    except OSError:
        return False


def _age(seconds: float | None) -> str:
    if seconds is None:
        return "—"
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds / size:.0f}{unit} ago"
    return "just now"


class RunsScreen(Screen[None]):
    BINDINGS: ClassVar = [
        Binding("enter", "attach", "Attach", priority=True),
        Binding("n", "launch", "New run"),
        Binding("l", "lineage", "Lineage"),
        Binding("g", "refresh", "Refresh", show=False),
    ]

    def __init__(self, runs_dir: Path) -> None:
        super().__init__()
        self.runs_dir = Path(runs_dir)
        self.paths: list[Path] = []
        self.listed = 0  # refreshes applied (tests wait on this)

    def compose(self) -> ComposeResult:
        yield Static(f"runs in {self.runs_dir.name}/", id="runs-title", markup=False)
        yield DataTable(id="runs", cursor_type="row")
        yield Footer()

    def on_mount(self) -> None:
        table = self.query_one(DataTable)
        for label in ("run", "status", "stage", "progress", "pipeline", "started"):
            table.add_column(label, key=label)
        table.focus()
        self.action_refresh()
        self.set_interval(REFRESH, self.action_refresh)

    @work(thread=True, exclusive=True, group="runs", exit_on_error=False)
    def action_refresh(self) -> None:
        from graftline.engine.run import client

        try:
            runs = client.list_runs(self.runs_dir)
            problem = None
        except Exception as exc:  # the client may not be implemented yet
            runs, problem = [], f"cannot list runs: {exc}"
        self.app.call_from_thread(self._show, runs, problem)

    def _show(self, runs: list, problem: str | None) -> None:  # type: ignore[type-arg]
        table = self.query_one(DataTable)
        cursor = table.cursor_row
        table.clear()
        self.paths = []
        now = time.time()
        for info in runs:
            progress = f"{info.progress * 100:.0f}%" if info.progress is not None else ""
            started = _age(now - info.started) if info.started else "—"
            table.add_row(info.run_id, info.status, info.stage or "", progress,
                          Path(info.pipeline).name if info.pipeline else "", started,
                          key=str(info.path))
            self.paths.append(Path(info.path))
        if table.row_count:
            table.move_cursor(row=min(max(cursor, 0), table.row_count - 1))
        title = self.query_one("#runs-title", Static)
        title.update(problem or f"runs in {self.runs_dir.name}/ — {len(runs)} run(s); "
                     "Enter attaches, n starts a new one")
        self.listed += 1

    def action_attach(self) -> None:
        table = self.query_one(DataTable)
        if not self.paths or table.cursor_row < 0:
            self.notify("No run selected.", severity="warning")
            return
        self.app.attach(self.paths[table.cursor_row])  # type: ignore[attr-defined]

    def action_launch(self) -> None:
        self.app.action_launch()  # type: ignore[attr-defined]

    def action_lineage(self) -> None:
        from graftline.console.screens.lineage import LineageScreen

        self.app.push_screen(LineageScreen(self.runs_dir))

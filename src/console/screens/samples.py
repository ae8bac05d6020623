"""`a` (answers): what the model says to the probes, stage by stage.

Probes down; beside each, the data's own answer when it has one ("expected"); across, the
answers before the first training stage and at the end of each stage (the running stage: its
latest evaluation during training, else its start, until it ends), greedy and bounded, from
the engine's `samples` events (or the summary's copy of them). An answer that differs from the
column before it is marked `*`. Refreshed every second from the dashboard's follower, so the
current stage is live.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import ClassVar

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.screen import Screen
from textual.widgets import DataTable, Footer, Static

from graftline.console.run_view import RunModel, expected_answers, sample_table

CELL = 28  # characters shown per answer (the engine keeps up to 160)


class SamplesScreen(Screen[None]):
    DEFAULT_CSS = """
    SamplesScreen #samples-title { height: auto; padding: 0 1; text-style: bold; }
    SamplesScreen #samples-note { height: auto; padding: 0 1; color: $text-muted; }
    SamplesScreen DataTable { height: 1fr; }
    """
    BINDINGS: ClassVar = [
        Binding("escape", "close", "Back"),
        Binding("a", "close", "Back", show=False),
    ]

    def __init__(self, model: Callable[[], RunModel], lock: threading.Lock, *,
                 ascii_only: bool = False) -> None:
        super().__init__()
        self.model = model
        self.model_lock = lock
        self.ascii_only = ascii_only
        self.shape: tuple[list[str], list[str]] = ([], [])
        self.rows: list[list[tuple[str, bool]]] = []
        self.expected: dict[str, str] = {}

    def compose(self) -> ComposeResult:
        yield Static("samples: what the model answers to the probes, stage by stage",
                     id="samples-title")
        yield DataTable(id="samples", zebra_stripes=True, cursor_type="row")
        yield Static("greedy, up to 12 new tokens; * = changed from the column before; "
                     "`graftline logs RUN --kind samples` prints them whole", id="samples-note")
        yield Footer()

    def on_mount(self) -> None:
        self.refresh_table()
        self.set_interval(1.0, self.refresh_table)

    def refresh_table(self) -> None:
        with self.model_lock:
            model = self.model()
            titles, probes, rows = sample_table(model)
            expected = expected_answers(model)
        if (titles, probes) == self.shape and rows == self.rows and expected == self.expected:
            return
        table = self.query_one(DataTable)
        table.clear(columns=True)
        table.add_column("probe", key="probe")
        if expected:  # the data's own answer, where it has one
            table.add_column("expected", key="expected")
        for title in titles:
            table.add_column(title, key=title)
        mark = "*"
        for probe, cells in zip(probes, rows, strict=True):
            shown = [Text(f"{mark} {answer}"[:CELL + 2], style="bold yellow") if changed
                     else Text(answer[:CELL]) for answer, changed in cells]
            want = [Text(expected.get(probe, "—")[:CELL], style="green")] if expected else []
            table.add_row(Text(probe[:CELL], style="bold"), *want, *shown)
        if not probes:
            self.query_one("#samples-title", Static).update(
                "samples: none yet (a training stage writes them when it starts, at every "
                "evaluation (train.eval_steps) and when it ends)")
        self.shape, self.rows, self.expected = (titles, probes), rows, expected

    def action_close(self) -> None:
        self.app.pop_screen()

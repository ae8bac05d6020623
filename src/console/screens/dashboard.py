"""The dashboard: one run, live. Pipeline, chart, resources, checks and log on one screen."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import ClassVar

from textual import work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.message import Message
from textual.screen import Screen
from textual.widgets import DataTable, Footer

from graftline.console.follower import Follower
from graftline.console.screens.confirm import ConfirmModal
from graftline.console.widgets.chart import MetricChart
from graftline.console.widgets.checks_panel import ChecksPanel
from graftline.console.widgets.log_tail import LogTail
from graftline.console.widgets.pipeline_table import PipelineTable
from graftline.console.widgets.resource_gauges import ResourceGauges
from graftline.console.widgets.run_header import RunHeader

EXPORTABLE = ("adapter", "merged", "combined", "export")


class RunUpdated(Message):
    """The follower folded new events (coalesced: a few of these a second at most)."""


class DashboardScreen(Screen[None]):
    HORIZONTAL_BREAKPOINTS: ClassVar = [(0, "-narrow"), (110, "-wide")]
    VERTICAL_BREAKPOINTS: ClassVar = [(0, "-short"), (34, "-tall")]
    BINDINGS: ClassVar = [
        Binding("m", "next_metric", "Metric"),
        Binding("M", "next_metric(-1)", "Prev metric", show=False),
        Binding("l", "lineage", "Lineage"),
        Binding("e", "export", "Export"),
        Binding("p", "pause", "Pause/resume"),
        Binding("s", "stop", "Stop…"),
        Binding("r", "runs", "Runs"),
    ]

    def __init__(self, run_dir: Path, *, ascii_only: bool = False) -> None:
        super().__init__()
        self.run_dir = Path(run_dir)
        self.ascii_only = ascii_only
        self.follower = Follower(self.run_dir, self._notify)
        self.updates = 0  # how many coalesced updates the UI has applied (tests wait on this)
        self.selected_stage: str | None = None

    @property
    def model_lock(self) -> threading.Lock:
        return self.follower.lock

    @property
    def loaded(self) -> bool:
        return self.updates > 0

    def compose(self) -> ComposeResult:
        yield RunHeader(id="header")
        with Horizontal(id="top"):
            yield PipelineTable(ascii_only=self.ascii_only, id="pipeline")
            with Vertical(id="side"):
                yield ResourceGauges(ascii_only=self.ascii_only, id="gauges")
                yield ChecksPanel(ascii_only=self.ascii_only, id="checks")
        yield MetricChart(ascii_only=self.ascii_only, id="chart")
        yield LogTail(root=self.run_dir.parent, id="log")
        yield Footer()

    def on_mount(self) -> None:
        self.query_one(PipelineTable).focus()
        self._follow()

    def on_unmount(self) -> None:
        self.follower.stop()

    @work(thread=True, exclusive=True, group="follow", exit_on_error=False)
    def _follow(self) -> None:
        self.follower.run()

    def _notify(self) -> None:
        self.post_message(RunUpdated())

    def on_run_updated(self, _message: RunUpdated) -> None:
        with self.follower.lock:
            model = self.follower.model
            self.query_one(RunHeader).update_from(model, self.follower.engine)
            self.query_one(PipelineTable).update_from(model)
            self.query_one(ResourceGauges).update_from(model)
            checks = self.query_one(ChecksPanel)
            checks.stage = self.selected_stage
            checks.update_from(model)
            self.query_one(MetricChart).update_from(model)
            self.query_one(LogTail).update_from(model)
        self.updates += 1

    def on_data_table_row_highlighted(self, event: DataTable.RowHighlighted) -> None:
        if event.row_key is None or event.row_key.value is None:
            return
        self.selected_stage = str(event.row_key.value)
        with self.follower.lock:
            checks = self.query_one(ChecksPanel)
            checks.stage = self.selected_stage
            checks.update_from(self.follower.model)

    # -- actions ---------------------------------------------------------------------------

    def action_next_metric(self, step: int = 1) -> None:
        chart = self.query_one(MetricChart)
        metric = chart.cycle_metric(step)
        with self.follower.lock:
            chart.update_from(self.follower.model)
        self.notify(f"chart: {metric}", timeout=1.5)

    def action_lineage(self) -> None:
        from graftline.console.screens.lineage import LineageScreen

        self.app.push_screen(LineageScreen(self.run_dir, ascii_only=self.ascii_only))

    def action_runs(self) -> None:
        self.app.action_runs()  # type: ignore[attr-defined]

    def selected_checkpoint(self) -> Path | None:
        """The newest exportable checkpoint of the selected stage (else of the latest stage)."""
        with self.follower.lock:
            stages = list(self.follower.model.stages)
            order = [s for s in stages if s.name == self.selected_stage] + stages[::-1]
            for stage in order:
                for saved in reversed(stage.checkpoints):
                    if saved.get("kind") in EXPORTABLE and saved.get("path"):
                        path = Path(str(saved["path"]))
                        return path if path.is_absolute() else self.run_dir / path
        return None

    def action_export(self) -> None:
        from graftline.console.screens.export import ExportModal

        checkpoint = self.selected_checkpoint()
        if checkpoint is None:
            self.notify("No exportable checkpoint yet: a stage must finish first.",
                        severity="warning")
            return
        self.app.push_screen(ExportModal(checkpoint, root=self.run_dir.parent))

    def action_pause(self) -> None:
        engine = self.follower.engine
        command = "resume" if engine is not None and engine.status == "paused" else "pause"
        self._send(command)

    def action_stop(self) -> None:
        if self.follower.model.status in ("finished", "failed", "stopped"):
            self.notify("This run has already ended.", severity="information")
            return

        def answered(stop: bool | None) -> None:
            if stop:
                self._send("stop")
            else:
                self.notify("Not stopped: training continues.")

        self.app.push_screen(ConfirmModal(
            f"Stop run {self.follower.model.run or self.run_dir.name}?",
            "The engine saves a checkpoint and stops after the current step. "
            "`graftline resume` can continue it later.", confirm_label="Stop the run"), answered)

    @work(thread=True, group="control", exit_on_error=False)
    def _send(self, command: str) -> None:
        from graftline.engine.run import client

        try:
            reply = client.send_command(self.run_dir, command)
        except Exception as exc:  # the engine may be gone, or the client not there yet
            self.app.call_from_thread(self.notify, f"{command} failed: {exc}", severity="error")
            return
        ok = reply.get("ok", True) if isinstance(reply, dict) else True
        text = f"{command}: {reply.get('message', 'sent') if isinstance(reply, dict) else reply}"
        self.app.call_from_thread(self.notify, text, severity="information" if ok else "error")

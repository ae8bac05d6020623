"""The dashboard: one run, live. Pipeline, chart, resources, checks and log on one screen.

The pipeline's cursor is the screen's one selection: it follows the running stage (the final
model's stage once the run has ended) until the user moves it, and the checks panel and `e`
read it. `e` on a followed cursor exports the pipeline's final model.
"""

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
from graftline.console.messages import ShowRuns, WorkerFailures
from graftline.console.screens.confirm import ConfirmModal
from graftline.console.stage_view import EXPORTABLE, StageView
from graftline.console.widgets.chart import MetricChart
from graftline.console.widgets.checks_panel import ChecksPanel
from graftline.console.widgets.log_tail import LogTail
from graftline.console.widgets.pipeline_table import PipelineTable
from graftline.console.widgets.resource_gauges import ResourceGauges
from graftline.console.widgets.run_header import RunHeader

__all__ = ["EXPORTABLE", "DashboardScreen", "RunUpdated"]

ZOOMS = ("", "chart", "log")


class RunUpdated(Message):
    """The follower folded new events (coalesced: a few of these a second at most)."""


class DashboardScreen(WorkerFailures, Screen[None]):
    # Textual declares these as (overridable) instance attributes, not ClassVars
    HORIZONTAL_BREAKPOINTS = [(0, "-narrow"), (110, "-wide"), (180, "-huge")]  # noqa: RUF012
    VERTICAL_BREAKPOINTS = [(0, "-short"), (34, "-tall"), (48, "-deep")]  # noqa: RUF012
    # Order is the footer's priority: at 80 columns only the first few fit.
    BINDINGS: ClassVar = [
        Binding("q", "app.detach", "Detach"),
        Binding("question_mark", "app.help", "Help", key_display="?"),
        Binding("e", "export", "Export"),
        Binding("l", "lineage", "Lineage"),
        Binding("m", "next_metric", "Metric"),
        Binding("p", "pause", "Pause"),
        Binding("z", "zoom", "Zoom"),
        Binding("c", "toggle_side", "Panels"),
        Binding("s", "stop", "Stop…"),
        Binding("R", "resume", "Resume run"),
        Binding("f", "follow", "Follow"),
        Binding("S", "smooth", "Smooth"),
        Binding("r", "runs", "Runs"),
        Binding("M", "next_metric(-1)", "Prev metric", show=False),
        Binding("a", "samples", "Samples", show=False),
    ]

    def __init__(self, run_dir: Path, *, ascii_only: bool = False) -> None:
        super().__init__()
        self.run_dir = Path(run_dir)
        self.ascii_only = ascii_only
        self.follower = Follower(self.run_dir, self._notify)
        self.updates = 0  # how many coalesced updates the UI has applied (tests wait on this)
        self.selected_stage: str | None = None
        self.zoom = ""

    @property
    def model_lock(self) -> threading.Lock:
        return self.follower.lock

    @property
    def loaded(self) -> bool:
        return self.updates > 0

    @property
    def following(self) -> bool:
        return self.query_one(PipelineTable).following

    def compose(self) -> ComposeResult:
        yield RunHeader(ascii_only=self.ascii_only, id="header")
        with Horizontal(id="top"):
            yield PipelineTable(ascii_only=self.ascii_only, id="pipeline")
            with Vertical(id="side"):
                yield ResourceGauges(ascii_only=self.ascii_only, id="gauges")
                yield ChecksPanel(ascii_only=self.ascii_only, root=self.run_dir.parent, id="checks")
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
            table = self.query_one(PipelineTable)
            table.update_from(model)
            self.selected_stage = table.selected_stage
            self.query_one(ResourceGauges).update_from(model)
            checks = self.query_one(ChecksPanel)
            checks.stage = self.selected_stage
            checks.update_from(model)
            self.query_one(MetricChart).update_from(model)
            self.query_one(LogTail).update_from(model)
        self._side_hint()
        self.updates += 1

    def on_data_table_row_highlighted(self, event: DataTable.RowHighlighted) -> None:
        if event.row_key is None or event.row_key.value is None:
            return
        self.selected_stage = str(event.row_key.value)
        with self.follower.lock:
            checks = self.query_one(ChecksPanel)
            checks.stage = self.selected_stage
            checks.update_from(self.follower.model)

    # -- layout ----------------------------------------------------------------------------

    def side_shown(self) -> bool:
        return self.query_one("#side").display

    def _side_hint(self) -> None:
        """A hidden panel is said so, with its key, where the eye goes (the log's title)."""
        log = self.query_one(LogTail)
        hidden = [] if self.side_shown() else ["resources", "checks"]
        if self.zoom:
            hidden = ["others"]
        subtitle = (f"{' & '.join(hidden)} hidden: "
                    f"{'z' if self.zoom else 'c'} shows") if hidden else ""
        if log.border_subtitle != subtitle:  # a set repaints the log, even to the same text
            log.border_subtitle = subtitle

    def action_toggle_side(self) -> None:
        self.toggle_class("-side-toggled")
        self.call_after_refresh(self._side_hint)

    def action_zoom(self) -> None:
        """Cycle: everything → chart alone → log alone → everything (as btop and k9s do)."""
        self.remove_class(*(f"-zoom-{z}" for z in ZOOMS if z))
        self.zoom = ZOOMS[(ZOOMS.index(self.zoom) + 1) % len(ZOOMS)]
        if self.zoom:
            self.add_class(f"-zoom-{self.zoom}")
        self.call_after_refresh(self._side_hint)
        self.notify(f"zoom: {self.zoom or 'off'}", timeout=1.5)

    def action_follow(self) -> None:
        table = self.query_one(PipelineTable)
        with self.follower.lock:
            table.follow(self.follower.model)
        self.notify("following the run", timeout=1.5)

    # -- actions ---------------------------------------------------------------------------

    def action_next_metric(self, step: int = 1) -> None:
        chart = self.query_one(MetricChart)
        metric = chart.cycle_metric(step)
        with self.follower.lock:
            chart.update_from(self.follower.model)
        self.notify(f"chart: {metric}", timeout=1.5)

    def action_smooth(self) -> None:
        chart = self.query_one(MetricChart)
        weight = chart.cycle_smoothing()
        with self.follower.lock:
            chart.update_from(self.follower.model)
        self.notify(f"smoothing: {weight:.2f}" if weight else "smoothing: off", timeout=1.5)

    def action_lineage(self) -> None:
        from graftline.console.screens.lineage import LineageScreen

        self.app.push_screen(LineageScreen(self.run_dir, ascii_only=self.ascii_only))

    def action_samples(self) -> None:
        from graftline.console.screens.samples import SamplesScreen

        self.app.push_screen(SamplesScreen(lambda: self.follower.model, self.follower.lock,
                                           ascii_only=self.ascii_only))

    def action_runs(self) -> None:
        self.post_message(ShowRuns())

    def _path(self, saved: dict[str, object]) -> Path:
        path = Path(str(saved["path"]))
        return path if path.is_absolute() else self.run_dir / path

    def export_choice(self) -> tuple[Path, str] | None:
        """What `e` exports and why: the pipeline's final model while the cursor follows the
        run; the selected stage's checkpoint once the user has put the cursor on one."""
        with self.follower.lock:
            model = self.follower.model
            chosen: StageView | None = None
            if not self.following:
                chosen = next((s for s in model.stages if s.name == self.selected_stage), None)
            if chosen is not None and chosen.exportable is not None:
                return self._path(chosen.exportable), f"stage {chosen.name}"
            final = model.final_checkpoint()
            if final is None:
                return None
            stage, saved = final
            ended = model.status == "finished"
            what = "the pipeline's final model" if ended else "the newest model so far"
            return self._path(saved), f"{what} (stage {stage.name})"

    def action_export(self) -> None:
        from graftline.console.screens.export import ExportedModel, ExportModal

        choice = self.export_choice()
        if choice is None:
            self.notify("No exportable checkpoint yet: a stage must finish first.",
                        severity="warning")
            return
        checkpoint, why = choice
        # the pipeline's export stage wrote it already: show that model, and export its source
        # again (other formats, another dtype) into a new directory
        exported = ExportedModel.read(checkpoint)
        if exported is not None:
            checkpoint = exported.source or checkpoint
            why = f"{why}, again"
        self.app.push_screen(ExportModal(checkpoint, root=self.run_dir.parent, why=why,
                                         exported=exported, dtype=self._export_dtype()))

    def _export_dtype(self) -> str | None:
        """The dtype the pipeline's export stage used, the default of any export from here."""
        with self.follower.lock:
            for stage in self.follower.model.stages:
                for saved in stage.checkpoints:
                    if saved.get("kind") == "export" and saved.get("path"):
                        from graftline.console.screens.export import ExportedModel

                        found = ExportedModel.read(self._path(saved))
                        if found is not None and found.dtype:
                            return found.dtype
        return None

    def action_pause(self) -> None:
        with self.follower.lock:
            status = self.follower.model.run_status()
        if status == "paused":
            self._send("resume")
        elif status in ("running", "waiting"):
            self._send("pause")
        elif status == "finished":
            self.notify("This run has finished: there is nothing to pause.")
        else:
            self.notify(f"This run is {status}: nothing to pause. R resumes it from its last "
                        "checkpoint.")

    def action_resume(self) -> None:
        with self.follower.lock:
            status = self.follower.model.run_status()
        if status == "paused":
            self._send("resume")
            return
        if status in ("running", "waiting"):
            self.notify("This run is running already.")
            return
        if status == "finished":
            self.notify("This run has finished: nothing to resume.")
            return

        def answered(go: bool | None) -> None:
            if go:
                self._resume()

        self.app.push_screen(ConfirmModal(
            f"Resume run {self.follower.model.run or self.run_dir.name}?",
            "A new engine continues from the last complete checkpoint, with optimizer state; "
            "stages done earlier are kept.", confirm_label="Resume"), answered)

    @work(thread=True, group="control", exit_on_error=False, description="resume")
    def _resume(self) -> None:
        """A failure is told by `WorkerFailures` ("resume failed: …" with its fix)."""
        from graftline.console.reaper import reap_later
        from graftline.engine.run import resume_run

        pid = resume_run(self.run_dir)
        reap_later(pid)
        self.notify(f"resumed: engine pid {pid}")  # notify is thread-safe

    def action_stop(self) -> None:
        if self.follower.model.run_status() in ("finished", "failed", "stopped", "crashed"):
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
            "R (or `graftline resume`) continues it later.", confirm_label="Stop the run"),
            answered)

    @work(thread=True, group="control", exit_on_error=False)
    def _send(self, command: str) -> None:
        from graftline.engine.common import GraftlineError
        from graftline.engine.run import send_command

        try:
            reply = send_command(self.run_dir, command)
        except GraftlineError as exc:  # the engine is gone or refused: its socket says which
            self.notify(f"{command} failed: {exc}", severity="error")  # thread-safe
            return
        ok = reply.get("ok", True) if isinstance(reply, dict) else True
        text = f"{command}: {reply.get('message', 'sent') if isinstance(reply, dict) else reply}"
        self.notify(text, severity="information" if ok else "error")

"""Health-check results, with each check's message, for one stage: the stage the pipeline's
cursor points at (which follows the running stage until the user moves it). Scrolls: a DPO
stage runs eight checks and the panel shows six at 120×40."""

from __future__ import annotations

from pathlib import Path

from rich.text import Text
from textual.app import ComposeResult
from textual.containers import VerticalScroll

from graftline.console.formats import shorten_paths
from graftline.console.run_view import RunModel
from graftline.console.widgets.quiet_static import QuietStatic

MARK = {"pass": ("✓", "green"), "warn": ("!", "yellow"), "fail": ("✗", "bold red")}
MARK_ASCII = {"pass": ("ok", "green"), "warn": ("!!", "yellow"), "fail": ("XX", "bold red")}


class ChecksPanel(VerticalScroll):
    DEFAULT_CSS = """
    ChecksPanel { height: auto; max-height: 10; border: round $panel-lighten-2; padding: 0 1; }
    ChecksPanel > QuietStatic { height: auto; }
    """

    def __init__(self, *, ascii_only: bool = False, root: Path | None = None,
                 id: str | None = None) -> None:
        super().__init__(id=id)
        self.ascii_only = ascii_only
        self.root = root  # paths under it (the runs folder) are shown relative to it
        self.stage: str | None = None  # None: the current stage, else the last one
        self.border_title = "checks"
        self.lines: list[Text] = []

    def compose(self) -> ComposeResult:
        yield QuietStatic("", id="checks-body")

    def show(self, content: Text) -> None:
        if self.is_mounted:
            self.query_one(QuietStatic).show(content)

    def update_from(self, model: RunModel) -> None:
        marks = MARK_ASCII if self.ascii_only else MARK
        stage = next((s for s in model.stages if s.name == self.stage), None)
        if stage is None:
            stage = model.current_stage or (model.stages[-1] if model.stages else None)
        if stage is None:
            self.show(Text("no checks yet", style="dim"))
            return
        passed = sum(c.status == "pass" for c in stage.checks)
        count = f" {passed}/{len(stage.checks)} pass" if stage.checks else ""
        title = f"checks · {stage.name}{count}"
        if self.border_title != title:  # a set repaints, even to the same text
            self.border_title = title
        if not stage.checks:
            self.lines = []
            self.show(Text("no checks yet" if stage.status in ("pending", "running")
                           else "no checks for this stage", style="dim"))
            return
        lines = []
        for check in stage.checks:
            glyph, style = marks.get(check.status, ("?", ""))
            line = Text.assemble((glyph, style), " ", (check.name, "bold"))
            if check.message:
                line.append(f"  {shorten_paths(check.message, self.root)}",
                            style=style if check.status != "pass" else "dim")
            lines.append(line)
        self.lines = lines
        self.show(Text("\n").join(lines))

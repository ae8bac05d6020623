"""Health-check results for the selected stage (or, with none selected, every failing check)."""

from __future__ import annotations

from rich.text import Text

from graftline.console.run_view import RunModel
from graftline.console.widgets.quiet_static import QuietStatic

MARK = {"pass": ("✓", "green"), "warn": ("!", "yellow"), "fail": ("✗", "bold red")}
MARK_ASCII = {"pass": ("ok", "green"), "warn": ("!!", "yellow"), "fail": ("XX", "bold red")}


class ChecksPanel(QuietStatic):
    DEFAULT_CSS = """
    ChecksPanel { height: auto; border: round $panel-lighten-2; padding: 0 1; }
    """

    def __init__(self, *, ascii_only: bool = False, id: str | None = None) -> None:
        super().__init__("", id=id)
        self.ascii_only = ascii_only
        self.stage: str | None = None
        self.border_title = "checks"

    def update_from(self, model: RunModel) -> None:
        marks = MARK_ASCII if self.ascii_only else MARK
        stage = next((s for s in model.stages if s.name == self.stage), None)
        if stage is None:
            stage = model.current_stage or (model.stages[-1] if model.stages else None)
        if stage is None:
            self.show(Text("no checks yet", style="dim"))
            return
        self.border_title = f"checks · {stage.name}"
        if not stage.checks:
            self.show(Text("no checks yet" if stage.status in ("pending", "running")
                             else "no checks for this stage", style="dim"))
            return
        lines = []
        for check in stage.checks:
            glyph, style = marks.get(check.status, ("?", ""))
            line = Text.assemble((glyph, style), " ", (check.name, "bold"))
            if check.status != "pass":
                line.append(f" {check.message}", style=style)
            lines.append(line)
        self.show(Text("\n").join(lines))

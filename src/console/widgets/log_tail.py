"""The last lines of the run's log: stage boundaries, checkpoints, warnings and errors."""

from __future__ import annotations

from pathlib import Path

from rich.text import Text
from textual.widget import Widget

from graftline.console.formats import log_stamp, shorten_paths
from graftline.console.run_view import RunModel
from graftline.console.stage_view import LogLine

LEVEL_STYLE = {"warning": "yellow", "error": "bold red", "info": ""}


class LogTail(Widget):
    DEFAULT_CSS = """
    LogTail { height: 8; border: round $panel-lighten-2; padding: 0 1; }
    """

    def __init__(self, *, root: Path | None = None, id: str | None = None) -> None:
        super().__init__(id=id)
        self.root = root  # paths under it are shown relative to it
        self.lines: list[LogLine] = []
        self.border_title = "log"

    def update_from(self, model: RunModel) -> None:
        tail = list(model.log)[-100:]
        if tail != self.lines:
            self.lines = tail
            self.refresh()

    def render(self) -> Text:
        height = max(1, self.content_size.height)
        out = Text(no_wrap=True, overflow="ellipsis")
        shown = self.lines[-height:]
        if not shown:
            return Text("nothing logged yet", style="dim")
        for index, line in enumerate(shown):
            stamp = log_stamp(line.time)
            if index:
                out.append("\n")
            out.append(stamp, style="dim")
            if line.level in ("warning", "error"):
                out.append(f"{line.level.upper()} ", style=LEVEL_STYLE[line.level])
            out.append(shorten_paths(line.text, self.root),
                       style=LEVEL_STYLE.get(line.level, ""))
        return out

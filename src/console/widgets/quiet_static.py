"""A Static that ignores an update to what it already shows.

Textual repaints (and re-lays out) a Static on every `update()`; the dashboard hands every panel
the whole model twice a second, and most panels have not changed. Skipping those keeps an
attached console at a few percent of a core.
"""

from __future__ import annotations

from rich.text import Text
from textual.widgets import Static


class QuietStatic(Static):
    _shown: Text | None = None

    def show(self, content: Text) -> None:
        if content != self._shown:
            self._shown = content
            self.update(content)

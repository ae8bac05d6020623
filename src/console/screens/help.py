"""`?`: every key of the screen below, and what the console will never do on its own."""

from __future__ import annotations

from typing import ClassVar

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import VerticalScroll
from textual.screen import ModalScreen, Screen
from textual.widgets import Static

LEGEND = (
    "Rows: ▶ running · ‖ paused (p continues) · ✗ crashed (R resumes from the last checkpoint)\n"
    "· ■ stopped on request · ✓ done earlier (complete before a resume, kept).\n"
    "The cursor follows the running stage; move it to pick another, f follows again. e exports\n"
    "the pipeline's final model while following, else the stage under the cursor.\n"
    "Chart: by stage, each stage's own metric on its own scale (m cycles to one metric over the\n"
    "whole run, ◆ = evaluation points); S smooths. z zooms chart / log; c shows or hides the\n"
    "resources and checks panels. ETA: each stage at its own kind's measured rate."
)

PROMISE = (
    "q detaches: training keeps running in its own process; re-attach with `graftline attach`.\n"
    "Only an explicit, confirmed stop (s) ends a run. Cleanup and export always show a plan and\n"
    "ask first. Ctrl+P opens the command palette."
)


class HelpScreen(ModalScreen[None]):
    DEFAULT_CSS = """
    HelpScreen { align: center middle; }
    HelpScreen > VerticalScroll {
        width: 76; max-width: 95%; height: auto; max-height: 90%; border: round $primary;
        background: $surface; padding: 0 1;
    }
    """
    BINDINGS: ClassVar = [Binding("escape,question_mark,q", "dismiss", "Close")]

    def __init__(self, below: Screen) -> None:
        super().__init__()
        self._below = below

    def compose(self) -> ComposeResult:
        rows = []
        seen: set[str] = set()
        bindings = list(self._below.BINDINGS) + list(self.app.BINDINGS)
        for binding in bindings:
            if not isinstance(binding, Binding) or not binding.description:
                continue
            if binding.description in seen:
                continue
            seen.add(binding.description)
            keys = binding.key_display or binding.key
            rows.append(f"  {keys:<12} {binding.description}")
        with VerticalScroll():
            yield Static(f"Keys — {self._below.__class__.__name__.removesuffix('Screen')}",
                         classes="title", markup=False)
            # the promise first: at 80×24 it must be on screen without scrolling
            yield Static(PROMISE + "\n", markup=False)
            yield Static("\n".join(rows), markup=False)
            if self._below.__class__.__name__ == "DashboardScreen":
                yield Static("\n" + LEGEND, markup=False)

    async def action_dismiss(self, result: None = None) -> None:
        self.dismiss(result)

"""`?`: every key of the screen below, each with a sentence, and what the console will never do
on its own. The text is laid out by a two-column table, so it wraps to the terminal's width
instead of at line breaks written into the source."""

from __future__ import annotations

from typing import ClassVar

from rich.table import Table
from rich.text import Text
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
    "q detaches: training keeps running in its own process; re-attach with `graftline attach` "
    "from any directory. Only an explicit, confirmed stop (s) ends a run. Cleanup and export "
    "always show a plan and ask first. Ctrl+P opens the command palette."
)

# What each action does, in a sentence. Keyed by (screen, action) where one key means different
# things on different screens, else by action.
SENTENCES: dict[str, str] = {
    "detach": "leave the console; training keeps running in its own process.",
    "help": "show this list of keys.",
    "samples": "open the Samples view: what the model answers to the probes before the first "
               "stage and at the end of each, a changed answer marked.",
    "cycle_theme": "switch to the next theme (dark, light, low-colour, then yours); the choice "
                   "is remembered for the next time.",
    "next_metric": "show the next metric on the chart: loss, margins, reward, KL, learning "
                   "rate, grad norm.",
    "next_metric(-1)": "show the previous metric on the chart.",
    "lineage": "open the checkpoint lineage: what each checkpoint was made from, what needs it, "
               "and how big it is.",
    "export": "export the selected checkpoint as a complete, verified model directory (a plan "
              "is shown first).",
    "pause": "pause the run at the next step, or resume a paused run.",
    "stop": "stop the run after a confirmation; it saves a checkpoint first and `graftline "
            "resume` continues it.",
    "runs": "list every run you started, wherever it lives.",
    "zoom": "zoom the chart to the whole screen, then the log, then back to the dashboard.",
    "toggle_side": "show or hide the resources and checks panels (the log says when they are "
                   "hidden).",
    "Dashboard.resume": "resume a stopped, failed or crashed run from its last checkpoint, after "
                        "a confirmation.",
    "follow": "let the cursor and the checks panel follow the running stage again.",
    "smooth": "smooth the chart's curves (off, 0.6, 0.9), as TensorBoard's slider does.",
    "Launch.launch": "launch the selected pipeline in the background, after a rehearsal on a "
                     "tiny twin unless R turned it off.",
    "Runs.launch": "pick a pipeline file and start a new run.",
    "toggle_rehearse": "turn the rehearsal before launching on or off.",
    "edit": "open the selected pipeline file in $EDITOR; it is validated again when the "
            "editor closes.",
    "starter": "write a commented starter pipeline.toml here, on the offline toy model, with "
               "small datasets beside it.",
    "Launch.rescan": "look for pipeline files in this folder again.",
    "Lineage.rescan": "read the checkpoints from disk again.",
    "back": "go back: leave the current mode (cleanup, a filter) first, then the screen.",
    "cleanup_mode": "enter cleanup mode: choose what to keep and see what a cleanup would "
                    "delete; nothing a kept checkpoint needs is ever deleted.",
    "toggle_keep": "in cleanup mode, keep or stop keeping the selected checkpoint (and, with it, "
                   "what it needs).",
    "plan": "in cleanup mode, show the plan: what goes, what stays and why, and the bytes "
            "reclaimed.",
    "delete": "in cleanup mode, delete what the plan lists, after a confirmation.",
    "attach": "open the selected run's dashboard: its whole history, then live.",
    "filter": "filter the list by part of a run id, status, stage or path; esc clears it.",
    "sort": "order the list by newest, name, status, duration or disk use.",
    "refresh": "read the runs again now (they refresh every two seconds anyway).",
    "answer(False)": "cancel: nothing is changed.",
    "answer(True)": "confirm.",
    "close": "close this dialog; nothing is exported.",
    "start": "start the export as planned.",
}

# Keys that are not bindings of the screen but of the widgets on it.
NAVIGATION: dict[str, list[tuple[str, str, str]]] = {
    "Dashboard": [("↑ ↓", "Stage", "select a stage in the pipeline table; the details follow.")],
    "Lineage": [("↑ ↓", "Move", "move through the checkpoint tree."),
                ("→ ← Enter", "Open/close", "Enter or → expands a checkpoint's children, "
                                            "← collapses them.")],
    "Runs": [("↑ ↓", "Move", "move through the runs; Enter attaches to the selected one.")],
    "Launch": [("↑ ↓", "Pick", "pick a pipeline file; it is validated and planned at once.")],
}


def sentence(screen: str, action: str, description: str) -> str:
    action = action.removeprefix("app.")  # a screen's binding to an app action reads the same
    return SENTENCES.get(f"{screen}.{action}") or SENTENCES.get(action) or \
        f"{description.rstrip('…').lower()}."


class HelpScreen(ModalScreen[None]):
    DEFAULT_CSS = """
    HelpScreen { align: center middle; }
    HelpScreen > VerticalScroll {
        width: 90; max-width: 95%; height: auto; max-height: 90%; border: round $primary;
        background: $surface; padding: 0 1;
    }
    """
    BINDINGS: ClassVar = [Binding("escape,question_mark,q", "dismiss", "Close")]

    def __init__(self, below: Screen) -> None:
        super().__init__()
        self._below = below

    def rows(self) -> list[tuple[str, str, str]]:
        """(keys, name, sentence) for every key of the screen below and of the app."""
        screen = self._below.__class__.__name__.removesuffix("Screen")
        rows = list(NAVIGATION.get(screen, []))
        seen: set[str] = set()
        for binding in list(self._below.BINDINGS) + list(self.app.BINDINGS):
            if not isinstance(binding, Binding) or not binding.description:
                continue
            if binding.action in seen:
                continue
            seen.add(binding.action)
            keys = binding.key_display or binding.key.replace("question_mark", "?")
            rows.append((keys, binding.description,
                         sentence(screen, binding.action, binding.description)))
        return rows

    def compose(self) -> ComposeResult:
        table = Table(box=None, show_header=False, padding=(0, 1), expand=True)
        table.add_column("keys", no_wrap=True, style="bold")
        table.add_column("what", ratio=1)
        for keys, name, text in self.rows():
            line = Text()
            line.append(name, style="bold")
            line.append(f": {text}")
            table.add_row(keys, line)
        with VerticalScroll():
            yield Static(f"Keys — {self._below.__class__.__name__.removesuffix('Screen')}",
                         classes="title", markup=False)
            # the promise first: at 80×24 it must be on screen without scrolling
            yield Static(PROMISE + "\n", markup=False)
            yield Static(table)
            if self._below.__class__.__name__ == "DashboardScreen":
                yield Static("\n" + LEGEND, markup=False)

    async def action_dismiss(self, result: None = None) -> None:
        self.dismiss(result)

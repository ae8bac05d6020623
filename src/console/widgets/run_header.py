"""The one-line run header: name, status, elapsed, ETA, throughput, and the way out of a stop."""

from __future__ import annotations

import time

from rich.text import Text

from graftline.console.follower import EngineState
from graftline.console.run_view import RunModel, human_seconds
from graftline.console.widgets.quiet_static import QuietStatic

STATUS_STYLE = {
    "running": "bold green", "paused": "bold yellow", "finished": "bold blue",
    "failed": "bold red", "crashed": "bold red", "stopped": "bold yellow", "waiting": "dim",
}
# What a user can do next, by status: the header says it where they look first.
HINT = {
    "paused": "p continues",
    "crashed": "R resumes from the last checkpoint",
    "stopped": "R resumes",
    "failed": "fix the cause, then R resumes",
}


def run_status(model: RunModel, engine: EngineState | None) -> str:
    """Events say what happened; the engine's state adds what events cannot (paused, dead)."""
    if engine is not None:
        model.observe_engine(engine.status)
    return model.run_status()


class RunHeader(QuietStatic):
    DEFAULT_CSS = """
    RunHeader { height: 1; background: $panel; color: $foreground; padding: 0 1; }
    """

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__("", id=id)
        self.status = "waiting"

    def update_from(self, model: RunModel, engine: EngineState | None = None) -> None:
        self.status = run_status(model, engine)
        live = self.status == "running"
        elapsed = model.elapsed(time.time() if live else None)
        eta = model.eta()
        shown = self.status.upper() + (" (resumed)" if live and model.resumes else "")
        text = Text.assemble(
            ("graftline ", "bold"),
            (model.run or "—", "bold"),
            "  ",
            (shown, STATUS_STYLE.get(self.status, "bold")),
            f"  elapsed {human_seconds(elapsed)}",
        )
        if eta is not None and live:
            text.append(f"  ETA {human_seconds(eta)}")
        hint = HINT.get(self.status)
        if hint:
            text.append(f"  {hint}", style=STATUS_STYLE.get(self.status, "bold"))
        tps = model.throughput.get("tokens_per_s")
        sps = model.throughput.get("steps_per_s")
        if live and (tps or sps):
            text.append(f"  {tps or 0:,.0f} tok/s  {sps or 0:.2f} step/s", style="dim")
        if model.backend:
            text.append(f"  [{model.backend}]", style="dim")
        self.show(text)

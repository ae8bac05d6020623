"""The one-line run header: name, status, elapsed, ETA, throughput, and the way out of a stop."""

from __future__ import annotations

import time

from rich.text import Text

from graftline.console.follower import EngineState
from graftline.console.formats import human_seconds
from graftline.console.ranks import RankLiveness, rank_liveness
from graftline.console.run_view import RunModel
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


# A distributed stage's ranks on this host, one mark each: alive, dead (the launcher saw it die,
# or a zombie not yet reaped), unseen (expected here, not in the last sample), ended (the group
# ended around a dead rank).
RANK_MARK = {"alive": ("●", "bold green"), "dead": ("✗", "bold red"),
             "unseen": ("○", "yellow"), "ended": ("○", "dim")}
RANK_MARK_ASCII = {"alive": "o", "dead": "x", "unseen": "?", "ended": "."}


def rank_text(group: RankLiveness, ascii_only: bool = False) -> Text:
    """'2 ranks ●●', '2 ranks ●✗ rank 1 died', '4 ranks (2 here) ●●'."""
    text = Text(f"{group.world_size} ranks")
    if group.elsewhere and group.states:
        text.append(f" ({len(group.states)} here)")
    if group.states:
        text.append(" ")
        for _, state in group.states:
            mark, style = RANK_MARK[state]
            text.append(RANK_MARK_ASCII[state] if ascii_only else mark, style=style)
    if group.failed_rank is not None:
        text.append(f" rank {group.failed_rank} died", style="bold red")
    else:
        dead = [rank for rank, state in group.states if state == "dead"]
        if dead:
            text.append(f" rank {', '.join(map(str, dead))} dead", style="bold red")
    return text


def run_status(model: RunModel, engine: EngineState | None) -> str:
    """Events say what happened; the engine's state adds what events cannot (paused, dead)."""
    if engine is not None:
        model.observe_engine(engine.status)
    return model.run_status()


class RunHeader(QuietStatic):
    DEFAULT_CSS = """
    RunHeader { height: 1; background: $panel; color: $foreground; padding: 0 1; }
    """

    def __init__(self, *, ascii_only: bool = False, id: str | None = None) -> None:
        super().__init__("", id=id)
        self.status = "waiting"
        self.ascii_only = ascii_only

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
        group = rank_liveness(model)
        if group is not None:
            text.append("  ")
            text.append_text(rank_text(group, self.ascii_only))
        hint = HINT.get(self.status)
        if self.status == "paused" and engine is not None and engine.disk_full:
            hint = f"disk full: {engine.disk_full}"  # alive, waiting for space: not a crash
        if hint:
            text.append(f"  {hint}", style=STATUS_STYLE.get(self.status, "bold"))
        tps = model.throughput.get("tokens_per_s")
        sps = model.throughput.get("steps_per_s")
        if live and (tps or sps):
            text.append(f"  {tps or 0:,.0f} tok/s  {sps or 0:.2f} step/s", style="dim")
        if model.backend:
            text.append(f"  [{model.backend}]", style="dim")
        self.show(text)

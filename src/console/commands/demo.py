"""`graftline demo`: launch examples/demo.toml on the tiny offline model and attach to it."""

from __future__ import annotations

import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import typer

DEMO = Path(__file__).resolve().parents[3] / "examples" / "demo.toml"
# what the demo promises on any machine (README): the chain ends at least this good
EVAL_GOAL = 0.90


def summary_lines(events: Iterable[Any]) -> list[str]:
    """What the run learned, in numbers, from its `stage_finished` events: each stage's held-out
    exact match, whether the model ends its turn after a right answer, GRPO's reward from start
    to end, and a verdict against the demo's promise."""
    lines: list[str] = []
    final_match: float | None = None
    reward: tuple[float, float] | None = None
    for event in events:
        if event.type != "stage_finished" or event.data.get("status") != "complete":
            continue
        evaluation = event.data.get("evaluation") or {}
        metrics = event.data.get("metrics") or {}
        if "exact_match" in evaluation:
            final_match = float(evaluation["exact_match"])
            lines.append(f"  {event.stage}: held-out chat exact match {final_match:.1%}")
        if "end_of_turn" in evaluation:
            lines.append(f"  {event.stage}: P(end of turn) right after a right answer "
                         f"{float(evaluation['end_of_turn']):.2f} (a model that stops: near 1)")
        if event.data.get("kind") == "grpo" and "reward_start" in metrics:
            reward = (float(metrics["reward_start"]), float(metrics["reward_end"]))
            lines.append(f"  {event.stage}: reward {reward[0]:.3f} → {reward[1]:.3f} "
                         f"({'rising' if reward[1] > reward[0] else 'NOT rising'})")
    if final_match is None:
        return lines
    learned = final_match >= EVAL_GOAL and (reward is None or reward[1] > reward[0])
    verdict = "the demo learned" if learned else "the demo did NOT learn as it should"
    lines.append(f"{verdict}: final exact match {final_match:.1%} (goal ≥ {EVAL_GOAL:.0%})"
                 + ("" if reward is None else
                    f", GRPO reward {'rose' if reward[1] > reward[0] else 'did not rise'}"))
    return lines


def register(app: typer.Typer) -> None:
    """Add `demo` to the CLI."""

    @app.command()
    def demo(
        pipeline: Path = typer.Option(DEMO, "--pipeline", show_default="the bundled "
                                      "examples/demo.toml", help="The pipeline file to demo."),
        theme: str | None = typer.Option(None, "--theme",
                                         help="dark, light, low, or a theme file's name "
                                              "(default: your last choice)."),
        attach: bool = typer.Option(True, "--attach/--detach",
                                    help="Open the console (default) or only start the run."),
    ) -> None:
        """Start the demo pipeline in the background and open the console on it.

        The engine runs in its own process session: `q` leaves the console and the demo keeps
        training; `graftline attach` comes back to it from any directory.
        """
        from graftline.engine.run import LaunchError, start_run
        from graftline.engine.toy import describe_base, pin_math

        # graftline's own training takes the math path its shipped toy base was built on (the
        # engine inherits the environment); a user's `graftline run` never does this
        pin_math()
        if not pipeline.is_file():
            typer.echo(f"{pipeline}: not found; pass --pipeline FILE", err=True)
            raise typer.Exit(2)
        try:
            run_dir = start_run(pipeline)
        except LaunchError as exc:
            typer.echo(str(exc), err=True)
            for problem in exc.problems:
                typer.echo(f"  {problem}", err=True)
            raise typer.Exit(1) from None
        typer.echo(f"demo started: run {run_dir.name}\nrun directory: {run_dir.resolve()}")
        typer.echo(describe_base())
        if not attach:
            # the id resolves through the per-user run index from any directory
            typer.echo(f"attach with: graftline attach {run_dir.name}")
            return
        if not (sys.stdin.isatty() and sys.stdout.isatty()):
            # no terminal to draw on (a pipe, CI, a script): follow the log to the end instead
            from graftline.console.commands.logs import show_logs
            from graftline.engine.run import EVENTS, read_events

            typer.echo("no terminal: following the event log until the run finishes")
            show_logs(run_dir, follow=True)
            typer.echo(describe_base())  # built by now, if it was not when the demo started
            for line in summary_lines(read_events(run_dir / EVENTS)[0]):
                typer.echo(line)
            return
        from graftline.console.app import run_console

        run_console(run_dir, run_dir.parent, theme)

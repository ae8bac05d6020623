"""`graftline demo`: launch examples/demo.toml on the tiny offline model and attach to it."""

from __future__ import annotations

import sys
from pathlib import Path

import typer

DEMO = Path(__file__).resolve().parents[3] / "examples" / "demo.toml"


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
        if not attach:
            # the id resolves through the per-user run index from any directory
            typer.echo(f"attach with: graftline attach {run_dir.name}")
            return
        if not (sys.stdin.isatty() and sys.stdout.isatty()):
            # no terminal to draw on (a pipe, CI, a script): follow the log to the end instead
            from graftline.console.commands.logs import show_logs

            typer.echo("no terminal: following the event log until the run finishes")
            show_logs(run_dir, follow=True)
            return
        from graftline.console.app import run_console

        run_console(run_dir, run_dir.parent, theme)

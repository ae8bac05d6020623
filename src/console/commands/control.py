"""`graftline stop / pause`: ask a live engine, over its control socket, to stop or pause."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import typer

from graftline.console.commands.shared import RUN_HELP, RUNS_DIR_HELP, find_or_exit
from graftline.engine.run import ControlError, read_state, send_command

__all__ = ["pause", "register", "stop"]


def stop(
    run: str | None = typer.Argument(None, help=RUN_HELP, show_default=False),
    runs_dir: Path | None = typer.Option(None, "--runs-dir", help=RUNS_DIR_HELP),
    wait: bool = typer.Option(True, "--wait/--no-wait",
                              help="wait until the engine has saved and exited"),
    timeout: float = typer.Option(600.0, help="seconds to wait for the engine to exit"),
) -> None:
    """Stop a run gracefully: the engine saves a checkpoint, then stops (resumable)."""
    run_dir = find_or_exit(run, runs_dir)
    info = read_state(run_dir)
    if not info.live:
        hint = "" if info.status == "finished" else \
            f"; `graftline resume {run_dir.name}` continues it"
        typer.echo(f"run {run_dir.name} is not running ({info.status}){hint}")
        return
    try:
        reply = send_command(run_dir, "stop")
        typer.echo(f"stop requested: {run_dir.name} is {reply.get('status', 'stopping')}")
    except ControlError as exc:
        # the socket can be gone while the process lives (e.g. wedged): SIGTERM is the same
        # graceful stop. Never signal pid 0 or below: that is a whole process group.
        if not info.pid or info.pid <= 0:
            typer.echo(f"graftline: {exc}; the engine has no pid yet, try again in a moment",
                       err=True)
            raise typer.Exit(1) from None
        typer.echo(f"graftline: {exc}; sending SIGTERM to pid {info.pid}", err=True)
        try:
            os.kill(int(info.pid), signal.SIGTERM)
        except (ProcessLookupError, ValueError):
            typer.echo("graftline: the engine is gone", err=True)
            return
    if not wait:
        return
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        info = read_state(run_dir)
        if not info.live:
            typer.echo(f"run {run_dir.name}: {info.status}")
            return
        time.sleep(0.25)
    typer.echo(f"graftline: still {info.status} after {timeout:g} s", err=True)
    raise typer.Exit(1)


def pause(
    run: str | None = typer.Argument(None, help=RUN_HELP, show_default=False),
    runs_dir: Path | None = typer.Option(None, "--runs-dir", help=RUNS_DIR_HELP),
) -> None:
    """Pause a run at the next step boundary (`graftline resume RUN` continues it)."""
    run_dir = find_or_exit(run, runs_dir)
    info = read_state(run_dir)
    if not info.live:
        typer.echo(f"run {run_dir.name} is not running ({info.status}); nothing to pause")
        raise typer.Exit(1)
    try:
        reply = send_command(run_dir, "pause")
    except ControlError as exc:
        typer.echo(f"graftline: {exc}", err=True)
        raise typer.Exit(1) from None
    typer.echo(f"run {run_dir.name}: {reply.get('status')}; continue it with "
               f"`graftline resume {run_dir.name}`")


def register(app: typer.Typer) -> None:
    app.command("stop")(stop)
    app.command("pause")(pause)

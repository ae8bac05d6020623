"""What the shell commands share: finding a run, the runs directory, status colours, ages."""

from __future__ import annotations

import sys
from pathlib import Path

import typer

from graftline.engine.run import client

__all__ = ["RUNS_DIR_HELP", "STATUS_STYLE", "age", "find_or_exit", "interactive", "runs_dir"]

RUNS_DIR_HELP = "where runs live (default: $GRAFTLINE_RUNS_DIR or ./runs)"
STATUS_STYLE = {"running": "green", "paused": "yellow", "stopping": "yellow", "starting": "cyan",
                "finished": "bold green", "failed": "bold red", "crashed": "bold red",
                "stopped": "magenta"}


def runs_dir(value: Path | None) -> Path:
    return Path(value).expanduser() if value is not None else client.default_runs_dir()


def find_or_exit(ref: str | None, root: Path | None) -> Path:
    """The run `ref` names (id, path or unique prefix), or a clear message and exit 2."""
    try:
        return client.find_run(ref, runs_dir(root))
    except LookupError as exc:
        typer.echo(f"graftline: {exc}", err=True)
        raise typer.Exit(2) from None


def interactive() -> bool:
    return sys.stdin.isatty() and sys.stdout.isatty()


def age(seconds: float | None) -> str:
    """A compact age: 45s, 12m, 3h, 2d."""
    if seconds is None:
        return "-"
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds / size:.0f}{unit}"
    return f"{seconds:.0f}s"

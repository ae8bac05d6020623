"""`graftline` commands: background (placeholder until its issue lands)."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    """Add this module's commands to the CLI."""


def open_home() -> None:
    """`graftline` with no arguments: the runs screen, or the launch screen when there is no run."""
    typer.echo("graftline: the console is not built yet; try `graftline --help`.")

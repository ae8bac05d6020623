"""What the shell commands share: finding a run, the runs directory, status colours, ages."""

from __future__ import annotations

import sys
from pathlib import Path

import typer

from graftline.engine.run import DISK_FULL, RunInfo, disk_full_advice, find_run

__all__ = ["RUNS_DIR_HELP", "RUN_HELP", "STATUS_STYLE", "disk_full_lines", "find_or_exit",
           "interactive", "runs_dir"]

RUNS_DIR_HELP = ("look only under this directory (default: every run you started, from any "
                 "directory)")
RUN_HELP = ("run id, unique id prefix, or path (default: the newest running run, else the "
            "newest run)")
STATUS_STYLE = {"running": "green", "paused": "yellow", "stopping": "yellow", "starting": "cyan",
                "finished": "bold green", "failed": "bold red", "crashed": "bold red",
                "stopped": "magenta"}


def runs_dir(value: Path | None) -> Path | None:
    """The directory --runs-dir names, absolute; None when not given (every known run)."""
    return Path(value).expanduser().resolve() if value is not None else None


def find_or_exit(ref: str | None, root: Path | None = None) -> Path:
    """The run `ref` names (id, path or unique prefix; None: the latest), found from any
    directory through the per-user run index, or a clear message and exit 2."""
    try:
        return find_run(ref, runs_dir(root))
    except LookupError as exc:
        typer.echo(f"graftline: {exc}", err=True)
        raise typer.Exit(2) from None


def disk_full_lines(info: RunInfo) -> list[str]:
    """A run paused for a full disk, in words: what happened, how much to free and where, the
    command that frees what is safe to free. Empty for any other run."""
    if info.status != "paused" or DISK_FULL not in (info.message or ""):
        return []
    lines = [f"{info.run_id}: {info.message}"]
    if info.disk_full:
        lines.append(f"  {disk_full_advice(info.disk_full)}")
        if info.disk_full.get("fix"):
            lines.append(f"  fix: {info.disk_full['fix']}")
    return lines


def interactive() -> bool:
    return sys.stdin.isatty() and sys.stdout.isatty()



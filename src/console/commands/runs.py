"""`graftline run / resume / attach / ls`, and the bare `graftline`: start, continue, find and
watch background runs. Everything goes through `graftline.engine.run.client`; nothing here loads
a model."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import typer

from graftline.console.commands.logs import show_logs
from graftline.console.commands.shared import (
    RUNS_DIR_HELP,
    STATUS_STYLE,
    age,
    find_or_exit,
    interactive,
)
from graftline.console.commands.shared import (
    runs_dir as resolve_runs_dir,
)
from graftline.engine.run import client

__all__ = ["attach", "ls", "open_home", "register", "resume", "run"]


def _open_console(run_dir: Path | None, runs_dir: Path) -> None:
    try:
        from graftline.console.app import run_console
    except ImportError:
        if run_dir is None:
            typer.echo("graftline: the console is not available; `graftline ls` lists runs.")
            return
        typer.echo("graftline: the console is not available; following the log instead "
                   "(Ctrl-C leaves the run running).")
        show_logs(run_dir, follow=True)
        return
    run_console(run_dir, runs_dir)


def _attach_hint(run_dir: Path) -> str:
    return (f"  attach:  graftline attach {run_dir}\n"
            f"  logs:    graftline logs {run_dir} -f\n"
            f"  stop:    graftline stop {run_dir}")


def _wait_started(run_dir: Path, timeout: float = 20.0) -> client.RunInfo:
    """Until the engine has written its pid (or died trying)."""
    deadline = time.monotonic() + timeout
    info = client.read_state(run_dir)
    while time.monotonic() < deadline:
        info = client.read_state(run_dir)
        if info.pid is not None or info.status not in ("starting", "unknown"):
            return info
        time.sleep(0.1)
    return info


def _rehearsal_passes(file: Path) -> bool:
    """The "rehearse first" gate. A file with static errors goes straight to `start_run`, which
    reports them; rehearsing it would only say the same thing more slowly."""
    from graftline.console.commands.rehearse import rehearse_or_exit
    from graftline.engine.pipeline import validate_file

    _pf, problems = validate_file(file)
    if any(p.severity == "error" for p in problems):
        return True
    typer.echo(f"rehearsing {file} on a tiny twin first (--no-rehearse skips this)")
    return rehearse_or_exit(file)


def run(
    file: Path = typer.Argument(..., help="the pipeline file (TOML)"),
    detach: bool = typer.Option(False, "--detach", "-d",
                                help="start in the background and return; do not open the "
                                     "console"),
    runs_dir: Path | None = typer.Option(None, "--runs-dir",
                                         help="where to create the run (default: the "
                                              "pipeline's runs_dir, relative to the file)"),
    rehearse: bool = typer.Option(True, "--rehearse/--no-rehearse",
                                  help="first run every stage for a few steps on a tiny twin "
                                       "of the base, on CPU (minutes), and start only if all "
                                       "pass"),
    machine_rank: int | None = typer.Option(None, "--machine-rank", min=0,
                                            help="multi-node: this host's machine rank (0 on "
                                                 "the main host; docs/distributed.md)"),
) -> None:
    """Validate FILE, rehearse it, start it as a background engine, and attach (unless
    --detach). The engine keeps training when this terminal or SSH session closes."""
    if machine_rank is not None:
        # the engine inherits it and overrides the file's machine_rank (run/distributed.py)
        os.environ["GRAFTLINE_MACHINE_RANK"] = str(machine_rank)
    if rehearse and not _rehearsal_passes(file):
        typer.echo("graftline: not started: the rehearsal failed (above); fix it, or skip "
                   "it with --no-rehearse", err=True)
        raise typer.Exit(1)
    try:
        run_dir = client.start_run(file, runs_dir)
    except client.LaunchError as exc:
        typer.echo(f"graftline: not started: {exc}", err=True)
        for problem in exc.problems:
            typer.echo(str(problem), err=True)
        raise typer.Exit(1) from None
    info = _wait_started(run_dir)
    typer.echo(f"started run {run_dir.name} (engine pid {info.pid}) in {run_dir}")
    typer.echo("it keeps running when this terminal closes.")
    typer.echo(_attach_hint(run_dir))
    if info.status in ("crashed", "failed"):
        reason = f": {info.message}" if info.message else ""
        typer.echo(f"graftline: the engine {info.status}{reason}\n  see "
                   f"{run_dir / 'engine.log'}", err=True)
        raise typer.Exit(1)
    if not detach and interactive():
        _open_console(run_dir, run_dir.parent)


def attach(
    run: str | None = typer.Argument(None, help="run id, path, or id prefix (default: latest)"),
    runs_dir: Path | None = typer.Option(None, "--runs-dir", help=RUNS_DIR_HELP),
) -> None:
    """Open the console on a run: its whole history, then live. `q` detaches."""
    run_dir = find_or_exit(run, runs_dir)
    if not interactive():
        show_logs(run_dir, follow=True)
        return
    _open_console(run_dir, run_dir.parent)


def ls(runs_dir: Path | None = typer.Option(None, "--runs-dir", help=RUNS_DIR_HELP)
           ) -> None:
    """List runs, newest first: status, current stage, progress, age."""
    root = resolve_runs_dir(runs_dir)
    runs = client.list_runs(root)
    if not runs:
        typer.echo(f"no runs under {root}")
        return
    width = max(len(r.run_id) for r in runs)
    typer.echo(f"{'RUN':<{width}}  {'STATUS':<9} {'STAGE':<16} {'PROGRESS':>8}  AGE")
    for info in runs:
        progress = "-" if info.progress is None else f"{info.progress:.0%}"
        status = info.status
        if sys.stdout.isatty():
            style = STATUS_STYLE.get(status)
            status = typer.style(f"{status:<9}", fg=style.split()[-1] if style else None)
        else:
            status = f"{status:<9}"
        typer.echo(f"{info.run_id:<{width}}  {status} {info.stage or '-':<16} "
                   f"{progress:>8}  {age(info.age)}")


def resume(
    run: str | None = typer.Argument(None, help="run id, path, or id prefix (default: latest)"),
    detach: bool = typer.Option(False, "--detach", "-d", help="do not open the console"),
    runs_dir: Path | None = typer.Option(None, "--runs-dir", help=RUNS_DIR_HELP),
) -> None:
    """Continue a crashed or stopped run (complete stages are skipped, the interrupted one
    resumes from its last checkpoint with optimizer state), or un-pause a paused one."""
    run_dir = find_or_exit(run, runs_dir)
    if client.read_state(run_dir).status == "paused":
        try:
            reply = client.send_command(run_dir, "resume")
        except client.ControlError as exc:
            typer.echo(f"graftline: {exc}", err=True)
            raise typer.Exit(1) from None
        typer.echo(f"run {run_dir.name} un-paused: {reply.get('status')}")
        return
    try:
        pid = client.resume_run(run_dir)
    except client.LaunchError as exc:
        typer.echo(f"graftline: {exc}", err=True)
        raise typer.Exit(1) from None
    typer.echo(f"resuming run {run_dir.name} (engine pid {pid})")
    typer.echo(_attach_hint(run_dir))
    if not detach and interactive():
        _open_console(run_dir, run_dir.parent)

def open_home() -> None:
    """`graftline` with no arguments: the runs screen, or the launch screen when there is no run."""
    runs_dir = client.default_runs_dir()
    if not interactive():
        typer.echo("graftline: no terminal; try `graftline --help` or `graftline ls`.")
        return
    _open_console(None, runs_dir)


def register(app: typer.Typer) -> None:
    app.command("run")(run)
    app.command("attach")(attach)
    app.command("ls")(ls)
    app.command("resume")(resume)

"""`graftline run / resume / attach / ls`, and the bare `graftline`: start, continue, find and
watch background runs. Everything goes through `graftline.engine.run`; nothing here loads
a model."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import typer

from graftline.console.commands.logs import show_logs
from graftline.console.commands.shared import (
    RUN_HELP,
    RUNS_DIR_HELP,
    STATUS_STYLE,
    disk_full_lines,
    find_or_exit,
    interactive,
)
from graftline.console.commands.shared import (
    runs_dir as resolve_runs_dir,
)
from graftline.console.formats import age, duration
from graftline.engine.common import human_bytes
from graftline.engine.run import (
    MACHINE_RANK_ENV,
    ControlError,
    LaunchError,
    MachineRankConflict,
    RunInfo,
    default_runs_dir,
    known_runs,
    machine_rank_for_resume,
    read_state,
    resume_run,
    run_details,
    send_command,
    start_run,
)

__all__ = ["attach", "ls", "open_home", "register", "resume", "run"]


THEME_HELP = ("dark, light, low, or a theme file's name (default: your last choice, or "
              "$GRAFTLINE_THEME)")


def _open_console(run_dir: Path | None, runs_dir: Path, theme: str | None = None) -> None:
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
    run_console(run_dir, runs_dir, theme)


def _attach_hint(run_dir: Path) -> str:
    """Commands that work from any directory: the id resolves through the per-user run index
    (the absolute path is printed too, for a shell on another account or machine)."""
    name = run_dir.name
    return (f"  attach:  graftline attach {name}\n"
            f"  logs:    graftline logs {name} -f\n"
            f"  stop:    graftline stop {name}\n"
            f"  where:   {run_dir.resolve()}")


def _wait_started(run_dir: Path, timeout: float = 20.0) -> RunInfo:
    """Until the engine has written its pid (or died trying)."""
    deadline = time.monotonic() + timeout
    info = read_state(run_dir)
    while time.monotonic() < deadline:
        info = read_state(run_dir)
        if info.pid is not None or info.status not in ("starting", "unknown"):
            return info
        time.sleep(0.1)
    return info


def run(
    file: Path = typer.Argument(..., help="the pipeline file (TOML)"),
    detach: bool = typer.Option(False, "--detach", "-d",
                                help="start in the background and return; do not open the "
                                     "console"),
    runs_dir: Path | None = typer.Option(None, "--runs-dir",
                                         help="where to create the run (default: the "
                                              "pipeline's runs_dir, relative to the file)"),
    rehearse: bool = typer.Option(True, "--rehearse/--no-rehearse",
                                  help="the engine first runs every stage for a few steps on a "
                                       "tiny twin of the base, on CPU (minutes), and goes on to "
                                       "stage 1 only if all pass (this command returns at once)"),
    machine_rank: int | None = typer.Option(None, "--machine-rank", min=0,
                                            help="multi-node: this host's machine rank (0 on "
                                                 "the main host; docs/distributed.md)"),
) -> None:
    """Validate FILE, start it as a background engine, and attach (unless --detach). The engine
    rehearses every stage on a tiny twin first, as the run's first phase, and keeps training when
    this terminal or SSH session closes: the command returns as soon as the file is validated and
    the engine started."""
    if machine_rank is not None:
        # the engine inherits it and overrides the file's machine_rank (run/distributed.py)
        os.environ["GRAFTLINE_MACHINE_RANK"] = str(machine_rank)
    try:
        run_dir = start_run(file, runs_dir, rehearse=rehearse)
    except LaunchError as exc:
        typer.echo(f"graftline: not started: {exc}", err=True)
        for problem in exc.problems:
            typer.echo(str(problem), err=True)
        raise typer.Exit(1) from None
    info = _wait_started(run_dir)
    typer.echo(f"started run {run_dir.name} (engine pid {info.pid}) in {run_dir}")
    typer.echo("it keeps running when this terminal closes.")
    if rehearse:
        typer.echo(f"it rehearses every stage on a tiny twin before stage 1; the report: "
                   f"graftline logs {run_dir.name} --kind rehearsal")
    typer.echo(_attach_hint(run_dir))
    if info.status in ("crashed", "failed"):
        reason = f": {info.message}" if info.message else ""
        typer.echo(f"graftline: the engine {info.status}{reason}\n  see "
                   f"{run_dir / 'engine.log'}", err=True)
        raise typer.Exit(1)
    if not detach and interactive():
        _open_console(run_dir, run_dir.parent)


def attach(
    run: str | None = typer.Argument(None, help=RUN_HELP, show_default=False),
    runs_dir: Path | None = typer.Option(None, "--runs-dir", help=RUNS_DIR_HELP),
    theme: str | None = typer.Option(None, "--theme", metavar="NAME", help=THEME_HELP),
) -> None:
    """Open the console on a run: its whole history, then live. `q` detaches."""
    run_dir = find_or_exit(run, runs_dir)
    if not interactive():
        show_logs(run_dir, follow=True)
        return
    _open_console(run_dir, run_dir.parent, theme)


def ls(runs_dir: Path | None = typer.Option(None, "--runs-dir", help=RUNS_DIR_HELP)
       ) -> None:
    """List every run you started, from any directory, newest first: status, stage, progress,
    duration, final metric, disk use and where it lives."""
    root = resolve_runs_dir(runs_dir)
    runs = known_runs(root)
    if not runs:
        where = f"under {root}" if root is not None else "yet"
        typer.echo(f"no runs {where}. Start one with `graftline demo` or `graftline run FILE`; "
                   f"runs started before graftline kept an index are found with "
                   f"`graftline ls --runs-dir DIR`.")
        return
    rows = []
    for info in runs:
        details = run_details(info)
        progress = "-" if info.progress is None else f"{info.progress:.0%}"
        rows.append((info.run_id, info.status, info.stage or "-", progress,
                     duration(details.duration), details.metric or "-",
                     human_bytes(details.disk_bytes), age(info.age), str(info.path)))
    headers = ("RUN", "STATUS", "STAGE", "PROGRESS", "DURATION", "METRIC", "DISK", "AGE",
               "LOCATION")
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]
    right = {3, 4, 6, 7}

    def line(cells: tuple[str, ...], *, style_status: bool = False) -> str:
        out = []
        for i, cell in enumerate(cells):
            text = cell.rjust(widths[i]) if i in right else cell.ljust(widths[i])
            if i == len(cells) - 1:
                text = cell
            if style_status and i == 1 and sys.stdout.isatty():
                style = STATUS_STYLE.get(cell)
                text = typer.style(text, fg=style.split()[-1] if style else None)
            out.append(text)
        return "  ".join(out)

    typer.echo(line(headers))
    for row in rows:
        typer.echo(line(row, style_status=True))
    for info in runs:  # a run paused for a full disk: how much to free, and where
        for text in disk_full_lines(info):
            typer.echo(text)


def resume(
    run: str | None = typer.Argument(None, help=RUN_HELP, show_default=False),
    detach: bool = typer.Option(False, "--detach", "-d", help="do not open the console"),
    runs_dir: Path | None = typer.Option(None, "--runs-dir", help=RUNS_DIR_HELP),
    machine_rank: int | None = typer.Option(None, "--machine-rank", min=0,
                                            help="multi-node: this host's machine rank (the run "
                                                 "remembers it; docs/distributed.md)"),
) -> None:
    """Continue a crashed or stopped run (complete stages are skipped, the interrupted one
    resumes from its last checkpoint with optimizer state), or un-pause a paused one."""
    run_dir = find_or_exit(run, runs_dir)
    try:
        rank = machine_rank_for_resume(run_dir, machine_rank)
    except MachineRankConflict as exc:
        typer.echo(f"graftline: not resumed: {exc.message}\n  fix: {exc.fix}", err=True)
        raise typer.Exit(1) from None
    if rank is not None:
        # the engine inherits it (run/distributed.py), as for `graftline run --machine-rank`
        os.environ[MACHINE_RANK_ENV] = str(rank)
    info = read_state(run_dir)
    advice = disk_full_lines(info)
    if advice and info.disk_full and \
            int(info.disk_full.get("free_bytes") or 0) < int(info.disk_full.get("need_bytes") or 0):
        # the engine is alive and waits for space; un-pausing now would only pause it again
        for text in advice:
            typer.echo(text, err=True)
        typer.echo(f"graftline: run {run_dir.name} is alive, paused until the disk has space; "
                   "nothing to resume: free the space and it continues by itself", err=True)
        raise typer.Exit(1)
    if info.status == "paused":
        try:
            reply = send_command(run_dir, "resume")
        except ControlError as exc:
            typer.echo(f"graftline: {exc}", err=True)
            raise typer.Exit(1) from None
        typer.echo(f"run {run_dir.name} un-paused: {reply.get('status')}")
        return
    try:
        pid = resume_run(run_dir)
    except LaunchError as exc:
        typer.echo(f"graftline: {exc}", err=True)
        if exc.fix:
            typer.echo(f"  fix: {exc.fix}", err=True)
        raise typer.Exit(1) from None
    typer.echo(f"resuming run {run_dir.name} (engine pid {pid})")
    typer.echo(_attach_hint(run_dir))
    if not detach and interactive():
        _open_console(run_dir, run_dir.parent)

def open_home(theme: str | None = None) -> None:
    """`graftline` with no arguments: the runs screen, or the launch screen when there is no run."""
    runs_dir = default_runs_dir().resolve()
    if not interactive():
        typer.echo("graftline: no terminal; try `graftline --help` or `graftline ls`.")
        return
    _open_console(None, runs_dir, theme)


def register(app: typer.Typer) -> None:
    app.command("run")(run)
    app.command("attach")(attach)
    app.command("ls")(ls)
    app.command("resume")(resume)

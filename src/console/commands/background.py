"""`graftline run / attach / ls / stop / logs / resume`: the background engine from the shell.

Everything goes through `graftline.engine.run.client`: these commands read run directories and talk
to the engine over its control socket; they never load a model.
"""

from __future__ import annotations

import os
import signal
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import typer

from graftline.engine.run import Event, client

RUNS_DIR_HELP = "where runs live (default: $GRAFTLINE_RUNS_DIR or ./runs)"
_STATUS_STYLE = {"running": "green", "paused": "yellow", "stopping": "yellow", "starting": "cyan",
                 "finished": "bold green", "failed": "bold red", "crashed": "bold red",
                 "stopped": "magenta"}
_TYPE_STYLE = {"warning": "yellow", "error": "bold red", "run_started": "bold cyan",
               "run_finished": "bold cyan", "stage_started": "bold", "stage_finished": "bold",
               "checkpoint_saved": "green", "check_result": "cyan", "info": "dim"}
# metric keys worth a column in a log line, in this order; the rest stay in events.jsonl
_METRIC_KEYS = ("loss", "rewards/margins", "rewards/accuracies", "reward", "kl", "learning_rate",
                "grad_norm", "steps_per_s", "eta_s")


def _runs_dir(value: Path | None) -> Path:
    return Path(value).expanduser() if value is not None else client.default_runs_dir()


def _find(ref: str | None, runs_dir: Path | None) -> Path:
    try:
        return client.find_run(ref, _runs_dir(runs_dir))
    except LookupError as exc:
        typer.echo(f"graftline: {exc}", err=True)
        raise typer.Exit(2) from None


def _interactive() -> bool:
    return sys.stdin.isatty() and sys.stdout.isatty()


def _age(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds / size:.0f}{unit}"
    return f"{seconds:.0f}s"


def _number(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) < 1e-3 or abs(value) >= 1e4 else f"{value:.4f}".rstrip(
            "0").rstrip(".")
    return str(value)


def describe_event(event: Event) -> str:
    """One event as a short human line, without the time and sequence prefix."""
    data = event.data
    kind = event.type
    if kind == "metrics":
        step = data.get("global_step", data.get("step"))
        total = data.get("max_steps")
        fields = [f"step {data.get('step')}/{total}" if total else f"step {step}",
                  f"(global {step})"]
        fields += [f"{key}={_number(data[key])}" for key in _METRIC_KEYS if key in data]
        return " ".join(fields)
    if kind == "stage_started":
        return (f"{data.get('kind', '')} stage #{(data.get('index') or 0) + 1} started"
                f" ({data.get('action') or 'no adapter'}, {data.get('max_steps') or '?'} steps)")
    if kind == "stage_finished":
        return (f"{data.get('kind', '')} stage {data.get('status')} in "
                f"{_number(float(data.get('seconds') or 0))} s")
    if kind == "checkpoint_saved":
        return f"{data.get('kind')} checkpoint {data.get('path')} ({data.get('bytes', 0):,} bytes)"
    if kind == "check_result":
        return f"check {data.get('name')}: {data.get('status')}: {data.get('message')}"
    if kind == "telemetry":
        gpu = (", ".join(f"gpu{g['index']} {g['used'] >> 20}/{g['total'] >> 20} MiB"
                         for g in data["gpus"]) if data.get("gpus") else "no GPU")
        return (f"{gpu}, rss {int(data.get('rss') or 0) >> 20} MiB, "
                f"disk free {int(data.get('disk_free') or 0) >> 30} GiB")
    if kind == "run_started":
        names = ", ".join(s.get("name", "?") for s in data.get("stages") or [])
        resumed = " (resumed)" if data.get("resumed") else ""
        return f"run {data.get('run', '')} started{resumed}: {names}"
    if kind == "run_finished":
        message = data.get("message")
        return f"run {data.get('status')}" + (f": {message}" if message else "")
    text = str(data.get("message", "")) or " ".join(f"{k}={v}" for k, v in data.items())
    if data.get("fix"):
        text += f" (fix: {data['fix']})"
    return text


def format_event(event: Event) -> str:
    when = datetime.fromtimestamp(event.time).strftime("%Y-%m-%d %H:%M:%S")
    return f"{when} #{event.seq} {event.type} {event.stage or '-'} {describe_event(event)}"


class _Printer:
    """Plain lines when piped (greppable, stable), colour on a terminal."""

    def __init__(self, *, as_json: bool, telemetry: bool) -> None:
        self.as_json = as_json
        self.telemetry = telemetry
        self.rich = None
        if not as_json and sys.stdout.isatty():
            from rich.console import Console

            self.rich = Console(highlight=False)

    def show(self, events: list[Event]) -> None:
        for event in events:
            if event.type == "telemetry" and not self.telemetry:
                continue
            if self.as_json:
                typer.echo(event.to_json())
            elif self.rich is not None:
                from rich.text import Text

                when = datetime.fromtimestamp(event.time).strftime("%H:%M:%S")
                line = Text.assemble((f"{when} ", "dim"),
                                     (f"{event.type:<16}", _TYPE_STYLE.get(event.type, "")),
                                     (f"{event.stage or '-':<14} ", "cyan"),
                                     describe_event(event))
                self.rich.print(line, soft_wrap=True)
            else:
                typer.echo(format_event(event))
        sys.stdout.flush()


def show_logs(run_dir: Path, *, follow: bool, as_json: bool = False,
              telemetry: bool = False) -> None:
    printer = _Printer(as_json=as_json, telemetry=telemetry)
    events, offset = client.read_events(run_dir / client.EVENTS)
    printer.show(events)
    if not follow:
        return
    try:
        for batch in client.follow_run(run_dir, offset):
            printer.show(batch)
    except KeyboardInterrupt:
        pass  # leaving the log leaves the run running


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


def register(app: typer.Typer) -> None:
    """Add this module's commands to the CLI."""

    @app.command("run")
    def run_cmd(
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
    ) -> None:
        """Validate FILE, rehearse it, start it as a background engine, and attach (unless
        --detach). The engine keeps training when this terminal or SSH session closes."""
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
        if not detach and _interactive():
            _open_console(run_dir, run_dir.parent)

    @app.command("attach")
    def attach_cmd(
        run: str | None = typer.Argument(None, help="run id, path, or id prefix (default: latest)"),
        runs_dir: Path | None = typer.Option(None, "--runs-dir", help=RUNS_DIR_HELP),
    ) -> None:
        """Open the console on a run: its whole history, then live. `q` detaches."""
        run_dir = _find(run, runs_dir)
        if not _interactive():
            show_logs(run_dir, follow=True)
            return
        _open_console(run_dir, run_dir.parent)

    @app.command("ls")
    def ls_cmd(runs_dir: Path | None = typer.Option(None, "--runs-dir", help=RUNS_DIR_HELP)
               ) -> None:
        """List runs, newest first: status, current stage, progress, age."""
        root = _runs_dir(runs_dir)
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
                style = _STATUS_STYLE.get(status)
                status = typer.style(f"{status:<9}", fg=style.split()[-1] if style else None)
            else:
                status = f"{status:<9}"
            typer.echo(f"{info.run_id:<{width}}  {status} {info.stage or '-':<16} "
                       f"{progress:>8}  {_age(info.age)}")

    @app.command("stop")
    def stop_cmd(
        run: str = typer.Argument(..., help="run id, path, or id prefix"),
        runs_dir: Path | None = typer.Option(None, "--runs-dir", help=RUNS_DIR_HELP),
        wait: bool = typer.Option(True, "--wait/--no-wait",
                                  help="wait until the engine has saved and exited"),
        timeout: float = typer.Option(600.0, help="seconds to wait for the engine to exit"),
    ) -> None:
        """Stop a run gracefully: the engine saves a checkpoint, then stops (resumable)."""
        run_dir = _find(run, runs_dir)
        info = client.read_state(run_dir)
        if not info.live:
            typer.echo(f"run {run_dir.name} is not running ({info.status})")
            return
        try:
            reply = client.send_command(run_dir, "stop")
            typer.echo(f"stop requested: {run_dir.name} is {reply.get('status', 'stopping')}")
        except client.ControlError as exc:
            # the socket can be gone while the process lives (e.g. wedged): SIGTERM is the same
            # graceful stop
            typer.echo(f"graftline: {exc}; sending SIGTERM to pid {info.pid}", err=True)
            try:
                os.kill(int(info.pid or 0), signal.SIGTERM)
            except (ProcessLookupError, ValueError):
                typer.echo("graftline: the engine is gone", err=True)
                return
        if not wait:
            return
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            info = client.read_state(run_dir)
            if not info.live:
                typer.echo(f"run {run_dir.name}: {info.status}")
                return
            time.sleep(0.25)
        typer.echo(f"graftline: still {info.status} after {timeout:g} s", err=True)
        raise typer.Exit(1)

    @app.command("pause")
    def pause_cmd(
        run: str | None = typer.Argument(None, help="run id, path, or id prefix (default: latest)"),
        runs_dir: Path | None = typer.Option(None, "--runs-dir", help=RUNS_DIR_HELP),
    ) -> None:
        """Pause a run at the next step boundary (`graftline resume RUN` continues it)."""
        run_dir = _find(run, runs_dir)
        try:
            reply = client.send_command(run_dir, "pause")
        except client.ControlError as exc:
            typer.echo(f"graftline: {exc}", err=True)
            raise typer.Exit(1) from None
        typer.echo(f"run {run_dir.name}: {reply.get('status')}")

    @app.command("logs")
    def logs_cmd(
        run: str | None = typer.Argument(None, help="run id, path, or id prefix (default: latest)"),
        follow: bool = typer.Option(False, "--follow", "-f", help="keep printing new events"),
        as_json: bool = typer.Option(False, "--json", help="the raw JSON lines"),
        telemetry: bool = typer.Option(False, "--telemetry", help="include telemetry samples"),
        runs_dir: Path | None = typer.Option(None, "--runs-dir", help=RUNS_DIR_HELP),
    ) -> None:
        """Print a run's event log (plain lines when piped, coloured on a terminal)."""
        show_logs(_find(run, runs_dir), follow=follow, as_json=as_json, telemetry=telemetry)

    @app.command("resume")
    def resume_cmd(
        run: str | None = typer.Argument(None, help="run id, path, or id prefix (default: latest)"),
        detach: bool = typer.Option(False, "--detach", "-d", help="do not open the console"),
        runs_dir: Path | None = typer.Option(None, "--runs-dir", help=RUNS_DIR_HELP),
    ) -> None:
        """Continue a crashed or stopped run (complete stages are skipped, the interrupted one
        resumes from its last checkpoint with optimizer state), or un-pause a paused one."""
        run_dir = _find(run, runs_dir)
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
        if not detach and _interactive():
            _open_console(run_dir, run_dir.parent)


def open_home() -> None:
    """`graftline` with no arguments: the runs screen, or the launch screen when there is no run."""
    runs_dir = client.default_runs_dir()
    if not _interactive():
        typer.echo("graftline: no terminal; try `graftline --help` or `graftline ls`.")
        return
    _open_console(None, runs_dir)

"""`graftline logs`: a run's event log as lines (plain when piped, coloured on a terminal)."""

from __future__ import annotations

import sys
from datetime import datetime
from pathlib import Path
from typing import Any

import typer

from graftline.console.commands.shared import RUNS_DIR_HELP, find_or_exit
from graftline.engine.run import Event, client

__all__ = ["describe_event", "format_event", "logs", "register", "show_logs"]

_TYPE_STYLE = {"warning": "yellow", "error": "bold red", "run_started": "bold cyan",
               "run_finished": "bold cyan", "stage_started": "bold", "stage_finished": "bold",
               "checkpoint_saved": "green", "check_result": "cyan", "info": "dim"}
# metric keys worth a column in a log line, in this order; the rest stay in events.jsonl
_METRIC_KEYS = ("loss", "rewards/margins", "rewards/accuracies", "reward", "kl", "learning_rate",
                "grad_norm", "steps_per_s", "eta_s")


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


def logs(
    run: str | None = typer.Argument(None, help="run id, path, or id prefix (default: latest)"),
    follow: bool = typer.Option(False, "--follow", "-f", help="keep printing new events"),
    as_json: bool = typer.Option(False, "--json", help="the raw JSON lines"),
    telemetry: bool = typer.Option(False, "--telemetry", help="include telemetry samples"),
    runs_dir: Path | None = typer.Option(None, "--runs-dir", help=RUNS_DIR_HELP),
) -> None:
    """Print a run's event log (plain lines when piped, coloured on a terminal)."""
    show_logs(find_or_exit(run, runs_dir), follow=follow, as_json=as_json, telemetry=telemetry)


def register(app: typer.Typer) -> None:
    app.command("logs")(logs)

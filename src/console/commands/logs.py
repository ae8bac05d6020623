"""`graftline logs`: a run's event log as lines (plain when piped, coloured on a terminal).

Streams: the log is read a few MB at a time and filtered as it goes (`--since`, `--stage`,
`--kind`), so a log of ten million events prints with the memory of a short one. `--since` finds
its starting point by bisecting the file on event times (the log is appended in time order).
"""

from __future__ import annotations

import re
import sys
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, get_args

import typer

from graftline.console.commands.shared import RUNS_DIR_HELP, find_or_exit
from graftline.console.formats import human_bytes
from graftline.engine.common import EventType
from graftline.engine.run import EVENTS, Event, follow_run, iter_rows, torn_tail

__all__ = ["describe_event", "describe_rehearsal", "format_event", "logs", "register", "show_logs"]

_TYPE_STYLE = {"warning": "yellow", "error": "bold red", "run_started": "bold cyan",
               "run_finished": "bold cyan", "stage_started": "bold", "stage_finished": "bold",
               "checkpoint_saved": "green", "check_result": "cyan", "info": "dim",
               "rehearsal": "magenta"}
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
        gpu = (", ".join(f"gpu{g['index']} {human_bytes(g['used'])}/{human_bytes(g['total'])}"
                         for g in data["gpus"]) if data.get("gpus") else "no GPU")
        return (f"{gpu}, rss {human_bytes(int(data.get('rss') or 0))}, "
                f"disk free {human_bytes(int(data.get('disk_free') or 0))}")
    if kind == "run_started":
        names = ", ".join(s.get("name", "?") for s in data.get("stages") or [])
        resumed = " (resumed)" if data.get("resumed") else ""
        return f"run {data.get('run', '')} started{resumed}: {names}"
    if kind == "run_finished":
        message = data.get("message")
        return f"run {data.get('status')}" + (f": {message}" if message else "")
    if kind == "rehearsal":
        return describe_rehearsal(data)
    if kind == "samples":
        rows = [f"\n  {r.get('prompt')!r} → {r.get('answer')!r}"
                + (f" (expected {r['expected']!r})" if r.get("expected") else "")
                for r in data.get("samples") or [] if isinstance(r, dict)]
        moment = ("at an evaluation during" if data.get("when") == "eval"
                  else f"at the {data.get('when')} of")
        return (f"probe answers {moment} the {data.get('kind', '')} stage "
                f"(global step {data.get('global_step')})" + "".join(rows))
    text = str(data.get("message", "")) or " ".join(f"{k}={v}" for k, v in data.items())
    if data.get("fix"):
        text += f" (fix: {data['fix']})"
    return text


def describe_rehearsal(data: dict[str, Any]) -> str:
    """A `rehearsal` event (engine/run/rehearsal_phase.py); the final one is the whole report:
    one line per rehearsed stage, the failure and its fix, what was not rehearsed as it runs."""
    phase = data.get("phase")
    if phase == "twin":
        return f"twin: {data.get('describe')}"
    if phase == "stage":
        secs = f" in {float(data['seconds']):.1f} s" \
            if isinstance(data.get("seconds"), int | float) else ""
        return f"{data.get('name')} ({data.get('kind')}): {data.get('status')}{secs}"
    if phase == "cleanup":
        return f"cleanup after {data.get('name')}: {data.get('rules')}"
    if phase != "finished":
        return str(data.get("message") or phase)
    status = data.get("status") or ("passed" if data.get("ok") else "failed")
    lines = [f"rehearsal {status} in {float(data.get('seconds') or 0):.0f} s"
             + (f" on {data['twin']}" if data.get("twin") else "")]
    for stage in data.get("stages") or []:
        checks = f", checks {stage['checks']}" if stage.get("checks") else ""
        lines.append(f"  {stage.get('name')} ({stage.get('kind')}): {stage.get('status')}"
                     f"{checks}")
        if stage.get("error"):
            lines.append(f"    error: {stage['error']}")
        if stage.get("fix"):
            lines.append(f"    fix: {stage['fix']}")
    for problem in data.get("problems") or []:
        lines.append(f"  {problem.get('where')}: {problem.get('message')}")
        if problem.get("fix"):
            lines.append(f"    fix: {problem['fix']}")
    if not data.get("ok") and data.get("message") and not data.get("stages"):
        lines.append(f"  {data['message']}")
        if data.get("fix"):
            lines.append(f"    fix: {data['fix']}")
    for note in data.get("notes") or []:
        lines.append(f"  not rehearsed as it will run: {note}")
    return "\n".join(lines)


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


KINDS: tuple[str, ...] = get_args(EventType)
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


@dataclass(frozen=True)
class Filter:
    """Which events to print: at or after `since` (epoch seconds), of these stages and kinds."""

    since: float | None = None
    stages: frozenset[str] = frozenset()
    kinds: frozenset[str] = frozenset()

    def keep(self, event: Event) -> bool:
        if self.since is not None and event.time < self.since:
            return False
        if self.stages and (event.stage or "-") not in self.stages:
            return False
        return not self.kinds or event.type in self.kinds


def parse_since(text: str, now: float | None = None) -> float:
    """'90s', '10m', '2h', '3d', '1w' ago, or a local date/time ('2026-11-29 14:00')."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*", text)
    if match:
        return (now if now is not None else time.time()) - float(match[1]) * _UNITS[match[2]]
    try:
        return datetime.fromisoformat(text.strip()).timestamp()
    except ValueError:
        raise typer.BadParameter(
            f"'{text}' is neither a duration nor a date/time; use e.g. 30m, 2h, 3d or "
            "'2026-11-29 14:00'", param_hint="--since") from None


def seek_time(path: Path, since: float) -> int:
    """A byte offset at a line start before which every event is older than `since` (bisecting
    the log by the times of the lines; the filter still checks each event after it)."""
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        return 0
    low, high = 0, size  # invariant: the line starting at `low` is older (or low == 0)
    with path.open("rb") as handle:
        while high - low > 65_536:
            mid = (low + high) // 2
            handle.seek(mid)
            handle.readline()  # to the next line start
            start = handle.tell()
            when = _line_time(handle.readline())
            if start >= high or when is None:
                high = mid
            elif when < since:
                low = start
            else:
                high = mid
    return low


def _line_time(line: bytes) -> float | None:
    match = re.search(rb'"time":\s*([-0-9.eE+]+)', line[:200])
    return float(match[1]) if match else None


def show_logs(run_dir: Path, *, follow: bool, as_json: bool = False, telemetry: bool = False,
              only: Filter | None = None) -> None:
    only = only or Filter()
    show_telemetry = telemetry or "telemetry" in only.kinds
    printer = _Printer(as_json=as_json, telemetry=show_telemetry)
    path = run_dir / EVENTS
    offset = seek_time(path, only.since) if only.since is not None else 0
    for rows, end, _line in iter_rows(path, offset):
        batch = []
        for row in rows:
            try:
                event = Event.from_dict(row)
            except (KeyError, TypeError):
                continue
            if only.keep(event):
                batch.append(event)
        printer.show(batch)
        offset = end
    if not follow:
        torn = torn_tail(path, offset)
        if torn:
            typer.echo(f"graftline: {path} ends in an incomplete line ({torn:,} bytes): skipped "
                       "(a writer killed mid-line, or one writing it now)", err=True)
        return
    try:
        for batch in follow_run(run_dir, offset):
            printer.show([event for event in batch if only.keep(event)])
    except KeyboardInterrupt:
        pass  # leaving the log leaves the run running


def _kinds(values: list[str]) -> frozenset[str]:
    unknown = [value for value in values if value not in KINDS]
    if unknown:
        raise typer.BadParameter(f"unknown event kind {', '.join(map(repr, unknown))}; "
                                 f"kinds: {', '.join(KINDS)}", param_hint="--kind")
    return frozenset(values)


def logs(
    run: str | None = typer.Argument(None, help="run id, path, or id prefix (default: latest)"),
    follow: bool = typer.Option(False, "--follow", "-f", help="keep printing new events"),
    as_json: bool = typer.Option(False, "--json", help="the raw JSON lines"),
    telemetry: bool = typer.Option(False, "--telemetry", help="include telemetry samples"),
    since: str | None = typer.Option(
        None, "--since", help="only events from then on: 30m, 2h, 3d ago, or a date/time"),
    stage: list[str] = typer.Option(
        [], "--stage", help="only this stage's events ('-' for run-level ones); repeatable"),
    kind: list[str] = typer.Option(
        [], "--kind", help=f"only events of this kind ({', '.join(KINDS)}); repeatable"),
    runs_dir: Path | None = typer.Option(None, "--runs-dir", help=RUNS_DIR_HELP),
) -> None:
    """Print a run's event log (plain lines when piped, coloured on a terminal); streams, so a
    log of any length prints in bounded memory."""
    only = Filter(since=parse_since(since) if since else None, stages=frozenset(stage),
                  kinds=_kinds(kind))
    show_logs(find_or_exit(run, runs_dir), follow=follow, as_json=as_json, telemetry=telemetry,
              only=only)


def register(app: typer.Typer) -> None:
    app.command("logs")(logs)

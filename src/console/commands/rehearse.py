"""`graftline rehearse FILE`: every stage for a few steps on a tiny twin, before the real run.

`graftline run` rehearses inside the engine instead, as the run's first phase
(engine/run/rehearsal_phase.py); the launch screen calls this command with `--json`.
"""

from __future__ import annotations

import json
import sys
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

if TYPE_CHECKING:
    from graftline.engine.rehearse import RehearsalReport

FILE = typer.Argument(..., help="The pipeline file (TOML).", show_default=False)
MARK = {"passed": "[green]✓ passed[/green]", "failed": "[red]✗ failed[/red]",
        "not run": "[dim]· not run[/dim]"}


def _live(console: Console) -> Any:
    """Print each stage as it ends, so a long rehearsal shows progress."""
    def on_event(kind: str, stage: str | None, data: dict[str, Any]) -> None:
        if kind == "twin":
            console.print(f"twin: {escape(data['describe'])}", highlight=False)
        elif kind == "stage_started":
            console.print(f"  [dim]… {escape(stage or '')} ({data.get('kind')})[/dim]",
                          highlight=False)
        elif kind == "stage_finished":
            status = "passed" if data.get("status") == "complete" else "failed"
            console.print(f"  {MARK[status]} {escape(stage or '')} "
                          f"[dim]{float(data.get('seconds') or 0):.1f} s[/dim]", highlight=False)
        elif kind == "cleanup":
            console.print(f"  [dim]cleanup after {escape(stage or '')}: {escape(data['rules'])}"
                          f", {data['deleted']} checkpoint(s) deleted[/dim]", highlight=False)
    return on_event


def _json_progress(kind: str, stage: str | None, data: dict[str, Any]) -> None:
    """--json: progress as JSON lines on stderr (stdout keeps the one report line), for the
    console's launch screen to show while a rehearsal runs."""
    if kind not in ("twin", "stage_started", "stage_finished", "cleanup"):
        return
    keep = {k: v for k, v in data.items() if isinstance(v, (str, int, float, bool, type(None)))}
    print(json.dumps({"event": kind, "stage": stage, **keep}), file=sys.stderr, flush=True)


def _trouble(console: Console, head: str, message: str, fix: str | None) -> None:
    """One failure: `head` (markup) and the message, then its fix indented below."""
    console.print(f"{head}{escape(message)}", highlight=False, soft_wrap=True)
    if fix:
        console.print(f"    [dim]fix:[/dim] {escape(fix)}", highlight=False, soft_wrap=True)


def print_report(console: Console, report: RehearsalReport) -> None:
    for problem in report.problems:
        _trouble(console, f"[bold]{escape(problem.where)}[/bold]: [red]error[/red]: ",
                 problem.message, problem.fix)
    table = Table(title=f"rehearsal of {report.file}", title_justify="left", expand=False)
    table.add_column("stage")
    table.add_column("kind")
    table.add_column("result")
    table.add_column("time", justify="right")
    table.add_column("checks", justify="right")
    for stage in report.stages:
        passed = sum(1 for _name, status in stage.checks if status == "pass")
        checks = f"{passed}/{len(stage.checks)}" if stage.checks else ""
        table.add_row(escape(stage.name), stage.kind, MARK.get(stage.status, stage.status),
                      f"{stage.seconds:.1f} s" if stage.status != "not run" else "", checks)
    console.print(table)
    for stage in report.failures:
        _trouble(console, f"[red]✗[/red] [bold]{escape(stage.name)}[/bold] ({stage.kind}): ",
                 stage.error, stage.fix)
    for stage in report.stages:
        for warning in stage.warnings:
            console.print(f"[yellow]![/yellow] {escape(stage.name)}: {escape(warning)}",
                          highlight=False, soft_wrap=True)
    if report.twin:
        console.print(f"[dim]on {escape(report.twin)}[/dim]", highlight=False)
    if report.notes:
        console.print("[bold]not rehearsed as it will run:[/bold]")
        for note in report.notes:
            console.print(f"  • {escape(note)}", highlight=False, soft_wrap=True)
    if report.scratch:
        console.print(f"scratch directory kept: {escape(report.scratch)}", highlight=False)
    if report.ok:
        console.print(f"[green]✓ rehearsal passed[/green]: {len(report.stages)} stages in "
                      f"{report.seconds:.0f} s", highlight=False)
    else:
        bad = len(report.failures) or len(report.problems)
        console.print(f"[red]✗ rehearsal failed[/red]: {bad} problem(s) in "
                      f"{report.seconds:.0f} s", highlight=False)


def report_json(report: RehearsalReport) -> dict[str, Any]:
    """The report for scripts (and the console's launch screen): `ok`, then what went wrong."""
    data = asdict(report)
    data["ok"] = report.ok
    data["failures"] = [s.name for s in report.failures]
    return data


def run_rehearsal(path: Path, *, steps: int | None = None, keep: bool = False,
                  cleanup_keep: list[str] | None = None, cleanup_after: list[str] | None = None,
                  console: Console | None = None, as_json: bool = False) -> RehearsalReport:
    from graftline.engine.rehearse import DEFAULT_STEPS, CleanupPolicy, rehearse

    console = console or Console()
    policy = CleanupPolicy(tuple(cleanup_keep), tuple(cleanup_after or ())) \
        if cleanup_keep else None
    if not as_json:
        console.print(f"rehearsing {escape(str(path))} on a tiny twin …", highlight=False)
    from graftline.console.quiet import libraries_quiet

    with libraries_quiet():  # graftline's per-stage lines, not the libraries' bars and warnings
        report = rehearse(path, steps=steps or DEFAULT_STEPS, keep=keep, cleanup=policy,
                          on_event=_json_progress if as_json else _live(console))
    if as_json:
        print(json.dumps(report_json(report)))  # one line, the last: easy to pick out
    else:
        print_report(console, report)
    return report


def rehearse_command(
    file: Path = FILE,
    keep: bool = typer.Option(False, "--keep", help="Keep the scratch directory (twin, "
                              "samples, checkpoints) and print where it is."),
    steps: int = typer.Option(3, "--steps", min=1, max=1000,
                              help="Training steps per stage."),
    cleanup_keep: list[str] = typer.Option(
        [], "--cleanup-keep", help="Rehearse the cleanup you plan between stages: keep these "
        "(same words as `graftline cleanup --keep`); repeatable."),
    cleanup_after: list[str] = typer.Option(
        [], "--cleanup-after", help="Run that cleanup only after these stages (default: after "
        "every stage); repeatable."),
    as_json: bool = typer.Option(False, "--json", help="Print the report as one line of JSON "
                                 "(ok, stages with status/error/fix, problems); progress goes "
                                 "to stderr as JSON lines."),
) -> None:
    """Rehearse a pipeline on a tiny twin of its base, on CPU, in minutes.

    Builds a randomly initialised 2-layer twin of the base (same architecture family, from its
    config.json and tokenizer when they are on this machine; otherwise the toy model, and it says
    why), samples each dataset, checks the data, chat template and reward functions, runs every
    stage for a few steps with all health checks, and prints per stage: passed or failed, the
    error and the fix, and the time. Exit status 1 on any failure, so it can gate a launch.
    """
    report = run_rehearsal(file, steps=steps, keep=keep, cleanup_keep=cleanup_keep,
                           cleanup_after=cleanup_after, as_json=as_json)
    if not report.ok:
        raise typer.Exit(1)


def register(app: typer.Typer) -> None:
    """Add this module's commands to the CLI."""
    app.command("rehearse")(rehearse_command)

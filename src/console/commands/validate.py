"""`graftline validate` and `graftline plan`: check a pipeline file and explain what it will do."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from graftline.engine.common import human_bytes
from graftline.engine.pipeline import (
    PipelineFile,
    Plan,
    Problem,
    any_distributed,
    describe_default,
    detect_env,
    launch_lines,
    plan_of,
    validate_file,
)

FILE = typer.Argument(..., help="The pipeline file (TOML).", show_default=False)


def _print_problems(console: Console, problems: list[Problem]) -> None:
    for problem in problems:
        colour = "red" if problem.severity == "error" else "yellow"
        console.print(
            f"[bold]{escape(problem.where)}[/bold]: [{colour}]{problem.severity}[/{colour}]: "
            f"{escape(problem.message)}",
            highlight=False,
            markup=True,
            soft_wrap=True,
        )
        if problem.fix:
            console.print(
                f"    [dim]fix:[/dim] {escape(problem.fix)}", highlight=False, soft_wrap=True
            )


def validate(
    file: Path = FILE,
    as_json: bool = typer.Option(False, "--json", help="Print the problems as JSON."),
) -> None:
    """Check a pipeline file before anything runs.

    Reports every problem at once — syntax, unknown keys, dangling `from`, cycles, adapter flow
    (stacking, a rank change without a merge), datasets and their columns, reward functions,
    export targets, the runs directory and the disk forecast — each with file, line, stage,
    field and a fix. Exit status 1 when there is an error (warnings alone exit 0).
    """
    console = Console(stderr=False)
    pf, problems = validate_file(file)
    errors = [p for p in problems if p.severity == "error"]
    if as_json:
        typer.echo(json.dumps([p.__dict__ for p in problems], indent=2))
    else:
        _print_problems(console, problems)
        if not errors:
            stages = len(pf.pipeline.stage) if pf else 0
            warn = f", {len(problems)} warning(s)" if problems else ""
            console.print(
                f"[green]✓[/green] {file}: {stages} stages, no errors{warn}", highlight=False
            )
        else:
            console.print(f"[red]✗[/red] {file}: {len(errors)} error(s)", highlight=False)
    raise typer.Exit(1 if errors else 0)


def plan(
    file: Path = FILE,
    as_json: bool = typer.Option(False, "--json", help="Print the plan as JSON."),
) -> None:
    """Explain, stage by stage, what a pipeline will do before it runs.

    For each stage: the model it starts from (base or merged chain), the adapter action
    (new rN / continue / merge / combine), the reference model of DPO/GRPO stages in words, what
    it writes and roughly how many bytes; then the total against the free disk.
    """
    console = Console()
    pf, problems = validate_file(file)
    errors = [p for p in problems if p.severity == "error"]
    if pf is None and as_json:
        typer.echo(json.dumps({"problems": [p.__dict__ for p in problems]}, indent=2))
        raise typer.Exit(1)
    if pf is None or (errors and not as_json):
        # a plan table built from an invalid file would explain something that will not run:
        # the errors (each with its fix) come first, and alone. --json keeps the plan of a file
        # that parses, with its problems beside it, for scripts that read both.
        _print_problems(console, problems)
        console.print(f"[red]✗[/red] {file}: {len(errors)} error(s); fix them and run "
                      f"`graftline plan {file}` again", highlight=False)
        raise typer.Exit(1)
    the_plan = plan_of(pf)
    launches = _launch_lines(pf)
    if as_json:
        typer.echo(json.dumps(_plan_json(the_plan, pf, launches, problems), indent=2))
        raise typer.Exit(1 if any(p.severity == "error" for p in problems) else 0)

    console.print(_plan_table(the_plan))
    console.print(
        f"base: {the_plan.base}"
        + (f"  [dim]({the_plan.model.source})[/dim]" if the_plan.model else ""),
        highlight=False,
    )
    total, free = the_plan.total_bytes, the_plan.free_bytes
    if total is None:
        console.print("disk: [yellow]unknown[/yellow] — " + "; ".join(the_plan.notes))
    else:
        line = f"disk: writes about {human_bytes(total)}"
        if the_plan.merged_bytes:
            line += (
                f" ({human_bytes(total - the_plan.merged_bytes)} adapters and data, "
                f"{human_bytes(the_plan.merged_bytes)} merged models)"
            )
        if free is not None:
            line += f"; {human_bytes(free)} free on the runs volume"
        console.print(line, highlight=False)
    for line in the_plan.chain_words:  # checkpoints from outside the run (issue 19)
        console.print(f"from outside the run: {escape(line)}", highlight=False, soft_wrap=True)
    for stage_name, line in launches.items():
        console.print(f"launch '{escape(stage_name)}': [dim]{escape(line)}[/dim]",
                      highlight=False, soft_wrap=True)
    probes = describe_default(pf.pipeline)
    if probes is not None:
        console.print(escape(probes), highlight=False, soft_wrap=True)
    policy = pf.pipeline.cleanup
    if policy is not None:
        when = "after " + ", ".join(policy.after) if policy.after else "after every stage"
        console.print(f"cleanup: {when}, keep {', '.join(policy.keep)} [dim](and whatever a "
                      "kept checkpoint or a later stage needs)[/dim]", highlight=False)
    if problems:
        console.print()
        _print_problems(console, problems)
    raise typer.Exit(1 if any(p.severity == "error" for p in problems) else 0)


def _plan_json(the_plan: Plan, pf: PipelineFile, launches: dict[str, str],
               problems: list[Problem]) -> dict[str, Any]:
    """`graftline plan --json`: the plan, each stage's launch line, and the file's problems."""
    return {
        "name": the_plan.name,
        "base": the_plan.base,
        "total_bytes": the_plan.total_bytes,
        "free_bytes": the_plan.free_bytes,
        "merged_bytes": the_plan.merged_bytes,
        "steps": [
            {
                "name": s.name,
                "kind": s.kind,
                "from": s.parent,
                "action": s.action,
                "starts_from": s.starts_from,
                "reference": s.reference,
                "writes": s.writes,
                "bytes": s.bytes,
                "origin": s.origin,
                "foreign": s.foreign.path if s.foreign else None,
                "lora": s.lora.model_dump() if s.lora else None,
                "lr": s.train.lr if s.train else None,
                "launch": launches.get(s.name),
            }
            for s in the_plan.steps
        ],
        "cleanup": pf.pipeline.cleanup.model_dump() if pf.pipeline.cleanup else None,
        "problems": [p.__dict__ for p in problems],
    }


def _plan_table(the_plan: Plan) -> Table:
    """One row a stage: what it starts from (and its reference and steps), its adapter action,
    what it writes and about how many bytes."""
    table = Table(title=f"{the_plan.name}: plan", title_justify="left", expand=False)
    for column in ("#", "stage", "kind", "adapter", "starts from", "writes", "size"):
        table.add_column(column, overflow="fold")
    for index, step in enumerate(the_plan.steps, start=1):
        action = {"new": f"new r{step.lora.r}" if step.lora else "new"}.get(
            step.action, step.action
        )
        name = step.name + (f"\n[dim](foreach {step.origin})[/dim]" if step.origin else "")
        starts = step.starts_from
        if step.reference:
            starts += f"\n[cyan]reference:[/cyan] {step.reference}"
        if step.train is not None:
            steps = step.train.max_steps or f"{step.train.epochs} epochs"
            starts += f"\n[dim]{steps} steps, lr {step.train.lr:g}[/dim]"
        size = human_bytes(step.bytes) if step.bytes is not None else "unknown"
        table.add_row(str(index), name, step.kind, action, starts, step.writes, size)
    return table


def _launch_lines(pf: PipelineFile) -> dict[str, str]:
    """The exact command line of each stage with processes > 1 (docs/distributed.md)."""
    pipeline = pf.pipeline
    if not any_distributed(pipeline):
        return {}
    return launch_lines(pipeline, detect_env(), search_dir=pf.directory)


def register(app: typer.Typer) -> None:
    app.command("validate")(validate)
    app.command("plan")(plan)

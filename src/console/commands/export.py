"""`graftline export CKPT --out DIR`: merge a checkpoint's adapter chain into its base, streaming,
write a complete model directory and verify it."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)

if TYPE_CHECKING:
    from graftline.engine.export import ExportPlan, ExportResult

FORMAT_HELP = ("Extra format: gguf (llama.cpp's converter, graftline[gguf]) or ollama (a "
               "Modelfile). Repeatable.")
GGUF_TYPE_HELP = ("GGUF type: f32, f16, bf16 or q8_0 (written by the converter), or a K-quant "
                  "such as q4_k_m (llama.cpp's quantizer, from graftline[gguf] or "
                  "GRAFTLINE_LLAMA_QUANTIZE). Implies "
                  "--format gguf; default: follows --dtype.")


def export(
    checkpoint: Path = typer.Argument(..., help="Adapter or model checkpoint directory.",
                                      show_default=False),
    out: Path = typer.Option(..., "--out", "-o", help="Directory to write the model into.",
                             show_default=False),
    dtype: str = typer.Option("bfloat16", "--dtype",
                              help="Weights dtype: bfloat16, float16 or float32."),
    formats: list[str] = typer.Option([], "--format", "-f", help=FORMAT_HELP),
    gguf_type: str | None = typer.Option(None, "--gguf-type", help=GGUF_TYPE_HELP),
    force: bool = typer.Option(False, "--force",
                               help="Write into a non-empty directory (replaces an earlier "
                                    "export's files)."),
    shard_size: str | None = typer.Option(None, "--shard-size",
                                          help="Repack into files of at most this size (e.g. "
                                               "5GB); default: mirror the base's shards."),
    no_verify: bool = typer.Option(False, "--no-verify",
                                   help="Skip reloading and comparing logits (not recommended)."),
    check_data: Path | None = typer.Option(
        None, "--check-data",
        help="JSON lines the adapter was trained on: decides from its loss whether it was "
             "trained on its recorded base or on an in-memory merge of the hand-made adapters "
             "written before it (refused if the latter)."),
) -> None:
    """Export a checkpoint as a complete, verified model directory.

    Resolves the adapter's base from the lineage (graftline.json or adapter_config.json), adds
    scale·B@A to each targeted weight of the full-precision base one tensor at a time (memory
    stays near one tensor), writes config, generation config, tokenizer + chat template, the
    safetensors index and a model card, then reloads the export and compares its logits with
    base + adapter. Exit status: 0 verified, 1 verification or format failed, 2 refused.
    """
    # Imported here so `graftline --help` stays fast (this pulls in torch).
    from graftline.engine.export import ExportRefused, plan_export

    console = Console()
    err = Console(stderr=True)
    try:
        plan = plan_export(checkpoint, out, dtype=dtype, formats=tuple(formats), force=force,
                           shard_size=shard_size, verify=not no_verify, gguf_type=gguf_type,
                           check_data=check_data)
    except ExportRefused as exc:
        where = f"[bold]{escape(exc.path)}[/bold]: " if exc.path else ""
        err.print(f"[red]✗ export refused[/red]: {where}{escape(exc.message)}", highlight=False,
                  soft_wrap=True)
        if exc.fix:
            err.print(f"    [dim]fix:[/dim] {escape(exc.fix)}", highlight=False, soft_wrap=True)
        raise typer.Exit(2) from None
    for line in plan.describe():
        style = "yellow" if line.startswith("warning") else ""
        console.print(f"[{style}]{escape(line)}[/]" if style else escape(line), highlight=False,
                      soft_wrap=True)

    result = _run_with_progress(plan, console, err)
    verification = result.verification
    _print_verification(result, console, err)
    for problem in result.problems[1 if verification and not verification["passed"] else 0:]:
        err.print(f"[red]✗[/red] {escape(problem)}", highlight=False, soft_wrap=True)
    console.print(f"{'[green]✓[/green]' if result.ok else '[red]✗[/red]'} {escape(str(result.out))}"
                  f": {len(result.files)} files, {result.bytes / 1e6:.1f} MB in "
                  f"{result.seconds:.1f} s", highlight=False, soft_wrap=True)
    raise typer.Exit(0 if result.ok else 1)


def _print_verification(result: ExportResult, console: Console, err: Console) -> None:
    """The export's logits check, the GGUF's tensors and its run in llama.cpp, in words."""
    verification = result.verification
    if verification is None:
        console.print("[yellow]! not verified[/yellow] (--no-verify)", highlight=False)
    elif verification["passed"]:
        console.print(f"[green]✓ verified[/green]: {escape(verification['message'])}; top-1 "
                      f"agreement {verification['top1_agreement']:.1%}; greedy generation "
                      f"{'identical' if verification['generation_matches'] else 'differs'}",
                      highlight=False, soft_wrap=True)
    else:
        err.print(f"[red]✗ verification failed[/red]: {escape(verification['message'])}",
                  highlight=False, soft_wrap=True)
    gguf = result.gguf_verification
    if gguf is not None and gguf["tensors_passed"]:
        console.print(f"[green]✓ GGUF verified[/green]: {escape(gguf['tensors_message'])}",
                      highlight=False, soft_wrap=True)
    runtime = None if gguf is None else gguf["runtime"]
    if runtime is not None and runtime["status"] == "passed":
        console.print(f"[green]✓ GGUF runs in llama.cpp[/green]: "
                      f"{escape(runtime['message'])}", highlight=False, soft_wrap=True)
    elif runtime is not None and runtime["status"] == "not_run":
        console.print(f"[yellow]! GGUF {escape(runtime['message'])}[/yellow]; its tensors "
                      "are verified", highlight=False, soft_wrap=True)


def _run_with_progress(plan: ExportPlan, console: Console, err: Console) -> ExportResult:
    """Run the planned export under a byte progress bar; a late refusal exits with status 2."""
    from graftline.engine.export import ExportProgress, ExportRefused, run_export

    columns = (TextColumn("{task.description}"), BarColumn(), DownloadColumn(),
               TransferSpeedColumn(), TimeRemainingColumn())
    with Progress(*columns, console=console, transient=False) as bar:
        task = bar.add_task("merging", total=plan.total_bytes)

        def show(update: ExportProgress) -> None:
            label = {"merge": f"merging {update.shard or ''}", "files": "writing config/tokenizer",
                     "verify": "verifying", "formats": update.message,
                     "done": "done"}[update.phase]
            bar.update(task, completed=update.done_bytes, description=label)

        try:
            return run_export(plan, progress=show)
        except ExportRefused as exc:
            err.print(f"[red]✗ export refused[/red]: {escape(str(exc))}", highlight=False)
            raise typer.Exit(2) from None


def register(app: typer.Typer) -> None:
    """Add this module's commands to the CLI."""
    app.command("export")(export)

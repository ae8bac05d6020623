"""The `graftline` command line. Each command group lives in its own module under commands/."""

from __future__ import annotations

import typer

from graftline import __version__
from graftline.console.commands import (
    control,
    demo,
    export,
    lineage,
    logs,
    rehearse,
    runs,
    validate,
)

app = typer.Typer(
    name="graftline",
    help=(
        "A terminal console for multi-stage LoRA post-training.\n\n"
        "Describe a chain of stages (SFT → merge → SFT → DPO/IPO → GRPO → export) in a TOML file, "
        "check it with `validate` and `plan`, launch it with `run` (it keeps training when your "
        "SSH session drops), watch it with `attach`, inspect checkpoints with `lineage`, free disk "
        "with `cleanup`, and ship with `export`."
    ),
    no_args_is_help=False,
    rich_markup_mode="rich",
    pretty_exceptions_enable=False,
)

for module in (validate, runs, control, logs, demo, lineage, export, rehearse):
    module.register(app)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"graftline {__version__}")
        raise typer.Exit()


@app.callback(invoke_without_command=True)
def _root(
    ctx: typer.Context,
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                 help="Print the version and exit."),
) -> None:
    if ctx.invoked_subcommand is None:
        runs.open_home()


def main() -> None:
    app()


if __name__ == "__main__":
    main()

"""The `graftline` command line. Each command group lives in its own module under commands/.

This module also shapes `--help` for people: one-line summaries in the command list, paragraphs
that reflow to the terminal instead of breaking where the source was wrapped, an Examples section
per command, argument names in capitals (FILE, RUN), and no type tag on flags.
"""

from __future__ import annotations

import inspect
import re
from typing import Any

import typer
from typer.core import TyperArgument, TyperGroup, TyperOption

from graftline import __version__
from graftline.console.commands import (
    control,
    demo,
    export,
    init,
    lineage,
    logs,
    rehearse,
    runs,
    validate,
)
from graftline.engine.common import GraftlineError, collect_less_often

# -- help that reads well -------------------------------------------------------------------------
# Typer shows a type tag after every parameter (`--yes <bool>`, `{file} <path>`). A flag takes no
# value, and an argument's capitalised name says what it is: leave both without the tag.
_option_type = TyperOption.display_type_rich


def _option_display_type(self: TyperOption, ctx: typer.Context) -> str | None:
    if self.is_flag or self.count:
        return None
    return _option_type(self, ctx)


def _argument_usage(self: TyperArgument) -> str:
    name = self.display_name_raw
    name = name if self.required else f"[{name}]"
    return name + ("..." if self.nargs != 1 else "")


TyperOption.display_type_rich = _option_display_type  # type: ignore[method-assign,assignment]
TyperArgument.display_type_rich = lambda self, ctx: None  # type: ignore[method-assign]
TyperArgument.display_name_raw = property(  # type: ignore[method-assign,assignment]
    lambda self: self.metavar or (self.name or "").upper())
TyperArgument._usage_display_name = _argument_usage  # type: ignore[method-assign]

EXAMPLES: dict[str, list[tuple[str, str]]] = {
    "validate": [("graftline validate examples/demo.toml", "every problem, with line and fix"),
                 ("graftline validate pipeline.toml --json", "the same, for a script")],
    "plan": [("graftline plan examples/demo.toml", "what each stage starts from and writes"),
             ("graftline plan pipeline.toml --json", "the plan as JSON")],
    "init": [("graftline init", "a starter pipeline on the offline toy model"),
             ("graftline init my.toml --base Qwen/Qwen2.5-0.5B-Instruct", "for a hub model"),
             ("graftline init --base ./models/llama --flow sft-dpo", "SFT then DPO")],
    "run": [("graftline run pipeline.toml", "rehearse, start, and open the console"),
            ("graftline run pipeline.toml -d", "start in the background and return"),
            ("graftline run pipeline.toml --no-rehearse --runs-dir /data/runs", "")],
    "attach": [("graftline attach", "the latest run"),
               ("graftline attach demo-2026", "by id or unique prefix, from any directory"),
               ("graftline attach demo --theme light", "")],
    "ls": [("graftline ls", "every run you started, wherever it lives"),
           ("graftline ls --runs-dir ./runs", "only (and remember) the runs under ./runs")],
    "resume": [("graftline resume", "continue the latest run after a crash or stop"),
               ("graftline resume demo-2026 -d", "in the background")],
    "stop": [("graftline stop", "save a checkpoint and stop the latest run"),
             ("graftline stop demo --no-wait", "ask, and return at once")],
    "pause": [("graftline pause", "pause the latest run at the next step"),
              ("graftline resume", "continue it")],
    "logs": [("graftline logs", "the latest run's events"),
             ("graftline logs demo -f", "follow them live (Ctrl-C stops following only)"),
             ("graftline logs demo --json | jq .type", "for scripts")],
    "demo": [("graftline demo", "the whole chain on a tiny offline model, in minutes"),
             ("graftline demo --detach", "start it and return")],
    "lineage": [("graftline lineage", "every checkpoint under the runs directory"),
                ("graftline lineage runs/demo-2026…", "one run")],
    "cleanup": [("graftline cleanup --keep final", "the plan: what would go, what stays"),
                ("graftline cleanup --keep final --yes", "delete as planned")],
    "export": [("graftline export runs/demo-2026…/stages/grpo --out ./model", "")],
    "rehearse": [("graftline rehearse pipeline.toml", "every stage for a few steps on a twin")],
}


def _reflow(text: str) -> str:
    """Paragraphs as one line each (the terminal wraps them), blank lines between them kept."""
    paragraphs = [" ".join(p.split()) for p in inspect.cleandoc(text).split("\n\n")]
    return "\n\n".join(p for p in paragraphs if p)


def _summary(text: str) -> str:
    """The first sentence of the first paragraph: the command list's one line."""
    first = _reflow(text).split("\n\n")[0]
    match = re.match(r"(.+?[.!?])(\s|$)", first)
    return match.group(1) if match else first


def _epilog(name: str) -> str | None:
    """The Examples section: each command on its own line under a `#` note, so no line wraps
    at 80 columns and each can be copied as it is."""
    examples = EXAMPLES.get(name)
    if not examples:
        return None
    lines = []
    for command, note in examples:
        if note:
            lines.append(f"  [dim]# {note}[/dim]")
        lines.append(f"  {command.replace('[', chr(92) + '[')}")
    return "[bold]Examples[/bold]\n" + "\n".join(lines)


def _teach(app: typer.Typer) -> None:
    for info in app.registered_commands:
        name = info.name or (info.callback.__name__ if info.callback else "")
        doc = info.help or (inspect.getdoc(info.callback) if info.callback else "") or ""
        info.help = _reflow(doc)
        info.short_help = info.short_help or _summary(doc)
        info.epilog = info.epilog or _epilog(name)


def say_error(exc: GraftlineError) -> None:
    """An error graftline raised on purpose, as the user should read it: what went wrong, the
    problems behind it (a launch's), and the fix. Never a traceback."""
    typer.echo(f"graftline: error: {exc.message}", err=True)
    for problem in getattr(exc, "problems", None) or []:
        typer.echo(f"  {problem}", err=True)
    if exc.fix:
        typer.echo(f"  fix: {exc.fix}", err=True)


class _Commands(TyperGroup):
    """Every command (and `graftline` alone) runs inside this: a `GraftlineError` that reaches
    it is printed with its fix and ends the command with status 1. Anything else escaping is a
    bug and keeps its traceback."""

    def invoke(self, ctx: Any) -> Any:  # typer's own vendored click.Context
        try:
            return super().invoke(ctx)
        except GraftlineError as exc:
            say_error(exc)
            raise typer.Exit(1) from None


app = typer.Typer(
    cls=_Commands,
    name="graftline",
    help=(
        "A terminal console for multi-stage LoRA post-training.\n\n"
        "Describe a chain of stages (SFT → merge → SFT → DPO/IPO → GRPO → export) in a TOML file "
        "(`graftline init` writes a starter), check it with `validate` and `plan`, launch it with "
        "`run` (it keeps training when your SSH session drops), watch it with `attach` from any "
        "directory, inspect checkpoints with `lineage`, free disk with `cleanup`, and ship with "
        "`export`. `graftline` alone opens the console.\n\n"
        "Environment: GRAFTLINE_THEME (dark, light, low or a theme file's name; `t` in the "
        "console cycles and remembers it in $XDG_CONFIG_HOME/graftline/config.toml), "
        "GRAFTLINE_ASCII=1 (plain ASCII for terminals without Unicode), GRAFTLINE_STATE_DIR (the "
        "run index, default $XDG_STATE_HOME/graftline), GRAFTLINE_RUNS_DIR (runs for `graftline` "
        "alone, default ./runs)."
    ),
    epilog=("[bold]Examples[/bold]\n  [dim]# the whole chain on a tiny offline model[/dim]\n"
            "  graftline demo\n  [dim]# a starter pipeline of your own, checked[/dim]\n"
            "  graftline init && graftline validate pipeline.toml\n"
            "  [dim]# start it in the background, list every run, watch the latest[/dim]\n"
            "  graftline run pipeline.toml -d\n  graftline ls\n  graftline attach"),
    no_args_is_help=False,
    rich_markup_mode="rich",
    pretty_exceptions_enable=False,
)

for module in (init, validate, runs, control, logs, demo, lineage, export, rehearse):
    module.register(app)
_teach(app)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"graftline {__version__}")
        raise typer.Exit()


@app.callback(invoke_without_command=True)
def _root(
    ctx: typer.Context,
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                 help="Print the version and exit."),
    theme: str | None = typer.Option(None, "--theme", metavar="NAME", help=runs.THEME_HELP),
) -> None:
    if ctx.invoked_subcommand is None:
        runs.open_home(theme)


def main() -> None:
    from graftline.console.quiet import quiet_progress_bars

    quiet_progress_bars()
    collect_less_often()  # `export`, `rehearse` and `run --foreground` import the training stack
    app()


__all__ = ["EXAMPLES", "app", "main", "say_error"]

if __name__ == "__main__":
    main()

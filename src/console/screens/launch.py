"""Pick a pipeline file, read its validation and plan, launch it in the background."""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from rich.console import Group
from rich.table import Table
from rich.text import Text
from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, VerticalScroll
from textual.screen import Screen
from textual.widgets import Footer, OptionList, Static
from textual.widgets.option_list import Option

from graftline.console.formats import human_bytes
from graftline.console.messages import OpenRun, PipelineChecked, ShowRuns, WorkerFailures


def pipeline_files(folder: Path) -> list[Path]:
    """TOML files in `folder` and in `folder/examples`, in a stable order."""
    found: list[Path] = []
    for where in (folder, folder / "examples"):
        if where.is_dir():
            found += sorted(p for p in where.glob("*.toml") if p.name != "pyproject.toml")
    return found


def shown_path(path: Path | str, root: Path) -> str:
    """Paths relative to where the user is: short, and the same on every machine."""
    text = str(path)
    for base in (root.resolve(), root):
        prefix = str(base).rstrip("/") + "/"
        if text.startswith(prefix):
            return text[len(prefix):]
    return text


@dataclass(frozen=True)
class Report:
    file: Path
    ok: bool
    text: Text


def check_file(path: Path, root: Path) -> Report:
    """Validate and plan `path`; everything the launch screen shows about it. Runs in a worker."""
    from graftline.engine.pipeline import plan_of, validate_file

    pf, problems = validate_file(path)
    text = Text()
    errors = [p for p in problems if p.severity == "error"]
    if not problems:
        text.append("✓ valid: no problems found\n", style="bold green")
    for problem in problems:
        style = "bold red" if problem.severity == "error" else "yellow"
        text.append(f"{problem.severity}: ", style=style)
        text.append(f"{shown_path(problem.where, root)}: {problem.message}\n")
        if problem.fix:
            text.append(f"    fix: {problem.fix}\n", style="dim")
    if pf is not None:
        plan = plan_of(pf)
        text.append(f"\nplan — {plan.name} on {shown_path(plan.base, root)}\n", style="bold")
        for index, step in enumerate(plan.steps, 1):
            text.append(f"{index:>2}. {step.name} ", style="bold")
            text.append(f"({step.kind}) ")
            text.append(f"{step.starts_from}" if step.starts_from else "")
            text.append("\n")
            if step.reference:
                text.append(f"     reference: {step.reference}\n", style="dim")
            if step.writes:
                size = f" ({human_bytes(step.bytes)})" if step.bytes is not None else ""
                text.append(f"     writes: {shown_path(step.writes, root)}{size}\n", style="dim")
        if plan.total_bytes is not None:
            text.append(f"\ndisk: {human_bytes(plan.total_bytes)} in all\n")
        for note in plan.notes:
            text.append(f"note: {note}\n", style="dim")
    return Report(path, ok=pf is not None and not errors, text=text)


def empty_report(folder: Path) -> Group:
    """What an empty folder shows: what to do, as a table that wraps to the box's width."""
    table = Table(box=None, show_header=False, padding=(0, 1), expand=True)
    table.add_column("how", no_wrap=True, style="bold")
    table.add_column("what", ratio=1)
    table.add_row("i", "write a commented starter pipeline here (pipeline.toml, on the offline "
                       "toy model, with small datasets beside it) and pick it")
    table.add_row("graftline init", "the same from a shell; --base names your own model")
    table.add_row("graftline demo", "run the bundled demo: the whole chain on a tiny model, "
                                    "minutes on a CPU")
    return Group(Text(f"No pipeline files in {folder} or its examples/ folder.\n",
                      style="yellow"),
                 Text("To start:"), table, Text("\ng rescans this folder.", style="dim"))


def editor_command() -> list[str] | None:
    """$VISUAL or $EDITOR as an argument list (it may carry flags: `code -w`)."""
    import shlex

    editor = os.environ.get("VISUAL") or os.environ.get("EDITOR")
    return shlex.split(editor) if editor else None


class LaunchScreen(WorkerFailures, Screen[None]):
    BINDINGS: ClassVar = [
        Binding("L", "launch", "Launch"),
        Binding("R", "toggle_rehearse", "Rehearse first"),
        Binding("e", "edit", "Edit"),
        Binding("i", "starter", "Starter file"),
        Binding("r", "runs", "Runs"),
        Binding("g", "rescan", "Rescan", show=False),
    ]
    DEFAULT_CSS = """
    LaunchScreen #launch-body { height: 1fr; }
    LaunchScreen #files {
        width: 1fr; min-width: 24; max-width: 40; border: round $panel-lighten-2;
    }
    LaunchScreen #report-box { width: 3fr; border: round $panel-lighten-2; padding: 0 1; }
    LaunchScreen #launch-title { height: 1; background: $panel; padding: 0 1; }
    """

    def __init__(self, folder: Path, runs_dir: Path) -> None:
        super().__init__()
        self.folder = Path(folder)
        self.runs_dir = Path(runs_dir)
        self.files: list[Path] = []
        self.report: Report | None = None
        self.checks = 0  # reports shown (tests wait on this)

    def compose(self) -> ComposeResult:
        yield Static("launch — pick a pipeline file (here and in examples/)", id="launch-title",
                     markup=False)
        with Horizontal(id="launch-body"):
            yield OptionList(id="files")
            with VerticalScroll(id="report-box"):
                yield Static("", id="report")
        yield Footer()

    def on_mount(self) -> None:
        self.query_one("#files").border_title = "pipelines"
        self.query_one("#report-box").border_title = "validate · plan"
        self.action_rescan()

    def action_rescan(self) -> None:
        self.files = pipeline_files(self.folder)
        options = self.query_one(OptionList)
        options.clear_options()
        if not self.files:
            # the box keeps its size and says why it is empty; the report says what to do
            options.add_option(Option("(none here yet)", disabled=True))
            self.query_one("#report", Static).update(empty_report(self.folder.resolve()))
            self.report = None
            return
        options.add_options(Option(shown_path(p, self.folder), id=str(i))
                            for i, p in enumerate(self.files))
        options.highlighted = 0
        options.focus()

    def on_option_list_option_highlighted(self, event: OptionList.OptionHighlighted) -> None:
        if event.option.id is None:
            return
        path = self.files[int(event.option.id)]
        self.query_one("#report", Static).update(Text(f"checking {path.name}…", style="dim"))
        self._check(path)

    def on_option_list_option_selected(self, event: OptionList.OptionSelected) -> None:
        self.action_launch()

    @work(thread=True, exclusive=True, group="check", exit_on_error=False)
    def _check(self, path: Path) -> None:
        try:
            report = check_file(path, self.folder)
        except Exception as exc:  # validate must never take the console down
            # shown in place of the report: the file, not the console, is what failed
            report = Report(path, False, Text(f"cannot check {path.name}: {exc}", style="red"))
        self.post_message(PipelineChecked(report))

    @on(PipelineChecked)
    def _checked(self, message: PipelineChecked) -> None:
        self._show(message.report)

    def _show(self, report: Report) -> None:
        self.report = report
        self.query_one("#report", Static).update(report.text)
        self.checks += 1

    rehearse_first: bool = True

    def action_toggle_rehearse(self) -> None:
        self.rehearse_first = not self.rehearse_first
        self.notify("rehearse first: " + ("on" if self.rehearse_first else "off"))

    def action_launch(self) -> None:
        report = self.report
        if report is None:
            self.notify("Pick a pipeline file first.", severity="warning")
            return
        if not report.ok:
            self.notify(f"{report.file.name} has errors: fix them first (listed on the right).",
                        severity="error")
            return
        first = (": the engine rehearses it on a tiny twin first (R turns it off)"
                 if self.rehearse_first else "")
        self.notify(f"launching {report.file.name} in the background{first}")
        self._launch(report.file, self.rehearse_first)

    @work(thread=True, exclusive=True, group="launch", exit_on_error=False,
          description="launch")
    def _launch(self, path: Path, rehearse_first: bool) -> None:
        """Start the run the way `graftline run -d` does and attach at once: the rehearsal is
        the engine's first phase (a `rehearsal` row on the dashboard, its report in the log;
        a failed one ends the run before stage 1 with the fix), never a wait here. A launch
        that raises is told by `WorkerFailures` ("launch failed: …", with its fix)."""
        from graftline.console.launcher import launch_background

        self.post_message(OpenRun(launch_background(path, rehearse=rehearse_first)))

    def action_runs(self) -> None:
        self.post_message(ShowRuns())

    # -- a starter file, and the user's editor --------------------------------------------------

    def action_starter(self) -> None:
        """Write pipeline.toml (and toy data) here, as `graftline init` does, and pick it."""
        from graftline.console.commands.init import starter, write_toy_data

        target = self.folder / "pipeline.toml"
        if target.exists():
            self.notify(f"{target.name} exists already: pick it, or e to edit it.")
        else:
            target.write_text(starter(target, "toy:addition", "sft-dpo"), encoding="utf-8")
            write_toy_data(self.folder / "data")
            self.notify(f"wrote {target.name} (SFT → DPO → export on the toy model); "
                        "e edits it, L launches it.")
        self.action_rescan()
        if target in self.files:
            self.query_one(OptionList).highlighted = self.files.index(target)

    def _selected(self) -> Path | None:
        index = self.query_one(OptionList).highlighted
        if index is None or not self.files or index >= len(self.files):
            return None
        return self.files[index]

    def action_edit(self) -> None:
        from textual.app import SuspendNotSupported

        path = self._selected()
        if path is None:
            self.notify("Pick a pipeline file first (or i writes a starter).", severity="warning")
            return
        command = editor_command()
        if command is None:
            self.notify(f"Set $EDITOR (e.g. `export EDITOR=nano`) to edit {path.name} from "
                        "here.", severity="warning", timeout=8)
            return
        try:
            with self.app.suspend():
                subprocess.run([*command, str(path)], check=False)
        except SuspendNotSupported:  # no real terminal (a test, a web console): run it as is
            subprocess.run([*command, str(path)], check=False, stdin=subprocess.DEVNULL,
                           capture_output=True)
        except OSError as exc:
            self.notify(f"cannot start the editor {command[0]}: {exc}", severity="error")
            return
        self._check(path)  # re-validate what was edited

"""Pick a pipeline file, read its validation and plan, launch it in the background."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from rich.console import Group
from rich.table import Table
from rich.text import Text
from textual import work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, VerticalScroll
from textual.screen import Screen
from textual.widgets import Footer, OptionList, Static
from textual.widgets.option_list import Option

from graftline.console.formats import human_bytes
from graftline.console.messages import OpenRun, ShowRuns, WorkerFailures


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


def rehearsal_verdict(done: subprocess.CompletedProcess[str]) -> str:
    """What a failed `graftline rehearse --json` found, in one line: the first failing stage's
    error and fix (or the file's first problem); the process's own error if it printed no
    report."""
    lines = done.stdout.strip().splitlines()
    try:
        report = json.loads(lines[-1]) if lines else None
    except ValueError:
        report = None
    if not isinstance(report, dict):
        tail = (done.stderr or done.stdout).strip().splitlines()[-3:]
        return " / ".join(tail) or f"exit status {done.returncode}"
    for stage in report.get("stages", []):
        if stage.get("status") == "failed":
            fix = f" Fix: {stage['fix']}" if stage.get("fix") else ""
            return f"{stage['name']} ({stage['kind']}): {stage['error']}{fix}"
    for problem in report.get("problems", []):
        fix = f" Fix: {problem['fix']}" if problem.get("fix") else ""
        return f"{problem['message']}{fix}"
    return "see `graftline rehearse` for the report"


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


def rehearsal_line(event: dict[str, object], done: list[str]) -> str:
    """One progress line from a `graftline rehearse --json` stderr event; `done` collects the
    finished stages' marks."""
    kind, stage = event.get("event"), event.get("stage")
    if kind == "twin":
        return f"built the twin: {event.get('describe', '')}"
    if kind == "stage_started":
        return f"{stage} ({event.get('kind', '')}) running…"
    if kind == "stage_finished":
        mark = "✓" if event.get("status") == "complete" else "✗"
        seconds = event.get("seconds")
        took = float(seconds) if isinstance(seconds, int | float) else 0.0
        done.append(f"{mark} {stage} {took:.1f} s")
        return f"{stage} {'passed' if mark == '✓' else 'failed'}"
    if kind == "cleanup":
        return f"cleanup after {stage}"
    return ""


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
    LaunchScreen #progress { height: auto; padding: 0 1; color: $warning; display: none; }
    LaunchScreen #progress.shown { display: block; }
    """

    def __init__(self, folder: Path, runs_dir: Path) -> None:
        super().__init__()
        self.folder = Path(folder)
        self.runs_dir = Path(runs_dir)
        self.files: list[Path] = []
        self.report: Report | None = None
        self.checks = 0  # reports shown (tests wait on this)
        self.progress: list[str] = []  # rehearsal progress lines shown (tests read this)
        self._rehearsing_since: float | None = None
        self._progress_now = ""
        self._progress_done: list[str] = []

    def compose(self) -> ComposeResult:
        yield Static("launch — pick a pipeline file (here and in examples/)", id="launch-title",
                     markup=False)
        yield Static("", id="progress", markup=False)
        with Horizontal(id="launch-body"):
            yield OptionList(id="files")
            with VerticalScroll(id="report-box"):
                yield Static("", id="report")
        yield Footer()

    def on_mount(self) -> None:
        self.query_one("#files").border_title = "pipelines"
        self.query_one("#report-box").border_title = "validate · plan"
        self.action_rescan()
        self.set_interval(1.0, self._tick)

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
            report = Report(path, False, Text(f"cannot check {path.name}: {exc}", style="red"))
        self.app.call_from_thread(self._show, report)

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
        first = " after a rehearsal on a tiny twin (R turns it off)" if self.rehearse_first else ""
        self.notify(f"launching {report.file.name} in the background{first}…")
        self._launch(report.file, self.rehearse_first)

    @work(thread=True, exclusive=True, group="launch", exit_on_error=False)
    def _launch(self, path: Path, rehearse_first: bool) -> None:
        from graftline.console.launcher import launch_background

        if rehearse_first:
            # in its own process: the console never holds a trainer, and a rehearsal's imports
            # and training stay out of the UI's memory; its progress arrives on stderr
            self.app.call_from_thread(self._rehearsal_started)
            try:
                done = self._rehearse(path)
            finally:
                self.app.call_from_thread(self._rehearsal_ended)
            if done.returncode != 0:
                self.app.call_from_thread(
                    self.notify, f"not launched: the rehearsal failed: {rehearsal_verdict(done)}",
                    severity="error", timeout=30)
                return
        try:
            run_dir = launch_background(path)
        except Exception as exc:
            self.app.call_from_thread(self.notify, f"launch failed: {exc}", severity="error",
                                      timeout=10)
            return
        self.post_message(OpenRun(run_dir))

    def _rehearse(self, path: Path) -> subprocess.CompletedProcess[str]:
        """`graftline rehearse --json PATH`, its progress shown line by line as it comes."""
        command = [sys.executable, "-m", "graftline", "rehearse", "--json", str(path)]
        tail: list[str] = []
        done_marks: list[str] = []
        with tempfile.TemporaryFile("w+", encoding="utf-8") as out:
            proc = subprocess.Popen(command, stdout=out, stderr=subprocess.PIPE, text=True,
                                    env=os.environ.copy())
            assert proc.stderr is not None
            for raw in proc.stderr:
                tail = [*tail, raw.rstrip()][-20:]
                try:
                    event = json.loads(raw)
                except ValueError:
                    continue
                if not isinstance(event, dict):
                    continue
                line = rehearsal_line(event, done_marks)
                if line:
                    marks = list(done_marks)
                    self.app.call_from_thread(self._progress_event, line, marks)
            proc.wait()
            out.seek(0)
            stdout = out.read()
        return subprocess.CompletedProcess(command, proc.returncode, stdout, "\n".join(tail))

    def _progress_event(self, line: str, marks: list[str]) -> None:
        self._progress_done = marks
        self._progress_show(line)

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

    # -- rehearsal progress -------------------------------------------------------------------

    def _progress_show(self, now_line: str | None = None) -> None:
        if now_line is not None:
            self._progress_now = now_line
            self.progress.append(now_line)
        box = self.query_one("#progress", Static)
        if self._rehearsing_since is None:
            box.remove_class("shown")
            return
        elapsed = time.monotonic() - self._rehearsing_since
        done = "  ".join(self._progress_done)
        box.update(f"rehearsing on a tiny twin ({elapsed:.0f} s): {self._progress_now}"
                   + (f"\n{done}" if done else ""))
        box.add_class("shown")

    def _tick(self) -> None:
        if self._rehearsing_since is not None:
            self._progress_show()

    def _rehearsal_started(self) -> None:
        self._rehearsing_since = time.monotonic()
        self._progress_done = []
        self._progress_show("starting: building the twin and sampling the data…")

    def _rehearsal_ended(self) -> None:
        self._rehearsing_since = None
        self._progress_show()

"""`e`: export a checkpoint. Target, dtype, formats, the merge chain; progress; verification.

The plan comes from `graftline.engine.export.writer.plan_export` (pure: reads headers and configs,
refuses bad targets before a byte is written); the export itself is `run_export`, in a worker
thread, reporting progress back here. The console never merges anything itself.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, ClassVar

from rich.text import Text
from textual import work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Button, Checkbox, Input, Label, ProgressBar, Select, Static

DTYPES = ("bfloat16", "float16", "float32")
OPTIONAL_FORMATS = ("gguf", "ollama")


def shorten(text: str, root: Path) -> str:
    """Paths relative to the runs root and the home folder: short, and host-independent."""
    for base in (str(root.resolve()), str(root)):
        text = text.replace(base.rstrip("/") + "/", "")
    home = os.path.expanduser("~")
    return text.replace(home + "/", "~/") if home not in ("", "/") else text


class ExportModal(ModalScreen[Path | None]):
    DEFAULT_CSS = """
    ExportModal { align: center middle; }
    ExportModal > Vertical {
        width: 96; max-width: 98%; height: auto; max-height: 96%; border: thick $primary;
        background: $surface; padding: 0 1;
    }
    ExportModal #export-title { text-style: bold; }
    ExportModal .row { height: auto; }
    ExportModal .row Label { width: 9; padding-top: 1; }
    ExportModal #out { width: 1fr; }
    ExportModal #dtype { width: 18; }
    ExportModal Checkbox { width: auto; border: none; }
    ExportModal #plan-box { height: auto; max-height: 9; border: round $panel-lighten-2; }
    ExportModal #progress { margin: 0 0; }
    ExportModal #buttons { height: auto; align-horizontal: right; }
    ExportModal Button { margin-left: 1; }
    """
    BINDINGS: ClassVar = [
        Binding("escape", "close", "Close"),
        Binding("ctrl+e", "start", "Export", priority=True),
    ]

    def __init__(self, checkpoint: Path, *, root: Path) -> None:
        super().__init__()
        self.checkpoint = Path(checkpoint)
        self.root = Path(root)
        self.plan: Any = None
        self.result: Any = None
        self.running = False
        self.planned = 0  # plans shown (tests wait on these)
        self.finished = 0

    def default_out(self) -> Path:
        return self.root / "exports" / self.checkpoint.name

    def compose(self) -> ComposeResult:
        with Vertical():
            yield Static(f"export {shorten(str(self.checkpoint), self.root)}", id="export-title",
                         markup=False)
            with Horizontal(classes="row"):
                yield Label("target")
                yield Input(shorten(str(self.default_out()), self.root), id="out")
            with Horizontal(classes="row"):
                yield Label("dtype")
                yield Select([(d, d) for d in DTYPES], value="bfloat16", allow_blank=False,
                             id="dtype")
                yield Checkbox("safetensors", True, disabled=True, id="fmt-safetensors")
                for fmt in OPTIONAL_FORMATS:
                    yield Checkbox(fmt, False, id=f"fmt-{fmt}")
            with VerticalScroll(id="plan-box"):
                yield Static("planning…", id="plan")
            yield ProgressBar(total=100, show_eta=False, id="progress")
            yield Static("", id="status")
            with Horizontal(id="buttons"):
                yield Button("Close (esc)", id="close")
                yield Button("Export (ctrl+e)", id="start", variant="primary")

    def on_mount(self) -> None:
        self.query_one("#plan-box").border_title = "merge chain and output"
        target = self.query_one("#out", Input)
        target.cursor_blink = False  # steady over SSH, and the same in every screenshot
        target.focus()
        self._replan()

    # -- options -----------------------------------------------------------------------------

    def out_path(self) -> Path:
        text = self.query_one("#out", Input).value.strip()
        path = Path(os.path.expanduser(text))
        return path if path.is_absolute() else self.root / path

    def options(self) -> dict[str, Any]:
        formats = ["safetensors"] + [f for f in OPTIONAL_FORMATS
                                     if self.query_one(f"#fmt-{f}", Checkbox).value]
        return {"out": self.out_path(), "dtype": str(self.query_one("#dtype", Select).value),
                "formats": formats}

    def on_input_changed(self, _event: Input.Changed) -> None:
        self._replan()

    def on_select_changed(self, _event: Select.Changed) -> None:
        self._replan()

    def on_checkbox_changed(self, _event: Checkbox.Changed) -> None:
        self._replan()

    def _replan(self) -> None:
        if not self.running and self.is_mounted:
            self._plan(self.options())

    @work(thread=True, exclusive=True, group="export-plan", exit_on_error=False)
    def _plan(self, options: dict[str, Any]) -> None:
        try:
            from graftline.engine.export import plan_export

            plan = plan_export(self.checkpoint, options["out"], dtype=options["dtype"],
                               formats=tuple(options["formats"]))
            problem = None
        except ImportError as exc:
            plan, problem = None, f"export is not available in this engine: {exc}"
        except Exception as exc:  # ExportRefused carries the fix; show it as is
            plan, problem = None, str(exc)
        self.app.call_from_thread(self._show_plan, plan, problem)

    def _show_plan(self, plan: Any, problem: str | None) -> None:
        self.plan = plan
        box = self.query_one("#plan", Static)
        if plan is None:
            box.update(Text(shorten(problem or "cannot plan", self.root), style="bold red"))
        else:
            text = Text()
            chain = " → ".join(node.name or Path(node.path).name for node in plan.lineage)
            if chain:
                text.append("chain       ", style="dim")
                text.append(chain + "\n")
            for line in plan.describe():
                head, _, rest = line.partition(" ")
                text.append(f"{head:<12}", style="dim")
                text.append(shorten(rest.strip(), self.root) + "\n")
            box.update(text)
        self.query_one("#start", Button).disabled = plan is None or self.running
        self.planned += 1

    # -- export ------------------------------------------------------------------------------

    def on_button_pressed(self, event: Button.Pressed) -> None:
        if event.button.id == "start":
            self.action_start()
        else:
            self.action_close()

    def action_start(self) -> None:
        if self.running:
            return
        if self.plan is None:
            self.notify("Nothing to export: the plan was refused (see the panel).",
                        severity="error")
            return
        self.running = True
        self.query_one("#start", Button).disabled = True
        self.query_one("#status", Static).update("exporting…")
        self._export(self.plan)

    @work(thread=True, exclusive=True, group="export", exit_on_error=False)
    def _export(self, plan: Any) -> None:
        from graftline.engine.export import run_export

        def progress(update: Any) -> None:
            self.app.call_from_thread(self._progress, update.phase, update.fraction,
                                      update.message)

        try:
            result, problem = run_export(plan, progress), None
        except Exception as exc:
            result, problem = None, str(exc)
        self.app.call_from_thread(self._done, result, problem)

    def _progress(self, phase: str, fraction: float, message: str) -> None:
        self.query_one(ProgressBar).update(progress=round(fraction * 100))
        self.query_one("#status", Static).update(
            Text(f"{phase}: {shorten(message, self.root)}" if message else phase))

    def _done(self, result: Any, problem: str | None) -> None:
        self.running = False
        self.result = result
        self.finished += 1
        if not self.is_attached:  # the modal was closed while the export ran
            ok = result is not None and result.ok
            self.app.notify(f"export {'finished' if ok else 'failed'}: "
                            f"{shorten(str(result.out) if result else problem or '', self.root)}",
                            severity="information" if ok else "error", timeout=10)
            return
        status = self.query_one("#status", Static)
        if result is None:
            status.update(Text(f"export failed: {shorten(problem or '', self.root)}",
                               style="bold red"))
            return
        self.query_one(ProgressBar).update(progress=100)
        verification = result.verification or {}
        text = Text()
        if result.ok:
            text.append("✓ exported and verified  ", style="bold green")
        else:
            text.append("✗ export written but NOT verified  ", style="bold red")
        if "max_abs_diff" in verification:
            text.append(f"max |logit diff| {verification['max_abs_diff']:.2e} "
                        f"(tolerance {verification.get('tolerance', 0):.0e})  ")
        text.append(f"{shorten(str(result.out), self.root)}")
        for problem_line in result.problems:
            text.append(f"\n{problem_line}", style="red")
        status.update(text)

    def action_close(self) -> None:
        if self.running:
            self.notify("The export keeps running in the background; you will be told when "
                        "it is done.")
        self.dismiss(self.result.out if self.result is not None else None)

"""`e`: export a checkpoint. Target, dtype, formats, the merge chain; progress; verification.

Both the plan (`plan_export`: reads headers and configs, refuses bad targets before a byte is
written) and the export (`run_export`) run in one child process per dialog,
`python -m graftline.engine.export.worker serve` (`console/export_link.py`): started when the
dialog opens, asked for a new plan whenever an option changes and for the export on ctrl+e,
ended and reaped when the dialog closes. It pays for torch and transformers once; torch, peft
and the weights never enter the console's process, as the launch screen's rehearsal never
does. Paths are shown whole (absolute): the user must see exactly where gigabytes will be
written.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from rich.text import Text
from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Button, Checkbox, Input, Label, ProgressBar, Select, Static

from graftline.console.export_link import ExportWorkerLink
from graftline.console.messages import (
    ExportFinished,
    ExportPlanned,
    ExportProgress,
    WorkerFailures,
)

if TYPE_CHECKING:
    import subprocess

DTYPES = ("bfloat16", "float16", "float32")
GGUF_TYPES = ("f16", "bf16", "q8_0", "f32")  # what llama.cpp's converter writes without a compiler
OPTIONAL_FORMATS = ("gguf", "ollama")
REPLAN_DELAY = 0.3  # seconds of quiet typing before a new plan is asked for


def display_path(path: Path | str) -> str:
    """An absolute path as people write it: under the home folder as `~/…` (the target field
    expands it back)."""
    text = str(Path(path).absolute())
    home = os.path.expanduser("~").rstrip("/")
    if home and text.startswith(home + "/"):
        return "~/" + text[len(home) + 1:]
    return text


def _tilde_paths(line: str) -> str:
    """The plan's lines name absolute paths; shown the way the title and target are."""
    home = os.path.expanduser("~").rstrip("/")
    return line.replace(home + "/", "~/") if home else line


@dataclass(frozen=True)
class ExportedModel:
    """A model an export already wrote (its `graftline.json`, kind export)."""

    path: Path
    formats: tuple[str, ...]
    bytes: int
    dtype: str | None
    verified: bool | None  # None: no verification recorded
    verification: str = ""
    status: str = "complete"

    @classmethod
    def read(cls, directory: Path) -> ExportedModel | None:
        from graftline.engine.lineage import read_manifest

        found = read_manifest(Path(directory))
        if found is None or found.kind != "export":
            return None
        check = next((c for c in found.checks if c.name == "export_logits"), None)
        return cls(Path(directory), tuple(found.formats or ("safetensors",)), found.bytes,
                   found.dtype, None if check is None else check.status == "pass",
                   check.message if check is not None else "", found.status)

    @property
    def source(self) -> Path | None:
        """The checkpoint it was exported from, when that is still on disk."""
        from graftline.engine.lineage import read_manifest

        found = read_manifest(self.path)
        for parent in found.parents if found is not None else []:
            if parent.relation == "exported_from" and Path(parent.path).is_dir():
                return Path(parent.path)
        return None

    def describe(self) -> str:
        from graftline.engine.common import human_bytes

        if self.verified is True:
            verdict = "verified" + (f": {self.verification}" if self.verification else "")
        elif self.verified is False:
            verdict = f"NOT verified: {self.verification}"
        else:
            verdict = "no verification recorded"
        state = "" if self.status == "complete" else f" ({self.status})"
        return (f"already exported{state}: {display_path(self.path)}\n"
                f"  {' + '.join(self.formats)}, {self.dtype or '?'}, "
                f"{human_bytes(self.bytes)}, {verdict}\n"
                "  other formats or another dtype go into a new directory (the target below)")


def _outcome(result: dict[str, Any] | None, problem: str | None) -> tuple[str, bool]:
    """An export's end in one line, for a notification, and whether it succeeded."""
    ok = result is not None and bool(result.get("ok"))
    where = result.get("out") if result else problem
    return f"export {'finished' if ok else 'failed'}: {where or ''}", ok


def free_target(base: Path, checkpoint: Path) -> Path:
    """`base`, or `base-2`, `base-3` …: the first that does not exist (or is empty) and neither
    holds nor lies inside the checkpoint."""
    base = Path(base)
    source = Path(checkpoint).resolve()
    for n in range(1, 1000):
        path = base if n == 1 else base.with_name(f"{base.name}-{n}")
        resolved = path.resolve()
        overlaps = resolved == source or source in resolved.parents \
            or resolved in source.parents
        taken = path.exists() and (not path.is_dir() or any(path.iterdir()))
        if not overlaps and not taken:
            return path
    return base


class ExportModal(WorkerFailures, ModalScreen[Path | None]):
    DEFAULT_CSS = """
    ExportModal { align: center middle; }
    ExportModal > Vertical {
        width: 96; max-width: 98%; height: auto; max-height: 96%; border: thick $primary;
        background: $surface; padding: 0 1;
    }
    ExportModal #export-title { text-style: bold; }
    ExportModal #exported { color: $success; }
    ExportModal .row { height: auto; }
    ExportModal .row Label { width: 9; padding-top: 1; }
    ExportModal #out { width: 1fr; }
    ExportModal #dtype { width: 18; }
    ExportModal #gguf-type { width: 12; }
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

    def __init__(self, checkpoint: Path, *, root: Path, why: str | None = None,
                 exported: ExportedModel | None = None, dtype: str | None = None) -> None:
        super().__init__()
        self.checkpoint = Path(checkpoint)
        self.why = why  # e.g. "the pipeline's final model (stage grpo)"
        self.root = Path(root)
        # the model the pipeline's export stage already wrote from this checkpoint: shown, and
        # the default target is a new directory beside it (other formats, another dtype)
        self.exported = exported
        wanted = dtype or (exported.dtype if exported is not None else None)
        self.dtype = wanted if wanted in DTYPES else "bfloat16"
        self.plan: Any = None
        self.result: Any = None
        self.running = False
        self.planned = 0  # plans shown (tests wait on these)
        self.finished = 0
        self.progress_events = 0  # progress lines read from the export process
        # the dialog's export worker (one process, started by the first plan) and the ids of
        # its requests: plans are numbered by generation, an answer to an older one is dropped
        self._link: ExportWorkerLink | None = None
        self._link_lock = threading.Lock()
        self._worker_closed = False
        self._run_id: int | None = None
        self._run_pending = False  # a run was asked for and its outcome not yet read
        self._console_app: Any = None  # told the outcome of an export whose dialog is gone
        self._plan_generation = 0
        self._plan_lock = threading.Lock()

    @property
    def process(self) -> subprocess.Popen[str] | None:
        """The dialog's export worker process (the latest, if one died), once started."""
        return self._link.process if self._link is not None else None

    def default_out(self) -> Path:
        """A target the export will not refuse: a new directory, never the checkpoint, never
        one that holds something (the pipeline's own export included)."""
        base = self.exported.path if self.exported is not None \
            else self.root / "exports" / self.checkpoint.name
        return free_target(base, self.checkpoint)

    def compose(self) -> ComposeResult:
        with Vertical():
            what = f"export {self.why}" if self.why else "export"
            yield Static(f"{what}\n{display_path(self.checkpoint)}", id="export-title",
                         markup=False)
            if self.exported is not None:
                yield Static(self.exported.describe(), id="exported", markup=False)
            with Horizontal(classes="row"):
                yield Label("target")
                yield Input(display_path(self.default_out()), id="out")
            with Horizontal(classes="row"):
                yield Label("dtype")
                yield Select([(d, d) for d in DTYPES], value=self.dtype, allow_blank=False,
                             id="dtype")
                yield Checkbox("safetensors", True, disabled=True, id="fmt-safetensors")
                for fmt in OPTIONAL_FORMATS:
                    yield Checkbox(fmt, False, id=f"fmt-{fmt}")
                yield Select([(t, t) for t in GGUF_TYPES], value="f16", allow_blank=False,
                             id="gguf-type")
            yield Static("", id="formats-note", markup=False)
            with VerticalScroll(id="plan-box"):
                yield Static("planning…", id="plan")
            yield ProgressBar(total=100, show_eta=False, id="progress")
            yield Static("", id="status")
            with Horizontal(id="buttons"):
                yield Button("Close (esc)", id="close")
                yield Button("Export (ctrl+e)", id="start", variant="primary")

    def on_mount(self) -> None:
        self._console_app = self.app
        self.query_one("#plan-box").border_title = "merge chain and output"
        self._offer_formats()
        target = self.query_one("#out", Input)
        target.cursor_blink = False  # steady over SSH, and the same in every screenshot
        target.focus()
        self._replan()

    # -- options -----------------------------------------------------------------------------

    def out_path(self) -> Path:
        text = self.query_one("#out", Input).value.strip()
        path = Path(os.path.expanduser(text))
        return path if path.is_absolute() else self.root / path

    def _offer_formats(self) -> None:
        """Offer only the formats that can run here, and say why one cannot."""
        from graftline.engine.export import available_formats

        gguf_type = str(self.query_one("#gguf-type", Select).value)
        notes = []
        for fmt, available, reason in available_formats(gguf_type):
            if fmt not in OPTIONAL_FORMATS:
                continue
            box = self.query_one(f"#fmt-{fmt}", Checkbox)
            box.disabled = not available
            if not available:
                box.value = False
                notes.append(f"{fmt}: unavailable: {reason}")
        self.query_one("#gguf-type", Select).disabled = \
            self.query_one("#fmt-gguf", Checkbox).disabled
        self.query_one("#formats-note", Static).update("\n".join(notes))

    def options(self) -> dict[str, Any]:
        formats = ["safetensors"] + [f for f in OPTIONAL_FORMATS
                                     if self.query_one(f"#fmt-{f}", Checkbox).value]
        gguf = "gguf" in formats
        return {"out": self.out_path(), "dtype": str(self.query_one("#dtype", Select).value),
                "formats": formats,
                "gguf_type": str(self.query_one("#gguf-type", Select).value) if gguf else None}

    def on_input_changed(self, _event: Input.Changed) -> None:
        self._replan()

    def on_select_changed(self, event: Select.Changed) -> None:
        if event.select.id == "gguf-type":
            self._offer_formats()
        self._replan()

    def on_checkbox_changed(self, _event: Checkbox.Changed) -> None:
        self._replan()

    def _replan(self) -> None:
        if not self.running and self.is_mounted:
            self._plan(self.options(), self._next_id())

    def _next_id(self) -> int:
        with self._plan_lock:
            self._plan_generation += 1
            return self._plan_generation

    @work(thread=True, group="export-plan", exit_on_error=False)
    def _plan(self, options: dict[str, Any], generation: int) -> None:
        time.sleep(REPLAN_DELAY if self.planned else 0)
        if generation != self._plan_generation:
            return  # the user kept typing: a newer plan is on its way
        problem = self._send("plan", options, generation)
        if problem is not None:
            self.post_message(ExportPlanned(None, problem, generation))

    def _send(self, action: str, options: dict[str, Any], request_id: int) -> str | None:
        """Send one request to the dialog's worker, starting it (again) if it is not running;
        what went wrong, or None. Called from thread workers: starting a process never blocks
        the UI."""
        from graftline.engine.export import request_line

        line = request_line(action, self.checkpoint, options["out"], request_id=request_id,
                            dtype=options["dtype"], formats=tuple(options["formats"]),
                            gguf_type=options.get("gguf_type"))
        with self._link_lock:
            for _attempt in range(2):  # a worker that died unseen is replaced once
                if self._worker_closed and action == "plan":
                    return "the dialog is closed"
                if self._link is None or not self._link.alive:
                    link = ExportWorkerLink(self._worker_event, self._worker_exited)
                    try:
                        link.start()
                    except OSError as exc:
                        return f"cannot start the export worker: {exc}"
                    self._link = link
                try:
                    self._link.send(line)
                    if self._worker_closed:  # closed between ctrl+e and here: exports, then ends
                        self._link.close(terminate=False)
                    return None
                except (OSError, ValueError):
                    self._link.close(terminate=True)
            return ("the export worker stopped as soon as it started — fix: run `python -m "
                    "graftline.engine.export.worker serve` in a shell to see why")

    def _worker_event(self, event: dict[str, Any]) -> None:
        """An answer from the worker (its reader thread): progress and the end of the export,
        or a plan, which `_show_plan` drops when a newer one was asked for."""
        kind, request_id = event["event"], event.get("id")
        problem = None
        if kind in ("failed", "refused"):
            fix = f" — fix: {event['fix']}" if event.get("fix") else ""
            problem = f"{event.get('message', kind)}{fix}"
        if request_id is not None and request_id == self._run_id:
            if kind == "progress":
                self.progress_events += 1
                self.post_message(ExportProgress(str(event.get("phase", "")),
                                                 float(event.get("fraction") or 0.0),
                                                 str(event.get("message") or "")))
            elif kind == "done":
                self._finish(event, None)
            elif problem is not None:
                self._finish(None, problem)
        elif kind == "plan":
            self.post_message(ExportPlanned(event, None, request_id))
        elif problem is not None:
            self.post_message(ExportPlanned(None, problem, request_id))

    def _worker_exited(self, link: ExportWorkerLink, problem: str) -> None:
        """The worker ended unasked (its reader thread, after reaping it): the dialog says so;
        the next plan or export starts a fresh one."""
        if link is not self._link:
            return  # one already replaced
        if self._run_pending:
            self._finish(None, problem)
        elif not self._worker_closed:
            self.post_message(ExportPlanned(
                None, f"{problem}\nchange an option to plan again in a new worker",
                self._plan_generation))

    def _finish(self, result: dict[str, Any] | None, problem: str | None) -> None:
        """The export's outcome (the reader thread): to the dialog, or, once it is closed, to
        the console as a notification, as closing it while the export ran promised."""
        self._run_pending = False
        if self._worker_closed or not self.post_message(ExportFinished(result, problem)):
            text, ok = _outcome(result, problem)
            with contextlib.suppress(RuntimeError):  # the console itself has quit
                self._console_app.notify(text, severity="information" if ok else "error",
                                         timeout=10)

    def _close_worker(self) -> None:
        """End the dialog's worker: at once when it only plans; after the export under way
        when one runs (it finishes in the background). Reaped by its link either way."""
        with self._link_lock:
            self._worker_closed = True  # no plan thread starts another one after this
            link = self._link
        if link is not None:
            link.close(terminate=not self.running)

    def on_unmount(self) -> None:
        self._close_worker()

    @on(ExportPlanned)
    def _planned(self, message: ExportPlanned) -> None:
        self._show_plan(message.plan, message.problem, message.generation)

    def _show_plan(self, plan: dict[str, Any] | None, problem: str | None,
                   generation: int | None = None) -> None:
        if generation is not None and generation != self._plan_generation:
            return
        self.plan = plan
        box = self.query_one("#plan", Static)
        if plan is None:
            box.update(Text(problem or "cannot plan", style="bold red"))
        else:
            text = Text()
            chain = " → ".join(plan.get("chain") or [])
            if chain:
                text.append("chain       ", style="dim")
                text.append(f"{chain} → {self.checkpoint.name}\n")
            for line in plan.get("lines") or []:
                head, _, rest = _tilde_paths(line).partition(" ")
                text.append(f"{head:<12}", style="dim")
                text.append(rest.strip() + "\n")
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
        self._export(self.options())

    @work(thread=True, exclusive=True, group="export", exit_on_error=False)
    def _export(self, options: dict[str, Any]) -> None:
        """The export, asked of the worker that planned it (the reader thread reports)."""
        self._run_id = request_id = self._next_id()
        self._run_pending = True
        problem = self._send("run", options, request_id)
        if problem is not None:
            self._finish(None, f"cannot start the export: {problem}")

    @on(ExportProgress)
    def _progress(self, message: ExportProgress) -> None:
        if not self.is_attached:
            return
        self.query_one(ProgressBar).update(progress=round(message.fraction * 100))
        self.query_one("#status", Static).update(
            Text(f"{message.phase}: {message.message}" if message.message else message.phase))

    @on(ExportFinished)
    def _finished(self, message: ExportFinished) -> None:
        self._done(message.result, message.problem)

    def _done(self, result: dict[str, Any] | None, problem: str | None) -> None:
        self.running = False
        self.result = result
        self.finished += 1
        ok = result is not None and bool(result.get("ok"))
        if not self.is_attached:  # the modal was closed while the export ran
            told, ok = _outcome(result, problem)
            self.app.notify(told, severity="information" if ok else "error", timeout=10)
            return
        status = self.query_one("#status", Static)
        if result is None:
            status.update(Text(f"export failed: {problem or ''}", style="bold red"))
            return
        self.query_one(ProgressBar).update(progress=100)
        verification = result.get("verification") or {}
        text = Text()
        if ok:
            text.append("✓ exported and verified  ", style="bold green")
        else:
            text.append("✗ export written but NOT verified  ", style="bold red")
        if "max_abs_diff" in verification:
            text.append(f"max |logit diff| {verification['max_abs_diff']:.2e} "
                        f"(tolerance {verification.get('tolerance', 0):.0e})  ")
        text.append(str(result.get("out", "")))
        for problem_line in result.get("problems") or []:
            text.append(f"\n{problem_line}", style="red")
        status.update(text)

    def action_close(self) -> None:
        if self.running:
            self.notify("The export keeps running in the background; you will be told when "
                        "it is done.")
        out = self.result.get("out") if isinstance(self.result, dict) else None
        self._close_worker()
        self.dismiss(Path(out) if out else None)

"""The stage pipeline: each stage's kind, status, progress, ETA, result, adapter and reference.

The cursor follows the running stage (and, once the run has ended, the stage holding the final
model) until the user moves it; then it stays where the user put it until `f` follows again.
Every other panel and `e` read the same choice, so what the table points at is what they show.
"""

from __future__ import annotations

import re

from rich.text import Text
from textual import events
from textual.widgets import DataTable

from graftline.console.formats import human_seconds
from graftline.console.run_view import RunModel
from graftline.console.stage_view import TRAINING_KINDS, StageView

STATUS_GLYPH = {"pending": "·", "running": "▶", "complete": "✓", "failed": "✗",
                "stopped": "■", "skipped": "↷", "paused": "‖", "crashed": "✗",
                "resumed": "▶", "done earlier": "✓"}
STATUS_ASCII = {"pending": ".", "running": ">", "complete": "v", "failed": "x",
                "stopped": "#", "skipped": "-", "paused": "=", "crashed": "x",
                "resumed": ">", "done earlier": "v"}
STATUS_STYLE = {"running": "bold", "resumed": "bold", "failed": "bold red", "crashed": "bold red",
                "stopped": "yellow", "paused": "bold yellow", "pending": "dim", "skipped": "dim",
                "done earlier": "dim"}
# the engine's rehearsal before stage 1 (`graftline run`): a row above the stages, under its own
# key so that no stage name can clash with it
REHEARSAL_ROW = "\x00rehearsal"
REHEARSAL_STATUS = {"running": "running", "passed": "complete", "failed": "failed",
                    "stopped": "stopped"}
BAR = 6
ETA_WIDTH = 7
MIN_REFERENCE = 4


def progress_bar(fraction: float | None, width: int, ascii_only: bool = False) -> str:
    if fraction is None:
        return " " * width
    full = "#" if ascii_only else "█"
    empty = "-" if ascii_only else "░"
    filled = round(fraction * width)
    return full * filled + empty * (width - filled)


def fit(text: str, width: int, ellipsis: str = "…") -> str:
    """`text` in at most `width` cells, an ellipsis marking a cut."""
    if width <= 0:
        return ""
    if len(text) <= width:
        return text
    return text[: max(0, width - len(ellipsis))] + ellipsis


def fit_words(text: str, width: int, ellipsis: str = "…") -> str:
    """`text` in at most `width` cells without cutting a word or parting a name from its value:
    whole parts (between " · " and ", ") are dropped from the end, an ellipsis marking what
    went; a first part too long on its own loses whole words."""
    if len(text) <= width:
        return text
    if width <= len(ellipsis):
        return ellipsis[:max(0, width)]
    ends = [m.start() for m in re.finditer(r"(?<=,) | · ", text)]  # where each part ends
    for end in reversed(ends):
        head = text[:end].rstrip(",")
        if len(head) + len(ellipsis) <= width:
            return head + ellipsis
    words = text[:ends[0] if ends else len(text)].split(" ")
    for keep in range(len(words) - 1, 0, -1):
        head = " ".join(words[:keep])
        if len(head) + len(ellipsis) <= width:
            return head + ellipsis
    return fit(text, width, ellipsis)


class PipelineTable(DataTable):
    """Cursor rows are stages; moving the cursor selects the stage the other panels describe."""

    ALL_COLUMNS = ("stage", "kind", "status", "progress", "eta", "metric", "adapter",
                   "reference")
    # an ended run has no ETA: its column gives its room to the reference
    ENDED_COLUMNS = tuple(c for c in ALL_COLUMNS if c != "eta")

    def __init__(self, *, ascii_only: bool = False, id: str | None = None) -> None:
        super().__init__(id=id, cursor_type="row", zebra_stripes=False)
        self.ascii_only = ascii_only
        self.following = True  # the cursor tracks the run until the user moves it
        self._signature: tuple[object, ...] = ()
        self._names: list[str] = []
        self._widths: tuple[int, ...] = ()
        self._model: RunModel | None = None
        self.COLUMNS: tuple[str, ...] = self.ALL_COLUMNS

    def on_mount(self) -> None:
        for label in self.COLUMNS:
            self.add_column(label, key=label)

    # -- the user's cursor -----------------------------------------------------------------

    def _user_moved(self) -> None:
        self.following = False

    def action_cursor_up(self) -> None:
        self._user_moved()
        super().action_cursor_up()

    def action_cursor_down(self) -> None:
        self._user_moved()
        super().action_cursor_down()

    def action_page_up(self) -> None:
        self._user_moved()
        super().action_page_up()

    def action_page_down(self) -> None:
        self._user_moved()
        super().action_page_down()

    def action_scroll_top(self) -> None:
        self._user_moved()
        super().action_scroll_top()

    def action_scroll_bottom(self) -> None:
        self._user_moved()
        super().action_scroll_bottom()

    async def _on_click(self, event: events.Click) -> None:
        self._user_moved()
        await super()._on_click(event)

    def follow(self, model: RunModel) -> None:
        """Track the run again (the `f` key)."""
        self.following = True
        self._signature = ()
        self.update_from(model)

    @staticmethod
    def followed_stage(model: RunModel) -> str | None:
        """Where a following cursor sits: the running stage, else the final model's stage."""
        if model.current is not None:
            return model.current
        if model.rehearsal is not None and model.rehearsal.get("status") != "passed":
            return REHEARSAL_ROW  # rehearsing now, or the rehearsal that ended the run
        final = model.final_checkpoint()
        if final is not None:
            return final[0].name
        return model.stages[-1].name if model.stages else None

    # -- rows ------------------------------------------------------------------------------

    def on_resize(self, _event: events.Resize) -> None:
        if self._model is not None:
            self._signature = ()
            self.update_from(self._model)

    def update_from(self, model: RunModel) -> None:
        self._model = model
        run_status = model.run_status()
        live = model.status == "running"
        columns = self.ALL_COLUMNS if live else self.ENDED_COLUMNS
        rows = [self._row(stage, model, run_status) for stage in model.stages]
        names = [stage.name for stage in model.stages]
        if model.rehearsal is not None:
            rows.insert(0, self._rehearsal_row(model, run_status))
            names.insert(0, REHEARSAL_ROW)
        if not live:
            rows = [row[:4] + row[5:] for row in rows]
        widths = [max([len(label), *(_width(r[i]) for r in rows)])
                  for i, label in enumerate(columns)]
        widths[3] = max(len("progress"), *(self._progress_width(s) for s in model.stages), 0)
        if live:
            widths[4] = ETA_WIDTH
        # the reference gets what is left of the table's width, with an ellipsis where it is cut
        # the widget's width less a vertical scrollbar's, whether or not one shows right now:
        # the same answer before and after layout settles
        visible = max(0, self.size.width - self.styles.scrollbar_size_vertical)
        pad = 2 * self.cell_padding
        mark = "..." if self.ascii_only else "…"
        # a metric too long for the width (an evaluation's many keys) gives up whole parts,
        # never half a word, once the reference is down to its ellipsis
        metric = columns.index("metric")
        over = sum(w + pad for w in widths[:-1]) + pad + 1 - visible
        if visible and over > 0 and widths[metric] > len("metric"):
            widths[metric] = max(len("metric"), widths[metric] - over)
            rows = [(*row[:metric], fit_words(str(row[metric]), widths[metric], mark),
                     *row[metric + 1:]) for row in rows]
        room = visible - sum(w + pad for w in widths[:-1]) - pad
        if visible and room < widths[-1]:
            widths[-1] = max(MIN_REFERENCE, room) if room >= MIN_REFERENCE else max(1, room)
            rows = [(*row[:-1], fit(str(row[-1]), widths[-1], mark)) for row in rows]
        signature = (tuple(tuple(str(c) for c in row) for row in rows), self.following)
        target = self.followed_stage(model) if self.following else None
        if signature == self._signature:
            return
        self._signature = signature
        widths_t = tuple(widths)
        if names == self._names and widths_t == self._widths and columns == self.COLUMNS:
            # the common case while training: a progress or metric cell changed in place, which
            # repaints those cells without a new layout
            for name, row in zip(names, rows, strict=True):
                for label, cell in zip(self.COLUMNS, row, strict=True):
                    self.update_cell(name, label, cell)
        else:
            # Rebuilt with explicit widths when the shape changes: the header is then drawn at
            # the content's width from the first frame.
            cursor = self.cursor_row
            self.clear(columns=True)
            self.COLUMNS = columns
            for label, width in zip(self.COLUMNS, widths_t, strict=True):
                self.add_column(label, key=label, width=width)
            for name, row in zip(names, rows, strict=True):
                self.add_row(*row, key=name)
            self._names, self._widths = names, widths_t
            if self.row_count:
                self.move_cursor(row=min(max(cursor, 0), self.row_count - 1))
        if target is not None and target in names and self.cursor_row != names.index(target):
            self.move_cursor(row=names.index(target))

    @property
    def selected_stage(self) -> str | None:
        if not self._names or self.cursor_row < 0:
            return None
        return self._names[min(self.cursor_row, len(self._names) - 1)]

    @staticmethod
    def _progress_width(stage: StageView) -> int:
        if stage.max_steps and stage.kind in TRAINING_KINDS:
            digits = len(str(stage.max_steps))
            return BAR + 1 + 2 * digits + 1
        return BAR

    def _rehearsal_row(self, model: RunModel, run_status: str) -> tuple[object, ...]:
        glyphs = STATUS_ASCII if self.ascii_only else STATUS_GLYPH
        view = model.rehearsal or {}
        status = str(view.get("status") or "running")
        shown = REHEARSAL_STATUS.get(status, status)
        if shown == "running" and run_status in ("paused", "crashed", "stopped", "failed"):
            shown = run_status
        label = "passed" if shown == "complete" else shown
        cell = Text(f"{glyphs.get(shown, '?')} {label}", style=STATUS_STYLE.get(shown, ""))
        total = len(model.stages)
        passed = int(view.get("passed") or 0)
        progress = progress_bar(min(1.0, passed / total), BAR, self.ascii_only) if total else ""
        if status == "running":
            now = view.get("stage")
            result = f"{passed}/{total} stages" + (f" · on {now}" if now else "")
        elif status == "passed":
            secs = view.get("seconds")
            result = f"{passed}/{total} passed" + (
                f" in {human_seconds(secs)}" if isinstance(secs, int | float) else "")
        elif view.get("failed_stage"):
            result = f"failed at stage {view['failed_stage']}: the fix is in the log"
        else:
            result = fit_words(str(view.get("message") or status), 40)
        return ("rehearsal", "twin", cell, progress, Text(" " * ETA_WIDTH), result, "", "")

    def _row(self, stage: StageView, model: RunModel, run_status: str) -> tuple[object, ...]:
        glyphs = STATUS_ASCII if self.ascii_only else STATUS_GLYPH
        shown = stage.display_status(run_status)
        status = Text(f"{glyphs.get(shown, '?')} {shown}", style=STATUS_STYLE.get(shown, ""))
        fraction = stage.progress
        if stage.max_steps and stage.kind in TRAINING_KINDS:
            # fixed width: the step count is padded to the stage's own maximum, so the column
            # never moves as counts grow
            digits = len(str(stage.max_steps))
            bar = progress_bar(fraction, BAR, self.ascii_only)
            progress = f"{bar} {min(stage.step, stage.max_steps):>{digits}}/{stage.max_steps}"
        elif fraction is not None:
            progress = progress_bar(fraction, BAR, self.ascii_only)
        else:
            progress = ""
        eta = ""
        if model.status == "running" and stage.status in ("pending", "running") \
                and run_status == "running":
            remaining = model.stage_eta(stage)
            eta = human_seconds(remaining) if remaining is not None else "?"
        eta_cell = Text(eta.rjust(ETA_WIDTH), style="dim" if stage.status == "pending" else "")
        kind = stage.kind
        if (stage.world_size or 0) > 1:  # a distributed stage: its process count beside its kind
            kind = f"{kind} {'x' if self.ascii_only else '×'}{stage.world_size}"
        return (stage.name, kind, status, progress, eta_cell, stage.metric_label(),
                stage.action_label, stage.reference_label)


def _width(cell: object) -> int:
    if isinstance(cell, Text):
        return cell.cell_len
    return Text.from_markup(str(cell)).cell_len

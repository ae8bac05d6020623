"""The stage pipeline: each stage's kind, status, progress, key metric, adapter and reference."""

from __future__ import annotations

from rich.text import Text
from textual.widgets import DataTable

from graftline.console.run_view import RunModel, StageView, format_metric

STATUS_GLYPH = {"pending": "·", "running": "▶", "complete": "✓", "failed": "✗",
                "stopped": "■", "skipped": "↷"}
STATUS_ASCII = {"pending": ".", "running": ">", "complete": "v", "failed": "x",
                "stopped": "#", "skipped": "-"}
STATUS_STYLE = {"running": "bold", "failed": "bold red", "stopped": "yellow", "pending": "dim",
                "skipped": "dim"}


def progress_bar(fraction: float | None, width: int, ascii_only: bool = False) -> str:
    if fraction is None:
        return " " * width
    full = "#" if ascii_only else "█"
    empty = "-" if ascii_only else "░"
    filled = round(fraction * width)
    return full * filled + empty * (width - filled)


class PipelineTable(DataTable):
    """Cursor rows are stages; moving the cursor selects the stage the other panels describe."""

    COLUMNS = ("stage", "kind", "status", "progress", "metric", "adapter", "reference")

    def __init__(self, *, ascii_only: bool = False, id: str | None = None) -> None:
        super().__init__(id=id, cursor_type="row", zebra_stripes=False)
        self.ascii_only = ascii_only
        self._signature: tuple[object, ...] = ()
        self._names: list[str] = []
        self._widths: tuple[int, ...] = ()

    def on_mount(self) -> None:
        for label in self.COLUMNS:
            self.add_column(label, key=label)

    def update_from(self, model: RunModel) -> None:
        rows = [self._row(stage) for stage in model.stages]
        signature = tuple(tuple(str(c) for c in row) for row in rows)
        if signature == self._signature:
            return
        self._signature = signature
        names = [stage.name for stage in model.stages]
        widths = tuple(max([len(label), *(_width(r[i]) for r in rows)])
                       for i, label in enumerate(self.COLUMNS))
        if names == self._names and widths == self._widths:
            # the common case while training: a progress or metric cell changed in place, which
            # repaints those cells without a new layout
            for name, row in zip(names, rows, strict=True):
                for label, cell in zip(self.COLUMNS, row, strict=True):
                    self.update_cell(name, label, cell)
            return
        # Rebuilt with explicit widths when the shape changes: the header is then drawn at the
        # content's width from the first frame, whatever states the follower delivered before.
        cursor = self.cursor_row
        self.clear(columns=True)
        for label, width in zip(self.COLUMNS, widths, strict=True):
            self.add_column(label, key=label, width=width)
        for name, row in zip(names, rows, strict=True):
            self.add_row(*row, key=name)
        self._names, self._widths = names, widths
        if self.row_count:
            self.move_cursor(row=min(max(cursor, 0), self.row_count - 1))

    @property
    def selected_stage(self) -> str | None:
        if not self._names or self.cursor_row < 0:
            return None
        return self._names[min(self.cursor_row, len(self._names) - 1)]

    def _row(self, stage: StageView) -> tuple[object, ...]:
        glyphs = STATUS_ASCII if self.ascii_only else STATUS_GLYPH
        status = Text(f"{glyphs.get(stage.status, '?')} {stage.status}",
                      style=STATUS_STYLE.get(stage.status, ""))
        fraction = stage.progress
        if stage.max_steps and stage.kind in ("sft", "dpo", "grpo"):
            bar = progress_bar(fraction, 6, self.ascii_only)
            progress = f"{bar} {stage.step}/{stage.max_steps}"
        elif fraction is not None:
            progress = progress_bar(fraction, 6, self.ascii_only)
        else:
            progress = ""
        key = stage.key_metric
        metric = f"{_short(key[0])} {format_metric(key[1])}" if key else ""
        return (stage.name, stage.kind, status, progress, metric,
                stage.action_label, stage.reference_label)


def _width(cell: object) -> int:
    if isinstance(cell, Text):
        return cell.cell_len
    return Text.from_markup(str(cell)).cell_len


def _short(metric: str) -> str:
    return {"rewards/margins": "margin", "rewards/accuracies": "acc"}.get(metric, metric)

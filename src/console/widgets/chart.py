"""The live metric chart: the whole run on one global-step axis, stage boundaries marked.

The rasterisation runs in `update_from` (with the follower's lock held by the caller, so the
curve columns cannot grow under numpy's feet) and again on resize; `render` only assembles the
cached lines, so a redraw costs the same at a hundred points as at a million.
"""

from __future__ import annotations

import numpy as np
from rich.style import Style
from rich.text import Text
from textual.events import Resize
from textual.widget import Widget

from graftline.console.plot import rasterise
from graftline.console.run_view import RunModel, format_metric

AXIS = 9  # characters of y-axis labels on the left


class MetricChart(Widget):
    DEFAULT_CSS = """
    MetricChart { height: 1fr; min-height: 6; border: round $panel-lighten-2; padding: 0 1; }
    MetricChart:focus { border: round $primary; }
    """
    can_focus = True

    def __init__(self, *, ascii_only: bool = False, id: str | None = None) -> None:
        super().__init__(id=id)
        self.ascii_only = ascii_only
        self.metric: str | None = None  # None: the current stage's key metric
        self.metrics: list[str] = []
        self._lines: list[list[tuple[str, str]]] = []
        self._range = (0.0, 1.0)
        self._x1 = 1.0
        self._latest: float | None = None
        self._shown = "loss"
        self._model: RunModel | None = None

    @property
    def shown_metric(self) -> str:
        return self._shown

    def cycle_metric(self, step: int = 1) -> str:
        if self.metrics:
            current = self._shown if self._shown in self.metrics else self.metrics[0]
            index = (self.metrics.index(current) + step) % len(self.metrics)
            self.metric = self.metrics[index]
        return self.metric or self._shown

    def update_from(self, model: RunModel) -> None:
        """Call with the model's lock held."""
        self._model = model
        self.metrics = model.chart_metrics()
        self._shown = self.metric if self.metric in model.series else model.default_metric()
        self._rasterise(model)
        self.refresh()

    def _rasterise(self, model: RunModel) -> None:
        width = max(0, self.content_size.width - AXIS)
        height = max(0, self.content_size.height - 2)
        series = model.series.get(self._shown)
        planned = sum(s.max_steps or 0 for s in model.stages if s.kind in ("sft", "dpo", "grpo"))
        if series is None or not len(series) or width < 4 or height < 1:
            self._lines, self._latest = [], None
            self._x1 = float(planned or 1)
            return
        steps = np.frombuffer(series.steps, dtype=np.float64)
        values = np.frombuffer(series.values, dtype=np.float64)
        self._x1 = float(max(planned, steps[-1], 1.0))
        current = model.current_stage
        current_from = float(current.global_step_offset) if current is not None else None
        boundaries = tuple(float(step) for step, _ in model.boundaries)
        self._lines, self._range = rasterise(
            steps, values, x0=0.0, x1=self._x1, width=width, height=height,
            current_from=current_from, boundaries=boundaries, ascii_only=self.ascii_only)
        self._latest = float(values[-1])
        del steps, values  # release the buffers so the follower may append again

    def on_resize(self, event: Resize) -> None:
        if self._model is None:
            return
        lock = getattr(self.screen, "model_lock", None)
        if lock is None:
            self._rasterise(self._model)
        else:
            with lock:
                self._rasterise(self._model)
        self.refresh()

    def render(self) -> Text:
        variables = self.app.theme_variables
        styles = {
            "past": _style(variables.get("chart-past", "grey50")),
            "current": _style(variables.get("chart-current", "cyan")),
            "boundary": _style(variables.get("chart-boundary", "grey30")),
            "": Style(),
        }
        title = Text.assemble((self._shown, "bold"), "  latest ",
                              (format_metric(self._latest), "bold"))
        if self.metrics and len(self.metrics) > 1:
            title.append("   m: next metric", style="dim")
        out = Text(no_wrap=True, overflow="crop")
        out.append_text(title)
        if not self._lines:
            out.append("\n\n  waiting for metrics…" if not self.ascii_only
                       else "\n\n  waiting for metrics...", style="dim")
            return out
        low, high = self._range
        height = len(self._lines)
        for r, runs in enumerate(self._lines):
            if r == 0:
                label = format_metric(high)
            elif r == height - 1:
                label = format_metric(low)
            elif r == height // 2 and height > 4:
                label = format_metric((low + high) / 2)
            else:
                label = ""
            tick = ("+" if label else "|") if self.ascii_only else ("┤" if label else "│")
            out.append("\n" + label.rjust(AXIS - 2)[: AXIS - 2] + " " + tick)
            for chunk, role in runs:
                out.append(chunk, styles[role])
        width = max(0, self.content_size.width - AXIS)
        left, right = "0", f"{self._x1:,.0f} steps"
        out.append("\n" + " " * AXIS + left + right.rjust(max(0, width - len(left))), "dim")
        return out


def _style(colour: str) -> Style:
    """A theme colour as a Rich style: hex, a Rich name, or Textual's `ansi_*` names."""
    try:
        return Style.parse(colour.removeprefix("ansi_"))
    except Exception:  # a colour Rich cannot name: let Textual parse it
        from textual.color import Color

        return Style(color=Color.parse(colour).rich_color)

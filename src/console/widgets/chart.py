"""The live metric chart: the whole run on one global-step axis, stages named at their starts.

Two modes, cycled with `m`:
- "by stage" (the default): each training stage's segment shows the metric its kind is judged
  by (SFT loss, DPO margin, GRPO reward), each on its own scale, so an SFT loss of 3 beside an
  IPO loss of 1 never reads as a cliff; the label under each segment gives its range.
- one metric across the run, on one scale, with its evaluation points (eval_loss over loss)
  marked ◆.
`S` smooths (TensorBoard's exponential moving average: off, 0.6, 0.9).

The rasterisation runs in `update_from` (with the follower's lock held by the caller, so the
curve columns cannot grow under numpy's feet) and again on resize; `render` only assembles the
cached lines, so a redraw costs the same at a hundred points as at a million.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from rich.style import Style
from rich.text import Text
from textual.events import Resize
from textual.widget import Widget

from graftline.console.formats import format_metric, short_metric
from graftline.console.plot import ema, nice_ticks, place_labels, rasterise
from graftline.console.run_view import RunModel
from graftline.console.stage_view import KEY_METRIC, TRAINING_KINDS

AXIS = 9  # characters of y-axis labels on the left
BY_STAGE = "by stage"
SMOOTHING = (0.0, 0.6, 0.9)


@dataclass(frozen=True)
class Segment:
    """One training stage's part of the x-axis in "by stage" mode."""

    name: str
    metric: str
    start: float
    end: float
    low: float
    high: float


class MetricChart(Widget):
    DEFAULT_CSS = """
    MetricChart {
        height: 1fr; min-height: 6; border: round $panel-lighten-2; padding: 0 1;
        text-wrap: nowrap; text-overflow: clip;
    }
    MetricChart:focus { border: round $primary; }
    """
    can_focus = True

    def __init__(self, *, ascii_only: bool = False, id: str | None = None) -> None:
        super().__init__(id=id)
        self.ascii_only = ascii_only
        self.metric: str | None = None  # None: by stage
        self.metrics: list[str] = []
        self.smoothing = 0.0
        self._lines: list[list[tuple[str, str]]] = []
        self._range = (0.0, 1.0)
        self._x1 = 1.0
        self._latest: float | None = None
        self._shown = BY_STAGE
        self._segments: list[Segment] = []
        self._labels = ""
        self._model: RunModel | None = None

    @property
    def shown_metric(self) -> str:
        return self._shown

    @property
    def segments(self) -> list[Segment]:
        return list(self._segments)

    def cycle_metric(self, step: int = 1) -> str:
        choices = [BY_STAGE, *self.metrics]
        current = self._shown if self._shown in choices else BY_STAGE
        chosen = choices[(choices.index(current) + step) % len(choices)]
        self.metric = None if chosen == BY_STAGE else chosen
        self._shown = chosen
        return chosen

    def cycle_smoothing(self) -> float:
        index = SMOOTHING.index(self.smoothing) if self.smoothing in SMOOTHING else 0
        self.smoothing = SMOOTHING[(index + 1) % len(SMOOTHING)]
        return self.smoothing

    def update_from(self, model: RunModel) -> None:
        """Call with the model's lock held."""
        self._model = model
        self.metrics = model.chart_metrics()
        if self.metric in model.series:
            self._shown = self.metric
        elif self._stage_segments(model):
            self._shown = BY_STAGE
        else:
            self._shown = model.default_metric()
        self._rasterise(model)
        self.refresh()

    # -- rasterising -----------------------------------------------------------------------

    def _plot_size(self) -> tuple[int, int]:
        # rows: title, plot, stage labels, x ticks
        return max(0, self.content_size.width - AXIS), max(0, self.content_size.height - 3)

    def _stage_segments(self, model: RunModel) -> list[tuple[str, str, float, float]]:
        found = []
        for stage in model.stages:
            metric = KEY_METRIC.get(stage.kind)
            if stage.kind not in TRAINING_KINDS or metric not in model.series \
                    or stage.status == "pending" or not (stage.max_steps or stage.step):
                continue
            start = float(stage.global_step_offset)
            found.append((stage.name, metric, start, start + float(stage.max_steps or stage.step)))
        return found

    def _arrays(self, model: RunModel, metric: str) -> tuple[np.ndarray, np.ndarray] | None:
        series = model.series.get(metric)
        if series is None or not len(series):
            return None
        # views, not copies: released when the caller returns, so the follower may append again
        steps = np.frombuffer(series.steps, dtype=np.float64)
        values = np.frombuffer(series.values, dtype=np.float64)
        return steps, ema(values, self.smoothing)

    def _rasterise(self, model: RunModel) -> None:
        width, height = self._plot_size()
        planned = sum(s.max_steps or 0 for s in model.stages if s.kind in TRAINING_KINDS)
        self._x1 = float(planned or 1)
        self._segments, self._labels = [], ""
        if width < 4 or height < 1:
            self._lines, self._latest = [], None
            return
        current = model.current_stage
        current_from = float(current.global_step_offset) if current is not None else None
        boundaries = tuple(float(step) for step, _ in model.boundaries)
        if self._shown == BY_STAGE:
            self._rasterise_by_stage(model, width, height, current_from, boundaries)
            return
        data = self._arrays(model, self._shown)
        if data is None:
            self._lines, self._latest = [], None
            return
        steps, values = data
        self._x1 = float(max(planned, steps[-1], 1.0))
        eval_data = self._arrays(model, "eval_" + self._shown)
        self._lines, self._range = rasterise(
            steps, values, x0=0.0, x1=self._x1, width=width, height=height,
            current_from=current_from, boundaries=boundaries, ascii_only=self.ascii_only,
            marks=eval_data)
        self._latest = float(values[-1])
        self._labels = self._boundary_labels(model, width)

    def _rasterise_by_stage(self, model: RunModel, width: int, height: int,
                            current_from: float | None, boundaries: tuple[float, ...]) -> None:
        parts_x, parts_y, marks_x, marks_y = [], [], [], []
        for name, metric, start, end in self._stage_segments(model):
            data = self._arrays(model, metric)
            if data is None:
                continue
            steps, values = data
            inside = (steps > start) & (steps <= end)
            seg_steps, seg_values = steps[inside], values[inside]
            if not seg_steps.size:
                continue
            evals = self._arrays(model, "eval_" + metric)
            eval_steps = eval_values = np.empty(0)
            if evals is not None:
                keep = (evals[0] > start) & (evals[0] <= end)
                eval_steps, eval_values = evals[0][keep], evals[1][keep]
            both = np.concatenate([seg_values, eval_values])
            both = both[np.isfinite(both)]
            low, high = (float(both.min()), float(both.max())) if both.size else (0.0, 1.0)
            scale = high - low if high - low > 1e-12 else 1.0
            parts_x.append(seg_steps)
            parts_y.append((seg_values - low) / scale)
            marks_x.append(eval_steps)
            marks_y.append((eval_values - low) / scale)
            self._segments.append(Segment(name, metric, start, end, low, high))
            self._x1 = max(self._x1, end)
            self._latest = float(seg_values[-1])
        if not parts_x:
            self._lines, self._latest = [], None
            return
        self._lines, self._range = rasterise(
            np.concatenate(parts_x), np.concatenate(parts_y), x0=0.0, x1=self._x1, width=width,
            height=height, current_from=current_from, boundaries=boundaries,
            ascii_only=self.ascii_only, y_range=(-0.05, 1.05),
            marks=(np.concatenate(marks_x), np.concatenate(marks_y)))
        self._labels = self._boundary_labels(model, width)

    def _column(self, x: float, width: int) -> int:
        return min(width - 1, max(0, int(x / max(self._x1, 1e-12) * (width - 1) + 0.5)))

    def _boundary_labels(self, model: RunModel, width: int) -> str:
        """Each training stage's name at the column where it starts; in "by stage" mode with
        its metric and the range its scale spans."""
        labels: list[tuple[int, str]] = []
        if self._segments:
            for seg in self._segments:
                room = self._column(seg.end, width) - self._column(seg.start, width) - 1
                text = (f"{seg.name} {short_metric(seg.metric)} "
                        f"{format_metric(seg.low)}–{format_metric(seg.high)}")
                if len(text) > room:
                    text = f"{seg.name} {short_metric(seg.metric)}"
                if len(text) > room:
                    text = seg.name[: max(1, room)]
                if self.ascii_only:
                    text = text.replace("–", "-")
                labels.append((self._column(seg.start, width) + (1 if seg.start else 0), text))
        else:
            for step, name in model.boundaries:
                labels.append((self._column(float(step), width) + (1 if step else 0), name))
        return place_labels(width, labels)

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

    # -- drawing ---------------------------------------------------------------------------

    def render(self) -> Text:
        variables = self.app.theme_variables
        styles = {
            "past": _style(variables.get("chart-past", "grey50")),
            "current": _style(variables.get("chart-current", "cyan")),
            "boundary": _style(variables.get("chart-boundary", "grey30")),
            "eval": _style(variables.get("chart-eval", "magenta")),
            "": Style(),
        }
        by_stage = self._shown == BY_STAGE
        if by_stage:
            names = " · ".join(f"{s.name} {short_metric(s.metric)}" for s in self._segments)
            title = Text.assemble(("by stage", "bold"), f"  {names}" if names else "",
                                  ("  (own scale each)", "dim"))
        else:
            title = Text.assemble((self._shown, "bold"), "  latest ",
                                  (format_metric(self._latest), "bold"))
        if self.smoothing:
            title.append(f"  smoothed {self.smoothing:.1f}", style="dim")
        mark = "o" if self.ascii_only else "◆"
        if any(role == "eval" for line in self._lines for _, role in line):
            title.append(f"  {mark} eval", style=styles["eval"])
        title.append("   m: metric  S: smooth", style="dim")
        out = Text(no_wrap=True, overflow="crop")
        out.append_text(title)
        if not self._lines:
            out.append("\n\n  waiting for metrics…" if not self.ascii_only
                       else "\n\n  waiting for metrics...", style="dim")
            return out
        low, high = self._range
        height = len(self._lines)
        for r, runs in enumerate(self._lines):
            if by_stage:
                label = "high" if r == 0 else "low" if r == height - 1 else ""
            elif r == 0:
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
        if self._labels.strip():
            out.append("\n" + " " * AXIS + self._labels, "bold")
        ticks = place_labels(width, nice_ticks(0.0, self._x1, width))
        out.append("\n" + "steps".rjust(AXIS - 1) + " " + ticks, "dim")
        return out


def _style(colour: str) -> Style:
    """A theme colour as a Rich style: hex, a Rich name, or Textual's `ansi_*` names."""
    try:
        return Style.parse(colour.removeprefix("ansi_"))
    except Exception:  # a colour Rich cannot name: let Textual parse it
        from textual.color import Color

        return Style(color=Color.parse(colour).rich_color)

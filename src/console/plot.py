"""Rasterise a metric curve into terminal cells: braille (2×4 dots a cell) or plain ASCII.

Pure numpy over the whole history: points are bucketed by global step into the plot's columns
and each column keeps its min, max and last value, so a million points cost a few milliseconds
and a spike never disappears in the downsampling (min/max keep it; a mean would hide it).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

BRAILLE_BASE = 0x2800
# Dot bit for (row within the cell 0..3, column within the cell 0..1).
_DOTS = np.array([[0x01, 0x08], [0x02, 0x10], [0x04, 0x20], [0x40, 0x80]], dtype=np.int64)

Role = str  # "past" | "current" | "boundary" | "eval" | "" (empty cell)
EVAL_MARK, EVAL_MARK_ASCII = "◆", "o"
EMA_CHUNK = 256  # w**-256 stays finite for any smoothing weight a user would pick


@dataclass(frozen=True)
class Buckets:
    """A curve downsampled to `width` columns on [x0, x1]."""

    columns: np.ndarray  # the occupied column indices, ascending
    low: np.ndarray
    high: np.ndarray
    last: np.ndarray


def downsample(steps: np.ndarray, values: np.ndarray, x0: float, x1: float,
               width: int) -> Buckets:
    finite = np.isfinite(values) & np.isfinite(steps)
    if not finite.all():
        steps, values = steps[finite], values[finite]
    empty = np.empty(0)
    if width <= 0 or steps.size == 0:
        return Buckets(np.empty(0, dtype=np.int64), empty, empty, empty)
    span = max(x1 - x0, 1e-12)
    cols = np.clip(((steps - x0) / span * (width - 1) + 0.5).astype(np.int64), 0, width - 1)
    if cols.size > 1 and np.any(np.diff(cols) < 0):  # a resumed run may log a step twice
        order = np.argsort(cols, kind="stable")
        cols, values = cols[order], values[order]
    starts = np.flatnonzero(np.r_[True, cols[1:] != cols[:-1]])
    ends = np.r_[starts[1:], cols.size] - 1
    return Buckets(cols[starts], np.minimum.reduceat(values, starts),
                   np.maximum.reduceat(values, starts), values[ends])


def _fill_gaps(buckets: Buckets) -> Buckets:
    """Columns between two logged points get the straight line between them (sparse logging)."""
    cols = buckets.columns
    if cols.size < 2 or cols[-1] - cols[0] + 1 == cols.size:
        return buckets
    every = np.arange(cols[0], cols[-1] + 1)
    line = np.interp(every, cols, buckets.last)
    low, high, last = line.copy(), line.copy(), line.copy()
    at = cols - cols[0]
    low[at], high[at], last[at] = buckets.low, buckets.high, buckets.last
    return Buckets(every, low, high, last)


def value_range(buckets: Buckets) -> tuple[float, float]:
    if buckets.columns.size == 0:
        return 0.0, 1.0
    low, high = float(buckets.low.min()), float(buckets.high.max())
    if high - low < 1e-12:
        pad = abs(high) * 0.05 or 0.5
        return low - pad, high + pad
    return low, high


def ema(values: np.ndarray, weight: float) -> np.ndarray:
    """TensorBoard's smoothing: an exponential moving average starting at the first value,
    vectorised in chunks (a million points in a few milliseconds, no Python loop per point)."""
    if weight <= 0 or values.size == 0:
        return values
    out = np.empty_like(values, dtype=np.float64)
    carry = float(values[0])
    for start in range(0, values.size, EMA_CHUNK):
        chunk = values[start:start + EMA_CHUNK].astype(np.float64)
        i = np.arange(chunk.size, dtype=np.float64)
        powers = weight ** (i + 1)
        # y_i = w^(i+1)·carry + (1-w)·Σ_k≤i w^(i-k)·x_k
        acc = np.cumsum(chunk * weight ** (-i)) * weight ** i
        out[start:start + chunk.size] = powers * carry + (1 - weight) * acc
        carry = float(out[start + chunk.size - 1])
    return out


def nice_ticks(x0: float, x1: float, width: int, min_gap: int = 10) -> list[tuple[int, str]]:
    """Round step numbers along an axis `width` cells wide, at least `min_gap` cells apart:
    (column, label) pairs."""
    span = x1 - x0
    if width <= 1 or span <= 0:
        return []
    count = max(1, width // min_gap)
    raw = span / count
    magnitude = 10 ** np.floor(np.log10(raw))
    step = next(m * magnitude for m in (1, 2, 2.5, 5, 10) if m * magnitude >= raw)
    ticks = []
    value = np.ceil(x0 / step) * step
    while value <= x1 + 1e-9:
        col = int((value - x0) / span * (width - 1) + 0.5)
        ticks.append((col, f"{value:,.0f}" if step >= 1 else f"{value:g}"))
        value += step
    return ticks


def place_labels(width: int, labels: list[tuple[int, str]]) -> str:
    """One text line `width` wide with each label starting at its column; a label that would
    overlap the previous one is dropped, one past the edge is shifted left to fit."""
    line = [" "] * width
    end = -1
    for col, text in sorted(labels):
        start = min(col, max(0, width - len(text)))
        if start <= end or not text:
            continue
        for i, ch in enumerate(text[: width - start]):
            line[start + i] = ch
        end = start + len(text)
    return "".join(line)


def rasterise(steps: np.ndarray, values: np.ndarray, *, x0: float, x1: float, width: int,
              height: int, current_from: float | None = None,
              boundaries: tuple[float, ...] = (), ascii_only: bool = False,
              y_range: tuple[float, float] | None = None,
              marks: tuple[np.ndarray, np.ndarray] | None = None,
              ) -> tuple[list[list[tuple[str, Role]]], tuple[float, float]]:
    """Lines of (text, role) runs, and the value range drawn (for the axis labels). `marks`
    (steps, values) are drawn as single glyphs over the curve (evaluation points)."""
    if width <= 0 or height <= 0:
        return [], (0.0, 1.0)
    sub_x, sub_y = (1, 1) if ascii_only else (2, 4)
    sw, sh = width * sub_x, height * sub_y
    buckets = downsample(steps, values, x0, x1, sw)
    low, high = y_range if y_range is not None else value_range(buckets)
    if marks is not None and y_range is None and marks[1].size:
        finite = marks[1][np.isfinite(marks[1])]
        if finite.size:
            low, high = min(low, float(finite.min())), max(high, float(finite.max()))
    grid = np.zeros((sh, sw), dtype=bool)
    if buckets.columns.size:
        buckets = _fill_gaps(buckets)
        scale = (sh - 1) / (high - low)

        def row(v: np.ndarray) -> np.ndarray:
            return np.clip(((high - v) * scale + 0.5).astype(np.int64), 0, sh - 1)

        top, bottom, last = row(buckets.high), row(buckets.low), row(buckets.last)
        # Join each column to its left neighbour's last value so the curve reads as a line.
        prev_last = np.r_[last[0], last[:-1]]
        top = np.minimum(top, prev_last)
        bottom = np.maximum(bottom, prev_last)
        for col, lo_row, hi_row in zip(buckets.columns.tolist(), top.tolist(), bottom.tolist(),
                                       strict=True):
            grid[lo_row:hi_row + 1, col] = True
    span = max(x1 - x0, 1e-12)

    def column_of(x: float) -> int:
        return min(width - 1, max(0, int((x - x0) / span * (width - 1) + 0.5)))

    boundary_cols = {column_of(b) for b in boundaries if x0 < b <= x1}
    current_col = column_of(current_from) if current_from is not None else 0
    if ascii_only:
        cells = np.where(grid, "*", " ")
    else:
        bits = (grid.reshape(height, 4, width, 2) * _DOTS[None, :, None, :]).sum(axis=(1, 3))
        cells = np.vectorize(lambda b: chr(BRAILLE_BASE + b) if b else " ", otypes=[str])(bits)
    bar = "|" if ascii_only else "│"
    marked: dict[tuple[int, int], str] = {}
    if marks is not None:
        glyph = EVAL_MARK_ASCII if ascii_only else EVAL_MARK
        for x, v in zip(marks[0].tolist(), marks[1].tolist(), strict=True):
            if not (x0 <= x <= x1) or not np.isfinite(v) or high <= low:
                continue
            r = min(height - 1, max(0, int((high - v) / (high - low) * (height - 1) + 0.5)))
            marked[(r, column_of(x))] = glyph
    lines: list[list[tuple[str, Role]]] = []
    for r in range(height):
        runs: list[tuple[str, Role]] = []
        for c in range(width):
            char = cells[r, c]
            if (r, c) in marked:
                role, char = "eval", marked[(r, c)]
            elif char == " ":
                role, char = ("boundary", bar) if c in boundary_cols else ("", " ")
            else:
                role = "current" if current_from is not None and c >= current_col else "past"
            if runs and runs[-1][1] == role:
                runs[-1] = (runs[-1][0] + char, role)
            else:
                runs.append((char, role))
        lines.append(runs)
    return lines, (low, high)

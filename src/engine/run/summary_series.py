"""One metric's multi-resolution downsample, as `events.summary.json` keeps it (run/summary.py).

A series lives on the run's global-step axis. Its *top* level covers the whole run in at most
`TOP_CAP` buckets (bucket width a power of two, doubled as the run grows); up to `ZOOM_LEVELS`
*zoom* levels (widths 16^j steps below the top's) hold the most recent `ZOOM_CAP` buckets each.
Every bucket keeps min, max and last (the value at the bucket's largest step, the later one on a
tie), so a spike survives any zoom. Every level is a pure function of the set of points (bucket =
floor(step / width), no history of when it was folded), so a series folded incrementally by the
engine equals one rebuilt from the log in one pass. With many series the caller halves the
bucket counts to keep the total under `BUCKET_BUDGET`.

Values are stored as float32 (min/max/last) beside float64 steps, base64 in the JSON; rounding is
monotone, so merging float32 with new float64 points gives what a rebuild gives.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass
from typing import Any

__all__ = [
    "BUCKET_BUDGET", "MIN_TOP", "MIN_ZOOM", "PENDING_POINTS", "TOP_CAP", "ZOOM_CAP",
    "ZOOM_LEVELS", "ZOOM_STEP", "Level", "SeriesSummary",
]

TOP_CAP = 512  # buckets of the whole-run level
ZOOM_CAP = 256  # most recent buckets kept by each zoom level
ZOOM_STEP = 4  # zoom widths are 2 ** (4 j) = 16 ** j steps
ZOOM_LEVELS = 3  # zoom levels kept below the top
BUCKET_BUDGET = 16_000  # all series together (about 430 kB of base64)
MIN_TOP, MIN_ZOOM = 8, 4
PENDING_POINTS = 65_536  # points per series held before numpy folds them into the levels


def _np():  # numpy only when folding points: `graftline --help` never pays for it
    import numpy

    return numpy


@dataclass
class Level:
    """Buckets at width 2**exp, ascending: the step of each bucket's last point, min, max, last."""

    exp: int
    xl: Any  # float64 array
    lo: Any  # float64 arrays (values already rounded to float32)
    hi: Any
    last: Any

    def index(self) -> Any:
        np = _np()
        return np.floor(self.xl / float(2 ** self.exp)).astype(np.int64)


def _aggregate(exp: int, xl: Any, lo: Any, hi: Any, last: Any) -> Level:
    """Points or buckets (in log order) → one bucket per index at width 2**exp.

    `last` of a bucket is the value at its largest step; on a tie the later in log order wins
    (a resumed run re-logs steps after its checkpoint).
    """
    np = _np()
    if xl.size == 0:
        return Level(exp, xl, lo, hi, last)
    order = np.argsort(xl, kind="stable")  # by step, then log order (linear when sorted)
    xl, lo, hi, last = xl[order], lo[order], hi[order], last[order]
    idx = np.floor(xl / float(2 ** exp)).astype(np.int64)
    starts = np.flatnonzero(np.r_[True, idx[1:] != idx[:-1]])
    ends = np.r_[starts[1:], idx.size] - 1
    return Level(exp, xl[ends], np.fmin.reduceat(lo, starts), np.fmax.reduceat(hi, starts),
                 last[ends])


def _merge(old: Level | None, new: Level) -> Level:
    if old is None or old.xl.size == 0:
        return new
    np = _np()
    cat = np.concatenate
    return _aggregate(new.exp, cat([old.xl, new.xl]), cat([old.lo, new.lo]),
                      cat([old.hi, new.hi]), cat([old.last, new.last]))


def _keep_recent(level: Level, cap: int, max_x: float) -> Level:
    np = _np()
    newest = int(np.floor(max_x / float(2 ** level.exp)))
    keep = level.index() > newest - cap
    if keep.all():
        return level
    return Level(level.exp, level.xl[keep], level.lo[keep], level.hi[keep], level.last[keep])


def _f32(values: Any) -> Any:
    np = _np()
    return np.asarray(values, dtype=np.float64).astype(np.float32).astype(np.float64)


class SeriesSummary:
    """One metric's downsample. `add` is a list append; `fold` does the numpy work in batches."""

    __slots__ = ("_vs", "_xs", "max_x", "min_x", "points", "top", "zooms")

    def __init__(self) -> None:
        self.min_x: float | None = None
        self.max_x: float | None = None
        self.points = 0
        self.top: Level | None = None
        self.zooms: dict[int, Level] = {}
        self._xs: list[float] = []
        self._vs: list[float] = []

    def add(self, x: float, value: float) -> None:
        self._xs.append(x)
        self._vs.append(value)

    def add_many(self, xs: list[float], values: list[float]) -> None:
        self._xs += xs
        self._vs += values

    @property
    def pending(self) -> int:
        return len(self._xs)

    def fold(self, top_cap: int, zoom_cap: int) -> None:
        np = _np()
        if self._xs:
            xs = np.asarray(self._xs, dtype=np.float64)
            vs = _f32(self._vs)
            self._xs, self._vs = [], []
            finite = np.isfinite(xs)
            if not finite.all():
                xs, vs = xs[finite], vs[finite]
            if xs.size:
                self.points += int(xs.size)
                lo_x, hi_x = float(xs.min()), float(xs.max())
                self.min_x = lo_x if self.min_x is None else min(self.min_x, lo_x)
                self.max_x = hi_x if self.max_x is None else max(self.max_x, hi_x)
                top_exp = self.top.exp if self.top is not None else 0
                # the chunk at the finest width first, each coarser width from those buckets
                # (nested widths: exact, and cheaper than re-reading every point)
                chunk = Level(-1, xs, vs, vs, vs)
                for exp in sorted([*self.zooms, top_exp]):
                    chunk = _aggregate(exp, chunk.xl, chunk.lo, chunk.hi, chunk.last)
                    if exp == top_exp:
                        self.top = _merge(self.top, chunk)
                    else:
                        self.zooms[exp] = _merge(self.zooms[exp], chunk)
        self._fit(top_cap, zoom_cap)

    def _fit(self, top_cap: int, zoom_cap: int) -> None:
        """Widen the top until the run fits in `top_cap` buckets; derive and trim zoom levels."""
        if self.top is None or self.min_x is None or self.max_x is None:
            return
        exp = self.top.exp
        while (int(self.max_x // 2 ** exp) - int(self.min_x // 2 ** exp) + 1) > top_cap:
            exp += 1
        if exp != self.top.exp:
            old = self.top
            # A zoom width the old top was at least as fine as: derived from it exactly (the top
            # holds every point), so it equals a level folded from the start.
            for zoom in range(0, exp, ZOOM_STEP):
                if zoom not in self.zooms and zoom >= old.exp:
                    self.zooms[zoom] = _aggregate(zoom, old.xl, old.lo, old.hi, old.last)
            self.top = _aggregate(exp, old.xl, old.lo, old.hi, old.last)
        lowest = exp - ZOOM_STEP * ZOOM_LEVELS
        for zoom in list(self.zooms):
            if zoom >= exp or zoom < lowest:
                del self.zooms[zoom]
            else:
                self.zooms[zoom] = _keep_recent(self.zooms[zoom], zoom_cap, self.max_x)

    def levels(self) -> list[Level]:
        """Coarsest first: the top, then the zoom levels from coarse to fine."""
        out = [self.top] if self.top is not None else []
        return out + [self.zooms[exp] for exp in sorted(self.zooms, reverse=True)]

    def buckets(self) -> int:
        return sum(level.xl.size for level in self.levels())

    def to_dict(self) -> dict[str, Any]:
        return {"min_x": self.min_x, "max_x": self.max_x, "points": self.points,
                "levels": [_encode_level(level) for level in self.levels()]}

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> SeriesSummary:
        series = cls()
        series.min_x, series.max_x = raw.get("min_x"), raw.get("max_x")
        series.points = int(raw.get("points", 0))
        levels = [_decode_level(item) for item in raw.get("levels") or []]
        if levels:
            series.top = levels[0]
            series.zooms = {level.exp: level for level in levels[1:]}
        return series


def _b64(array: Any, dtype: str) -> str:
    return base64.b64encode(array.astype(dtype).tobytes()).decode("ascii")


def _unb64(text: str, dtype: str) -> Any:
    np = _np()
    return np.frombuffer(base64.b64decode(text), dtype=dtype).astype(np.float64)


def _encode_level(level: Level) -> dict[str, Any]:
    return {"exp": level.exp, "n": int(level.xl.size), "xl": _b64(level.xl, "<f8"),
            "lo": _b64(level.lo, "<f4"), "hi": _b64(level.hi, "<f4"),
            "last": _b64(level.last, "<f4")}


def _decode_level(raw: dict[str, Any]) -> Level:
    level = Level(int(raw["exp"]), _unb64(raw["xl"], "<f8"), _unb64(raw["lo"], "<f4"),
                  _unb64(raw["hi"], "<f4"), _unb64(raw["last"], "<f4"))
    sizes = {level.xl.size, level.lo.size, level.hi.size, level.last.size, int(raw["n"])}
    if len(sizes) != 1:
        raise ValueError(f"series level of width 2**{level.exp}: columns of unequal length")
    return level

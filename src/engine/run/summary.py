"""The compact summary beside `events.jsonl`: what a console needs to open a run of any length.

`events.jsonl` stays the source of truth. The engine's `EventWriter` folds every event it writes
into a `Summary` and replaces `events.summary.json` atomically every couple of seconds (and at
stage boundaries and close). A reader opens the summary, checks it against the log, and reads
only the log's tail after the summary's `offset`: a week of history opens as fast as a minute.

What the summary holds (bounded, about 1 MB at most whatever the run's length):

- per metric series (on the run's global-step axis) a multi-resolution downsample: a *top* level
  covering the whole run in at most 512 buckets (bucket width a power of two, doubled as the run
  grows) and up to three *zoom* levels (widths 16^j steps below the top's) holding the most recent
  256 buckets each. Every bucket keeps min, max and last (the value at the bucket's largest step,
  the later one on a tie), so a spike survives any zoom. Every level is a pure function of the
  set of points (bucket = floor(step / width), no history of when it was folded), so a summary
  folded incrementally by the engine equals one rebuilt from the log in one pass. With many
  series the bucket counts shrink by powers of two to keep the total under `BUCKET_BUDGET`;
- stage boundaries, the latest state of every stage (status, step, latest metrics, summary,
  evaluation, checks by name, the last checkpoints), the run's status, the latest telemetry;
- the last `LOG_ROWS` events that are not metrics, telemetry or progress (the console's log);
- `offset` (the log bytes it covers), `last_seq`, and CRCs of the log's first line and of the line
  ending at `offset`. A reader that finds the log shorter than `offset`, or either line
  different, does not trust the summary: it rebuilds it from the log and says so.

Values are stored as float32 (min/max/last) beside float64 steps, base64 in the JSON; rounding is
monotone, so merging float32 with new float64 points gives what a rebuild gives.
"""

from __future__ import annotations

import base64
import json
import os
import tempfile
import zlib
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from operator import methodcaller
from pathlib import Path
from typing import Any

from graftline.engine.common.layout import EVENTS, SUMMARY

__all__ = [
    "BUCKET_BUDGET", "LOG_ROWS", "SUMMARY", "Opened", "SeriesSummary", "Summary",
    "fold_rehearsal", "fold_samples", "load",
    "open_summary", "rebuild", "save", "verify",
]

VERSION = 1
TOP_CAP = 512  # buckets of the whole-run level
ZOOM_CAP = 256  # most recent buckets kept by each zoom level
ZOOM_STEP = 4  # zoom widths are 2 ** (4 j) = 16 ** j steps
ZOOM_LEVELS = 3  # zoom levels kept below the top
BUCKET_BUDGET = 16_000  # all series together (about 430 kB of base64)
SERIES_MAX = 1_000  # series beyond this are counted, not summarised
MIN_TOP, MIN_ZOOM = 8, 4
LOG_ROWS = 200
ROW_BYTES = 1_000  # a log row longer than this keeps its message only, cut
CHECKPOINTS_KEPT = 8  # trainer checkpoints per stage (a week of them stays bounded)
CHECKS_KEPT = 64  # per stage, by name
# Metric events held before they are sorted into series: few, because every held dict is one
# more object for Python's garbage collector to walk (measured: the larger cost, not the sort).
PENDING_ROWS = 256
PENDING_POINTS = 65_536  # points per series held before numpy folds them into the levels
NOT_SERIES = frozenset({"step", "global_step", "max_steps", "epoch", "tokens_per_s",
                        "steps_per_s", "eta_s"})
THROUGHPUT = ("tokens_per_s", "steps_per_s")
NOT_LOGGED = frozenset({"metrics", "telemetry", "progress", "samples"})
TRAINING_KINDS = frozenset({"sft", "dpo", "grpo"})
SUMMARY_BYTES_MAX = 1 << 20


def _np():  # numpy only when folding points: `graftline --help` never pays for it
    import numpy

    return numpy


# -- one series -----------------------------------------------------------------------------


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


# -- the whole run ----------------------------------------------------------------------------


def _stage_dict(name: str) -> dict[str, Any]:
    return {"name": name, "kind": "?", "index": None, "status": "pending", "max_steps": None,
            "global_step_offset": 0, "step": 0, "started": None, "finished": None,
            "seconds": None, "action": None, "reference": None, "reference_label": None,
            "lora_r": None, "resumed": False, "started_step": 0, "done_earlier": False,
            # scale-out (run/distributed.py): the group, and the rank that ended it
            "world_size": None, "processes": None, "machine_rank": None, "failed_rank": None,
            "latest": {},
            "summary": {}, "evaluation": {}, "checks": {}, "checkpoints": []}


_PLAIN = frozenset({float, int})


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


LATEST_SKIP = frozenset({"step", "global_step", "max_steps", "epoch"})


def _clean_latest(latest: dict[str, Any]) -> dict[str, float]:
    return {key: float(value) for key, value in latest.items()
            if key not in LATEST_SKIP and _number(value)}


def _bounded_row(row: dict[str, Any]) -> dict[str, Any]:
    text = json.dumps(row, separators=(",", ":"), default=str)
    if len(text) <= ROW_BYTES:
        return json.loads(text)
    data = row.get("data") or {}
    message = str(data.get("message", ""))[: ROW_BYTES // 2]
    return {"seq": row.get("seq"), "time": row.get("time"), "type": row.get("type"),
            "stage": row.get("stage"), "data": {"message": message, "cut": True}}


@dataclass
class Summary:
    """A run folded from its events. `add(row)` takes one decoded event (or the writer's dict)."""

    offset: int = 0
    head_crc: int | None = None  # crc32 of the log's first line
    tail_crc: int | None = None  # crc32 of the line ending at `offset`
    last_seq: int = 0
    events: int = 0
    counts: dict[str, int] = field(default_factory=dict)
    first_time: float | None = None
    last_time: float | None = None
    run: dict[str, Any] = field(default_factory=dict)
    resumes: int = 0
    status: str = "waiting"  # waiting | running | finished | failed | stopped
    message: str | None = None
    finished_time: float | None = None
    current: str | None = None
    stages: dict[str, dict[str, Any]] = field(default_factory=dict)
    boundaries: list[list[Any]] = field(default_factory=list)  # [global step, stage, kind]
    telemetry: dict[str, Any] | None = None
    gpu_reason: str | None = None
    throughput: dict[str, float] = field(default_factory=dict)
    log: deque[dict[str, Any]] = field(default_factory=lambda: deque(maxlen=LOG_ROWS))
    series: dict[str, SeriesSummary] = field(default_factory=dict)
    dropped_points: int = 0  # points of series beyond SERIES_MAX
    # the engine's rehearsal before stage 1 (run/rehearsal_phase.py): status, stage, done, …
    rehearsal: dict[str, Any] | None = None
    _pending_rows: list[tuple[Any, dict[str, Any], Any, Any]] = field(default_factory=list)

    # -- folding --------------------------------------------------------------------------

    def add(self, row: dict[str, Any]) -> None:
        kind = str(row.get("type"))
        seq = row.get("seq")
        when = row.get("time")
        data = row.get("data")
        if not isinstance(data, dict):
            data = {}
        if kind == "metrics":
            self.add_metrics(row.get("stage"), data, seq, when)
            return
        self._sort_pending()  # the metrics before this event come first, in log order
        if isinstance(seq, int) and seq > self.last_seq:
            self.last_seq = seq
        self.events += 1
        self.counts[kind] = self.counts.get(kind, 0) + 1
        if isinstance(when, int | float):
            if self.first_time is None:
                self.first_time = when
            self.last_time = when
        if kind == "telemetry":
            self.telemetry = data
            if data.get("gpu_reason"):
                self.gpu_reason = data["gpu_reason"]
            return
        if kind not in NOT_LOGGED:
            self.log.append(_bounded_row(row))
        handler = _HANDLERS.get(kind)
        if handler is not None:
            handler(self, row.get("stage"), data, when)

    def extend(self, rows: Iterable[dict[str, Any]]) -> None:
        for row in rows:
            self.add(row)

    def stage(self, name: str) -> dict[str, Any]:
        view = self.stages.get(name)
        if view is None:
            view = self.stages[name] = _stage_dict(name)
            view["index"] = len(self.stages) - 1
        return view

    def add_metrics(self, name: Any, data: dict[str, Any], seq: Any, when: Any) -> None:
        """The hot path, one call per training step: a list append. The rows are sorted into
        stages and series in batches (`_sort_pending`), before any other event is folded."""
        self._pending_rows.append((name, data, seq, when))
        if len(self._pending_rows) >= PENDING_ROWS:
            self._sort_pending()

    def _sort_pending(self) -> None:
        """Pending metric rows → stage state and per-series points (series in order of first
        appearance, so any batching gives the same summary)."""
        rows, self._pending_rows = self._pending_rows, []
        if not rows:
            return
        self.events += len(rows)
        self.counts["metrics"] = self.counts.get("metrics", 0) + len(rows)
        self.last_seq = max(self.last_seq, max((row[2] for row in rows if type(row[2]) is int),
                                               default=0))
        times = [row[3] for row in rows if type(row[3]) is float or _number(row[3])]
        if times:
            if self.first_time is None:
                self.first_time = times[0]
            self.last_time = times[-1]
        stages = self.stages
        points: list[tuple[Any, dict[str, Any]]] = []
        seen: Any = object()
        view: dict[str, Any] | None = None
        touched: dict[int, dict[str, Any]] = {}
        for name, data, seq, when in rows:
            if "eval_loss" in data or "eval_runtime" in data:
                # an evaluation is a log line too (rare: a dict lookup per row, no scan)
                self.log.append(_bounded_row({"seq": seq, "time": when, "type": "metrics",
                                              "stage": name, "data": data}))
            if name is not seen:  # consecutive rows share their stage
                seen = name
                view = stages.get(name) if isinstance(name, str) else None
                if view is None and isinstance(name, str):
                    view = self.stage(name)
            x = data.get("global_step")
            if view is not None:
                if view["status"] == "pending":
                    view["status"] = "running"
                step: Any = data.get("step")
                if type(step) is int or _number(step):
                    view["step"] = int(step)
                    if x is None:
                        x = view["global_step_offset"] + step
                if data.get("max_steps"):
                    view["max_steps"] = data["max_steps"]
                view["latest"].update(data)  # cleaned below, once per batch
                touched[id(view)] = view
            if x is not None and (type(x) is int or _number(x)):
                points.append((x, data))
        for view in touched.values():  # latest: the last value of every numeric metric
            view["latest"] = _clean_latest(view["latest"])
        for key in THROUGHPUT:
            for row in reversed(rows):
                value = row[1].get(key)
                if value is not None and _number(value):
                    self.throughput[key] = float(value)
                    break
        if not points:
            return
        datas = [data for _x, data in points]
        all_xs = [x for x, _data in points]
        keys: dict[str, None] = {}
        previous: Any = None
        for data in datas:  # rows of one stage mostly log the same keys: compare, don't walk
            if previous is None or data.keys() != previous:
                keys.update(dict.fromkeys(data))
                previous = data.keys()
        series = self.series
        for key in keys:
            if key in NOT_SERIES:
                continue
            values = list(map(methodcaller("get", key), datas))
            kinds = set(map(type, values))
            if kinds <= _PLAIN:
                xs, vs = all_xs, values
            else:
                keep = [value is not None and (type(value) is float or type(value) is int
                                               or _number(value)) for value in values]
                xs = [x for x, ok in zip(all_xs, keep, strict=True) if ok]
                vs = [v for v, ok in zip(values, keep, strict=True) if ok]
                if not xs:
                    continue
            line = series.get(key)
            if line is None:
                if len(series) >= SERIES_MAX:
                    self.dropped_points += len(xs)
                    continue
                line = series[key] = SeriesSummary()
            line.add_many(xs, vs)
            if line.pending > PENDING_POINTS:
                line.fold(*self.caps())

    def covered(self, offset: int, last_line: bytes) -> None:
        """The summary now covers the log up to `offset`, whose last line is `last_line`."""
        self.offset = offset
        self.tail_crc = crc(last_line)

    def caps(self) -> tuple[int, int]:
        """Buckets per level for the number of series, halved until all fit the budget."""
        top, zoom = TOP_CAP, ZOOM_CAP
        count = max(1, len(self.series))
        while count * (top + ZOOM_LEVELS * zoom) > BUCKET_BUDGET and top > MIN_TOP:
            top, zoom = max(MIN_TOP, top // 2), max(MIN_ZOOM, zoom // 2)
        return top, zoom

    def fold(self) -> None:
        """Fold every series' pending points into its levels (and refit them to the caps)."""
        self._sort_pending()
        top, zoom = self.caps()
        for line in self.series.values():
            line.fold(top, zoom)

    # -- questions --------------------------------------------------------------------------

    def points(self, key: str, level: int = 0) -> tuple[Any, Any, Any, Any]:
        """(steps, min, max, last) of one series at one level (0: the whole run)."""
        np = _np()
        self._sort_pending()
        line = self.series.get(key)
        if line is None:
            empty = np.empty(0)
            return empty, empty, empty, empty
        line.fold(*self.caps())
        levels = line.levels()
        chosen = levels[min(level, len(levels) - 1)] if levels else None
        if chosen is None:
            empty = np.empty(0)
            return empty, empty, empty, empty
        return chosen.xl, chosen.lo, chosen.hi, chosen.last

    # -- serialising ------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        self.fold()
        return {
            "version": VERSION, "offset": self.offset, "head_crc": self.head_crc,
            "tail_crc": self.tail_crc, "last_seq": self.last_seq, "events": self.events,
            "counts": self.counts, "first_time": self.first_time, "last_time": self.last_time,
            "run": self.run, "resumes": self.resumes, "status": self.status,
            "message": self.message, "finished_time": self.finished_time,
            "current": self.current, "stages": self.stages, "boundaries": self.boundaries,
            "telemetry": self.telemetry, "gpu_reason": self.gpu_reason,
            "throughput": self.throughput, "log": list(self.log),
            "series": {key: line.to_dict() for key, line in self.series.items()},
            "dropped_points": self.dropped_points, "rehearsal": self.rehearsal,
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), separators=(",", ":"), default=str)

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> Summary:
        if not isinstance(raw, dict) or raw.get("version") != VERSION:
            found = raw.get("version") if isinstance(raw, dict) else type(raw).__name__
            raise ValueError(f"not a graftline events summary of version {VERSION} ({found})")
        summary = cls(
            offset=int(raw["offset"]), head_crc=raw.get("head_crc"),
            tail_crc=raw.get("tail_crc"), last_seq=int(raw.get("last_seq", 0)),
            events=int(raw.get("events", 0)), counts=dict(raw.get("counts") or {}),
            first_time=raw.get("first_time"), last_time=raw.get("last_time"),
            run=dict(raw.get("run") or {}), resumes=int(raw.get("resumes", 0)),
            status=str(raw.get("status", "waiting")), message=raw.get("message"),
            finished_time=raw.get("finished_time"), current=raw.get("current"),
            stages={str(k): dict(v) for k, v in (raw.get("stages") or {}).items()},
            boundaries=[list(b) for b in raw.get("boundaries") or []],
            telemetry=raw.get("telemetry"), gpu_reason=raw.get("gpu_reason"),
            throughput=dict(raw.get("throughput") or {}),
            series={str(k): SeriesSummary.from_dict(v)
                    for k, v in (raw.get("series") or {}).items()},
            dropped_points=int(raw.get("dropped_points", 0)),
            rehearsal=raw.get("rehearsal") if isinstance(raw.get("rehearsal"), dict) else None,
        )
        summary.log.extend(raw.get("log") or [])
        return summary


# -- event handlers (everything but metrics and telemetry) ----------------------------------


def _run_started(s: Summary, _name: Any, data: dict[str, Any], _when: Any) -> None:
    if s.run:
        s.resumes += 1
    s.run = data
    s.status = "running"
    s.message = None
    s.finished_time = None
    for index, raw in enumerate(data.get("stages") or []):
        if not isinstance(raw, dict) or not isinstance(raw.get("name"), str):
            continue
        view = s.stage(raw["name"])
        view["index"] = index
        for key in ("kind", "action", "lora_r", "reference", "reference_label", "max_steps"):
            if raw.get(key) is not None:
                view[key] = raw[key]


def _stage_started(s: Summary, name: Any, data: dict[str, Any], when: Any) -> None:
    if not isinstance(name, str):
        return
    view = s.stage(name)
    view["status"] = "running"
    view["started"] = when
    for key in ("kind", "index", "max_steps", "action", "reference", "reference_label"):
        if data.get(key) is not None:
            view[key] = data[key]
    for key in ("world_size", "processes", "machine_rank"):  # scale-out
        view[key] = data.get(key)
    view["failed_rank"] = None
    view["resumed"] = bool(data.get("resumed_from"))
    view["started_step"] = int(view.get("step") or 0) if view["resumed"] else 0
    view["seconds"] = None
    offset = data.get("global_step_offset")
    view["global_step_offset"] = int(offset) if isinstance(offset, int | float) else 0
    s.current = name
    if not any(b[1] == name for b in s.boundaries):
        s.boundaries.append([view["global_step_offset"], name, view["kind"]])


def _checkpoint_saved(s: Summary, name: Any, data: dict[str, Any], _when: Any) -> None:
    if isinstance(name, str):
        kept = s.stage(name)["checkpoints"]
        kept.append(data)
        # Every adapter/merged/export checkpoint stays (the export key needs them; a stage has
        # a few), trainer checkpoints only the last CHECKPOINTS_KEPT (a week saves thousands).
        trainer = [i for i, c in enumerate(kept) if isinstance(c, dict)
                   and c.get("kind") == "trainer"]
        if len(trainer) > CHECKPOINTS_KEPT or len(kept) > 4 * CHECKPOINTS_KEPT:
            del kept[trainer[0] if trainer else 0]


def _check_result(s: Summary, name: Any, data: dict[str, Any], _when: Any) -> None:
    if not isinstance(name, str):
        return
    checks = s.stage(name)["checks"]
    key = str(data.get("name", "?"))
    checks.pop(key, None)  # re-insert: the dict's order is the order of the latest results
    checks[key] = {"status": data.get("status"), "message": data.get("message")}
    while len(checks) > CHECKS_KEPT:
        checks.pop(next(iter(checks)))


def _stage_finished(s: Summary, name: Any, data: dict[str, Any], when: Any) -> None:
    if not isinstance(name, str):
        return
    view = s.stage(name)
    if data.get("kind") is not None:
        view["kind"] = data["kind"]
    if data.get("status") == "skipped":
        # the engine skips only stages a resume found complete: it ran before, keep its results
        view["status"], view["done_earlier"] = "skipped", True
        return
    view["done_earlier"] = False
    view["status"] = str(data.get("status", "complete"))
    view["finished"] = when
    view["seconds"] = data.get("seconds")
    view["summary"] = data.get("metrics") or {}
    view["evaluation"] = data.get("evaluation") or {}
    if view["status"] == "complete" and isinstance(view["max_steps"], int):
        view["step"] = max(view["step"] or 0, view["max_steps"])


def _error(s: Summary, name: Any, data: dict[str, Any], _when: Any) -> None:
    # scale-out (run/distributed.py): the rank whose death ended a stage's process group
    if isinstance(name, str) and isinstance(data.get("failed_rank"), int):
        s.stage(name)["failed_rank"] = data["failed_rank"]


def _run_finished(s: Summary, _name: Any, data: dict[str, Any], when: Any) -> None:
    s.status = str(data.get("status", "finished"))
    s.message = data.get("message")
    s.finished_time = when
    s.current = None
    for view in s.stages.values():
        if view["status"] == "running":
            view["status"] = "stopped" if s.status == "stopped" else "failed"


def fold_rehearsal(view: dict[str, Any] | None, data: dict[str, Any]) -> dict[str, Any]:
    """The rehearsal row from one `rehearsal` event: `status` (running, passed, failed,
    stopped), the twin stage it is on, how many passed, its seconds, message and fix. The
    console folds live events with the same function."""
    view = dict(view or {"status": "running", "stage": None, "passed": 0, "seconds": None,
                         "message": "", "fix": ""})
    phase = data.get("phase")
    if phase == "started":
        view.update(status="running", stage=None, passed=0, seconds=None, message="", fix="")
    elif phase == "stage":
        view["stage"] = data.get("name")
        if data.get("status") == "passed":
            view["passed"] = int(view.get("passed") or 0) + 1
    elif phase == "finished":
        view.update(status=str(data.get("status") or ("passed" if data.get("ok") else "failed")),
                    stage=None, seconds=data.get("seconds"),
                    message=str(data.get("message") or ""), fix=str(data.get("fix") or ""))
        stages = data.get("stages")
        if isinstance(stages, list):
            view["passed"] = sum(1 for st in stages if isinstance(st, dict)
                                 and st.get("status") == "passed")
            view["failed_stage"] = next((st.get("name") for st in stages if isinstance(st, dict)
                                         and st.get("status") == "failed"), None)
    return view


SAMPLE_ROWS = 8  # probes kept per stage and moment (the engine sends no more)
SAMPLE_CHARS = 160


def fold_samples(stage: dict[str, Any], data: dict[str, Any]) -> None:
    """A stage's probe answers from one `samples` event: the latest per moment (start, end),
    bounded, so a week-long run's samples open as fast as its chart."""
    when = str(data.get("when") or "end")
    rows = [{"prompt": str(r.get("prompt", ""))[:SAMPLE_CHARS],
             "answer": str(r.get("answer", ""))[:SAMPLE_CHARS]}
            for r in (data.get("samples") or [])[:SAMPLE_ROWS] if isinstance(r, dict)]
    kept = stage.get("samples")
    kept = dict(kept) if isinstance(kept, dict) else {}
    kept[when] = {"global_step": data.get("global_step"), "samples": rows}
    stage["samples"] = kept


def _samples(s: Summary, name: Any, data: dict[str, Any], _when: Any) -> None:
    if isinstance(name, str):
        fold_samples(s.stage(name), data)


def _rehearsal(s: Summary, _name: Any, data: dict[str, Any], _when: Any) -> None:
    s.rehearsal = fold_rehearsal(s.rehearsal, data)


_HANDLERS = {
    "rehearsal": _rehearsal,
    "samples": _samples,
    "run_started": _run_started,
    "stage_started": _stage_started,
    "checkpoint_saved": _checkpoint_saved,
    "check_result": _check_result,
    "stage_finished": _stage_finished,
    "run_finished": _run_finished,
    "error": _error,
}


# -- the file: save, load, verify, rebuild ---------------------------------------------------


def first_line(path: Path) -> bytes | None:
    """The log's first complete line (with its newline), or None."""
    try:
        with Path(path).open("rb") as handle:
            line = handle.readline(1 << 22)
    except FileNotFoundError:
        return None
    return line if line.endswith(b"\n") else None


def line_before(path: Path, offset: int) -> bytes | None:
    """The complete line that ends exactly at `offset` (with its newline), or None."""
    if offset <= 0:
        return None
    try:
        with Path(path).open("rb") as handle:
            start = max(0, offset - 65_536)
            while True:
                handle.seek(start)
                blob = handle.read(offset - start)
                if len(blob) != offset - start or not blob.endswith(b"\n"):
                    return None
                cut = blob.rfind(b"\n", 0, len(blob) - 1)
                if cut >= 0 or start == 0:
                    return blob[cut + 1:]
                start = max(0, start - (1 << 22))
    except FileNotFoundError:
        return None


def crc(line: bytes | None) -> int | None:
    return None if line is None else zlib.crc32(line)


def verify(summary: Summary, events_path: Path) -> str | None:
    """Why the summary cannot be trusted for this log, or None when it agrees with it."""
    try:
        size = Path(events_path).stat().st_size
    except FileNotFoundError:
        return "events.jsonl is missing" if summary.offset else None
    if summary.offset > size:
        return f"it covers {summary.offset:,} bytes but events.jsonl has {size:,}"
    if summary.offset == 0:
        return None
    if crc(first_line(events_path)) != summary.head_crc:
        return "events.jsonl starts differently (a replaced log)"
    if crc(line_before(events_path, summary.offset)) != summary.tail_crc:
        return f"events.jsonl differs at byte {summary.offset:,} (an edited or replaced log)"
    return None


def save(run_dir: Path, summary: Summary) -> int:
    """Replace the summary file atomically (a reader sees the old file or the new one); its size.

    No fsync: the summary is a cache of the log, and the engine's training thread should not wait
    for the disk every couple of seconds. After a power cut it may be empty or old; a reader then
    finds it corrupt or behind and rebuilds it or reads the longer tail."""
    path = Path(run_dir) / SUMMARY
    text = summary.to_json()
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
        os.chmod(tmp, 0o600)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return len(text)


def load(run_dir: Path) -> Summary:
    """The summary file as written (ValueError/OSError when missing, truncated or foreign)."""
    raw = (Path(run_dir) / SUMMARY).read_bytes()
    try:
        decoded = json.loads(raw)
    except ValueError as exc:
        raise ValueError(f"not JSON ({len(raw):,} bytes; truncated or corrupt): {exc}") from exc
    try:
        return Summary.from_dict(decoded)
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise ValueError(f"unreadable: {exc}") from exc


def catch_up(summary: Summary, events_path: Path, *, upto: int | None = None) -> list[str]:
    """Fold the log's complete lines after `summary.offset` (streamed, bounded memory)."""
    from graftline.engine.run.events import iter_rows, torn_tail

    events_path = Path(events_path)
    for rows, end, last_line in iter_rows(events_path, summary.offset, upto=upto):
        summary.extend(rows)
        summary.covered(end, last_line)
    if summary.head_crc is None and summary.offset:
        summary.head_crc = crc(first_line(events_path))
    summary.fold()
    torn = torn_tail(events_path, summary.offset) if upto is None else 0
    return [f"events.jsonl ends in an incomplete line ({torn:,} bytes) after byte "
            f"{summary.offset:,}: skipped (a writer killed mid-line, or one writing now)"
            ] if torn else []


def rebuild(events_path: Path, *, upto: int | None = None) -> tuple[Summary, list[str]]:
    """A summary folded from the log's start, in one streaming pass."""
    summary = Summary()
    return summary, catch_up(summary, events_path, upto=upto)


@dataclass
class Opened:
    summary: Summary
    notices: list[str]
    rebuilt: bool
    from_offset: int  # where the trusted summary ended and the log's tail began
    reason: str | None = None  # why it was rebuilt


def open_summary(run_dir: Path, *, tail: bool = True, write_back: bool = True) -> Opened:
    """The run's summary, checked against its log; rebuilt from the log when it is missing
    (quietly: an older run, or an engine before its first save) or corrupt or disagrees (with a
    notice). `tail`: also fold the log after its offset.
    `write_back`: store a rebuilt summary (best effort; a reader without write access goes on)."""
    run_dir = Path(run_dir)
    events_path = run_dir / EVENTS
    notices: list[str] = []
    reason: str | None
    missing = False
    try:
        summary = load(run_dir)
        reason = verify(summary, events_path)
    except FileNotFoundError:
        has_log = events_path.exists() and events_path.stat().st_size > 0
        summary, reason, missing = Summary(), "none yet" if has_log else None, True
    except (OSError, ValueError) as exc:
        summary, reason = Summary(), str(exc)
    rebuilt = reason is not None
    if rebuilt:
        summary = Summary()
    from_offset = summary.offset
    if rebuilt or tail:
        notices += catch_up(summary, events_path)
    if rebuilt and not missing:  # a missing one is normal (an older run, a new engine)
        notices.insert(0, f"summary {SUMMARY}: {reason}; rebuilt from {EVENTS} "
                          f"({summary.events:,} events)")
    if rebuilt and write_back and summary.offset:
        try:
            save(run_dir, summary)
        except OSError as exc:
            notices.append(f"could not store the rebuilt summary: {exc}")
    return Opened(summary, notices, rebuilt, from_offset, reason)

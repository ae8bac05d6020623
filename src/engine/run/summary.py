"""The compact summary beside `events.jsonl`: what a console needs to open a run of any length.

`events.jsonl` stays the source of truth. The engine's `EventWriter` folds every event it writes
into a `Summary` and replaces `events.summary.json` atomically every couple of seconds (and at
stage boundaries and close). A reader opens the summary, checks it against the log, and reads
only the log's tail after the summary's `offset`: a week of history opens as fast as a minute.

What the summary holds (bounded, about 1 MB at most whatever the run's length):

- per metric series (on the run's global-step axis) a multi-resolution downsample
  (run/summary_series.py); with many series the bucket counts shrink by powers of two to keep
  the total under `BUCKET_BUDGET`;
- stage boundaries, the latest state of every stage (status, step, latest metrics, summary,
  evaluation, checks by name, the last checkpoints), the run's status, the latest telemetry;
- the last `LOG_ROWS` events that are not metrics, telemetry or progress (the console's log);
- `offset` (the log bytes it covers), `last_seq`, and CRCs of the log's first line and of the line
  ending at `offset`, which a reader checks before it trusts the file (run/summary_file.py:
  save, load, verify, rebuild, `open_summary`).

This module is the summary: events in, `Summary` out, and the summary as JSON. The run itself
(stages, status, boundaries, telemetry) is folded by run/fold.py's `RunFold`, the one fold every
reader shares; the summary adds what it keeps of the log and the curves.
"""

from __future__ import annotations

import json
import zlib
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from operator import methodcaller
from typing import Any

from graftline.engine.common.layout import SUMMARY
from graftline.engine.run.fold import RunFold, StageState, is_evaluation
from graftline.engine.run.summary_series import (
    BUCKET_BUDGET,
    MIN_TOP,
    MIN_ZOOM,
    PENDING_POINTS,
    TOP_CAP,
    ZOOM_CAP,
    ZOOM_LEVELS,
    SeriesSummary,
)

__all__ = ["BUCKET_BUDGET", "LOG_ROWS", "SUMMARY", "SeriesSummary", "Summary", "crc"]

VERSION = 1
SERIES_MAX = 1_000  # series beyond this are counted, not summarised
LOG_ROWS = 200
ROW_BYTES = 1_000  # a log row longer than this keeps its message only, cut
# Metric events held before they are sorted into series: few, because every held dict is one
# more object for Python's garbage collector to walk (measured: the larger cost, not the sort).
PENDING_ROWS = 256
NOT_SERIES = frozenset({"step", "global_step", "max_steps", "epoch", "tokens_per_s",
                        "steps_per_s", "eta_s"})
NOT_LOGGED = frozenset({"metrics", "telemetry", "progress", "samples"})
SUMMARY_BYTES_MAX = 1 << 20


# -- the whole run ----------------------------------------------------------------------------


_PLAIN = frozenset({float, int})


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _bounded_row(row: dict[str, Any]) -> dict[str, Any]:
    text = json.dumps(row, separators=(",", ":"), default=str)
    if len(text) <= ROW_BYTES:
        return json.loads(text)
    data = row.get("data") or {}
    message = str(data.get("message", ""))[: ROW_BYTES // 2]
    return {"seq": row.get("seq"), "time": row.get("time"), "type": row.get("type"),
            "stage": row.get("stage"), "data": {"message": message, "cut": True}}


def _new_state() -> RunFold[StageState]:
    return RunFold(StageState)


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
    # the run itself: stages, status, boundaries, telemetry … (the one fold, run/fold.py)
    state: RunFold[StageState] = field(default_factory=_new_state)
    log: deque[dict[str, Any]] = field(default_factory=lambda: deque(maxlen=LOG_ROWS))
    series: dict[str, SeriesSummary] = field(default_factory=dict)
    dropped_points: int = 0  # points of series beyond SERIES_MAX
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
        if kind not in NOT_LOGGED:
            self.log.append(_bounded_row(row))
        stage = row.get("stage")
        self.state.apply(kind, stage if isinstance(stage, str) else None, data, when)

    def extend(self, rows: Iterable[dict[str, Any]]) -> None:
        for row in rows:
            self.add(row)

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
        for name, data, seq, when in rows:
            if is_evaluation(data):
                # an evaluation is a log line too (rare: a dict lookup per row, no scan)
                self.log.append(_bounded_row({"seq": seq, "time": when, "type": "metrics",
                                              "stage": name, "data": data}))
        steps = self.state.add_metrics([(name, data) for name, data, _seq, _when in rows])
        points = [(x, row[1]) for x, row in zip(steps, rows, strict=True) if x is not None]
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
        import numpy as np  # only when a chart asks: `graftline --help` never pays for it

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
            **self.state.to_dict(), "log": list(self.log),
            "series": {key: line.to_dict() for key, line in self.series.items()},
            "dropped_points": self.dropped_points,
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
            series={str(k): SeriesSummary.from_dict(v)
                    for k, v in (raw.get("series") or {}).items()},
            dropped_points=int(raw.get("dropped_points", 0)),
        )
        summary.state.load(raw)
        summary.log.extend(raw.get("log") or [])
        return summary


def crc(line: bytes | None) -> int | None:
    """The CRC a summary keeps of a log line (its first, and the one ending at its offset)."""
    return None if line is None else zlib.crc32(line)

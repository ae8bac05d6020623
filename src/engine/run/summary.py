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

This module is the fold: events in, `Summary` out, and the summary as JSON.
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

__all__ = ["BUCKET_BUDGET", "LOG_ROWS", "SUMMARY", "SeriesSummary", "Summary", "crc",
           "fold_rehearsal", "fold_samples"]

VERSION = 1
SERIES_MAX = 1_000  # series beyond this are counted, not summarised
LOG_ROWS = 200
ROW_BYTES = 1_000  # a log row longer than this keeps its message only, cut
CHECKPOINTS_KEPT = 8  # trainer checkpoints per stage (a week of them stays bounded)
CHECKS_KEPT = 64  # per stage, by name
# Metric events held before they are sorted into series: few, because every held dict is one
# more object for Python's garbage collector to walk (measured: the larger cost, not the sort).
PENDING_ROWS = 256
NOT_SERIES = frozenset({"step", "global_step", "max_steps", "epoch", "tokens_per_s",
                        "steps_per_s", "eta_s"})
THROUGHPUT = ("tokens_per_s", "steps_per_s")
NOT_LOGGED = frozenset({"metrics", "telemetry", "progress", "samples"})
TRAINING_KINDS = frozenset({"sft", "dpo", "grpo"})
SUMMARY_BYTES_MAX = 1 << 20


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
    """A stage's probe answers from one `samples` event: the latest per moment (start, eval:
    the latest evaluation during training, end), bounded, so a week-long run's samples open as
    fast as its chart."""
    when = str(data.get("when") or "end")
    rows = [{"prompt": str(r.get("prompt", ""))[:SAMPLE_CHARS],
             "answer": str(r.get("answer", ""))[:SAMPLE_CHARS],
             **({"expected": str(r["expected"])[:SAMPLE_CHARS]} if r.get("expected") else {})}
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




def crc(line: bytes | None) -> int | None:
    """The CRC a summary keeps of a log line (its first, and the one ending at its offset)."""
    return None if line is None else zlib.crc32(line)

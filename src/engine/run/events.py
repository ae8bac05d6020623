"""The run's event log, `events.jsonl`: append-only JSON lines, the engine-console contract.

Durability policy: every event is written with one `write()` of a whole line and flushed to the
OS at once, so a reader in another process sees it immediately and a killed engine loses nothing
it wrote. `fsync` is called for the events that matter after a power loss (stage boundaries,
checkpoints, checks, errors, run end), not for every metric, which keeps a training step's
logging cost to microseconds.

Readers start at any byte offset, stop at a torn last line (no newline yet) and resume there.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from graftline.engine.common.layout import EVENTS

EventType = Literal[
    "run_started",
    "stage_started",
    "metrics",
    "checkpoint_saved",
    "check_result",
    "warning",
    "error",
    "stage_finished",
    "telemetry",
    "run_finished",
    "progress",
    "info",
]
DURABLE: frozenset[str] = frozenset(
    {
        "run_started",
        "stage_started",
        "checkpoint_saved",
        "check_result",
        "error",
        "stage_finished",
        "run_finished",
    }
)


@dataclass(frozen=True)
class Event:
    seq: int
    time: float
    type: str
    stage: str | None = None
    data: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps(
            {
                "seq": self.seq,
                "time": self.time,
                "type": self.type,
                "stage": self.stage,
                "data": self.data,
            },
            separators=(",", ":"),
            default=str,
        )

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> Event:
        return cls(
            seq=raw["seq"],
            time=raw["time"],
            type=raw["type"],
            stage=raw.get("stage"),
            data=raw.get("data") or {},
        )


class EventWriter:
    """Appends events for one run. Safe to share between threads (trainer callback, telemetry)."""

    def __init__(self, run_dir: Path) -> None:
        self.path = Path(run_dir) / EVENTS
        self._lock = threading.Lock()
        self._seq = _last_seq(self.path)
        # O_APPEND: a resumed engine appends after whatever the dead one left, torn line included.
        self._fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        if _ends_torn(self.path):
            os.write(self._fd, b"\n")

    def emit(self, type: str, stage: str | None = None, **data: Any) -> Event:
        with self._lock:
            self._seq += 1
            event = Event(self._seq, time.time(), type, stage, data)
            os.write(self._fd, (event.to_json() + "\n").encode())
            if type in DURABLE:
                os.fsync(self._fd)
            return event

    def close(self) -> None:
        with self._lock:
            if self._fd >= 0:
                os.fsync(self._fd)
                os.close(self._fd)
                self._fd = -1

    def __enter__(self) -> EventWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _ends_torn(path: Path) -> bool:
    size = path.stat().st_size if path.exists() else 0
    if size == 0:
        return False
    with path.open("rb") as handle:
        handle.seek(size - 1)
        return handle.read(1) != b"\n"


def _last_seq(path: Path) -> int:
    last = 0
    for event in read_events(path)[0]:
        last = event.seq
    return last


def read_raw(path: Path, offset: int = 0) -> tuple[list[dict[str, Any]], int]:
    """Every complete event from `offset` as plain dicts, and the offset to continue from.

    A last line without its newline is a write in progress (or a crash mid-write): it is left for
    the next call. A complete line that is not a JSON object is skipped, never fatal.

    The complete lines are decoded as one JSON array in a single C call, which is faster than a
    `json.loads` per line; only when that fails (a torn or foreign line in the middle, left by a
    crash) does it fall back to line by line.
    """
    try:
        with Path(path).open("rb") as handle:
            handle.seek(offset)
            blob = handle.read()
    except FileNotFoundError:
        return [], offset
    end = blob.rfind(b"\n") + 1
    if end == 0:
        return [], offset
    return _decode(blob[:end]), offset + end


def _decode(body: bytes) -> list[dict[str, Any]]:
    """JSON lines (each ending in a newline) → dicts, skipping lines that are not JSON objects."""
    rows: list[dict[str, Any]] = []
    while body:
        try:
            # JSON text never holds a raw newline (json.dumps escapes it), so newline → comma.
            decoded = json.loads(b"[" + body[:-1].replace(b"\n", b",") + b"]")
        except ValueError as exc:
            # Decode what precedes the bad line in one piece, the bad line and its neighbour one
            # by one (the parser may report the error a line late), then go on after them.
            where = max(0, min(len(body) - 1, getattr(exc, "pos", 1) - 1))
            start = body.rfind(b"\n", 0, where) + 1
            start = body.rfind(b"\n", 0, max(0, start - 1)) + 1
            stop = body.find(b"\n", where) + 1 or len(body)
            rows += _decode(body[:start]) if start else []
            rows += _decode_lines(body[start:stop])
            body = body[stop:]
            continue
        rows += [row for row in decoded if type(row) is dict]
        break
    return rows


def _decode_lines(body: bytes) -> list[dict[str, Any]]:
    rows = []
    for line in body.split(b"\n"):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError:
            continue
        if type(row) is dict:
            rows.append(row)
    return rows


def read_events(path: Path, offset: int = 0) -> tuple[list[Event], int]:
    """Every complete event from `offset` (see `read_raw`), and the offset to continue from."""
    rows, offset = read_raw(path, offset)
    events: list[Event] = []
    for row in rows:
        try:
            events.append(Event.from_dict(row))
        except (KeyError, TypeError):
            continue
    return events, offset


def follow(
    path: Path, offset: int = 0, *, poll: float = 0.25, stop: threading.Event | None = None
) -> Iterator[list[Event]]:
    """Yield batches of new events as the file grows, forever (or until `stop` is set)."""
    while stop is None or not stop.is_set():
        events, offset = read_events(path, offset)
        if events:
            yield events
        else:
            time.sleep(poll)

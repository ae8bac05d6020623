"""The run's event log, `events.jsonl`: append-only JSON lines, the engine-console contract.

Durability policy: every event is written with one `write()` of a whole line and flushed to the
OS at once, so a reader in another process sees it immediately and a killed engine loses nothing
it wrote. `fsync` is called for the events that matter after a power loss (stage boundaries,
checkpoints, checks, errors, run end), not for every metric, which keeps a training step's
logging cost to microseconds.

Readers start at any byte offset, stop at a torn last line (no newline yet) and resume there;
`iter_rows` streams a log of any size in bounded memory and `torn_tail` says how many bytes of an
incomplete last line it left (a one-shot reader reports them as skipped). A normal write never
leaves a torn line: a short or failed write is completed or cut off again (see `EventWriter`).

Beside the log the writer keeps `events.summary.json` (`summary.py`): the log stays the truth.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from graftline.engine.common.errors import GraftlineError
from graftline.engine.common.event_types import (  # the types, and their records
    EventType,
    require,
)
from graftline.engine.common.layout import EVENTS
from graftline.engine.run.summary import Summary, crc
from graftline.engine.run.summary_file import first_line, open_summary, rebuild, save

SAVE_EVERY = 2.0  # seconds between summary saves while events flow
PENDING_MAX = 10_000  # events held in memory while the disk refuses writes
CHUNK_BYTES = 8 << 20  # streaming readers read this much at a time
# One encoder for every line (json.dumps with arguments builds a new one per call): the same
# bytes, a few microseconds less per event, which pays for the summary's folding.
_ENCODE = json.JSONEncoder(separators=(",", ":"), default=str).encode

DURABLE: frozenset[str] = frozenset(
    {
        "run_started",
        "stage_started",
        "checkpoint_saved",
        "check_result",
        "error",
        "stage_finished",
        "run_finished",
        "rehearsal",
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
        return _ENCODE(
            {
                "seq": self.seq,
                "time": self.time,
                "type": self.type,
                "stage": self.stage,
                "data": self.data,
            }
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


class EventWriteError(GraftlineError, OSError):
    """A line could not be written to `events.jsonl` (disk full, quota, I/O error).

    The event is not lost yet: it waits in the writer's bounded queue and is written, in order,
    by the next `emit` or `flush_pending` that succeeds. Also an `OSError`, so code that caught
    the plain error from `os.write` keeps working."""


ErrorCallback = Callable[[OSError, "Event | None"], None]  # None: a queued write failed


class EventWriter:
    """Appends events for one run. Safe to share between threads (trainer callback, telemetry).

    Keeps the run's summary (`summary.py`) as it writes: every written event is folded in, and
    the summary file is replaced atomically every `save_every` seconds, after every durable
    event, and at close. A resumed writer opens the summary and reads only the log after it
    (rebuilding it from the log when it is missing or disagrees; `notices` says so).

    When a write fails (ENOSPC, EDQUOT, EIO), the partly written bytes are cut off again, so a
    normal write never leaves a torn line, and the event joins a bounded queue (`pending_max`;
    when full, the oldest metric or telemetry event is dropped first and counted in `dropped`).
    `on_error(exc, event)` is called if given; without it `emit` raises `EventWriteError`. Every
    later `emit` (or `flush_pending()`) first writes the queue in order; once it drains, a
    `warning` event says how many events were dropped, if any.
    """

    def __init__(self, run_dir: Path, *, summary: bool = True,
                 on_error: ErrorCallback | None = None, save_every: float = SAVE_EVERY,
                 pending_max: int = PENDING_MAX) -> None:
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / EVENTS
        self._lock = threading.Lock()
        self._on_error = on_error
        self._save_every = save_every
        self._pending: deque[tuple[Event, bytes]] = deque()
        self._pending_max = max(1, pending_max)
        self.dropped = 0
        self.write_error: OSError | None = None  # the last failed write, None once flushed
        self.summary_error: OSError | None = None  # the last failed summary save
        self.notices: list[str] = []
        # O_APPEND: a resumed engine appends after whatever the dead one left, torn line included.
        self._fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        if _ends_torn(self.path):
            os.write(self._fd, b"\n")
        self._size = os.fstat(self._fd).st_size
        self._last_line: bytes | None = None
        self._summary: Summary | None = None
        if summary:
            opened = open_summary(self.run_dir, tail=True, write_back=False)
            self._summary, self.notices = opened.summary, opened.notices
            self._seq = self._summary.last_seq
            if self._summary.offset != self._size:  # another writer? never trust, rebuild
                self._summary, self.notices = rebuild(self.path, upto=self._size)
                self._seq = self._summary.last_seq
        else:
            self._seq = _last_seq(self.path)
        self._next_save = time.monotonic() + save_every

    @property
    def summary(self) -> Summary | None:
        return self._summary

    @property
    def pending(self) -> int:
        """Events waiting for the disk (a failed write); 0 in normal operation."""
        return len(self._pending)

    def emit(self, type: EventType, stage: str | None = None, **data: Any) -> Event:
        require(type, data)  # checked under GRAFTLINE_CHECK_EVENTS=1 (the tests), else nothing
        with self._lock:
            # The queue first (it may add a 'dropped' warning): seqs stay in file order.
            blocked = bool(self._pending) and not self._flush_pending()
            self._seq += 1
            event = Event(self._seq, time.time(), type, stage, data)
            line = (event.to_json() + "\n").encode()
            if blocked:
                self._queue(event, line)
                self._failed(self.write_error or OSError("events.jsonl is not writable"), event)
                return event
            try:
                self._write(line)
            except OSError as exc:
                self._queue(event, line)
                self._failed(exc, event)
                return event
            self._size += len(line)
            self._last_line = line
            summary = self._summary
            if summary is not None:
                if type == "metrics":  # the hot path: the dict as given, folded in batches
                    summary.add_metrics(stage, data, event.seq, event.time)
                else:
                    self._fold(line)
                summary.offset = self._size
            if type in DURABLE:
                self._fsync()
                if summary is not None:
                    self._save()
            elif summary is not None and time.monotonic() >= self._next_save:
                self._save()
            return event

    def flush_pending(self) -> int:
        """Try to write the queued events now; how many are still waiting."""
        with self._lock:
            self._flush_pending()
            return len(self._pending)

    def close(self) -> None:
        with self._lock:
            if self._fd >= 0:
                self._flush_pending()
                self._fsync()
                if self._summary is not None:
                    self._save()
                os.close(self._fd)
                self._fd = -1

    def __enter__(self) -> EventWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- the write path (all under the lock) ----------------------------------------------

    def _write(self, line: bytes) -> None:
        """The whole line or nothing: a short write is completed, a failed one cut off again."""
        done = 0
        try:
            done = os.write(self._fd, line)
            while done < len(line):  # short write: the disk filling up, a file-size limit
                done += os.write(self._fd, line[done:])
        except OSError:
            if done:
                os.ftruncate(self._fd, self._size)  # no torn line: the reader never sees half
            raise

    def _written(self, event: Event, line: bytes) -> None:
        """A queued event made it to the file: account for it as `emit` does."""
        self._size += len(line)
        self._last_line = line
        if self._summary is not None:
            self._fold(line)
            self._summary.offset = self._size

    def _fold(self, line: bytes) -> None:
        """Fold what the log says (a caller may mutate its dicts after emit)."""
        summary = self._summary
        assert summary is not None
        summary.add(json.loads(line))
        if summary.head_crc is None:
            summary.head_crc = crc(line if self._size == len(line) else first_line(self.path))

    def _fsync(self) -> None:
        try:
            os.fsync(self._fd)
        except OSError as exc:  # the bytes are written; only their durability is in doubt
            self._report(exc, None)

    def _save(self) -> None:
        assert self._summary is not None
        self._next_save = time.monotonic() + self._save_every
        if self._last_line is not None:
            self._summary.tail_crc = crc(self._last_line)
        try:
            save(self.run_dir, self._summary)
            self.summary_error = None
        except OSError as exc:  # the log stays the truth; the next save tries again
            self.summary_error = exc

    def _queue(self, event: Event, line: bytes) -> None:
        self._pending.append((event, line))
        if len(self._pending) > self._pending_max:
            for index, (queued, _) in enumerate(self._pending):
                if queued.type not in DURABLE:
                    del self._pending[index]
                    break
            else:
                self._pending.popleft()
            self.dropped += 1

    def _flush_pending(self) -> bool:
        while self._pending:
            event, line = self._pending[0]
            try:
                self._write(line)
            except OSError as exc:
                self.write_error = exc
                return False
            self._pending.popleft()
            self._written(event, line)
        if self.write_error is not None:
            self.write_error = None
            self._fsync()
            if self.dropped:
                self._seq += 1
                note = Event(self._seq, time.time(), "warning", None, {
                    "message": f"{self.dropped:,} events were dropped while events.jsonl could "
                               "not be written (the queue was full)",
                    "fix": "keep free space on the runs volume"})
                line = (note.to_json() + "\n").encode()
                try:
                    self._write(line)
                    self._written(note, line)
                    self.dropped = 0
                except OSError:
                    self._queue(note, line)
                    return False
        return True

    def _failed(self, exc: OSError, event: Event) -> None:
        self.write_error = exc
        self._report(exc, event)

    def _report(self, exc: OSError, event: Event | None) -> None:
        if self._on_error is not None:
            self._on_error(exc, event)
            return
        if event is None:
            return  # an fsync failure without a callback: nothing to undo, nothing queued
        raise EventWriteError(
            f"could not write event #{event.seq} ({event.type}) to {self.path}: "
            f"{exc.strerror or exc}; it waits in memory with {len(self._pending) - 1:,} others",
            "free space on the runs volume; the queued events are written by the next emit "
            "(or flush_pending) that succeeds") from exc


def _ends_torn(path: Path) -> bool:
    size = path.stat().st_size if path.exists() else 0
    if size == 0:
        return False
    with path.open("rb") as handle:
        handle.seek(size - 1)
        return handle.read(1) != b"\n"


def _last_seq(path: Path) -> int:
    last = 0
    for rows, _end, _line in iter_rows(path, 0):
        for row in rows:
            seq = row.get("seq")
            if isinstance(seq, int) and seq > last:
                last = seq
    return last


def iter_rows(path: Path, offset: int = 0, *, upto: int | None = None,
              chunk: int = CHUNK_BYTES) -> Iterator[tuple[list[dict[str, Any]], int, bytes]]:
    """The complete lines from `offset` (to `upto`) in batches of about `chunk` bytes:
    (rows, the offset after the batch, the batch's last line). Memory stays bounded whatever
    the log's size; a torn last line is left unread (see `torn_tail`)."""
    if not Path(path).exists():
        return
    with Path(path).open("rb") as handle:
        handle.seek(offset)
        pos = offset
        carry = b""
        while True:
            want = chunk if upto is None else min(chunk, upto - pos - len(carry))
            if want <= 0:
                return
            blob = handle.read(want)
            if not blob:
                return
            data = carry + blob if carry else blob
            end = data.rfind(b"\n") + 1
            if end == 0:
                carry = data
                continue
            body, carry = data[:end], data[end:]
            last = body[body.rfind(b"\n", 0, end - 1) + 1:]
            pos += end
            yield _decode(body), pos, last


def torn_tail(path: Path, offset: int) -> int:
    """Bytes after `offset` that do not end in a newline: 0, or an incomplete last line (a write
    in progress, or a writer killed mid-line). Call with the offset `iter_rows` reached."""
    try:
        return max(0, Path(path).stat().st_size - offset)
    except FileNotFoundError:
        return 0


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

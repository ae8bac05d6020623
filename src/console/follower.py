"""Follow a run directory off the UI thread and tell the UI, a few times a second at most.

Attach: the follower opens the engine's summary (`events.summary.json`, checked against the log
and rebuilt from it with a notice when missing or wrong), hands it to the `RunModel`, then reads
only the log after the summary's offset. Whatever the run's length, the first frame costs a
small file and a short tail, and memory stays bounded: the log is read in chunks, new events are
folded into the model (stages, log, telemetry) and into the follower's own copy of the summary,
whose bounded downsample replaces the model's curves after every batch.

The follower reads `events.jsonl` from its last offset (the streaming reader, which leaves a
torn last line for the next read), folds new events into the shared `RunModel` under a lock, and
polls `state.json` through the client every couple of seconds for what events cannot say
(paused, a dead engine). It posts one `RunUpdated` per `min_interval`, however many events
arrived: a run logging 1,000 steps a second costs the UI the same few redraws as one logging
once a minute.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from graftline.console.run_view import RunModel
from graftline.engine.run import EVENTS, Event, Summary, iter_rows, open_summary

STATE_EVERY = 2.0
CHUNK = 4 << 20  # bytes of log folded per batch: bounds memory and the time the lock is held
ADOPT_EVERY = 1.0  # seconds between rebuilding the model's curves from the summary


@dataclass(frozen=True)
class EngineState:
    """What `state.json` says, as far as the dashboard cares."""

    status: str | None  # running | paused | crashed | finished | … (client vocabulary)
    pid: int | None
    heartbeat: float | None
    message: str = ""
    # paused for a full disk: how much to free and where, in words (engine.run.disk_full_advice)
    disk_full: str | None = None


def read_engine_state(run_dir: Path) -> EngineState | None:
    """The client's view of the engine; None when its state cannot be read."""
    try:
        from graftline.engine.run import read_state

        info = read_state(run_dir)
    except Exception:  # state.json absent or unreadable: no engine state this poll
        return None
    advice = None
    from graftline.engine.run import DISK_FULL, disk_full_advice

    if info.status == "paused" and DISK_FULL in (info.message or ""):
        advice = disk_full_advice(info.disk_full) if info.disk_full else info.message
    return EngineState(status=info.status, pid=info.pid, heartbeat=info.heartbeat,
                       message=info.message or "", disk_full=advice)


class Follower:
    """Owns the model and the lock; `run()` is the worker body (call it in a thread)."""

    def __init__(self, run_dir: Path, notify: Callable[[], None], *, poll: float = 0.5,
                 min_interval: float = 1.0) -> None:
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / EVENTS
        self.model = RunModel()
        self.lock = threading.Lock()
        self.engine: EngineState | None = None
        self.loaded = threading.Event()  # set once the history up to attach time is folded
        self._notify = notify
        self._poll = poll
        self._min_interval = min_interval
        self._stop = threading.Event()
        self._offset = 0
        self.summary: Summary | None = None
        self.notices: list[str] = []
        self.rebuilt = False  # the summary could not be used and was rebuilt from the log
        self._series_stale = False
        self._adopted_at = -ADOPT_EVERY

    def stop(self) -> None:
        self._stop.set()

    @property
    def stopped(self) -> bool:
        return self._stop.is_set()

    def attach(self) -> None:
        """Start from the summary (rebuilt from the log when it cannot be trusted)."""
        opened = open_summary(self.run_dir, tail=False, write_back=True)
        self.summary, self.notices = opened.summary, opened.notices
        self.rebuilt = opened.rebuilt
        self._offset = opened.summary.offset
        with self.lock:
            self.model.load_summary(opened.summary, opened.notices)

    def step(self) -> bool:
        """Read and fold whatever is new, a chunk at a time; True when the model changed."""
        if self.summary is None:
            self.attach()
        assert self.summary is not None
        changed = False
        for rows, end, last_line in iter_rows(self.path, self._offset, chunk=CHUNK):
            events = []
            for row in rows:
                try:
                    events.append(Event.from_dict(row))
                except (KeyError, TypeError):
                    continue
            with self.lock:
                self.summary.extend(rows)
                self.summary.covered(end, last_line)
                if self.model.apply(events):
                    changed = self._series_stale = True
            self._offset = end
            if self._stop.is_set():
                break
        # Between adoptions the model appends the raw points of new events (a second's worth at
        # most); the adoption swaps them for the summary's bounded curves.
        if self._series_stale and time.monotonic() - self._adopted_at >= ADOPT_EVERY:
            with self.lock:
                self.model.adopt_series(self.summary)
            self._series_stale = False
            self._adopted_at = time.monotonic()
        return changed

    def refresh_state(self) -> bool:
        state = read_engine_state(self.run_dir)
        if state == self.engine:
            return False
        self.engine = state
        return True

    def run(self) -> None:
        dirty = self.refresh_state()
        self.attach()
        dirty = self.step() or dirty
        self.loaded.set()
        self._notify()
        dirty = False
        last_post = time.monotonic()
        last_state = last_post
        while not self._stop.is_set():
            changed = self.step()
            dirty = dirty or changed
            now = time.monotonic()
            if now - last_state >= STATE_EVERY:
                dirty = self.refresh_state() or dirty
                last_state = now
            if dirty and now - last_post >= self._min_interval:
                self._notify()
                dirty = False
                last_post = now
            if not changed:
                # Idle: a finished run needs no fast polling, a live one a few reads a second.
                finished = self.model.status in ("finished", "failed", "stopped")
                self._stop.wait(self._poll * (4 if finished else 1))
            else:
                self._stop.wait(0.0 if dirty else self._poll)

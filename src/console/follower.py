"""Follow a run directory off the UI thread and tell the UI, a few times a second at most.

The follower reads `events.jsonl` from its last offset (the client API's reader, which tolerates
a torn last line), folds new events into the shared `RunModel` under a lock, and polls
`state.json` through the client every couple of seconds for what events cannot say (paused, a
dead engine). It posts one `RunUpdated` per `min_interval`, however many events arrived: a
run logging 1,000 steps a second costs the UI the same few redraws as one logging once a minute.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from graftline.console.run_view import RunModel
from graftline.engine.run import EVENTS, read_events

STATE_EVERY = 2.0


@dataclass(frozen=True)
class EngineState:
    """What `state.json` says, as far as the dashboard cares."""

    status: str | None  # running | paused | crashed | finished | … (client vocabulary)
    pid: int | None
    heartbeat: float | None


def read_engine_state(run_dir: Path) -> EngineState | None:
    """The client's view of the engine; None when the client or the state file is not there."""
    try:
        from graftline.engine.run import client

        info = client.read_state(run_dir)
    except Exception:  # the client may not be implemented yet, or state.json may be absent
        return None
    return EngineState(status=info.status, pid=info.pid, heartbeat=info.heartbeat)


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

    def stop(self) -> None:
        self._stop.set()

    @property
    def stopped(self) -> bool:
        return self._stop.is_set()

    def step(self) -> bool:
        """Read and fold whatever is new; True when the model changed."""
        events, self._offset = read_events(self.path, self._offset)
        if not events:
            return False
        with self.lock:
            return self.model.apply(events)

    def refresh_state(self) -> bool:
        state = read_engine_state(self.run_dir)
        if state == self.engine:
            return False
        self.engine = state
        return True

    def run(self) -> None:
        dirty = self.refresh_state()
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

"""The run's `state.json`: who runs it, where it is, and whether it is still alive.

The engine replaces the file atomically (write a temporary file, fsync, rename) at every change
and on a heartbeat, so a reader sees the old state or the new one, never half of either.

A state file only says what the engine last believed. A reader decides whether the run is still
alive: a run that claims to be live (starting, running, paused, stopping) is `crashed` when its
process is gone (same host: the pid is dead, a zombie, or a different process that reused the
pid) or when its heartbeat is older than `STALE_AFTER` seconds (any host).
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import threading
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import psutil

from graftline.engine.common import atomic, liveness
from graftline.engine.common.layout import STATE
from graftline.engine.common.liveness import LIVE, STALE_AFTER, process_alive

__all__ = ["HEARTBEAT_EVERY", "LIVE", "STALE_AFTER", "STATE", "RunState", "StateKeeper",
           "effective_status", "process_alive", "read", "write"]

HEARTBEAT_EVERY = 2.0


@dataclass(frozen=True)
class RunState:
    run_id: str
    pipeline: str
    status: str = "starting"  # starting | running | paused | stopping | finished | failed | stopped
    pid: int | None = None
    pid_started: float | None = None  # the process's create time: tells a reused pid apart
    host: str = field(default_factory=socket.gethostname)
    started: float | None = None
    heartbeat: float | None = None
    stage: str | None = None
    stage_index: int | None = None  # 0-based
    stages: int | None = None
    global_step: int | None = None
    total_steps: int | None = None
    message: str = ""
    resumes: int = 0

    @property
    def progress(self) -> float | None:
        if self.status == "finished":
            return 1.0
        if self.total_steps and self.global_step is not None:
            return max(0.0, min(1.0, self.global_step / self.total_steps))
        if self.stages and self.stage_index is not None:
            return self.stage_index / self.stages
        return None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> RunState:
        known = {name for name in cls.__dataclass_fields__}
        return cls(**{k: v for k, v in raw.items() if k in known})


def write(run_dir: Path, state: RunState) -> None:
    atomic.write_json(Path(run_dir) / STATE, state.to_dict())


def read(run_dir: Path) -> RunState | None:
    """The state as written, or None when there is none (or it cannot be read)."""
    try:
        raw = json.loads((Path(run_dir) / STATE).read_text(encoding="utf-8"))
    except (FileNotFoundError, NotADirectoryError, ValueError):
        return None
    if not isinstance(raw, dict) or "run_id" not in raw:
        return None
    try:
        return RunState.from_dict(raw)
    except TypeError:
        return None


def effective_status(state: RunState, now: float | None = None) -> str:
    """What a reader should show: the written status, or `crashed` for a dead live run."""
    return liveness.effective_status(state.status, pid=state.pid, pid_started=state.pid_started,
                                     host=state.host, heartbeat=state.heartbeat, now=now)


class StateKeeper:
    """The engine's side: one owner of the state, updated from several threads, with a heartbeat."""

    def __init__(self, run_dir: Path, state: RunState, *, every: float = HEARTBEAT_EVERY) -> None:
        self.run_dir = Path(run_dir)
        self._state = state
        # re-entrant: the SIGTERM handler updates the state and may interrupt an update
        self._lock = threading.RLock()
        self._every = every
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        # the last failed write (a full disk): the state lives on in memory and every later
        # update or heartbeat writes it again; None once a write succeeds
        self.write_error: OSError | None = None

    @property
    def state(self) -> RunState:
        return self._state

    def update(self, **changes: Any) -> RunState:
        """Change the state and write it. A failed write (ENOSPC, EDQUOT, EIO) never raises:
        the engine must outlive its own state file; `write_error` says it is behind."""
        with self._lock:
            self._state = replace(self._state, heartbeat=time.time(), **changes)
            self._write()
            return self._state

    def flush(self) -> bool:
        """Write the state now; True when the file is current."""
        with self._lock:
            self._write()
            return self.write_error is None

    def _write(self) -> None:
        try:
            write(self.run_dir, self._state)
        except OSError as exc:
            if self.write_error is None:  # once per outage, not every heartbeat
                _say(f"graftline: state.json not written ({exc.strerror or exc}); the state "
                     "is kept in memory and written again when the disk allows")
            self.write_error = exc
        else:
            self.write_error = None

    def note(self, **changes: Any) -> RunState:
        """Change the state in memory only; the next heartbeat writes it (per-step updates)."""
        with self._lock:
            self._state = replace(self._state, **changes)
            return self._state

    def start_heartbeat(self) -> None:
        self._thread = threading.Thread(target=self._beat, name="graftline-heartbeat", daemon=True)
        self._thread.start()

    def _beat(self) -> None:
        while not self._stop.wait(self._every):
            # a failed write is kept in `write_error`: a reader sees a stale heartbeat, which
            # is the truth, and the next beat tries again
            self.update()

    def stop_heartbeat(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)


def _say(message: str) -> None:
    """A line to engine.log, which may sit on the full disk too: never raise from here."""
    import sys

    with contextlib.suppress(OSError, ValueError):
        print(message, file=sys.stderr, flush=True)


def this_process() -> tuple[int, float]:
    pid = os.getpid()
    return pid, psutil.Process(pid).create_time()

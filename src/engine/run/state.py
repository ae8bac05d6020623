"""The run's `state.json`: who runs it, where it is, and whether it is still alive.

The engine replaces the file atomically (write a temporary file, fsync, rename) at every change
and on a heartbeat, so a reader sees the old state or the new one, never half of either.

A state file only says what the engine last believed. A reader decides whether the run is still
alive: a run that claims to be live (starting, running, paused, stopping) is `crashed` when its
process is gone (same host: the pid is dead, a zombie, or a different process that reused the
pid) or when its heartbeat is older than `STALE_AFTER` seconds (any host).
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import psutil

from graftline.engine.common import atomic

STATE = "state.json"
HEARTBEAT_EVERY = 2.0
# Generous: a heartbeat thread can be starved for a while by a busy GIL or a swapping machine,
# and calling a live run crashed is worse than noticing a dead one a little late.
STALE_AFTER = 30.0
LIVE = frozenset({"starting", "running", "paused", "stopping"})
FINAL = frozenset({"finished", "failed", "stopped", "crashed"})


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


def process_alive(pid: int | None, started: float | None) -> bool:
    """True when `pid` is a running (not zombie) process created at `started` (±1 s)."""
    if not pid:
        return False
    try:
        proc = psutil.Process(pid)
        if proc.status() == psutil.STATUS_ZOMBIE:
            return False
        return started is None or abs(proc.create_time() - started) < 1.0
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
        return False


def effective_status(state: RunState, now: float | None = None) -> str:
    """What a reader should show: the written status, or `crashed` for a dead live run."""
    if state.status not in LIVE:
        return state.status
    now = time.time() if now is None else now
    if state.heartbeat is not None and now - state.heartbeat > STALE_AFTER:
        return "crashed"
    if state.pid is None:
        # created by the launcher, engine not yet up: only the heartbeat (the creation time)
        # can tell a slow start from a failed one
        return state.status if state.heartbeat is not None else "crashed"
    if state.host == socket.gethostname() and not process_alive(state.pid, state.pid_started):
        return "crashed"
    return state.status


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

    @property
    def state(self) -> RunState:
        return self._state

    def update(self, **changes: Any) -> RunState:
        with self._lock:
            self._state = replace(self._state, heartbeat=time.time(), **changes)
            write(self.run_dir, self._state)
            return self._state

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
            try:
                self.update()
            except OSError as exc:
                # A full disk must not kill the engine from a helper thread; the reader will see
                # a stale heartbeat, which is the truth.
                print(f"graftline: heartbeat not written: {exc}", flush=True)

    def stop_heartbeat(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)


def this_process() -> tuple[int, float]:
    pid = os.getpid()
    return pid, psutil.Process(pid).create_time()

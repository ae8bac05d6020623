"""The one rule for "is this run alive?", used by the client, the console, lineage and cleanup.

A run is live when its engine holds `engine.lock`, or when its state says a live status
(starting, running, paused, stopping) and, on this host, the recorded process is alive, with a
heartbeat that is not stale. A run that claims to be live but fails that test has crashed.
Reading never takes the lock for longer than the probe, and never blocks.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import time
from pathlib import Path
from typing import Any

import psutil

from graftline.engine.common.layout import RunLayout

__all__ = ["LIVE", "STALE_AFTER", "effective_status", "is_live", "lock_held",
           "process_alive", "stale_after"]

LIVE = frozenset({"starting", "running", "paused", "stopping"})
# Generous: a heartbeat thread can be starved for a while by a busy GIL or a swapping machine,
# and calling a live run crashed is worse than noticing a dead one a little late.
STALE_AFTER = 30.0


def stale_after() -> float:
    """Seconds without a heartbeat after which a live-looking run reads crashed: `STALE_AFTER`,
    or `GRAFTLINE_STALE_AFTER` where set (read on every call: it is the reader's setting, and the
    engine's heartbeat, every 2 s, must stay well inside it). Never below 5 s."""
    try:
        return max(5.0, float(os.environ.get("GRAFTLINE_STALE_AFTER", STALE_AFTER)))
    except ValueError:
        return STALE_AFTER


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


def lock_held(run_dir: Path) -> bool:
    """True when some engine holds the run's exclusive lock (probed without blocking)."""
    try:
        fd = os.open(RunLayout(Path(run_dir)).lock, os.O_RDONLY)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    except OSError:
        return False
    else:
        fcntl.flock(fd, fcntl.LOCK_UN)
        return False
    finally:
        os.close(fd)


def effective_status(status: str, *, pid: int | None, pid_started: float | None,
                     host: str | None, heartbeat: float | None,
                     now: float | None = None) -> str:
    """What a reader should show: the written status, or `crashed` for a dead live run."""
    if status not in LIVE:
        return status
    now = time.time() if now is None else now
    if heartbeat is not None and now - heartbeat > stale_after():
        return "crashed"
    if pid is None:
        # created by the launcher, engine not yet up: only the heartbeat (the creation time)
        # can tell a slow start from a failed one
        return status if heartbeat is not None else "crashed"
    if host in (None, socket.gethostname()) and not process_alive(pid, pid_started):
        return "crashed"
    return status


def _state(run_dir: Path) -> dict[str, Any]:
    try:
        raw = json.loads(RunLayout(Path(run_dir)).state.read_bytes())
    except (OSError, ValueError):
        return {}
    return raw if isinstance(raw, dict) else {}


def is_live(run_dir: Path | str) -> bool:
    """The one liveness rule: the engine lock held, or a live status with a live process and a
    fresh heartbeat. Read fresh every time: a run can start between a scan and a deletion."""
    run_dir = Path(run_dir)
    if lock_held(run_dir):
        return True
    state = _state(run_dir)
    status = str(state.get("status", ""))
    pid = state.get("pid")
    return effective_status(
        status,
        pid=pid if isinstance(pid, int) else None,
        pid_started=state.get("pid_started"),
        host=state.get("host"),
        heartbeat=state.get("heartbeat"),
    ) in LIVE

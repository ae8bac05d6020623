"""Reading runs and talking to their engines: find, list, state, details, follow, control.

One door: the console and the CLI use these through `graftline.engine.run` (the area's surface,
which also holds starting a run: `start_run`, `resume_run` from run/launch.py), never this module
by name. Nothing here imports torch, transformers, trl or peft: attaching to a run costs a file
read, not a model load.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from graftline.engine.common.liveness import lock_held
from graftline.engine.run import control
from graftline.engine.run import index as run_index
from graftline.engine.run import state as runstate
from graftline.engine.run.control import ControlError  # also re-exported
from graftline.engine.run.events import (  # noqa: F401  (re-exported)
    EVENTS,
    Event,
    follow,
    read_events,
    read_raw,
)

if TYPE_CHECKING:
    from graftline.engine.run.fold import RunFold, StageState

RUNS_DIR_ENV = "GRAFTLINE_RUNS_DIR"


@dataclass(frozen=True)
class RunInfo:
    run_id: str
    path: Path
    pipeline: str
    status: str  # starting | running | paused | stopping | finished | failed | stopped | crashed
    stage: str | None
    progress: float | None  # 0..1 over all stages, when known
    started: float | None
    heartbeat: float | None
    pid: int | None
    message: str = ""
    # a run paused for a full disk, as its engine tells it (run/disk_pause.py `report`):
    # message, need_bytes, free_bytes, where, fix
    disk_full: dict[str, Any] | None = None

    @property
    def live(self) -> bool:
        return self.status in runstate.LIVE

    @property
    def age(self) -> float | None:
        return None if self.started is None else max(0.0, time.time() - self.started)


def default_runs_dir() -> Path:
    return Path(os.environ.get(RUNS_DIR_ENV, "runs")).expanduser()


def is_run_dir(path: Path) -> bool:
    path = Path(path)
    return (path / runstate.STATE).is_file() or (path / EVENTS).is_file()


def read_state(run_dir: Path) -> RunInfo:
    """The run as a reader should show it: a live status whose engine is dead reads `crashed`."""
    run_dir = Path(run_dir)
    state = runstate.read(run_dir)
    if state is None:
        # Created but never started (or state.json lost): say what we can from the events.
        return RunInfo(run_dir.name, run_dir, "", "unknown", None, None, None, None, None)
    status, message = runstate.effective_status(state), state.message or ""
    disk_full = None
    stale = status == "crashed" and state.status in runstate.LIVE and lock_held(run_dir)
    if stale or (status == "paused" and DISK_FULL in message):
        status, message, disk_full = _ask_engine(run_dir, state, status, message)
    return RunInfo(
        run_id=state.run_id, path=run_dir, pipeline=state.pipeline,
        status=status, stage=state.stage, progress=state.progress,
        started=state.started, heartbeat=state.heartbeat, pid=state.pid, message=message,
        disk_full=disk_full,
    )


DISK_FULL = "disk full"  # in the message of a run paused for a full disk (run/disk_pause.py)


def disk_full_advice(disk: dict[str, Any]) -> str:
    """How much to free and where, for a run paused for a full disk (`RunInfo.disk_full`)."""
    from graftline.engine.common.units import human_bytes

    need, free = int(disk.get("need_bytes") or 0), int(disk.get("free_bytes") or 0)
    where = disk.get("where") or "the runs volume"
    if free >= need:
        return f"{human_bytes(free)} free on {where} now: it resumes within seconds"
    return (f"free {human_bytes(need - free)} on {where} ({human_bytes(free)} free, it needs "
            f"{human_bytes(need)}): it resumes by itself")


def _ask_engine(run_dir: Path, state: runstate.RunState, status: str, message: str
                ) -> tuple[str, str, dict[str, Any] | None]:
    """A live engine whose state.json has fallen behind (a full disk takes no heartbeat) tells
    its state over the control socket, which needs no disk. An engine that holds the run's lock
    is alive whatever its heartbeat says: never `crashed`."""
    try:
        reply = control.send(run_dir, "status", 2.0)
    except ControlError:
        if status != "crashed":
            return status, message, None
        age = time.time() - (state.heartbeat or time.time())
        return (state.status, f"the engine (pid {state.pid}) holds the run's lock, but its "
                f"state.json is {age:.0f} s old and it does not answer on its socket", None)
    disk = reply.get("disk_full")
    return (str(reply.get("status") or state.status), str(reply.get("message") or message),
            disk if isinstance(disk, dict) else None)


def list_runs(runs_dir: Path) -> list[RunInfo]:
    """Every run under `runs_dir`, newest first. A dead engine shows as `crashed`."""
    runs_dir = Path(runs_dir)
    if not runs_dir.is_dir():
        return []
    infos = []
    for child in runs_dir.iterdir():
        # never follow a symlink out of the runs directory
        if child.is_symlink() or not child.is_dir() or not is_run_dir(child):
            continue
        infos.append(read_state(child))
    return _newest_first(infos)


def _newest_first(infos: list[RunInfo]) -> list[RunInfo]:
    return sorted(infos, key=lambda info: (info.started or 0.0, info.run_id), reverse=True)


def known_runs(runs_dir: Path | None = None) -> list[RunInfo]:
    """The runs this user can name, newest first: with `runs_dir`, those under it (and they are
    remembered in the run index from then on); without, every run in the per-user index plus
    those under the default runs directory (runs made before the index existed)."""
    if runs_dir is not None:
        infos = list_runs(runs_dir)
        if infos:
            run_index.register(*(info.path for info in infos))
        return infos
    paths: dict[Path, None] = {}
    for path in run_index.known():
        paths.setdefault(path.resolve(), None)
    default = default_runs_dir()
    if default.is_dir():
        for info in list_runs(default):
            paths.setdefault(info.path.resolve(), None)
    return _newest_first([read_state(path) for path in paths])


def has_runs(runs_dir: Path) -> bool:
    """Whether there is any run to list: under `runs_dir`, or in the per-user run index."""
    try:
        if any((child / EVENTS).is_file() for child in Path(runs_dir).iterdir()):
            return True
    except OSError:
        pass
    return bool(run_index.known())


def latest_run(runs_dir: Path | None = None) -> Path | None:
    runs = known_runs(runs_dir)
    return runs[0].path if runs else None


def _where(runs_dir: Path | None) -> str:
    return f"under {Path(runs_dir).resolve()}" if runs_dir is not None else "yet"


def find_run(ref: str | Path | None, runs_dir: Path | None = None) -> Path:
    """A run given as a path, a run id, a unique id prefix, or None (the newest live run, else
    the newest), from any directory: through the per-user run index, or only under `runs_dir`
    when it is given. The path returned is absolute, so hints built from it work wherever the
    user stands."""
    if ref is None:
        # like `tmux attach`: the newest run that is still going, else the newest of all
        runs = known_runs(runs_dir)
        if not runs:
            raise LookupError(f"no runs {_where(runs_dir)}; start one with `graftline run FILE` "
                              f"or try `graftline demo`")
        live = [info for info in runs if info.live]
        return (live or runs)[0].path.resolve()
    as_path = Path(ref).expanduser()
    if is_run_dir(as_path):
        run_index.register(as_path)
        return as_path.resolve()
    runs = known_runs(runs_dir)
    text = str(ref)
    exact = [info.path for info in runs if info.run_id == text or info.path.name == text]
    matches = exact or [info.path for info in runs
                        if info.run_id.startswith(text) or info.path.name.startswith(text)]
    if len(matches) == 1:
        return matches[0].resolve()
    if matches:
        names = "\n  ".join(str(p.resolve()) for p in matches[:8])
        more = f"\n  … and {len(matches) - 8} more" if len(matches) > 8 else ""
        raise LookupError(f"'{ref}' matches {len(matches)} runs; give more of the id, or the "
                          f"path:\n  {names}{more}")
    narrow = "" if runs_dir is None else f" under {Path(runs_dir).resolve()}"
    raise LookupError(f"no run '{ref}'{narrow} ({len(runs)} run(s) known; `graftline ls` lists "
                      f"them, `graftline ls --runs-dir DIR` adds the runs under DIR)")


@dataclass(frozen=True)
class RunDetails:
    """What `ls` and the runs screen show beyond the state: how long, how well, how big."""

    duration: float | None  # seconds from start to the last heartbeat (or now, while live)
    metric: str | None  # the last logged loss/reward, e.g. "loss 0.412"
    metric_value: float | None
    disk_bytes: int


_TAIL_BYTES = 256 * 1024
_METRIC_KEYS = ("reward", "loss", "train_loss", "eval_loss", "accuracy")


def _last_metric(run_dir: Path) -> tuple[str | None, float | None]:
    """The last loss/reward in the log, reading only its tail (a log can be millions of lines)."""
    path = Path(run_dir) / EVENTS
    try:
        with open(path, "rb") as handle:
            size = handle.seek(0, os.SEEK_END)
            handle.seek(max(0, size - _TAIL_BYTES))
            tail = handle.read()
    except OSError:
        return None, None
    for line in reversed(tail.splitlines()):
        if b'"metrics"' not in line and b'"stage_finished"' not in line:
            continue
        try:
            row = json.loads(line)
        except ValueError:
            continue
        data = row.get("data") or {}
        if row.get("type") == "stage_finished":
            data = data.get("metrics") or {}
        elif row.get("type") != "metrics":
            continue
        for key in _METRIC_KEYS:
            value = data.get(key)
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                name = "loss" if key == "train_loss" else key
                return f"{name} {value:.4g}", float(value)
    return None, None


def disk_usage(path: Path) -> int:
    """Bytes under `path`, never following a symlink (a link to a base model is not ours)."""
    total = 0
    stack = [Path(path)]
    while stack:
        current = stack.pop()
        try:
            with os.scandir(current) as entries:
                for entry in entries:
                    try:
                        if entry.is_dir(follow_symlinks=False):
                            stack.append(Path(entry.path))
                        elif entry.is_file(follow_symlinks=False):
                            total += entry.stat(follow_symlinks=False).st_blocks * 512
                    except OSError:
                        continue
        except OSError:
            continue
    return total


def run_details(info: RunInfo, now: float | None = None) -> RunDetails:
    now = time.time() if now is None else now
    duration = None
    if info.started is not None:
        end = now if info.live else (info.heartbeat or now)
        duration = max(0.0, end - info.started)
    metric, value = _last_metric(info.path)
    return RunDetails(duration, metric, value, disk_usage(info.path))


def send_command(run_dir: Path, command: str, timeout: float = 5.0) -> dict[str, Any]:
    """stop | pause | resume | save_now | status over the run's owner-only Unix socket; the JSON
    reply. Raises ControlError when the engine cannot be reached."""
    return control.send(Path(run_dir), command, timeout)


def follow_run(run_dir: Path, offset: int = 0, *, poll: float = 0.25,
               stop: threading.Event | None = None, until_finished: bool = True
               ) -> Iterator[list[Event]]:
    """Batches of events from `offset` as the log grows; ends after `run_finished` (or when the
    engine is dead and the log has nothing more), unless `until_finished` is False."""
    path = Path(run_dir) / EVENTS
    quiet_since = time.monotonic()
    while stop is None or not stop.is_set():
        events, offset = read_events(path, offset)
        if events:
            quiet_since = time.monotonic()
            yield events
            if until_finished and any(e.type == "run_finished" for e in events):
                return
            continue
        if until_finished and time.monotonic() - quiet_since > 2.0:
            if not read_state(run_dir).live:
                events, offset = read_events(path, offset)
                if events:
                    yield events
                return
            quiet_since = time.monotonic()
        time.sleep(poll)


def read_fold(run_dir: Path) -> RunFold[StageState]:
    """The run as its whole log tells it (run/fold.py), through the summary beside the log: a
    week of history costs its summary and the log's tail, not the whole log."""
    from graftline.engine.run.summary_file import open_summary

    return open_summary(Path(run_dir), tail=True, write_back=False).summary.state

"""The engine's policy for a full disk: pause, say why, resume by itself when space is back.

A write that fails with ENOSPC/EDQUOT (the event log through `EventWriter(on_error=…)`, a
Trainer checkpoint or a stage's output through `common.disk_full.wait_for_space`) enters the
pause: `control.paused` is set (the trainer waits at the next step end, the runner before the
next stage), `state.json` says `paused` with the message (kept in memory and rewritten by every
heartbeat until the disk takes it), and the message goes to stderr (`engine.log`) at once. A
watcher polls the free space every `GRAFTLINE_DISK_POLL` seconds (default 2); once the failed
write's bytes are free, it writes the queued events (the pause `warning` among them, in order),
rewrites `state.json`, logs `info` "resumed" and clears the pause. `graftline resume` also ends
it early (the write is retried and, if the disk is still full, pauses again).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sys
import threading
import time
from pathlib import Path

from graftline.engine.common.control import RunControl
from graftline.engine.common.disk_full import HEADROOM, is_disk_full
from graftline.engine.common.units import human_bytes
from graftline.engine.run.events import Event, EventWriter
from graftline.engine.run.state import StateKeeper

POLL = float(os.environ.get("GRAFTLINE_DISK_POLL", "2"))


def say(message: str) -> None:
    """A line to stderr (engine.log, perhaps on the full disk itself): never raises."""
    with contextlib.suppress(OSError, ValueError):
        print(message, file=sys.stderr, flush=True)


def superseded_checkpoints(run_dir: Path) -> list[Path]:
    """This run's own Trainer checkpoints that a resume will never use: per stage, every one
    but the newest complete and valid one (a half-written one is superseded too when a complete
    one exists). Nothing outside the run, no symlink, and nothing when no checkpoint of a stage
    is complete (in doubt, keep)."""
    from graftline.engine.run.runner import checkpoint_problem, trainer_checkpoints

    stages = Path(run_dir) / "stages"
    found: list[Path] = []
    if not stages.is_dir() or stages.is_symlink():
        return found
    for stage in sorted(stages.iterdir()):
        if not stage.is_dir() or stage.is_symlink():
            continue
        checkpoints = trainer_checkpoints(stage)  # newest first
        keep = next((c for c in checkpoints if checkpoint_problem(c) is None), None)
        if keep is not None:
            found += [c for c in checkpoints if c != keep]
    return found


def fix_for(run_dir: Path) -> str:
    """Free space; name the exact command that frees what is safe to free in this run."""
    extra = superseded_checkpoints(run_dir)
    if not extra:
        return (f"free space on {run_dir.parent}: the run resumes by itself (this run holds no "
                "superseded Trainer checkpoint to free)")
    paths = " ".join(str(p) for p in extra)
    return (f"free space on {run_dir.parent}: the run resumes by itself; `rm -r {paths}` frees "
            "this run's superseded Trainer checkpoints (the newest complete one per stage stays)")


class DiskPause:
    """One per engine. Thread-safe: the writer's callback, the trainer thread and the watcher
    all enter here."""

    def __init__(self, run_dir: Path, keeper: StateKeeper, control: RunControl, *,
                 poll: float = POLL) -> None:
        self.run_dir = Path(run_dir)
        self.keeper = keeper
        self.control = control
        self.writer: EventWriter | None = None  # set once the writer exists
        self.poll = poll
        self.pauses = 0
        self._lock = threading.Lock()
        self._need = 0
        self._message: str | None = None
        self._since = 0.0
        self._stage: str | None = None
        self._thread: threading.Thread | None = None

    @property
    def active(self) -> bool:
        return self._message is not None

    def on_write_error(self, exc: OSError, event: Event | None) -> None:
        """`EventWriter`'s callback (called under the writer's lock: it must not emit)."""
        if is_disk_full(exc):
            self.enter("events.jsonl", HEADROOM, exc, event.stage if event else None,
                       log_warning=True)
        elif event is not None:
            say(f"graftline: event #{event.seq} not written ({exc}); it waits in memory")

    def enter(self, what: str, need: int, exc: BaseException, stage: str | None, *,
              log_warning: bool = False) -> None:
        """Pause for a full disk (or raise the bytes an active pause waits for)."""
        need = max(need, HEADROOM)
        with self._lock:
            if self._message is not None:
                self._need = max(self._need, need)
                return
            self.pauses += 1
            self._need, self._since, self._stage = need, time.time(), stage
            free = _free(self.run_dir)
            self._message = (f"paused: disk full while writing {what} "
                             f"({getattr(exc, 'strerror', None) or exc}); "
                             f"{human_bytes(free)} free on {self.run_dir.parent}, resumes by "
                             f"itself once {human_bytes(need)} is free")
            self.control.paused.set()
            self.keeper.update(status="paused", message=self._message)
            say(f"graftline: {self._message}\n  fix: {fix_for(self.run_dir)}")
            self._thread = threading.Thread(target=self._watch, args=(log_warning,),
                                            name="graftline-disk", daemon=True)
            self._thread.start()

    def _watch(self, log_warning: bool) -> None:
        if log_warning and self.writer is not None:
            # queued behind the events that failed; written, in order, when space returns
            self.writer.emit("warning", self._stage, message=self._message, disk_full=True,
                             need_bytes=self._need, fix=fix_for(self.run_dir))
        while not self.control.stop.wait(self.poll):
            if self.try_resume():
                return

    def try_resume(self) -> bool:
        """End the pause when the space is back and everything held in memory is written."""
        if self._message is None:
            return True
        if _free(self.run_dir) < self._need:
            return False
        if self.writer is not None and self.writer.flush_pending() > 0:
            return False
        if not self.keeper.flush():
            return False
        with self._lock:
            message, self._message = self._message, None
            waited = time.time() - self._since
        if self.writer is not None:
            self.writer.emit("info", self._stage, disk_full=False,
                             message=f"disk space is back ({human_bytes(_free(self.run_dir))} "
                                     f"free): resumed after {waited:.0f} s paused")
        if self.keeper.state.message == message:  # not if a user paused it meanwhile
            self.keeper.update(status="running", message="")
            self.control.paused.clear()
        say(f"graftline: disk space is back: resumed after {waited:.0f} s")
        return True

    def report(self) -> dict[str, object] | None:
        """The pause as the control socket's `status` tells it (no disk needed to answer): the
        message, how many bytes it waits for, what is free and where, and the fix; None when the
        run is not paused for a full disk."""
        with self._lock:
            if self._message is None:
                return None
            message, need, since = self._message, self._need, self._since
        return {"message": message, "need_bytes": need, "free_bytes": _free(self.run_dir),
                "where": str(self.run_dir.parent), "since": since,
                "fix": fix_for(self.run_dir)}

    def drain(self) -> None:
        """Before the engine exits: wait (paused) until the log and state.json are written,
        unless a stop is asked; a run must not end with its last events only in memory."""
        writer = self.writer
        pending = writer is not None and writer.flush_pending() > 0
        if not pending and self.keeper.flush():
            return
        if not self.active:
            error = (writer.write_error if writer is not None else None) \
                or self.keeper.write_error or OSError("disk full")
            self.enter("the end of the run", HEADROOM, error, None)
        while self.active and not self.control.stop.wait(self.poll):
            pass


def _free(path: Path) -> int:
    try:
        return shutil.disk_usage(path).free
    except OSError:
        return 0

"""The files an engine and its process group share while a distributed stage runs.

`<run>/dist/<stage>/`:
- `request.json`   what every rank needs to rebuild the stage (written by the engine)
- `events.jsonl`   rank 0's events, one JSON line each; the engine relays them into its sink
- `control.json`   the run's control flags (stop, paused, save_seq), replaced atomically by the
                   engine; rank 0 reads it and broadcasts it to every rank (see GroupControl)
- `result.json`    rank 0's verdict on the stage (status, message, steps)
- `relayed.json`   how far into `events.jsonl` the engine has relayed; a killed engine's next
                   launch of the stage relays the rest first (EventTail.leftover), so the
                   steps rank 0 logged in its last moments stay in the run's history

`<run>/dist/machine.json`: the machine rank this host's engine ran the run's groups as (a
multi-node run), so `graftline resume` on that host resumes as the same machine.

Files, not pipes: torchrun and accelerate start their workers with close_fds, so an inherited
descriptor never reaches a rank, and a file survives to be read after the group has died.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from graftline.engine.common import atomic
from graftline.engine.common.errors import GraftlineError
from graftline.engine.common.event_types import EventType

DIST = "dist"
REQUEST = "request.json"
EVENTS = "events.jsonl"
CONTROL = "control.json"
RESULT = "result.json"
RELAYED = "relayed.json"
PAUSE_POLL_S = 0.5
MACHINE = "machine.json"
MACHINE_RANK_ENV = "GRAFTLINE_MACHINE_RANK"  # the per-host override for multi-node runs


def work_dir(run_dir: Path, stage: str) -> Path:
    return Path(run_dir) / DIST / stage


class FileSink:
    """Rank 0's sink: every event a whole line, flushed at once, tagged with the world size."""

    def __init__(self, path: Path, world_size: int) -> None:
        self.path, self.world_size = Path(path), world_size
        self._file = self.path.open("a", encoding="utf-8")
        self._lock = threading.Lock()

    def emit(self, type: EventType, stage: str | None = None, **data: Any) -> None:
        line = json.dumps({"type": type, "stage": stage,
                           "data": {**data, "world_size": self.world_size}},
                          separators=(",", ":"), default=str)
        with self._lock:
            self._file.write(line + "\n")
            self._file.flush()


class SilentSink:
    """Every rank but 0: the same stage code runs, nothing is reported."""

    def emit(self, type: EventType, stage: str | None = None, **data: Any) -> None:
        return None


class EventTail:
    """Reads the lines rank 0 has completed since the last call (a torn last line waits).

    `mark()` records the offset relayed so far beside the file. The engine marks after it has
    emitted a batch: a kill between the two relays that batch twice (a step logged twice reads
    as one curve), never loses it."""

    def __init__(self, path: Path, offset: int = 0) -> None:
        self.path, self.offset = Path(path), offset
        self._marked: int | None = None  # the first mark always writes: no mark means "legacy"

    @classmethod
    def leftover(cls, path: Path) -> list[dict[str, Any]]:
        """The complete lines a dead engine left unrelayed: those after its last mark. A file
        without a mark (written before marks existed) yields nothing rather than repeat all."""
        try:
            offset = int(json.loads((Path(path).parent / RELAYED).read_text())["offset"])
        except (OSError, ValueError, KeyError, TypeError):
            return []
        return cls(path, offset).read()

    def read(self) -> list[dict[str, Any]]:
        try:
            with self.path.open("rb") as handle:
                handle.seek(self.offset)
                chunk = handle.read()
        except FileNotFoundError:
            return []
        end = chunk.rfind(b"\n")
        if end < 0:
            return []
        self.offset += end + 1
        found = []
        for raw in chunk[: end + 1].splitlines():
            try:
                found.append(json.loads(raw))
            except ValueError:
                continue
        return found

    def mark(self) -> None:
        """A full disk (or any refused write) leaves the last mark standing, tried again at the
        next call: the engine pauses for the space rather than dying in its bookkeeping, and a
        kill meanwhile relays the batches since that mark twice, never loses one."""
        if self.offset != self._marked:
            try:
                atomic.write_json(self.path.parent / RELAYED, {"offset": self.offset})
            except OSError:
                return
            self._marked = self.offset


def write_control(path: Path, *, stop: bool, paused: bool, save_seq: int) -> bool:
    """Whether the ranks' control file now holds these flags. A full disk refuses the write and
    the ranks keep the flags they last read (no file reads as "run on"): the caller writes again
    at its next poll, and a stop it cannot write still ends the group by SIGTERM."""
    try:
        atomic.write_json(path, {"stop": stop, "paused": paused, "save_seq": save_seq})
    except OSError:
        return False
    return True


def read_control(path: Path) -> tuple[bool, bool, int]:
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return False, False, 0
    return bool(data.get("stop")), bool(data.get("paused")), int(data.get("save_seq", 0))


class GroupControl:
    """RunControl's interface for a rank (StageCallback calls `wait_while_paused`, then reads
    `stop` and `take_save_request`, after every step and log).

    Rank 0 reads `control.json` and broadcasts the flags through the process group at each of
    those calls; every rank applies the same flags at the same step. Polling the file in each
    rank instead could let rank 0 see a stop one step before rank 1: rank 0 would enter the
    checkpoint save while rank 1 waits in the next step's all-reduce, and both hang. A pause is
    the same broadcast repeated every PAUSE_POLL_S, so paused ranks stay in step and wake
    together; a stop wakes a paused group."""

    waits_here = False  # a full disk ends the launch; the engine waits (common/control.py)

    def __init__(self, path: Path, rank: int) -> None:
        self.path, self.rank = Path(path), rank
        self.stop = threading.Event()
        self.paused = threading.Event()
        self.save_now = threading.Event()  # unused; kept for RunControl's shape
        self._seen_save = 0
        self._save_seq = 0

    def _sync(self) -> None:
        import torch
        import torch.distributed as dist

        stop, paused, seq = read_control(self.path) if self.rank == 0 else (False, False, 0)
        if dist.is_available() and dist.is_initialized():
            flags = torch.tensor([int(stop), int(paused), seq], dtype=torch.int64)
            dist.broadcast(flags, src=0)
            stop, paused, seq = bool(flags[0]), bool(flags[1]), int(flags[2])
        if stop:
            self.stop.set()
        (self.paused.set if paused else self.paused.clear)()
        self._save_seq = seq

    def wait_while_paused(self, poll: float = PAUSE_POLL_S) -> None:
        self._sync()
        while self.paused.is_set() and not self.stop.is_set():
            time.sleep(poll)
            self._sync()

    def take_save_request(self) -> bool:
        if self._save_seq > self._seen_save:
            self._seen_save = self._save_seq
            return True
        return False


# -- the launcher's own account of a failed group ---------------------------------------------

# torchrun (and accelerate launch, which runs torch's elastic agent) ends a failed group with a
# ChildFailedError whose "Root Cause (first observed failure)" block names the global rank that
# failed first and its exit code (negative: the signal). The engine keeps the launcher's stderr
# tail to read it: the rank that died is what the console marks dead, and what the error names.
_ROOT_CAUSE = re.compile(
    r"Root Cause \(first observed failure\):.*?rank\s*:\s*(\d+)\s*\(local_rank:\s*(\d+)\)"
    r".*?exitcode\s*:\s*(-?\d+)", re.DOTALL)


@dataclass(frozen=True)
class RankFailure:
    rank: int
    local_rank: int
    exitcode: int

    @property
    def cause(self) -> str:
        """'killed by SIGKILL' or 'exit code 1', for a message."""
        if self.exitcode < 0:
            try:
                return f"killed by {signal.Signals(-self.exitcode).name}"
            except ValueError:
                return f"killed by signal {-self.exitcode}"
        return f"exit code {self.exitcode}"


def first_failure(launcher_stderr: str) -> RankFailure | None:
    """The rank the launcher saw fail first, from its ChildFailedError report; None without one
    (the launcher itself was killed, or it reported in a form we do not know)."""
    found = _ROOT_CAUSE.search(launcher_stderr)
    if found is None:
        return None
    return RankFailure(int(found.group(1)), int(found.group(2)), int(found.group(3)))


class StderrRelay:
    """Copies the launcher's stderr (its own and every rank's that inherits it) to the engine's
    stderr, the run's engine.log, as it arrives, keeping the last `keep` bytes to read the
    launcher's failure report from."""

    def __init__(self, pipe: IO[bytes], keep: int = 64 * 1024) -> None:
        self._pipe, self._keep = pipe, keep
        self._tail = bytearray()
        self._thread = threading.Thread(target=self._run, name="graftline-launcher-stderr",
                                        daemon=True)
        self._thread.start()

    def _run(self) -> None:
        fd = self._pipe.fileno()
        while chunk := os.read(fd, 65536):
            # the engine's log gone: keep draining all the same, or the ranks block on a full pipe
            with contextlib.suppress(OSError):
                view = memoryview(chunk)
                while view:
                    view = view[os.write(2, view):]
            self._tail += chunk
            del self._tail[: max(0, len(self._tail) - self._keep)]

    def text(self, timeout: float = 5.0) -> str:
        """Everything kept, once the launcher has closed its end (or after `timeout`)."""
        self._thread.join(timeout)
        return self._tail.decode("utf-8", "replace")


# -- which machine this host is, across a resume -----------------------------------------------


def record_machine(run_dir: Path, machine_rank: int, num_machines: int) -> None:
    (Path(run_dir) / DIST).mkdir(parents=True, exist_ok=True)
    atomic.write_json(Path(run_dir) / DIST / MACHINE,
                      {"machine_rank": machine_rank, "num_machines": num_machines})


def recorded_machine_rank(run_dir: Path) -> int | None:
    """The machine rank this run's groups were launched as on this host; None when it never
    launched a multi-node group (or the record is unreadable: then the file and flag decide)."""
    try:
        data = json.loads((Path(run_dir) / DIST / MACHINE).read_text())
        return int(data["machine_rank"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


class MachineRankConflict(GraftlineError):
    """`graftline resume --machine-rank K` on a run this host ran as another machine."""


def machine_rank_for_resume(run_dir: Path, given: int | None) -> int | None:
    """The machine rank a resumed engine must run as: the one given, else the one recorded in
    the run (a run directory holds one machine's side of a multi-node run), else None (the file
    decides). A given rank that contradicts the record is refused: resumed as another machine,
    this host would join the group in a seat another host holds, with the wrong checkpoints."""
    recorded = recorded_machine_rank(run_dir)
    if given is not None and recorded is not None and given != recorded:
        raise MachineRankConflict(
            f"{Path(run_dir).name} ran on this host as machine {recorded} "
            f"({Path(run_dir) / DIST / MACHINE}); --machine-rank {given} would resume it as "
            "another machine",
            f"resume it as machine {recorded} (drop --machine-rank: the run remembers), or "
            f"resume machine {given}'s own run on the host that ran it")
    return given if given is not None else recorded

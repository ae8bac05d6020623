"""The engine's public client API: everything the console and the CLI need to know about runs.

The console imports this module (and the engine's pure planners: lineage, cleanup, export plans),
never a trainer. Owned by the background-engine work (issue 4); signatures agreed here.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from graftline.engine.events import Event, follow, read_events  # noqa: F401  (re-exported)


@dataclass(frozen=True)
class RunInfo:
    run_id: str
    path: Path
    pipeline: str
    status: str  # starting | running | paused | finished | failed | stopped | crashed
    stage: str | None
    progress: float | None  # 0..1 over all stages, when known
    started: float | None
    heartbeat: float | None
    pid: int | None


def list_runs(runs_dir: Path) -> list[RunInfo]:
    """Every run under `runs_dir`, newest first. A dead engine shows as `crashed`."""
    raise NotImplementedError


def read_state(run_dir: Path) -> RunInfo:
    raise NotImplementedError


def latest_run(runs_dir: Path) -> Path | None:
    raise NotImplementedError


def send_command(run_dir: Path, command: str, timeout: float = 5.0) -> dict[str, Any]:
    """stop | pause | resume | save_now over the run's owner-only Unix socket; the JSON reply."""
    raise NotImplementedError

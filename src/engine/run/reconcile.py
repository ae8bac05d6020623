"""What a run really is when its event log and its state disagree.

events.jsonl can end early (a disk filled up, a file restored from a backup, a hand-truncated
log) while state.json and the stage manifests say more: `attach` then showed a finished run as
RUNNING with an ETA, although `ls` (state.json) rightly said finished. The log is the history;
state.json and the manifests are the truth about the end. `reconcile` folds the three into what
a reader should show, and says what the log is missing.

A reader calls it with the fold it already has (run/fold.py; or none, and the run's summary
and log tail are read):

    view = reconcile(run_dir, fold)
    # show view.status (not fold.status) and view.stages[name] for each stage; no ETA
    # unless view.live; list view.missing as notices when not view.consistent
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from graftline.engine.common.layout import EVENTS, RunLayout
from graftline.engine.lineage import manifest as mf
from graftline.engine.run import state as runstate
from graftline.engine.run.client import read_fold, read_state
from graftline.engine.run.fold import RunFold
from graftline.engine.stages.context import completed_earlier

DONE_STATUSES = ("complete", "skipped")
ENDED = ("finished", "failed", "stopped")


@dataclass(frozen=True)
class Reconciliation:
    status: str  # what to show for the run: state.json's effective status, else the log's
    log_status: str  # what the log alone says: its run_finished status, or "running"
    stages: dict[str, str]  # stage → status to show, in pipeline order
    missing: tuple[str, ...]  # what the log lacks, one sentence each
    torn_tail: bool  # the log's last line is incomplete (a reader skipped it)

    @property
    def consistent(self) -> bool:
        return not self.missing

    @property
    def live(self) -> bool:
        return self.status in runstate.LIVE


def _stage_names(run_dir: Path, fold: RunFold[Any]) -> list[str]:
    names = list(fold.stages)
    stages_dir = RunLayout(run_dir).stages
    if stages_dir.is_dir():
        names += sorted(p.name for p in stages_dir.iterdir()
                        if p.is_dir() and not p.is_symlink() and p.name not in names)
    return names


def _on_disk(directory: Path) -> str | None:
    """complete / failed / partial from the stage's manifest or marker; None when absent."""
    if completed_earlier(directory) is not None:
        return "complete"
    try:
        found = mf.read(directory) if (directory / mf.MANIFEST).is_file() else None
    except (OSError, ValueError):
        return None
    return found.status if found is not None else None


def _ends_torn(path: Path) -> bool:
    try:
        size = path.stat().st_size
        if size == 0:
            return False
        with path.open("rb") as handle:
            handle.seek(size - 1)
            return handle.read(1) != b"\n"
    except OSError:
        return False


def reconcile(run_dir: Path, fold: RunFold[Any] | None = None) -> Reconciliation:
    """The run as state.json, the manifests and the log together say it is. Reads only small
    files; pass the fold the caller already has to avoid reading the log again."""
    run_dir = Path(run_dir)
    fold = fold if fold is not None else read_fold(run_dir)
    info = read_state(run_dir)
    ended = fold.status in ENDED
    log_status = fold.status if ended else ("running" if fold.run else "unknown")
    status = info.status if info.status != "unknown" else log_status
    live = status in runstate.LIVE
    missing: list[str] = []
    torn = _ends_torn(run_dir / EVENTS)
    if torn:
        missing.append("the log's last line is incomplete (skipped)")
    if not live and not ended:
        missing.append(f"the log ends before the run's end: state.json says {status}"
                       + (f" ({info.message})" if info.message else ""))
    elif ended and log_status != status and not live:
        missing.append(f"the log says {log_status}, state.json says {status}")

    stages: dict[str, str] = {}
    for name in _stage_names(run_dir, fold):
        said = fold.stages[name].status if name in fold.stages else "pending"
        disk = _on_disk(RunLayout(run_dir).stage(name))
        shown = said
        if disk == "complete" and said not in DONE_STATUSES:
            shown = "complete"
            missing.append(f"stage '{name}' is complete on disk; its end is missing from the "
                           "log")
        elif disk == "failed" and said not in ("failed",):
            shown = "failed"
            missing.append(f"stage '{name}' failed (its manifest says so); the log does not")
        elif said == "running" and not live:
            # the engine is gone: a stage the log left running did not finish
            shown = "stopped" if status in ("stopped", "finished") else status
        stages[name] = shown
    return Reconciliation(status=status, log_status=log_status, stages=stages,
                          missing=tuple(missing), torn_tail=torn)

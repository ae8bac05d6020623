"""The per-user run index: every run directory this user created, wherever its pipeline put it.

A pipeline file decides where its runs go (`runs_dir`, relative to the file), so a run started
from one directory is invisible from another unless something remembers it. This index does,
like `tmux ls` or `docker ps`: `graftline attach demo-…` works from any directory.

Where: `$GRAFTLINE_STATE_DIR`, else `$XDG_STATE_HOME/graftline`, else `~/.local/state/graftline`.
The directory is owner-only (0700) and the index file too (0600): run paths tell what a user
trains. The file is replaced atomically under an advisory lock, so two launches at once both
land. Entries whose directory is no longer a run (deleted, moved) are pruned whenever the index is
written. An index that cannot be read or written never stops a run: it only makes finding it
from elsewhere harder, and the run directory itself stays the truth.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import time
from collections.abc import Iterable, Iterator
from pathlib import Path

from graftline.engine.common import atomic
from graftline.engine.common.run_index import (
    INDEX,
    STATE_DIR_ENV,
    alive,
    index_path,
    read_entries,
    state_dir,
)

__all__ = ["INDEX", "STATE_DIR_ENV", "forget", "index_path", "known", "register", "state_dir"]

_LOCK = "runs.lock"
# where the index lives and how it reads: common/run_index.py (the pipeline layer reads it too)
_read_entries, _alive = read_entries, alive


def _ensure_dir() -> Path:
    directory = state_dir()
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    if directory.stat().st_uid == os.getuid():
        os.chmod(directory, 0o700)  # an existing directory made with a looser umask
    return directory


@contextlib.contextmanager
def _locked() -> Iterator[None]:
    directory = _ensure_dir()
    fd = os.open(directory / _LOCK, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the lock


def _write_entries(entries: list[dict]) -> None:
    atomic.write_json(index_path(), {"version": 1, "runs": entries}, mode=0o600)


def _update(add: Iterable[Path] = (), remove: Iterable[Path] = ()) -> list[Path]:
    gone = {str(Path(p).resolve()) for p in remove}
    with _locked():
        entries = [e for e in _read_entries() if e["path"] not in gone and _alive(e)]
        seen = {e["path"] for e in entries}
        for run_dir in add:
            path = str(Path(run_dir).resolve())
            if path not in seen and _alive({"path": path}):
                entries.append({"path": path, "run_id": Path(path).name, "added": time.time()})
                seen.add(path)
        _write_entries(entries)
    return [Path(e["path"]) for e in entries]


def register(*run_dirs: Path) -> bool:
    """Remember these run directories (and prune the dead). False when the index could not be
    written; the caller goes on, the run does not depend on it."""
    try:
        _update(add=run_dirs)
    except OSError:
        return False
    return True


def forget(*run_dirs: Path) -> None:
    """Drop these run directories from the index (a deleted run)."""
    with contextlib.suppress(OSError):
        _update(remove=run_dirs)


def known() -> list[Path]:
    """The run directories in the index that still are runs, oldest registration first. Prunes
    the index when some are gone (best effort: a read-only state directory still reads)."""
    entries = _read_entries()
    alive = [e for e in entries if _alive(e)]
    if len(alive) != len(entries):
        with contextlib.suppress(OSError):
            _update()
    return [Path(e["path"]) for e in alive]

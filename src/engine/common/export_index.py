"""The per-user export index: where every export went, so a lineage shows it under the
checkpoint it came from even when it was written outside the folder being scanned.

An export directory carries its own `graftline.json` (kind export, `exported_from` its
source), so an export inside a scanned root is found by the walk. `graftline export CKPT --out
~/models/x` (or an export stage whose `out` lies outside the runs directory) writes elsewhere;
this index remembers the pair. It lives beside the run index (`common/run_index.state_dir`),
owner-only, replaced atomically under a lock; entries whose directory no longer holds that
export are pruned whenever it is written. Losing it loses nothing but the link: the export
directory itself stays the truth.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import time
from collections.abc import Iterator
from pathlib import Path

from graftline.engine.common import atomic
from graftline.engine.common.run_index import read_owned_list, state_dir

__all__ = ["EXPORTS", "index_path", "read_entries", "record"]

EXPORTS = "exports.json"
_LOCK = "exports.lock"
_MANIFEST = "graftline.json"  # lineage.manifest.MANIFEST (common may not import lineage)


def index_path() -> Path:
    return state_dir() / EXPORTS


def read_entries() -> list[dict[str, str]]:
    """Every recorded export as {"out", "source", "id"} (read only; never raises)."""
    return [e for e in read_owned_list(index_path(), "exports")
            if all(isinstance(e.get(k), str) for k in ("out", "source", "id"))]


def _holds(entry: dict[str, str]) -> bool:
    """Whether the directory still holds the export the entry names (same manifest id)."""
    try:
        data = json.loads((Path(entry["out"]) / _MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(data, dict) and data.get("id") == entry["id"]


@contextlib.contextmanager
def _locked() -> Iterator[None]:
    directory = state_dir()
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd = os.open(directory / _LOCK, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def record(out: Path, source: Path, export_id: str) -> bool:
    """Remember that `out` (manifest id `export_id`) was exported from `source`; prune the
    entries whose export is gone. False when the index could not be written (the export
    goes on: only its link from elsewhere is lost)."""
    entry = {"out": os.path.realpath(out), "source": os.path.realpath(source), "id": export_id,
             "added": str(time.time())}
    try:
        with _locked():
            kept = [e for e in read_entries() if e["out"] != entry["out"] and _holds(e)]
            kept.append(entry)
            atomic.write_json(index_path(), {"version": 1, "exports": kept}, mode=0o600)
    except OSError:
        return False
    return True

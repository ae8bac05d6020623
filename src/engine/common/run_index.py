"""Reading the per-user run index (written by `run/index.py`), for layers below `run`.

The index's place and format live here so that a pipeline's `from = "run:NAME/STAGE"` can be
resolved while validating a file (pipeline layer) without importing the run layer. Reading never
writes: pruning dead entries stays with the writer.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from graftline.engine.common.layout import RunLayout

__all__ = ["INDEX", "STATE_DIR_ENV", "alive", "index_path", "indexed_runs", "read_entries",
           "read_owned_list", "state_dir"]

STATE_DIR_ENV = "GRAFTLINE_STATE_DIR"
INDEX = "runs.json"


def state_dir() -> Path:
    """graftline's per-user state directory (not created here)."""
    explicit = os.environ.get(STATE_DIR_ENV)
    if explicit:
        return Path(explicit).expanduser()
    xdg = os.environ.get("XDG_STATE_HOME")
    base = Path(xdg).expanduser() if xdg and Path(xdg).is_absolute() else \
        Path.home() / ".local" / "state"
    return base / "graftline"


def index_path() -> Path:
    return state_dir() / INDEX


def read_owned_list(path: Path, key: str) -> list[dict[str, Any]]:
    """The dicts listed under `key` in a per-user index file (the run index, the export index);
    [] when it is missing, unreadable, or someone else's file where ours should be (never
    trusted). Never raises."""
    try:
        if path.stat().st_uid != os.getuid():
            return []
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return []
    listed = raw.get(key) if isinstance(raw, dict) else None
    return [e for e in listed if isinstance(e, dict)] if isinstance(listed, list) else []


def read_entries() -> list[dict]:
    return [entry for entry in read_owned_list(index_path(), "runs")
            if isinstance(entry.get("path"), str)]


def alive(entry: dict) -> bool:
    path = Path(entry["path"])
    return path.is_absolute() and not path.is_symlink() and RunLayout(path).is_run()


def indexed_runs() -> list[Path]:
    """The run directories in the index that still are runs (read only, no pruning)."""
    return [Path(e["path"]) for e in read_entries() if alive(e)]

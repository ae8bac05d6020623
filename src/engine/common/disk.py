"""Questions about the filesystem a path will live on, asked before the path exists."""

from __future__ import annotations

import shutil
from pathlib import Path


def nearest_existing(path: Path) -> Path:
    """`path` or its closest ancestor that exists: where a directory still to be made would go."""
    probe = Path(path)
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    return probe


def free_bytes(path: Path) -> int | None:
    """Free space on the filesystem that would hold `path`; None when it cannot be asked."""
    try:
        return shutil.disk_usage(nearest_existing(Path(path).resolve())).free
    except OSError:
        return None

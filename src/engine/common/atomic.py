"""Atomic file replacement: readers see the old file or the new one, never half of either."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any


def write_text(path: Path, text: str, *, mode: int | None = None, fsync: bool = True) -> None:
    """`mode` None: what a plain new file would get under the umask (mkstemp makes 0600), so a
    private run's engine (umask 077) writes 0600 and anyone else's 0644 as before. `fsync`
    False: still atomic, but not durable across a power cut (for a cache of other files that a
    reader rebuilds when it finds it old or empty, such as the events summary)."""
    from graftline.engine.common.private import file_mode

    path = Path(path)
    mode = file_mode() if mode is None else mode
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            if fsync:
                handle.flush()
                os.fsync(handle.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json(path: Path, data: Any, *, mode: int | None = None) -> None:
    write_text(path, json.dumps(data, indent=2, sort_keys=False, default=str) + "\n", mode=mode)

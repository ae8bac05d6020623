"""Run directories are private by default: they hold dataset paths, pipelines, logs and weights.

On a shared GPU box the default umask (022) let every user read state.json, pipeline.toml,
engine.log and the model files. A run directory is created 0700 and the engine that fills it runs
under umask 077 (files 0600); `[pipeline] private = false` keeps the user's umask. Exports are
the user's deliverable, written outside the run: they follow the user's own umask, which the
launcher hands to the engine in USER_UMASK_ENV.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

PRIVATE_UMASK = 0o077
USER_UMASK_ENV = "GRAFTLINE_USER_UMASK"


def current_umask() -> int:
    """The process's umask, read without changing it where Linux shows it (/proc), else by the
    set-and-restore dance."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    old = os.umask(0o022)
    os.umask(old)
    return old


def file_mode() -> int:
    """The mode a plain new file gets under the current umask (0644 under 022, 0600 under 077)."""
    return 0o666 & ~current_umask()


def user_umask() -> int:
    """The umask of the user who launched the engine (the current one outside an engine)."""
    try:
        return int(os.environ[USER_UMASK_ENV], 8)
    except (KeyError, ValueError):
        return current_umask()


@contextlib.contextmanager
def umask(mask: int) -> Iterator[None]:
    old = os.umask(mask)
    try:
        yield
    finally:
        os.umask(old)


def make_private(path: Path) -> None:
    """0700 for a directory, 0600 for a file (owner's bits kept), never through a symlink."""
    path = Path(path)
    if path.is_symlink():
        return
    os.chmod(path, 0o700 if path.is_dir() else 0o600)

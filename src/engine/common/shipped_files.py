"""Model directories that ship with graftline as package data: the toy bases (toy/shipped.py) and
the family twins (rehearse/families.py).

Each shipped directory holds a record with the sha256 of every other file in it. A copy is
checked against that record where it ships and again in the cache, and is installed staged
beside its target and renamed into place, so a crash never leaves half a model in the cache.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path


def file_digest(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def digests(directory: Path, names: list[str]) -> dict[str, str]:
    """The sha256 of each named file in `directory`, by name: what a shipped record holds."""
    return {name: file_digest(Path(directory) / name) for name in names}


def changed_files(directory: Path, files: Mapping[str, str]) -> list[str]:
    """The files of `files` (name → sha256) that are missing from `directory` or differ from
    their recorded digest (a few milliseconds for a tiny model's megabyte)."""
    changed = []
    for name, digest in sorted(files.items()):
        path = Path(directory) / name
        if not path.is_file() or file_digest(path) != digest:
            changed.append(name)
    return changed


def copy_out(built: Path, out: Path, record: str) -> dict[str, str]:
    """Replace the shipped directory `out` with the files of the fresh build `built` (all but
    its record, which the caller writes last); their sha256 by name."""
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    names = sorted(p.name for p in built.iterdir() if p.is_file() and p.name != record)
    for name in names:
        shutil.copyfile(built / name, out / name)
    return digests(out, names)


def install_checked(source: Path, target: Path, check: Callable[[Path], object]) -> Path:
    """Copy the shipped directory `source` to `target` (inside the cache). `check` raises when
    a directory's files differ from its record; it runs on the source and again on the staged
    copy, before the rename puts it in place. A concurrent installer that renamed first wins."""
    check(source)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        for path in sorted(source.iterdir()):
            if path.is_file() and not path.is_symlink():
                shutil.copyfile(path, staging / path.name)
        check(staging)
        os.chmod(staging, 0o755)  # mkdtemp's 0700 would hide it from the rest of the cache
        staging.rename(target)
    except OSError:
        if not target.is_dir():
            raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)  # gone after the rename; else a loser's copy
    return target


__all__ = ["changed_files", "copy_out", "digests", "file_digest", "install_checked"]

"""The lineage's small reads, cached in-process by mtime and size: JSON files (manifests,
adapter configs, trainer states, metrics) and safetensors headers.

The console rescans often; a file that has not changed is not read again. Used by the walk
(`reader`) and by the merge forensics (`forensics`).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from typing import Any, TypeGuard, TypeVar

from graftline.engine.common.safetensors_header import Header, whole_header
from graftline.engine.lineage.manifest import MANIFEST
from graftline.engine.lineage.manifest_view import ManifestView, view

__all__ = ["cached_by_stat", "is_number", "read_entry", "read_json", "read_manifest_view",
           "safetensors_header"]

T = TypeVar("T")

_json_cache: dict[str, tuple[int, int, Any]] = {}  # file -> (mtime_ns, size, parsed)


def read_json(path: str) -> Any:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return _parse_cached(path, st, os.O_RDONLY)


def read_entry(entry: os.DirEntry[str]) -> Any:
    """Like `read_json` for a file inside the roots, with the stat the walk already made (a
    DirEntry keeps it). A symlinked JSON file there is not followed: it reads as None."""
    try:
        st = entry.stat(follow_symlinks=False)
    except OSError:
        return None
    return _parse_cached(entry.path, st, os.O_RDONLY | os.O_NOFOLLOW)


def _parse_cached(path: str, st: os.stat_result, flags: int) -> Any:
    cached = _json_cache.get(path)
    if cached and cached[0] == st.st_mtime_ns and cached[1] == st.st_size:
        return cached[2]
    try:
        data = json.loads(_read_small(path, st.st_size, flags))
    except (OSError, ValueError):
        data = None
    _json_cache[path] = (st.st_mtime_ns, st.st_size, data)
    return data


def _read_small(path: str, size: int, flags: int) -> bytes | str:
    """The whole file, in one read of the size a stat just gave.

    A buffered `open()` costs twice as much for a file this small, and a cold scan reads
    thousands of them.
    """
    fd = os.open(path, flags)
    try:
        raw = os.read(fd, size + 1)
        if len(raw) > size:  # it grew since the stat
            chunks = [raw]
            while chunk := os.read(fd, 1 << 16):
                chunks.append(chunk)
            raw = b"".join(chunks)
    finally:
        os.close(fd)
    try:
        return raw.decode()  # skips json's encoding detection for the usual UTF-8
    except UnicodeDecodeError:
        return raw


def read_manifest_view(path: str) -> ManifestView | None:
    return view(read_json(os.path.join(path, MANIFEST)))


def is_number(value: Any) -> TypeGuard[int | float]:
    return isinstance(value, int | float) and not isinstance(value, bool)


_header_cache: dict[str, tuple[int, int, Header | None]] = {}


def cached_by_stat(cache: dict[str, tuple[int, int, T]], file: str,
                   read: Callable[[], T]) -> T | None:
    """`read()`'s answer about `file`, read again only when its mtime or size changed; None when
    the file cannot be stat'ed."""
    try:
        st = os.stat(file)
    except OSError:
        return None
    cached = cache.get(file)
    if cached and cached[0] == st.st_mtime_ns and cached[1] == st.st_size:
        return cached[2]
    result = read()
    cache[file] = (st.st_mtime_ns, st.st_size, result)
    return result


def safetensors_header(file: str) -> Header | None:
    """The header of a safetensors file whose size matches it (`whole_header`), else None;
    cached by the file's mtime and size."""
    return cached_by_stat(_header_cache, file, lambda: whole_header(file))

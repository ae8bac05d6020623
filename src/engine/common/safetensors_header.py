"""A safetensors file's header, read without torch or the safetensors library.

The format is the published one: an 8-byte little-endian header length, a JSON header (every
tensor's `dtype`, `shape` and `data_offsets` relative to the data, plus an optional
`__metadata__` of strings), then the data. Every module that looks into a safetensors file reads
its header here: export (the tensors it streams), the lineage scan (a truncated adapter, the
evidence of a hand-made merge) and resume (a half-written Trainer checkpoint).

What a tensor's dtype means in torch is export's business (`export/safetensors.py`); this module
only parses and checks that the header is a header.
"""

from __future__ import annotations

import json
import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from graftline.engine.common.errors import GraftlineError

__all__ = ["HEADER_LIMIT", "METADATA", "Header", "SafetensorsError", "read_header", "whole_header"]

HEADER_LIMIT = 100 * 1024 * 1024  # the format's own limit on the header's length
METADATA = "__metadata__"


class SafetensorsError(GraftlineError, ValueError):
    """A file that is not valid safetensors (or uses a dtype we do not know)."""


@dataclass(frozen=True)
class Header:
    """A parsed header: where the data starts, each tensor's entry (in the header's order,
    `__metadata__` left out) and the metadata."""

    data_start: int  # 8 + the header's length: tensor offsets count from here
    tensors: dict[str, Any]  # name → {"dtype", "shape", "data_offsets"}, as the file says
    metadata: dict[str, str]

    @property
    def data_end(self) -> int:
        """Where the last tensor's bytes end: the file's size when the file is whole."""
        ends = (int(entry["data_offsets"][1]) for entry in self.tensors.values())
        return self.data_start + max(ends, default=0)


def read_header(path: str | Path) -> Header:
    """The header of `path`; SafetensorsError when it is not one (OSError when unreadable)."""
    with open(path, "rb") as handle:
        raw = handle.read(8)
        if len(raw) != 8:
            raise SafetensorsError(f"{path}: too short to be a safetensors file")
        (length,) = struct.unpack("<Q", raw)
        if length > HEADER_LIMIT:
            raise SafetensorsError(f"{path}: header length {length} is not plausible")
        try:
            header = json.loads(handle.read(length))
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise SafetensorsError(f"{path}: unreadable header ({exc})") from exc
    if not isinstance(header, dict):
        raise SafetensorsError(f"{path}: unreadable header (not a JSON object)")
    metadata = header.pop(METADATA, None) or {}
    return Header(8 + length, header, metadata)


def whole_header(path: str | Path) -> Header | None:
    """The header of a safetensors file whose size is what its header says, else None (missing,
    unreadable, not safetensors, or cut short by a copy or a save that did not finish)."""
    try:
        header = read_header(path)
        return header if header.data_end == os.stat(path).st_size else None
    except (OSError, ValueError, KeyError, TypeError, IndexError):
        return None

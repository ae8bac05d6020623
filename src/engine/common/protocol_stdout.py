"""The stdout of a child process that talks JSON lines to its parent (the export worker, the
rehearsal child): a private copy of file descriptor 1 for the protocol alone, with descriptor 1
and `sys.stdout` pointed at stderr, so whatever libraries print (Python's print, C's printf, a
grandchild's output) never lands between two protocol lines."""

from __future__ import annotations

import os
import sys
from typing import TextIO

__all__ = ["protocol_stdout"]


def protocol_stdout() -> TextIO:
    """The protocol's stream, line-buffered; call once, before anything prints."""
    sys.stdout.flush()
    protocol = os.fdopen(os.dup(1), "w", encoding="utf-8", buffering=1)
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    return protocol

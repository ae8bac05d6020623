"""Ending an engine-side process (the engine, a rank, the rehearsal child) without the
interpreter's teardown.

A process that has imported the training stack (torch, transformers, peft, trl, datasets) spends
about 1.3 s of CPU after its last line tearing down thousands of modules (measured on 2 cores:
`import graftline.engine.stages.sft` then a normal exit, against the same then `os._exit`; up to
2 s of wall on a busy machine). Whoever waits for the process (the engine for its rehearsal
child, torchrun for its ranks, a console reaping the engine) waits that long for nothing: every
file the process owns is closed and its state written before this is called.

What a normal exit does that matters still happens, in the same order: non-daemon threads are
joined, atexit handlers run (trackers finishing their runs, logging's flush), stdout and stderr
are flushed. Only the module teardown and C++ static destructors are skipped.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import sys
import threading
from typing import NoReturn

__all__ = ["exit_now"]


def exit_now(code: int, *, join_threads: bool = True) -> NoReturn:
    """Exit with `code` as a normal exit would, minus the interpreter's teardown.
    `join_threads` False: leave at once, whatever non-daemon thread still runs (a rank)."""
    try:
        current = threading.current_thread()
        for thread in threading.enumerate() if join_threads else ():
            if thread is not current and not thread.daemon:
                thread.join()  # as the interpreter's own shutdown does, before atexit
        atexit._run_exitfuncs()
    finally:
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):
                stream.flush()
        os._exit(code)

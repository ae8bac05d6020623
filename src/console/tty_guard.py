"""Leave when the terminal is gone, whatever the signal disposition.

A console started under `nohup`, or by a shell that ignores SIGHUP, never hears that its SSH
session dropped: its reads then fail or return nothing, over and over, and it spins a core.
The guard asks the kernel directly: while the session still has its controlling terminal,
`/dev/tty` opens; once the terminal has hung up (or been closed), it does not. Training is in
its own process and never depends on this one.
"""

from __future__ import annotations

import os
import threading
from typing import Any

__all__ = ["CHECK_EVERY", "EXIT_HANGUP", "GRACE", "leave", "terminal_alive"]

CHECK_EVERY = 1.0  # seconds: cheap (one open/close), and a dead console costs at most this long
# Textual's own shutdown never finishes once the terminal is gone (measured: its writer queue
# stays full and `disable_input` blocks in `queue.put`), so the grace is spent in full on every
# such exit: one second, not three, for whatever can still be flushed.
GRACE = 1.0
EXIT_HANGUP = 129  # 128 + SIGHUP, what a shell reports for a hung-up job


def terminal_alive() -> bool:
    """True while this process's controlling terminal can still be opened."""
    try:
        fd = os.open("/dev/tty", os.O_RDWR | os.O_NOCTTY)
    except OSError:
        return False
    os.close(fd)
    return True


def leave(app: Any, grace: float = GRACE) -> None:
    """Exit the app; if its shutdown cannot finish (restoring a terminal that no longer exists
    can block), end the process after `grace` seconds. Nothing here owns training."""
    app.exit(None, return_code=EXIT_HANGUP)
    timer = threading.Timer(grace, os._exit, (EXIT_HANGUP,))
    timer.daemon = True
    timer.start()

"""Reap engine processes this console started, so none lingers as `<defunct>`.

`graftline run` from a shell exits and init adopts the engine; an engine started from the
console (launch, resume) stays the console's child for the console's life, and when it exits
someone must wait for it. One daemon thread per engine waits on exactly that pid: never
`waitpid(-1)`, which would steal the exit status of the rehearsal's `subprocess.run`.
"""

from __future__ import annotations

import contextlib
import os
import threading


def _wait(pid: int) -> None:
    # ChildProcessError: not our child, or already reaped (subprocess's own cleanup)
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, 0)


def reap_later(pid: int) -> threading.Thread:
    thread = threading.Thread(target=_wait, args=(pid,), name=f"reap-{pid}", daemon=True)
    thread.start()
    return thread


def engine_children() -> set[int]:
    """Pids of this process's children running the engine daemon."""
    import psutil

    found: set[int] = set()
    for child in psutil.Process().children():
        try:
            if "graftline.engine.run.daemon" in " ".join(child.cmdline()):
                found.add(child.pid)
        except psutil.Error:
            continue
    return found

"""A full disk is a pause, not a crash: how a writer asks the engine to wait for space.

Any write in a run (the event log, `state.json`, a Trainer checkpoint, an export) can fail with
ENOSPC or EDQUOT. The code that owns the write undoes its partial output, then calls
`wait_for_space`: it reports a `warning` with `disk_full: true` and the bytes it needs to the
sink, and the engine's sink (run/daemon.py) pauses the run until that much space is free again.
Without an engine behind the sink (a test's list, a rehearsal) nothing pauses, and the caller
raises as before.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path

from graftline.engine.common.control import RunControl
from graftline.engine.common.sink import Sink
from graftline.engine.common.units import human_bytes

FULL = frozenset({errno.ENOSPC, errno.EDQUOT})
# torch's and safetensors' writers re-raise a failed write as RuntimeError carrying only the C
# library's words for the errno ("No space left on device"): the errno itself is gone
FULL_WORDS = tuple(os.strerror(code) for code in sorted(FULL))
HEADROOM = 1 << 20  # what a resumed run needs at least: a few hundred events and a state file


def is_disk_full(exc: BaseException) -> bool:
    """ENOSPC/EDQUOT, also when wrapped (torch and safetensors re-raise as RuntimeError)."""
    seen: set[int] = set()
    link: BaseException | None = exc
    while link is not None and id(link) not in seen:
        seen.add(id(link))
        if isinstance(link, OSError) and link.errno in FULL:
            return True
        if any(words in str(link) for words in FULL_WORDS):
            return True
        link = link.__cause__ or link.__context__
    return False


def wait_for_space(sink: Sink, control: RunControl | None, stage: str | None, what: str,
                   need: int, exc: BaseException, where: Path) -> bool:
    """Report the failed write and wait until the engine resumes. True: space is back, retry
    the write. False: nobody paused (no engine behind the sink), a stop was asked meanwhile, or
    this is a rank of a process group (`control.waits_here`; its engine waits for the group):
    the caller gives up (raise, or stop where it is)."""
    need = max(int(need), HEADROOM)
    sink.emit("warning", stage,
              message=f"disk full while writing {what}: paused until {human_bytes(need)} is free "
                      f"on {where}",
              fix="free space on that volume: the run resumes by itself (or `graftline "
                  "resume`); state.json's message and engine.log name what can be freed",
              disk_full=True, need_bytes=need, what=what, error=str(exc))
    if control is None or not control.waits_here or not control.paused.is_set():
        return False
    control.wait_while_paused()
    return not control.stop.is_set()

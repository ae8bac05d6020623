"""Flags a running pipeline obeys: stop, pause, save now. Set from the control socket or a signal.

The runner and the trainer callback only read these; they never know where a request came from.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import ClassVar


class PauseFlag:
    """`threading.Event`'s set/clear/is_set/wait, plus `wait_cleared`: a paused trainer wakes
    the moment the pause is lifted instead of at its next poll (up to 0.5 s later)."""

    def __init__(self) -> None:
        self._cond = threading.Condition(threading.Lock())
        self._flag = False

    def is_set(self) -> bool:
        return self._flag

    def set(self) -> None:
        with self._cond:
            self._flag = True
            self._cond.notify_all()

    def clear(self) -> None:
        with self._cond:
            self._flag = False
            self._cond.notify_all()

    def wait(self, timeout: float | None = None) -> bool:
        """Until set (as `threading.Event.wait`); True when it is."""
        with self._cond:
            return self._cond.wait_for(lambda: self._flag, timeout)

    def wait_cleared(self, timeout: float | None = None) -> bool:
        """Until cleared, or `timeout` seconds; True when it is clear."""
        with self._cond:
            return self._cond.wait_for(lambda: not self._flag, timeout)


@dataclass
class RunControl:
    # Where a full disk is waited out: here, in the engine's process. A rank of a process group
    # (run/group_io.GroupControl) says False: it cannot stop in a save while its peers wait in a
    # collective, so it ends the group's launch and the engine waits, then launches again.
    waits_here: ClassVar[bool] = True
    stop: threading.Event = field(default_factory=threading.Event)
    paused: PauseFlag = field(default_factory=PauseFlag)
    save_now: threading.Event = field(default_factory=threading.Event)

    def wait_while_paused(self, poll: float = 0.5) -> None:
        # woken at once by an un-pause (every stop clears the pause too); `poll` only bounds
        # how late a stop set without clearing it is seen
        while self.paused.is_set() and not self.stop.is_set():
            self.paused.wait_cleared(poll)

    def take_save_request(self) -> bool:
        if self.save_now.is_set():
            self.save_now.clear()
            return True
        return False

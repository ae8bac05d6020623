"""Flags a running pipeline obeys: stop, pause, save now. Set from the control socket or a signal.

The runner and the trainer callback only read these; they never know where a request came from.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import ClassVar


@dataclass
class RunControl:
    # Where a full disk is waited out: here, in the engine's process. A rank of a process group
    # (run/group_io.GroupControl) says False: it cannot stop in a save while its peers wait in a
    # collective, so it ends the group's launch and the engine waits, then launches again.
    waits_here: ClassVar[bool] = True
    stop: threading.Event = field(default_factory=threading.Event)
    paused: threading.Event = field(default_factory=threading.Event)
    save_now: threading.Event = field(default_factory=threading.Event)

    def wait_while_paused(self, poll: float = 0.5) -> None:
        while self.paused.is_set() and not self.stop.is_set():
            self.stop.wait(poll)

    def take_save_request(self) -> bool:
        if self.save_now.is_set():
            self.save_now.clear()
            return True
        return False

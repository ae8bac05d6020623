"""A tmux server of a test's own (`-L`): its panes inherit the test's environment (its run
index, offline settings) and nothing of another tmux server. For the console as a terminal
shows it (tests/test_console_tmux.py, test_console_tmux_launch.py, test_disk_full_alive.py)."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

TMUX = shutil.which("tmux")
NO_TMUX = "tmux is not installed (apt-get install -y tmux)"


class Tmux:
    """A tmux server of this test's own: sessions, keys, the screen as text."""

    def __init__(self, socket: str) -> None:
        self.socket = socket
        self.socket_path: Path | None = None  # known once the server runs

    def __call__(self, *args: str) -> str:
        assert TMUX is not None
        return subprocess.run([TMUX, "-L", self.socket, *args], capture_output=True, text=True,
                              check=True).stdout

    def start(self, session: str, command: str, cwd: Path) -> int:
        """A 120×40 session running `command` in `cwd`; the pane's pid (its session leader)."""
        self("new-session", "-d", "-s", session, "-x", "120", "-y", "40", "-c", str(cwd),
             command)
        self.socket_path = Path(self("display-message", "-p", "#{socket_path}").strip())
        return int(self("list-panes", "-t", session, "-F", "#{pane_pid}").split()[0])

    def screen(self, session: str) -> str:
        return self("capture-pane", "-p", "-t", session)

    def wait(self, session: str, pattern: str, timeout: float) -> str:
        """Until the screen matches `pattern` (a guard against a hang, not a measurement)."""
        deadline = time.monotonic() + timeout
        screen = ""
        while time.monotonic() < deadline:
            screen = self.screen(session)
            if re.search(pattern, screen):
                return screen
            time.sleep(0.3)
        raise AssertionError(f"{pattern!r} never appeared; the screen was:\n{screen}")


@pytest.fixture
def tmux(tmp_path: Path) -> Iterator[Tmux]:
    server = Tmux(f"graftline-{os.getpid()}-{tmp_path.name}"[:80])
    try:
        yield server
    finally:
        with contextlib.suppress(subprocess.CalledProcessError):
            server("kill-server")
        if server.socket_path is not None:  # the server leaves its socket file behind
            server.socket_path.unlink(missing_ok=True)

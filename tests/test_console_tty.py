"""A console whose terminal vanishes leaves, even with SIGHUP ignored (nohup, some shells):
a real pseudo-terminal, a real console process, the terminal's master side closed under it."""

from __future__ import annotations

import os
import pty
import select
import signal
import sys
import time
from pathlib import Path

from console_support import install_recorded_run

GRAFTLINE = Path(sys.executable).parent / "graftline"


def _read_some(fd: int, wanted: int, timeout: float) -> bytes:
    got = b""
    deadline = time.monotonic() + timeout
    while len(got) < wanted and time.monotonic() < deadline:
        ready, _, _ = select.select([fd], [], [], 0.5)
        if ready:
            try:
                chunk = os.read(fd, 65536)
            except OSError:
                break
            if not chunk:
                break
            got += chunk
    return got


def test_console_exits_when_its_terminal_is_gone_even_with_sighup_ignored(
        tmp_path: Path, toy_base: Path) -> None:
    run = install_recorded_run(tmp_path / "runs", toy_base)
    pid, master = pty.fork()
    if pid == 0:  # the child: a session whose controlling terminal is the pty
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
        os.environ.update(TERM="xterm-256color", COLUMNS="100", LINES="30")
        os.execv(str(GRAFTLINE), [str(GRAFTLINE), "attach", str(run)])
    try:
        drawn = _read_some(master, 20_000, timeout=60)
        assert len(drawn) > 1000, drawn[-500:]  # the dashboard is on the terminal
        os.close(master)  # the terminal goes away, as when an SSH session drops
        deadline = time.monotonic() + 30
        done, status = 0, 0
        while time.monotonic() < deadline and not done:
            done, status = os.waitpid(pid, os.WNOHANG)
            time.sleep(0.2)
        assert done == pid, "the console kept running after its terminal was gone"
        assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 129  # 128 + SIGHUP
    finally:
        try:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
        except (ProcessLookupError, ChildProcessError):
            pass

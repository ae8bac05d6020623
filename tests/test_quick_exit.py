"""`exit_now`, how the engine and the rehearsal child end: a normal exit's work (non-daemon
threads joined, atexit handlers run, stdout flushed, the exit code) without the interpreter's
teardown of the training stack."""

from __future__ import annotations

import subprocess
import sys

CHILD = """
import atexit
import sys
import threading
import time

from graftline.engine.common.quick_exit import exit_now

def late_writer():
    time.sleep(0.3)
    print("thread done")  # buffered: the flush is exit_now's

atexit.register(lambda: print("atexit ran"))
threading.Thread(target=late_writer).start()
sys.stdout.write("unflushed line\\n")
exit_now(7)
"""


def test_exit_now_does_a_normal_exits_work() -> None:
    done = subprocess.run([sys.executable, "-c", CHILD], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 7, done.stderr
    assert done.stdout.splitlines() == ["unflushed line", "thread done", "atexit ran"]

"""One export worker process (`python -m graftline.engine.export.worker serve`) under the
console: the export dialog's link to it.

The worker imports torch and transformers once (seconds of CPU) and then answers every plan
and the export the dialog asks for; one process per dialog, not one per keystroke. A thread of
the link reads the worker's answers and hands each event to the dialog; whatever ends the
worker (the dialog closing it, a crash, a kill), that thread reaps it, so no `<defunct>` export
process stays under the console. Closing stdin is the worker's signal to exit once its request
under way is answered; a dialog closed while only planning also terminates it, since a plan
writes nothing.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import threading
from collections import deque
from collections.abc import Callable
from typing import Any

__all__ = ["ExportWorkerLink"]

STDERR_LINES = 40  # the worker's last stderr lines, kept to say why it died


class ExportWorkerLink:
    """A `serve` export worker: `start`, `send` request lines, `close`.

    `on_event(event)` gets each protocol event (a dict with `event` and `id`), and
    `on_exit(link, problem)` is told when the worker ended without being asked to (or, closed
    without `terminate` to finish an export, ended with a failure status); both are called
    from the link's reader thread.
    """

    def __init__(self, on_event: Callable[[dict[str, Any]], None],
                 on_exit: Callable[[ExportWorkerLink, str], None]) -> None:
        self._on_event, self._on_exit = on_event, on_exit
        self.process: subprocess.Popen[str] | None = None
        self._lock = threading.Lock()
        self._closing = False
        self._terminated = False
        self._stderr: deque[str] = deque(maxlen=STDERR_LINES)
        self._reader: threading.Thread | None = None

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None

    @property
    def alive(self) -> bool:
        """Started, not closed, and its process has not exited."""
        return self.process is not None and not self._closing \
            and self.process.returncode is None and self._reader is not None \
            and self._reader.is_alive()

    def start(self) -> None:
        """Start the worker; OSError when the interpreter cannot be started."""
        from graftline.engine.export import serve_command

        # utf-8 whatever the locale: libraries' progress bars on stderr are not ASCII
        self.process = process = subprocess.Popen(
            serve_command(), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, text=True, encoding="utf-8", errors="replace",
            env=os.environ.copy())
        stderr = process.stderr
        assert stderr is not None
        # a chatty library must never block the worker on a full stderr pipe
        drain = threading.Thread(target=self._stderr.extend, args=(stderr,),
                                 name=f"export-worker-{process.pid}-stderr", daemon=True)
        drain.start()
        self._reader = threading.Thread(target=self._read, args=(process, drain),
                                        name=f"export-worker-{process.pid}", daemon=True)
        self._reader.start()

    def send(self, line: str) -> None:
        """Write one request line; OSError (or ValueError, a closed pipe) when the worker is
        gone."""
        with self._lock:
            if self.process is None or self.process.stdin is None or self._closing:
                raise BrokenPipeError("the export worker is not running")
            self.process.stdin.write(line)
            self.process.stdin.flush()

    def close(self, *, terminate: bool) -> None:
        """Ask the worker to exit: end of its stdin (it answers the request under way first),
        and with `terminate` a SIGTERM too. The reader thread reaps it."""
        with self._lock:
            self._closing = True
            process = self.process
            if process is None:
                return
            if process.stdin is not None:
                with contextlib.suppress(OSError, ValueError):
                    process.stdin.close()
            if terminate and process.returncode is None:
                self._terminated = True
                with contextlib.suppress(OSError):
                    process.terminate()

    def _read(self, process: subprocess.Popen[str], drain: threading.Thread) -> None:
        from graftline.engine.export import parse_worker_line

        stdout = process.stdout
        assert stdout is not None
        for line in stdout:
            event = parse_worker_line(line)
            if event is not None:
                self._on_event(event)
        code = process.wait()  # reaped here, however it ended
        drain.join(timeout=5)
        if not self._closing or (code != 0 and not self._terminated):
            self._on_exit(self, self._why(code))

    def _why(self, code: int) -> str:
        if code < 0:
            try:
                how = f"killed by {signal.Signals(-code).name}"
            except ValueError:
                how = f"killed by signal {-code}"
        else:
            how = f"exit status {code}"
        tail = [line.strip() for line in self._stderr if line.strip()]
        return f"the export worker stopped ({how})" + (f": {tail[-1]}" if tail else "")

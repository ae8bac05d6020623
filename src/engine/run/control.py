"""The run's control channel: an owner-only Unix domain socket, `control.sock`, in the run dir.

One request per connection: a JSON line `{"command": "stop"}`, answered with one JSON line
(`{"ok": true, ...}` or `{"ok": false, "error": ...}`). Commands: stop, pause, resume, save_now,
status. There is no TCP listener: only a process that can open the socket file, which is mode
0600, and whose peer uid equals the engine's (checked with SO_PEERCRED) can send anything.

Socket paths are limited to ~107 bytes on Linux; a deep run directory is reached through
`/proc/self/fd/<dir fd>/control.sock`, so the socket always lives in the run directory itself.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import struct
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from graftline.engine.common.errors import GraftlineError
from graftline.engine.common.layout import CONTROL_SOCKET

SOCKET = CONTROL_SOCKET
COMMANDS = ("stop", "pause", "resume", "save_now", "status")
_MAX_SUN_PATH = 100
_MAX_REQUEST = 64 * 1024

Handler = Callable[[str, dict[str, Any]], dict[str, Any]]


class ControlError(GraftlineError, RuntimeError):
    """The engine could not be reached or refused the command."""


@contextlib.contextmanager
def _short_path(path: Path) -> Iterator[str]:
    """A path for bind/connect that fits sun_path, even for a deep run directory."""
    text = str(path)
    if len(text.encode()) <= _MAX_SUN_PATH:
        yield text
        return
    fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        yield f"/proc/self/fd/{fd}/{path.name}"
    finally:
        os.close(fd)


def _peer_uid(conn: socket.socket) -> int | None:
    try:
        creds = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    except (OSError, AttributeError):
        return None
    _pid, uid, _gid = struct.unpack("3i", creds)
    return uid


class ControlServer:
    """Accepts commands on `<run_dir>/control.sock` in a background thread."""

    def __init__(self, run_dir: Path, handler: Handler) -> None:
        self.path = Path(run_dir) / SOCKET
        self._handler = handler
        self._sock: socket.socket | None = None
        self._thread: threading.Thread | None = None
        self._closed = threading.Event()

    def start(self) -> ControlServer:
        self.path.unlink(missing_ok=True)  # a dead engine's socket; nobody listens on it
        tmp = self.path.with_name(f".{SOCKET}.{os.getpid()}")
        tmp.unlink(missing_ok=True)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        # Bind under a private name with a tight umask, chmod, then rename into place: the socket
        # is never reachable under its public name with wider permissions.
        old_umask = os.umask(0o177)
        try:
            with _short_path(tmp) as where:
                sock.bind(where)
        finally:
            os.umask(old_umask)
        os.chmod(tmp, 0o600)
        os.replace(tmp, self.path)
        sock.listen(8)
        sock.settimeout(0.5)
        self._sock = sock
        self._thread = threading.Thread(target=self._serve, name="graftline-control", daemon=True)
        self._thread.start()
        return self

    def _serve(self) -> None:
        assert self._sock is not None
        while not self._closed.is_set():
            try:
                conn, _ = self._sock.accept()
            except TimeoutError:
                continue
            except OSError:
                if self._closed.is_set():
                    return
                continue
            with conn:
                try:
                    self._answer(conn)
                except OSError:
                    continue  # the client went away; nothing to tell it

    def _answer(self, conn: socket.socket) -> None:
        conn.settimeout(5.0)
        uid = _peer_uid(conn)
        if uid is not None and uid != os.getuid():
            _reply(conn, {"ok": False, "error": "permission denied: not the run's owner"})
            return
        raw = _read_line(conn)
        try:
            request = json.loads(raw)
            command = request["command"]
        except (ValueError, KeyError, TypeError):
            _reply(conn, {"ok": False, "error": 'expected one JSON line: {"command": "…"}'})
            return
        if command not in COMMANDS:
            _reply(conn, {"ok": False, "error": f"unknown command {command!r}",
                          "commands": list(COMMANDS)})
            return
        try:
            reply = {"ok": True, "command": command, **self._handler(command, request)}
        except Exception as exc:  # a handler bug must not kill the channel
            reply = {"ok": False, "command": command, "error": f"{type(exc).__name__}: {exc}"}
        _reply(conn, reply)

    def close(self) -> None:
        self._closed.set()
        if self._sock is not None:
            # wakes the thread blocked in accept() now (closing the fd alone does not, on
            # Linux: it would sit out its 0.5 s timeout, and the engine's exit with it)
            with contextlib.suppress(OSError):
                self._sock.shutdown(socket.SHUT_RDWR)
            self._sock.close()
        if self._thread is not None:
            self._thread.join(timeout=2)
        self.path.unlink(missing_ok=True)

    def __enter__(self) -> ControlServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()


def _read_line(conn: socket.socket) -> bytes:
    chunks: list[bytes] = []
    size = 0
    while size < _MAX_REQUEST:
        chunk = conn.recv(4096)
        if not chunk:
            break
        chunks.append(chunk)
        size += len(chunk)
        if b"\n" in chunk:
            break
    return b"".join(chunks).split(b"\n", 1)[0]


def _reply(conn: socket.socket, data: dict[str, Any]) -> None:
    conn.sendall((json.dumps(data, default=str) + "\n").encode())


def send(run_dir: Path, command: str, timeout: float = 5.0, **args: Any) -> dict[str, Any]:
    """Send one command to the engine of `run_dir`; its JSON reply. Raises ControlError."""
    path = Path(run_dir) / SOCKET
    if not path.exists():
        raise ControlError(f"no control socket at {path}: the engine is not running")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        with _short_path(path) as where:
            sock.connect(where)
        sock.sendall((json.dumps({"command": command, **args}) + "\n").encode())
        raw = _read_line(sock)
    except (ConnectionRefusedError, FileNotFoundError) as exc:
        raise ControlError(f"the engine of {run_dir} is not listening ({exc})") from None
    except TimeoutError:
        raise ControlError(f"the engine of {run_dir} did not answer within {timeout:g} s") from None
    except PermissionError as exc:
        raise ControlError(f"not allowed to control {run_dir}: {exc}") from None
    finally:
        sock.close()
    try:
        return json.loads(raw)
    except ValueError:
        raise ControlError(f"the engine sent no valid reply: {raw[:200]!r}") from None

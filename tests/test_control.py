"""The control socket: owner-only, JSON in and out, sets the run's flags; no TCP."""

from __future__ import annotations

import os
import socket
import stat
import time
from pathlib import Path

import pytest

from graftline.engine.common.control import RunControl
from graftline.engine.run import control
from graftline.engine.run.control import ControlError, ControlServer


def _server(run_dir: Path, flags: RunControl) -> ControlServer:
    def handle(command: str, request: dict) -> dict:
        if command == "stop":
            flags.stop.set()
        elif command == "pause":
            flags.paused.set()
        elif command == "resume":
            flags.paused.clear()
        elif command == "save_now":
            flags.save_now.set()
        return {"paused": flags.paused.is_set()}

    return ControlServer(run_dir, handle)


def test_socket_is_owner_only_and_commands_set_flags(tmp_path: Path) -> None:
    flags = RunControl()
    with _server(tmp_path, flags):
        mode = os.stat(tmp_path / control.SOCKET).st_mode
        assert stat.S_ISSOCK(mode)
        assert stat.S_IMODE(mode) == 0o600
        assert control.send(tmp_path, "pause") == {"ok": True, "command": "pause", "paused": True}
        assert flags.paused.is_set()
        assert control.send(tmp_path, "resume")["paused"] is False
        control.send(tmp_path, "save_now")
        assert flags.take_save_request() and not flags.save_now.is_set()
        reply = control.send(tmp_path, "explode")
        assert reply["ok"] is False and "unknown command" in reply["error"]
        control.send(tmp_path, "stop")
        assert flags.stop.is_set()
    assert not (tmp_path / control.SOCKET).exists()
    with pytest.raises(ControlError, match="not running"):
        control.send(tmp_path, "stop")


def test_deep_run_directory_still_gets_its_socket(tmp_path: Path) -> None:
    deep = tmp_path / ("d" * 60) / ("e" * 60)
    deep.mkdir(parents=True)
    flags = RunControl()
    with _server(deep, flags):
        assert len(str(deep / control.SOCKET)) > 108
        assert control.send(deep, "pause")["ok"]
        assert flags.paused.is_set()


def test_garbage_request_gets_an_error_reply(tmp_path: Path) -> None:
    with _server(tmp_path, RunControl()):
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.connect(str(tmp_path / control.SOCKET))
        sock.sendall(b"not json\n")
        reply = sock.recv(4096)
        sock.close()
    assert b'"ok": false' in reply


def test_an_unpause_wakes_the_paused_trainer_at_once(tmp_path: Path) -> None:
    """`resume` over the socket lifts the pause the moment it is answered: the waiting trainer
    is woken, not left to notice at its next poll (60 s here, so only a wake-up can pass)."""
    import threading

    flags = RunControl()
    flags.paused.set()
    waiter = threading.Thread(target=flags.wait_while_paused, kwargs={"poll": 60.0})
    waiter.start()
    with _server(tmp_path, flags):
        waiter.join(timeout=0.3)
        assert waiter.is_alive()  # paused: it waits
        assert control.send(tmp_path, "resume")["paused"] is False
        waiter.join(timeout=10)
        assert not waiter.is_alive()


def test_closing_the_server_ends_its_thread_at_once(tmp_path: Path) -> None:
    """The engine's exit (and the run's lock with it) waits for this close: it must not sit out
    the accept loop's timeout."""
    server = _server(tmp_path, RunControl()).start()
    assert control.send(tmp_path, "status")["ok"]
    server._sock.settimeout(60.0)  # only a real wake-up ends accept() before join's timeout
    time.sleep(0.6)  # the accept() under the old 0.5 s timeout has returned; now it waits 60 s
    server.close()
    assert server._thread is not None and not server._thread.is_alive()
    assert not (tmp_path / control.SOCKET).exists()

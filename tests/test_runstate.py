"""state.json: atomic, and a dead engine reads `crashed`, never `running`."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from graftline.engine.run import client
from graftline.engine.run import state as runstate
from graftline.engine.run.state import RunState, StateKeeper


def _dead_pid() -> tuple[int, float]:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    import psutil

    created = psutil.Process(proc.pid).create_time()
    proc.wait()
    return proc.pid, created


def test_live_run_of_this_process_is_running(tmp_path: Path) -> None:
    pid, started = runstate.this_process()
    keeper = StateKeeper(tmp_path, RunState("r1", "p", status="running", pid=pid,
                                            pid_started=started, started=time.time()), every=0.05)
    keeper.update()
    keeper.start_heartbeat()
    first = runstate.read(tmp_path).heartbeat
    time.sleep(0.3)
    keeper.stop_heartbeat()
    assert runstate.read(tmp_path).heartbeat > first  # the heartbeat thread rewrites the file
    assert client.read_state(tmp_path).status == "running"
    assert not list(tmp_path.glob(".state.json.*"))  # no temporary files left behind


def test_dead_pid_reused_pid_and_stale_heartbeat_read_crashed(tmp_path: Path) -> None:
    pid, started = _dead_pid()
    runstate.write(tmp_path, RunState("r", "p", status="running", pid=pid, pid_started=started,
                                      heartbeat=time.time()))
    assert client.read_state(tmp_path).status == "crashed"

    me, my_start = runstate.this_process()
    # our own pid but another start time: a different process that reused the pid
    runstate.write(tmp_path, RunState("r", "p", status="paused", pid=me, pid_started=my_start - 50,
                                      heartbeat=time.time()))
    assert client.read_state(tmp_path).status == "crashed"

    runstate.write(tmp_path, RunState("r", "p", status="running", pid=me, pid_started=my_start,
                                      heartbeat=time.time() - runstate.STALE_AFTER - 5))
    assert client.read_state(tmp_path).status == "crashed"

    # a final status is shown as written, whatever the process
    runstate.write(tmp_path, RunState("r", "p", status="finished", pid=pid, pid_started=started))
    info = client.read_state(tmp_path)
    assert info.status == "finished" and info.progress == 1.0


def test_the_reader_sets_how_old_a_heartbeat_may_be(tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    me, my_start = runstate.this_process()

    def status(age: float) -> str:
        runstate.write(tmp_path, RunState("r", "p", status="running", pid=me,
                                          pid_started=my_start, heartbeat=time.time() - age))
        return client.read_state(tmp_path).status

    assert status(runstate.STALE_AFTER - 3) == "running"
    monkeypatch.setenv("GRAFTLINE_STALE_AFTER", "10")
    assert status(8) == "running" and status(12) == "crashed"
    monkeypatch.setenv("GRAFTLINE_STALE_AFTER", "1")  # never below 5 s: two heartbeats missed
    assert status(3) == "running"
    monkeypatch.setenv("GRAFTLINE_STALE_AFTER", "soon")  # not a number: the default
    assert status(runstate.STALE_AFTER - 3) == "running"


def test_list_runs_newest_first_and_skips_symlinks(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    for i, name in enumerate(["a-1", "b-2"]):
        (runs / name).mkdir(parents=True)
        runstate.write(runs / name, RunState(name, "p", status="stopped", started=1000.0 + i))
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    runstate.write(outside, RunState("x", "p", status="stopped", started=5000.0))
    (runs / "link").symlink_to(outside)
    assert [r.run_id for r in client.list_runs(runs)] == ["b-2", "a-1"]
    assert client.latest_run(runs) == runs / "b-2"
    assert client.find_run("a", runs) == runs / "a-1"
    assert client.find_run(None, runs) == runs / "b-2"

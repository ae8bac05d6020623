"""A run paused for a full disk is alive, whatever its state file says.

A real engine trains on a 4 MiB tmpfs (tests/test_disk_full.py's fixture); the test fills it,
the engine pauses, and its heartbeat in state.json can no longer be written. Once that heartbeat
is older than the crash threshold (the state file alone now reads `crashed`), `graftline ls`,
`graftline resume` and the console (under Pilot, and attached in a real terminal: tmux) must still
say what is true: paused for a full disk, how much to free and where; `resume` starts nothing.
Then the space comes back and the run finishes.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import pytest
from console_support import screen_text, wait_for
from test_disk_full import _assert_finished_whole, _fill, _start, _types, _wait, tiny_fs
from tmux_support import TMUX, Tmux, tmux
from typer.testing import CliRunner

from graftline.console.app import GraftlineApp
from graftline.console.cli import app
from graftline.console.screens.dashboard import DashboardScreen
from graftline.engine.common.liveness import stale_after
from graftline.engine.run import client
from graftline.engine.run import state as runstate

__all__ = ["tiny_fs", "tmux"]  # the fixtures, used by name


@pytest.mark.slow
@pytest.mark.asyncio
async def test_a_paused_for_disk_engine_with_a_stale_heartbeat_is_alive_not_crashed(
        tmp_path: Path, tiny_fs: Path, toy_base: Path, tmux: Tmux,
        monkeypatch: pytest.MonkeyPatch) -> None:
    # every reader here (ls, resume, the console, attach in tmux) calls a heartbeat stale after
    # 5 s (the least `stale_after` allows), not 30: the engine's heartbeat (every 2 s) stays
    # inside that while it can write, and nothing here reads the run's liveness before the fill
    monkeypatch.setenv("GRAFTLINE_STALE_AFTER", "5")
    runs = tiny_fs / "runs"
    run_dir, proc, log = _start(tmp_path, runs, max_steps=40, save_steps=20)
    try:
        _wait(lambda: len(_types(run_dir, "metrics")) >= 2, proc, log)
        ballast = _fill(tiny_fs)
        _wait(lambda: "paused: disk full" in log.read_text(), proc, log)

        # the heartbeat cannot reach the full disk: wait until the file alone reads `crashed`
        # (for good: the heartbeat only grows older while the disk stays full)
        def stale() -> bool:
            state = runstate.read(run_dir)
            return state is not None and runstate.effective_status(state) == "crashed"
        _wait(stale, proc, log, timeout=240)
        state = runstate.read(run_dir)
        assert state is not None and time.time() - (state.heartbeat or 0) > stale_after()

        info = client.read_state(run_dir)
        assert info.status == "paused", info
        assert "disk full" in info.message and info.disk_full is not None
        assert info.disk_full["where"] == str(runs) and info.disk_full["need_bytes"] > 0
        advice = client.disk_full_advice(info.disk_full)
        assert advice.startswith("free ") and str(runs) in advice

        listed = CliRunner().invoke(app, ["ls", "--runs-dir", str(runs)])
        assert listed.exit_code == 0, listed.output
        assert "paused" in listed.output and "crashed" not in listed.output
        assert "paused: disk full" in listed.output and advice in listed.output

        resumed = CliRunner().invoke(app, ["resume", run_dir.name, "-d"])
        assert resumed.exit_code == 1, resumed.output
        assert "Traceback" not in resumed.output and resumed.exception is not None
        assert "paused: disk full" in resumed.output and "resumes by itself" in resumed.output
        assert "nothing to resume" in resumed.output
        assert proc.poll() is None and runstate.read(run_dir).pid == proc.pid

        console = GraftlineApp(run_dir, runs)
        async with console.run_test(size=(160, 40)) as pilot:
            await wait_for(pilot, lambda: isinstance(console.screen, DashboardScreen)
                           and console.screen.loaded, what="the dashboard")
            text = screen_text(console)
            assert "PAUSED" in text and "disk full: free " in text, text
            assert "CRASHED" not in text and "engine not running" not in text
        if TMUX is not None:  # and as a terminal shows it: `graftline attach` in tmux
            tmux.start("attached", f"env TERM=screen-256color {sys.executable} -m graftline "
                       f"attach {run_dir.name} --runs-dir {runs}", tmp_path)
            shown = tmux.wait("attached", "disk full: free ", timeout=120)
            assert "PAUSED" in shown and "CRASHED" not in shown, shown
            tmux("kill-server")

        ballast.unlink()
        _assert_finished_whole(run_dir, proc, log)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_resume_of_a_crashed_run_on_a_full_disk_says_so_instead_of_a_traceback(
        tmp_path: Path, tiny_fs: Path) -> None:
    import subprocess
    import sys

    import psutil

    from graftline.engine.pipeline.file import parse
    from graftline.engine.run.launch import create_run

    (tmp_path / "d.jsonl").write_text('{"prompt": "1+1", "completion": "2"}\n')
    text = ('[pipeline]\nname = "full"\nbase = "toy:addition"\n[[stage]]\nname = "one"\n'
            'kind = "sft"\ndata = "d.jsonl"\n')
    run_dir = create_run(parse(text, tmp_path / "p.toml"), tiny_fs / "runs")
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    created = psutil.Process(dead.pid).create_time()
    dead.wait()
    runstate.write(run_dir, runstate.RunState(run_dir.name, "full", status="running",
                                              pid=dead.pid, pid_started=created,
                                              heartbeat=time.time(), stage="one"))
    assert client.read_state(run_dir).status == "crashed"
    _fill(tiny_fs)
    result = CliRunner().invoke(app, ["resume", run_dir.name, "-d"])
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output
    assert "writing its state failed" in result.output
    assert f"fix: free space on {run_dir.parent}" in result.output
    assert client.read_state(run_dir).status == "crashed"  # nothing was started

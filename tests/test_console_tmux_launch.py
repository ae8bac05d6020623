"""The console's launch, in a real terminal: `graftline` in tmux opens the launch screen, `L`
starts the run detached (the engine rehearses as its first phase), and closing the tmux session
(its SIGHUP) while the engine rehearses cannot stop the run: it rehearses, trains and finishes.
(The Samples view and the export key in a real terminal: tests/test_console_tmux.py, on the
finished demo run.)

A tmux server of the test's own (`-L`), so its panes inherit this test's environment (its run
index, offline settings) and nothing of another tmux server. The pipeline's reward function is
the gate that proves the order without a clock (as in tests/test_run_detached.py): called from
the console's session (the launch screen's validation) it scores at once; called from anywhere
else (the engine's rehearsal, its GRPO stage) it waits until the test creates `gate`, which the
test does only after the tmux session is gone.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import time
from pathlib import Path

import pytest
from gated_run import wait_ended, write_gated_run
from tmux_support import NO_TMUX, TMUX, Tmux, tmux

from graftline.engine.run import client

__all__ = ["tmux"]  # the fixture, used by name

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(TMUX is None, reason=NO_TMUX),
]


def _gone(pid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.1)
    return False


def test_L_launches_detached_and_closing_the_tmux_session_cannot_stop_the_run(
        tmp_path: Path, toy_base: Path, tmux: Tmux) -> None:
    work = tmp_path / "work"
    work.mkdir()
    write_gated_run(work, name="launched")
    console = f"{sys.executable} -m graftline --theme low"
    env = "TERM=screen-256color GRAFTLINE_ASCII=0"
    # the pane's shell leads its session; the console takes its place (exec), keeping that sid
    pane = tmux.start("launch", f"sh -c 'echo $$ > launcher.sid; exec env {env} {console}'",
                      work)
    run_dir: Path | None = None
    try:
        # the launch screen, the file checked (its reward's trial call scores: our session)
        tmux.wait("launch", r"p\.toml", timeout=90)
        tmux.wait("launch", r"valid: no problems found", timeout=90)
        tmux("send-keys", "-t", "launch", "L")
        deadline = time.monotonic() + 120
        while not list((work / "runs").glob("launched-*")):  # the run was created
            assert time.monotonic() < deadline, tmux.screen("launch")
            time.sleep(0.2)
        (run_dir,) = (work / "runs").glob("launched-*")
        # the dashboard of the new run: its rehearsal row above the stage
        screen = tmux.wait("launch", r"rehearsal", timeout=90)
        assert "rl" in screen
        while not list(work.glob("called-in-*")):  # the engine's rehearsal reached the reward
            assert time.monotonic() < deadline, (run_dir / "engine.log").read_text()[-3000:]
            time.sleep(0.2)

        # the terminal goes away: tmux closes the session, SIGHUP to the pane's processes
        tmux("kill-session", "-t", "launch")
        assert _gone(pane, timeout=30), "the console outlived its closed tmux session"
        assert client.read_state(run_dir).live, "closing the terminal stopped the engine"
        (work / "gate").touch()  # only now can the engine's rehearsal score anything

        info = wait_ended(run_dir)
        assert info.status == "finished", (run_dir / "engine.log").read_text()[-3000:]
        events = [json.loads(line) for line in (run_dir / client.EVENTS).read_text().splitlines()
                  if line.strip()]
        rehearsed = [e["data"] for e in events if e["type"] == "rehearsal"
                     and e["data"].get("phase") == "finished"]
        assert [r["status"] for r in rehearsed] == ["passed"]
        launcher = int((work / "launcher.sid").read_text())
        callers = {int(p.name.split("-")[-1]) for p in work.glob("called-in-*")}
        assert callers and launcher not in callers  # only the engine waited at the gate
    finally:
        if run_dir is not None and client.read_state(run_dir).live:
            (work / "gate").touch()
            with contextlib.suppress(Exception):
                client.send_command(run_dir, "stop")

"""A run launched from the console, end to end: the real engine in its own session, the
dashboard following it to the end with its evaluation shown, and no `<defunct>` engine left
under the console once it has exited."""

from __future__ import annotations

from pathlib import Path

import psutil
import pytest
from console_support import screen_text, wait_for
from data_support import copy_example_data

from graftline.console.app import GraftlineApp
from graftline.console.screens.dashboard import DashboardScreen
from graftline.console.screens.launch import LaunchScreen
from graftline.console.widgets.log_tail import LogTail
from graftline.console.widgets.pipeline_table import PipelineTable
from graftline.engine.pipeline.file import load

pytestmark = pytest.mark.asyncio

PIPELINE = """[pipeline]
name = "tiny"
base = "toy:addition"
runs_dir = "../runs"

[[stage]]
name = "sft"
kind = "sft"
data = "data/sft.jsonl"
lora = { r = 4 }
train = { max_steps = 2, batch_size = 8 }

[[stage]]
name = "check"
kind = "eval"
data = "data/eval.jsonl"
limit = 16
"""


def zombies() -> list[psutil.Process]:
    found = []
    for child in psutil.Process().children():
        try:
            if child.status() == psutil.STATUS_ZOMBIE:
                found.append(child)
        except psutil.NoSuchProcess:
            continue
    return found


async def test_launch_from_console_follows_to_the_end_and_reaps_the_engine(
        tmp_path: Path, toy_base: Path) -> None:
    folder = tmp_path / "work"
    folder.mkdir()
    (folder / "tiny.toml").write_text(PIPELINE)
    copy_example_data(load(folder / "tiny.toml"), folder)
    runs = tmp_path / "runs"
    app = GraftlineApp(None, runs, ascii_only=False, launch_dir=folder)
    async with app.run_test(size=(120, 40)) as pilot:
        await wait_for(pilot, lambda: isinstance(app.screen, LaunchScreen)
                       and app.screen.report is not None, what="the check")
        assert app.screen.report.ok, screen_text(app)
        await pilot.press("R")  # no rehearsal: this test is about the engine's process
        await pilot.press("L")
        await wait_for(pilot, lambda: isinstance(app.screen, DashboardScreen)
                       and app.screen.loaded, timeout=60, what="the dashboard")
        screen = app.screen
        await wait_for(pilot, lambda: screen.follower.model.status == "finished", timeout=300,
                       what="the run to finish")
        table = screen.query_one(PipelineTable)
        await wait_for(pilot, lambda: "exact" in str(table.get_cell("check", "metric")),
                       what="the evaluation on its row")
        log = [line.text for line in screen.query_one(LogTail).lines]
        assert any("check: complete" in t and "exact_match" in t for t in log)
        # the engine has exited; the console reaped it
        await wait_for(pilot, lambda: not zombies(), timeout=30, what="no defunct child")
        assert "engine not running" in screen_text(app)


async def test_an_exited_child_is_defunct_until_reaped(tmp_path: Path) -> None:
    """What the reaper is for: an engine the console started stays its child; once it exits it
    is `<defunct>` until someone waits for it, and `reap_later` is that someone."""
    import subprocess
    import sys
    import time

    from graftline.console.reaper import reap_later

    child = subprocess.Popen([sys.executable, "-c", "pass"], start_new_session=True)
    pid = child.pid
    deadline = time.monotonic() + 30
    while psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
        assert time.monotonic() < deadline, "the child never exited"
        time.sleep(0.05)
    reap_later(pid).join(timeout=10)
    assert not psutil.pid_exists(pid) or psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    child.returncode = 0  # already reaped: keep Popen's own cleanup from waiting again


TWO_STAGES = """[pipeline]
name = "stoppable"
base = "toy:addition"
runs_dir = "../runs"

[[stage]]
name = "first"
kind = "sft"
data = "data/sft.jsonl"
lora = { r = 4 }
train = { max_steps = 2, batch_size = 8 }

[[stage]]
name = "long"
kind = "sft"
data = "data/sft.jsonl"
train = { max_steps = 400, batch_size = 8, save_steps = 2 }
"""


async def test_stop_then_resume_from_the_console_with_a_real_engine(
        tmp_path: Path, toy_base: Path) -> None:
    """s stops a real run (logged as the user's request, not an error); R resumes it: the
    stage done before shows "done earlier", the stopped one continues from its checkpoint."""
    folder = tmp_path / "work"
    folder.mkdir()
    (folder / "stop.toml").write_text(TWO_STAGES)
    copy_example_data(load(folder / "stop.toml"), folder)
    app = GraftlineApp(None, tmp_path / "runs", ascii_only=False, launch_dir=folder)
    async with app.run_test(size=(120, 40)) as pilot:
        await wait_for(pilot, lambda: isinstance(app.screen, LaunchScreen)
                       and app.screen.report is not None, what="the check")
        await pilot.press("R", "L")
        await wait_for(pilot, lambda: isinstance(app.screen, DashboardScreen)
                       and app.screen.loaded, timeout=60, what="the dashboard")
        screen = app.screen
        model = screen.follower.model

        def long_at(step: int) -> bool:
            stage = next((s for s in model.stages if s.name == "long"), None)
            return stage is not None and stage.step >= step

        await wait_for(pilot, lambda: long_at(4), timeout=300, what="the long stage to train")
        await pilot.press("s")
        await pilot.press("y")
        await wait_for(pilot, lambda: model.status == "stopped", timeout=120, what="the stop")
        table = screen.query_one(PipelineTable)
        await wait_for(pilot, lambda: "stopped" in str(table.get_cell("long", "status")),
                       what="the stopped row")
        lines = screen.query_one(LogTail).lines
        assert not any(line.level == "error" for line in lines), [ln.text for ln in lines]
        # the model says stopped before the screen has drawn it: wait for the drawn hint
        await wait_for(pilot, lambda: "R resumes" in screen_text(app), what="the resume hint")
        await pilot.press("R")
        await pilot.press("y")
        await wait_for(pilot, lambda: "done earlier" in str(table.get_cell("first", "status")),
                       timeout=120, what="the resumed engine's skip")
        await wait_for(pilot, lambda: "resumed" in str(table.get_cell("long", "status")),
                       timeout=120, what="the resumed stage")
        await pilot.press("s")  # stop it again: the test needs no 400 steps
        await pilot.press("y")
        await wait_for(pilot, lambda: model.status == "stopped", timeout=120,
                       what="the second stop")
        await wait_for(pilot, lambda: not zombies(), timeout=30, what="no defunct child")

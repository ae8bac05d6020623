"""The runs screen: every run you started (from the run index and the runs directory) with its
duration, final metric and disk use; `/` filters, `o` orders, esc clears the filter and goes
back, and an empty list says how to start a run."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from console_support import screen_text, wait_for
from textual.widgets import DataTable

from graftline.console.app import GraftlineApp
from graftline.console.screens.dashboard import DashboardScreen
from graftline.console.screens.launch import LaunchScreen
from graftline.console.screens.runs import RunsScreen
from graftline.engine.run import index
from graftline.engine.run import state as runstate

sys.path.insert(0, str(Path(__file__).parent / "fixtures"))
from synthetic_run import write_synthetic_run

WIDE = (160, 40)
pytestmark = pytest.mark.asyncio


def _run(root: Path, run_id: str, started: float, seconds: float) -> Path:
    run_dir = root / run_id
    write_synthetic_run(run_dir, steps_per_stage=6)
    runstate.write(run_dir, runstate.RunState(run_id, "demo", status="finished",
                                              started=started, heartbeat=started + seconds))
    return run_dir


async def test_runs_from_anywhere_with_duration_metric_disk_filter_and_order(
        tmp_path: Path) -> None:
    here = _run(tmp_path / "here" / "runs", "alpha-1", 1000.0, 65)
    elsewhere = _run(tmp_path / "far" / "away", "beta-1", 2000.0, 3700)
    index.register(elsewhere)  # made from another directory: known through the index only
    app = GraftlineApp(None, here.parent, ascii_only=False)
    async with app.run_test(size=WIDE) as pilot:
        await wait_for(pilot, lambda: isinstance(app.screen, RunsScreen)
                       and app.screen.listed > 0 and len(app.screen.paths) == 2,
                       what="both runs")
        screen = app.screen
        text = screen_text(app)
        assert "alpha-1" in text and "beta-1" in text
        assert "1m05s" in text and "1h01m" in text  # durations
        assert "loss" in text or "reward" in text  # the final metric
        assert "duration" in text and "disk" in text and "location" in text
        # the location cell (the text may be cut at the right edge when the path is long, as under
        # pytest-xdist's deeper temporary folders; the table scrolls sideways to it)
        location = screen.query_one(DataTable).get_cell(str(elsewhere), "location")
        assert location == str(elsewhere.parent) and location[:20] in text
        assert screen.paths == [elsewhere, here]  # newest first

        await pilot.press("o")  # by name
        assert screen.sort == "name" and screen.paths == [here, elsewhere]

        await pilot.press("slash")
        await pilot.press("b", "e", "t")
        assert screen.paths == [elsewhere]
        assert "beta-1" in screen_text(app) and "alpha-1" not in screen_text(app)
        await pilot.press("escape")  # clears the filter, stays here
        assert isinstance(app.screen, RunsScreen) and len(screen.paths) == 2

        await pilot.press("enter")
        await wait_for(pilot, lambda: isinstance(app.screen, DashboardScreen), what="dashboard")
        assert app.screen.run_dir == screen.paths[screen.query_one(DataTable).cursor_row]


async def test_esc_leaves_the_runs_screen_opened_from_another(tmp_path: Path) -> None:
    run_dir = _run(tmp_path / "runs", "alpha-1", 1000.0, 65)
    app = GraftlineApp(run_dir, run_dir.parent, ascii_only=False)
    async with app.run_test(size=WIDE) as pilot:
        await wait_for(pilot, lambda: isinstance(app.screen, DashboardScreen), what="dashboard")
        app.action_runs()
        await wait_for(pilot, lambda: isinstance(app.screen, RunsScreen)
                       and app.screen.listed > 0, what="runs")
        await pilot.press("escape")
        assert isinstance(app.screen, DashboardScreen)


async def test_an_empty_runs_screen_says_how_to_start(tmp_path: Path) -> None:
    app = GraftlineApp(None, tmp_path / "runs", ascii_only=False, launch_dir=tmp_path)
    async with app.run_test(size=WIDE) as pilot:
        await pilot.pause()
        app.action_runs()
        await wait_for(pilot, lambda: isinstance(app.screen, RunsScreen)
                       and app.screen.listed > 0, what="runs")
        text = screen_text(app)
        assert "No runs yet" in text and "graftline demo" in text and "graftline init" in text
        await pilot.press("escape")
        assert isinstance(app.screen, LaunchScreen)


async def test_a_failing_worker_is_told_once_with_what_it_was_doing(tmp_path: Path) -> None:
    """Workers post their results as typed messages; what one raises ends in one place
    (console/messages.WorkerFailures): a notification naming the task and the error."""
    run_dir = _run(tmp_path / "runs", "alpha-1", 1000.0, 65)
    app = GraftlineApp(run_dir, run_dir.parent, ascii_only=False)
    async with app.run_test(size=WIDE) as pilot:
        await wait_for(pilot, lambda: isinstance(app.screen, DashboardScreen), what="dashboard")
        screen = app.screen
        assert isinstance(screen, DashboardScreen)
        screen._resume()  # a synthetic run has no run.json: the engine refuses to resume it

        def told() -> list[str]:
            return [str(n.message) for n in app._notifications if "failed" in str(n.message)]

        await wait_for(pilot, lambda: bool(told()), what="the failure notification")
        await pilot.pause()
        (text,) = told()
        assert text.startswith(f"resume failed: {run_dir} is not a graftline run directory")
        # the console stays up, on the same screen
        assert app.screen is screen

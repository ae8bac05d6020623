"""Snapshots of the four main screens at 80×24 and 120×40, on the recorded run.

Deterministic by construction: the recorded run is finished (no clock in the header), log times
are offsets from the run's start, paths are shown relative to the runs folder (or `~`).
Update with `pytest tests/test_console_snapshots.py --snapshot-update` after a deliberate change.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from console_support import install_recorded_run, wait_for

from graftline.console.app import GraftlineApp
from graftline.console.screens.dashboard import DashboardScreen
from graftline.console.screens.export import ExportModal
from graftline.console.screens.launch import LaunchScreen
from graftline.console.screens.lineage import LineageScreen

SIZES = [(80, 24), (120, 40)]
FIXTURES = Path(__file__).resolve().parent / "fixtures"


@pytest.fixture()
def recorded(tmp_path: Path, toy_base: Path) -> Path:
    return install_recorded_run(tmp_path / "runs", toy_base)


async def _dashboard(pilot) -> None:  # type: ignore[no-untyped-def]
    await wait_for(pilot, lambda: isinstance(pilot.app.screen, DashboardScreen)
                   and pilot.app.screen.loaded, what="dashboard")
    # let the table's rebuild and the chart's resize settle before the picture is taken
    await pilot.pause()
    await pilot.wait_for_scheduled_animations()
    await pilot.pause()


@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_dashboard(snap_compare, recorded: Path, size: tuple[int, int]) -> None:  # type: ignore[no-untyped-def]
    app = GraftlineApp(recorded, recorded.parent, ascii_only=False)
    assert snap_compare(app, terminal_size=size, run_before=_dashboard)


@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_lineage(snap_compare, recorded: Path, size: tuple[int, int]) -> None:  # type: ignore[no-untyped-def]
    async def before(pilot) -> None:  # type: ignore[no-untyped-def]
        await _dashboard(pilot)
        await pilot.press("l")
        await wait_for(pilot, lambda: isinstance(pilot.app.screen, LineageScreen)
                       and pilot.app.screen.scans > 0, what="lineage")

    app = GraftlineApp(recorded, recorded.parent, ascii_only=False)
    assert snap_compare(app, terminal_size=size, run_before=before)


@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_export_modal(snap_compare, recorded: Path, size: tuple[int, int]) -> None:  # type: ignore[no-untyped-def]
    async def before(pilot) -> None:  # type: ignore[no-untyped-def]
        await _dashboard(pilot)
        await pilot.press("down", "down", "down", "e")
        await wait_for(pilot, lambda: isinstance(pilot.app.screen, ExportModal)
                       and pilot.app.screen.planned > 0, what="export plan")

    app = GraftlineApp(recorded, recorded.parent, ascii_only=False)
    assert snap_compare(app, terminal_size=size, run_before=before)


@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_launch(snap_compare, tmp_path: Path, size: tuple[int, int]) -> None:  # type: ignore[no-untyped-def]
    async def before(pilot) -> None:  # type: ignore[no-untyped-def]
        await wait_for(pilot, lambda: isinstance(pilot.app.screen, LaunchScreen)
                       and pilot.app.screen.checks > 0, what="launch check")

    app = GraftlineApp(None, tmp_path / "no-runs", ascii_only=False, launch_dir=FIXTURES)
    assert snap_compare(app, terminal_size=size, run_before=before)

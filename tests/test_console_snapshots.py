"""Snapshots of the four main screens at 80×24 and 120×40 (the dashboard at 200×50 too), on
the recorded run.

Deterministic by construction: the recorded run is finished (no clock in the header), log times
are offsets from the run's start, paths are shown relative to the runs folder (or `~`). The toy
base the run stands on is this machine's build, so the fixture shows a hermetic copy of it: under
a fixed name in a home of its own, its files' times frozen, without the build's own record (its
cache key, path, build time and measured accuracy differ from machine to machine).
Update with `pytest tests/test_console_snapshots.py --snapshot-update` after a deliberate change.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from console_support import install_recorded_run, wait_for

from graftline.console.app import GraftlineApp
from graftline.console.screens.dashboard import DashboardScreen
from graftline.console.screens.export import ExportModal
from graftline.console.screens.launch import LaunchScreen
from graftline.console.screens.lineage import LineageScreen

SIZES = [(80, 24), (120, 40)]
DASHBOARD_SIZES = [*SIZES, (200, 50)]  # a wide terminal gives the log and side panels room
FIXTURES = Path(__file__).resolve().parent / "fixtures"
FROZEN = 1_764_547_200  # 2025-12-01T00:00:00Z, the time every file of the base copy shows
BUILD_ONLY = {"toy_base.json", "toy_recipe.json"}  # what this machine's build says of itself


def _hermetic_base(toy_base: Path, home: Path) -> Path:
    """The weights, config and tokenizer of `toy_base`, as `~/toy-base`, dated FROZEN."""
    base = home / "toy-base"
    base.mkdir(parents=True)
    for item in sorted(toy_base.iterdir()):
        if item.is_file() and item.name not in BUILD_ONLY:
            shutil.copyfile(item, base / item.name)
            os.utime(base / item.name, (FROZEN, FROZEN))
    os.utime(base, (FROZEN, FROZEN))
    return base


@pytest.fixture()
def fixed_root() -> Iterator[Path]:
    """The same folder on every machine. Relocating the recorded run writes this path into its
    manifests and adapter configs (so the sizes the lineage shows depend on its length), and the
    export dialog's plan names checkpoints by it; pytest's tmp_path has the user's name and a
    counter in it. Snapshot tests run one at a time, so one fixed folder serves them all."""
    root = Path("/tmp/graftline-snapshots")
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir()
    yield root
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture()
def recorded(fixed_root: Path, toy_base: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    home = fixed_root / "home"
    monkeypatch.setenv("HOME", str(home))  # paths under it show as `~/…`
    # the run under that home too: the export dialog shows its absolute paths as `~/runs/…`
    return install_recorded_run(home / "runs", _hermetic_base(toy_base, home))


async def _dashboard(pilot) -> None:  # type: ignore[no-untyped-def]
    await wait_for(pilot, lambda: isinstance(pilot.app.screen, DashboardScreen)
                   and pilot.app.screen.loaded, what="dashboard")
    # let the table's rebuild and the chart's resize settle before the picture is taken
    await pilot.pause()
    await pilot.wait_for_scheduled_animations()
    await pilot.pause()


@pytest.mark.parametrize("size", DASHBOARD_SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
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

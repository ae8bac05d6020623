"""The help screen gives every key a sentence (tree keys and `M` included) laid out by the
terminal, not by hard line breaks; the theme picked with `t` is remembered in the XDG config
file, and `--theme` / GRAFTLINE_THEME still win for one session."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from console_support import screen_text, wait_for

from graftline.console import config
from graftline.console.app import GraftlineApp
from graftline.console.screens.dashboard import DashboardScreen
from graftline.console.screens.help import PROMISE, SENTENCES, HelpScreen
from graftline.console.screens.launch import LaunchScreen
from graftline.console.screens.lineage import LineageScreen
from graftline.console.screens.runs import RunsScreen
from graftline.engine.run import state as runstate

sys.path.insert(0, str(Path(__file__).parent / "fixtures"))
from synthetic_run import write_synthetic_run


def _run(tmp_path: Path) -> Path:
    run_dir = tmp_path / "runs" / "demo-1"
    write_synthetic_run(run_dir, steps_per_stage=6)
    runstate.write(run_dir, runstate.RunState("demo-1", "demo", status="finished",
                                              started=1000.0, heartbeat=1100.0))
    return run_dir


async def _help_rows(app: GraftlineApp, pilot, screen_type: type) -> list[tuple[str, str, str]]:  # type: ignore[no-untyped-def]
    await wait_for(pilot, lambda: isinstance(app.screen, screen_type), what=screen_type.__name__)
    await pilot.pause()
    await pilot.press("question_mark")
    await wait_for(pilot, lambda: isinstance(app.screen, HelpScreen), what="help")
    rows = app.screen.rows()
    text = screen_text(app)
    for _keys, name, sentence in rows:
        assert len(sentence.split()) >= 3 and sentence.endswith("."), (name, sentence)
        assert name in text
    await pilot.press("escape")
    return rows


@pytest.mark.asyncio
async def test_every_key_has_a_sentence_on_every_screen(tmp_path: Path) -> None:
    run_dir = _run(tmp_path)
    app = GraftlineApp(run_dir, run_dir.parent, ascii_only=False, launch_dir=tmp_path)
    async with app.run_test(size=(100, 60)) as pilot:
        rows = await _help_rows(app, pilot, DashboardScreen)
        keys = {k for k, _n, _s in rows}
        assert {"M", "m", "q", "?", "t", "↑ ↓"} <= keys
        app.action_lineage()
        rows = await _help_rows(app, pilot, LineageScreen)
        assert any("expands" in s for _k, _n, s in rows)  # the tree's own keys
        assert {"c", "k", "x", "D"} <= {k for k, _n, _s in rows}
        app.action_runs()
        await _help_rows(app, pilot, RunsScreen)
        app.action_launch()
        rows = await _help_rows(app, pilot, LaunchScreen)
        assert {"L", "R", "e", "i"} <= {k for k, _n, _s in rows}


def test_help_text_has_no_hard_wraps() -> None:
    assert "\n" not in PROMISE
    assert all("\n" not in text for text in SENTENCES.values())


@pytest.mark.asyncio
async def test_the_theme_picked_with_t_is_remembered(tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("GRAFTLINE_THEME", raising=False)
    run_dir = _run(tmp_path)
    first = GraftlineApp(run_dir, run_dir.parent, ascii_only=False)
    async with first.run_test(size=(80, 24)) as pilot:
        await wait_for(pilot, lambda: isinstance(first.screen, DashboardScreen), what="dash")
        start = first.theme
        await pilot.press("t")
        picked = first.theme
        assert picked != start
    assert config.config_path().is_file()
    assert config.saved_theme() == picked

    second = GraftlineApp(run_dir, run_dir.parent, ascii_only=False)
    async with second.run_test(size=(80, 24)) as pilot:
        await pilot.pause()
        assert second.theme == picked
    # for one session, --theme and GRAFTLINE_THEME win over the remembered one
    assert GraftlineApp(run_dir, run_dir.parent, "graftline-dark").theme == "graftline-dark"
    monkeypatch.setenv("GRAFTLINE_THEME", "graftline-dark")
    assert GraftlineApp(run_dir, run_dir.parent).theme == "graftline-dark"


def test_an_unreadable_or_stale_config_is_ignored(tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("GRAFTLINE_THEME", raising=False)
    path = config.config_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("theme = [broken\n")
    assert config.saved_theme() is None
    path.write_text('theme = "no-such-theme"\n')
    app = GraftlineApp(None, tmp_path / "runs")
    assert app.theme == app.cycle[0] and not app.theme_problems

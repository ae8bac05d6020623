"""The launch screen in an empty directory offers a starter file and the demo, opens the user's
$EDITOR on the selected file (and re-validates it)."""

from __future__ import annotations

import stat
from pathlib import Path
from typing import Any

import pytest
from console_support import screen_text, wait_for

from graftline.console.app import GraftlineApp
from graftline.console.screens.launch import LaunchScreen

WIDE = (120, 40)


async def _valid_starter(pilot: Any, app: GraftlineApp) -> LaunchScreen:
    """The launch screen after `i` wrote the starter pipeline and its check passed."""
    await wait_for(pilot, lambda: isinstance(app.screen, LaunchScreen), what="launch")
    screen = app.screen
    assert isinstance(screen, LaunchScreen)
    await pilot.press("i")
    await wait_for(pilot, lambda: screen.report is not None and screen.report.ok,
                   what="a valid starter")
    return screen


@pytest.mark.asyncio
async def test_an_empty_directory_offers_init_and_demo_and_i_writes_a_starter(
        tmp_path: Path) -> None:
    folder = tmp_path / "empty"
    folder.mkdir()
    app = GraftlineApp(None, tmp_path / "runs", ascii_only=False, launch_dir=folder)
    async with app.run_test(size=WIDE) as pilot:
        await wait_for(pilot, lambda: isinstance(app.screen, LaunchScreen), what="launch")
        await pilot.pause()
        text = screen_text(app)
        assert "graftline init" in text and "graftline demo" in text
        assert "none here yet" in text  # the pipelines box says why it is empty
        assert "examples/demo.toml" not in text  # no pointer at a file that is not here
        screen = app.screen
        await pilot.press("i")
        await wait_for(pilot, lambda: screen.report is not None, what="the starter's check")
        assert (folder / "pipeline.toml").is_file() and (folder / "data" / "sft.jsonl").is_file()
        assert screen.report.file == folder / "pipeline.toml"
        assert screen.report.ok, screen_text(app)


@pytest.mark.asyncio
async def test_e_opens_the_editor_and_revalidates(tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    folder = tmp_path / "work"
    folder.mkdir()
    editor = tmp_path / "editor.sh"
    editor.write_text('#!/bin/sh\nprintf "\\n[extra]\\nkey = 1\\n" >> "$1"\n')
    editor.chmod(editor.stat().st_mode | stat.S_IXUSR)
    monkeypatch.delenv("VISUAL", raising=False)
    monkeypatch.setenv("EDITOR", str(editor))
    app = GraftlineApp(None, tmp_path / "runs", ascii_only=False, launch_dir=folder)
    async with app.run_test(size=WIDE) as pilot:
        screen = await _valid_starter(pilot, app)
        checks = screen.checks
        await pilot.press("e")
        await wait_for(pilot, lambda: screen.checks > checks, what="the re-check")
        assert "[extra]" in (folder / "pipeline.toml").read_text()
        assert not screen.report.ok
        assert "unknown top-level table 'extra'" in screen_text(app)


@pytest.mark.asyncio
async def test_e_without_an_editor_says_how_to_set_one(tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("VISUAL", raising=False)
    monkeypatch.delenv("EDITOR", raising=False)
    folder = tmp_path / "work"
    folder.mkdir()
    app = GraftlineApp(None, tmp_path / "runs", ascii_only=False, launch_dir=folder)
    async with app.run_test(size=WIDE) as pilot:
        await wait_for(pilot, lambda: isinstance(app.screen, LaunchScreen), what="launch")
        await pilot.press("i")
        await wait_for(pilot, lambda: app.screen.report is not None, what="the starter")
        await pilot.press("e")
        assert any("$EDITOR" in n.message for n in app._notifications)


@pytest.mark.asyncio
async def test_a_launch_that_fails_is_told_once_with_its_problems(tmp_path: Path) -> None:
    """The file broke after its check (its data went away): the launch worker's error reaches
    the one failure handler (`WorkerFailures`) as a notification naming the problem, and the
    launch screen stays."""
    folder = tmp_path / "work"
    folder.mkdir()
    app = GraftlineApp(None, tmp_path / "runs", ascii_only=False, launch_dir=folder)
    async with app.run_test(size=WIDE) as pilot:
        screen = await _valid_starter(pilot, app)
        for data in (folder / "data").iterdir():
            data.unlink()
        await pilot.press("L")
        await wait_for(pilot, lambda: any("launch failed:" in str(n.message)
                                          for n in app._notifications), what="the failure")
        failed = [str(n.message) for n in app._notifications if "launch failed:" in str(n.message)]
        assert len(failed) == 1 and "has problems" in failed[0] and "sft.jsonl" in failed[0]
        assert app.screen is screen
        assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())

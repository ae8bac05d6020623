"""`e` on a run whose export stage already wrote a verified model: the dialog shows that model
(path, formats, size, verification), defaults to exporting its source again into a new
directory, never opens on a refusal, and offers the export stage's dtype.

A real engine runs a tiny pipeline (SFT, then an export in float32); the console is the real app
under Pilot; the dialog plans through the real export worker.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from console_support import finished_run, screen_text, wait_for
from textual.widgets import Input, Select

from graftline.console.app import GraftlineApp
from graftline.console.screens.dashboard import DashboardScreen
from graftline.console.screens.export import ExportModal, free_target

PIPELINE = """
[pipeline]
name = "shipped"
base = "toy:addition"
runs_dir = "runs"
[[stage]]
name = "sft"
kind = "sft"
data = "sft.jsonl"
lora = { r = 4 }
train = { max_steps = 4, batch_size = 4, max_length = 32 }
[[stage]]
name = "ship"
kind = "export"
out = "runs/exports/shipped"
dtype = "float32"
"""


def test_free_target_never_names_the_checkpoint_or_a_folder_that_holds_something(
        tmp_path: Path) -> None:
    checkpoint = tmp_path / "stages" / "sft"
    checkpoint.mkdir(parents=True)
    assert free_target(tmp_path / "out", checkpoint) == tmp_path / "out"
    (tmp_path / "out").mkdir()
    assert free_target(tmp_path / "out", checkpoint) == tmp_path / "out"  # empty: fine
    (tmp_path / "out" / "model.safetensors").write_text("x")
    assert free_target(tmp_path / "out", checkpoint) == tmp_path / "out-2"
    assert free_target(checkpoint, checkpoint) == checkpoint.with_name("sft-2")
    assert free_target(tmp_path / "stages", checkpoint) == tmp_path / "stages-2"


@pytest.mark.asyncio
async def test_e_on_a_shipped_run_shows_the_export_and_offers_a_new_directory(
        tmp_path: Path, toy_base: Path) -> None:
    run_dir = finished_run(tmp_path, PIPELINE)
    shipped = tmp_path / "runs" / "exports" / "shipped"
    assert (shipped / "graftline.json").is_file()

    app = GraftlineApp(run_dir, run_dir.parent)
    async with app.run_test(size=(120, 40)) as pilot:
        await wait_for(pilot, lambda: isinstance(app.screen, DashboardScreen)
                       and app.screen.loaded, what="the dashboard")
        await pilot.press("e")
        await wait_for(pilot, lambda: isinstance(app.screen, ExportModal)
                       and app.screen.planned > 0, timeout=120, what="the export plan")
        modal = app.screen
        assert isinstance(modal, ExportModal)
        text = screen_text(app)
        # the model the pipeline shipped, with its formats, dtype, size and verification
        assert "already exported" in text and "shipped" in text
        assert "safetensors" in text and "float32" in text and "verified" in text
        # its source checkpoint is what a new export starts from, into a new directory
        assert modal.checkpoint == run_dir / "stages" / "sft"
        target = modal.query_one("#out", Input).value
        assert target == str(shipped.with_name("shipped-2"))
        assert not Path(target).exists()
        # never a refusal on opening; the export stage's dtype by default
        assert modal.plan is not None, text
        assert "overwrite" not in text and "would contain" not in text
        assert modal.query_one("#dtype", Select).value == "float32"
        await pilot.press("escape")
        assert isinstance(app.screen, DashboardScreen)

"""The dashboard at 80×24 and 200×50: the footer keeps the keys a user needs first, hidden
panels say so and come back with a key, one panel can take the whole screen; and log paths
are shortened without inventing directories."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from console_support import screen_text, wait_for

from graftline.console.app import GraftlineApp
from graftline.console.formats import shorten_paths
from graftline.console.screens.dashboard import DashboardScreen
from graftline.console.stage_view import LogLine

sys.path.insert(0, str(Path(__file__).parent / "fixtures"))
from synthetic_run import write_synthetic_run


async def attach(pilot) -> DashboardScreen:  # type: ignore[no-untyped-def]
    await wait_for(pilot, lambda: isinstance(pilot.app.screen, DashboardScreen)
                   and pilot.app.screen.loaded, what="the dashboard to load")
    return pilot.app.screen


@pytest.mark.asyncio
async def test_80x24_footer_priority_toggle_and_zoom(tmp_path: Path) -> None:
    run = write_synthetic_run(tmp_path / "runs" / "live", stop_in="ipo", finish=False)
    app = GraftlineApp(run, run.parent, ascii_only=False)
    async with app.run_test(size=(80, 24)) as pilot:
        screen = await attach(pilot)
        footer = screen_text(app).splitlines()[-1]
        for key in ("q Detach", "? Help", "e Export", "l Lineage"):
            assert key in footer, footer
        # resources and checks do not fit: hidden, and the screen says how to show them
        side = screen.query_one("#side")
        assert not side.display
        await wait_for(pilot, lambda: "c shows" in screen_text(app), what="the hint")
        await pilot.press("c")
        await pilot.pause()
        assert side.display and "resources" in screen_text(app)
        await pilot.press("c")
        await pilot.pause()
        assert not side.display
        # z: the chart alone, then the log alone, then everything
        chart, log = screen.query_one("#chart"), screen.query_one("#log")
        small_chart = chart.size.height
        await pilot.press("z")
        await pilot.pause()
        assert chart.size.height > small_chart and not log.display
        await pilot.press("z")
        await pilot.pause()
        assert not chart.display and log.size.height > 10
        await pilot.press("z")
        await pilot.pause()
        assert chart.display and log.display and chart.size.height == small_chart


@pytest.mark.asyncio
async def test_200x50_gives_the_space_to_the_panels(tmp_path: Path) -> None:
    run = write_synthetic_run(tmp_path / "runs" / "live", stop_in="ipo", finish=False)
    sizes = {}
    for size in ((120, 40), (200, 50)):
        app = GraftlineApp(run, run.parent, ascii_only=False)
        async with app.run_test(size=size) as pilot:
            screen = await attach(pilot)
            sizes[size] = (screen.query_one("#log").size.height,
                           screen.query_one("#chart").size.height,
                           screen.query_one("#side").size.width)
            footer = screen_text(app).splitlines()[-1]
    assert sizes[(200, 50)][0] > sizes[(120, 40)][0]  # more log
    assert sizes[(200, 50)][1] >= sizes[(120, 40)][1]  # no less chart
    assert sizes[(200, 50)][2] > sizes[(120, 40)][2]  # wider side panels
    assert "r Runs" in footer and "t Theme" in footer  # every key fits


def test_log_paths_are_shortened_only_at_the_runs_folder(tmp_path: Path) -> None:
    runs = tmp_path / "work" / "runs"
    elsewhere = "/data/old-runs/x"
    text = f"saved to {runs}/demo-1/stages/sft and {elsewhere}, also runs/literal"
    shown = shorten_paths(text, runs)
    assert "saved to runs/demo-1/stages/sft" in shown
    assert elsewhere in shown and "runs/literal" in shown
    assert isinstance(LogLine(0.0, "info", None, shown).text, str)
    # a relative root (`runs`, as the CLI's default) used to strip every "runs/" it met
    assert shorten_paths(f"kept {elsewhere} and runs/literal", Path("runs")) == \
        f"kept {elsewhere} and runs/literal"


def test_fit_words_drops_whole_parts_never_half_a_word() -> None:
    from graftline.console.widgets.pipeline_table import fit_words

    text = "loss 0.5938 · eval loss 0.6007, exact 79.0%"
    assert fit_words(text, 60) == text
    assert fit_words(text, 40) == "loss 0.5938 · eval loss 0.6007…"
    assert fit_words(text, 20) == "loss 0.5938…"
    assert fit_words(text, 8) == "loss…"
    assert fit_words(text, 20, "...") == "loss 0.5938..."


@pytest.mark.asyncio
async def test_80x24_metric_column_fits_whole_parts_and_skips_eval_bookkeeping(
        tmp_path: Path) -> None:
    """A stage whose evaluation has many keys (and the Trainer's runtime figures) at 80 columns:
    the metric cell shows whole "name value" parts, an ellipsis for the rest, never a cut word;
    how long the evaluation took is not shown at all."""
    from graftline.console.widgets.pipeline_table import PipelineTable
    from graftline.engine.run.events import EventWriter

    run_dir = tmp_path / "runs" / "evals-1"
    run_dir.mkdir(parents=True)
    evaluation = {"eval_loss": 0.6007, "eval_runtime": 1.25, "eval_samples_per_second": 160.2,
                  "exact_match": 0.79, "accuracy": 0.81, "rows": 200}
    with EventWriter(run_dir) as writer:
        writer.emit("run_started", run=run_dir.name, pipeline="evals",
                    stages=[{"name": "sft_long_name", "kind": "sft", "action": "new",
                             "lora_r": 64, "reference": "none", "max_steps": 10}],
                    backend="hf", resumed=False)
        writer.emit("stage_started", "sft_long_name", kind="sft", index=0, max_steps=10,
                    global_step_offset=0, action="new")
        writer.emit("metrics", "sft_long_name", step=10, global_step=10, max_steps=10,
                    loss=0.5938)
        writer.emit("stage_finished", "sft_long_name", kind="sft", status="complete",
                    seconds=12.0, metrics={"loss": 0.5938}, evaluation=evaluation)
        writer.emit("run_finished", status="finished", message="1 stages done")
    app = GraftlineApp(run_dir, run_dir.parent)
    async with app.run_test(size=(80, 24)) as pilot:
        screen = await attach(pilot)
        table = screen.query_one(PipelineTable)
        cell = str(table.get_row_at(0)[table.COLUMNS.index("metric")])
        full = screen.follower.model.stages[0].metric_label()
        assert "runtime" not in full and "samples" not in full
        assert cell.endswith("…"), (cell, full)  # 80 columns: it does not all fit
        head = cell[:-1]
        assert (full + " · ").startswith(head + " · ") or (full + ", ").startswith(head + ", "), \
            (cell, full)
        assert "runtime" not in screen_text(app)

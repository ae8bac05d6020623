"""Samples: what the model answers to the probes at the start and end of every training stage,
kept in the event log and the summary, printed by `graftline logs --kind samples`, and shown by
the console's Samples view (`a` on the dashboard). A real engine trains two tiny stages."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from console_support import finished_run, screen_text, wait_for
from textual.widgets import DataTable
from typer.testing import CliRunner

from graftline.console.app import GraftlineApp
from graftline.console.cli import app
from graftline.console.run_view import RunModel, sample_table
from graftline.console.screens.dashboard import DashboardScreen
from graftline.console.screens.samples import SamplesScreen
from graftline.engine.run import open_summary

PIPELINE = """
[pipeline]
name = "said"
base = "toy:addition"
runs_dir = "runs"
probes = ["12+34", "55+27"]
[[stage]]
name = "first"
kind = "sft"
data = "sft.jsonl"
lora = { r = 4 }
train = { max_steps = 4, batch_size = 4, max_length = 32, lr = 3e-3 }
[[stage]]
name = "second"
kind = "sft"
adapter = "continue"
data = "sft.jsonl"
lora = { r = 4 }
train = { max_steps = 4, batch_size = 4, max_length = 32, lr = 3e-3 }
"""


@pytest.mark.asyncio
async def test_samples_at_every_stage_in_log_summary_logs_and_console(
        tmp_path: Path, toy_base: Path) -> None:
    run_dir = finished_run(tmp_path, PIPELINE)

    events = [json.loads(line) for line in (run_dir / "events.jsonl").read_text().splitlines()]
    samples = [e for e in events if e["type"] == "samples"]
    assert [(e["stage"], e["data"]["when"]) for e in samples] == [
        ("first", "start"), ("first", "end"), ("second", "start"), ("second", "end")]
    for event in samples:
        rows = event["data"]["samples"]
        assert [r["prompt"] for r in rows] == ["12+34", "55+27"]
        assert all(isinstance(r["answer"], str) and len(r["answer"]) <= 160 for r in rows)
    assert samples[1]["data"]["global_step"] == 4 and samples[3]["data"]["global_step"] == 8

    # the summary keeps them per stage, so attaching never reads the whole log for them
    summary = open_summary(run_dir).summary
    assert set(summary.state.stages["first"].samples) == {"start", "end"}
    assert summary.state.stages["second"].samples["end"]["samples"] == \
        samples[3]["data"]["samples"]
    model = RunModel()
    model.load_summary(summary)
    titles, probes, rows = sample_table(model)
    assert titles == ["before", "first", "second"] and probes == ["12+34", "55+27"]
    first_end = {r["prompt"]: r["answer"] for r in samples[1]["data"]["samples"]}
    assert [cells[1][0] for cells in rows] == [first_end["12+34"], first_end["55+27"]]

    printed = CliRunner().invoke(app, ["logs", run_dir.name, "--kind", "samples"])
    assert printed.exit_code == 0, printed.output
    assert printed.output.count("probe answers at the") == 4
    assert "'12+34' →" in printed.output and "'55+27' →" in printed.output

    console = GraftlineApp(run_dir, run_dir.parent)
    async with console.run_test(size=(120, 40)) as pilot:
        await wait_for(pilot, lambda: isinstance(console.screen, DashboardScreen)
                       and console.screen.loaded, what="the dashboard")
        await pilot.press("a")
        await wait_for(pilot, lambda: isinstance(console.screen, SamplesScreen),
                       what="the Samples view")
        table = console.screen.query_one(DataTable)
        assert [str(c.label) for c in table.columns.values()] == \
            ["probe", "before", "first", "second"]
        assert table.row_count == 2
        text = screen_text(console)
        assert "12+34" in text and "55+27" in text and "samples" in text
        await pilot.press("escape")
        assert isinstance(console.screen, DashboardScreen)

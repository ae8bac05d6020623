"""Samples at every evaluation during training, with the data's expected answer.

A real engine trains one tiny SFT stage that evaluates every 2 steps (`train.eval_steps`); the
probes default to the data's first prompts, so each has an expected answer. The events, the
summary, `graftline logs --kind samples`, the Samples view's live column (the log replayed up
to an evaluation, as a console attached mid-stage folds it) and the view under Pilot.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from console_support import finished_run, wait_for
from textual.widgets import DataTable
from typer.testing import CliRunner

from graftline.console.app import GraftlineApp
from graftline.console.cli import app
from graftline.console.run_view import RunModel, expected_answers, sample_table
from graftline.console.screens.dashboard import DashboardScreen
from graftline.console.screens.samples import SamplesScreen
from graftline.engine.run import open_summary
from graftline.engine.run.events import read_events

PIPELINE = """
[pipeline]
name = "evals"
base = "toy:addition"
runs_dir = "runs"
[[stage]]
name = "sft"
kind = "sft"
data = "sft.jsonl"
eval_data = "sft.jsonl"
lora = { r = 4 }
train = { max_steps = 6, eval_steps = 2, batch_size = 4, max_length = 32, lr = 3e-3 }
"""


@pytest.mark.asyncio
async def test_samples_at_every_evaluation_with_the_expected_answer(
        tmp_path: Path, toy_base: Path) -> None:
    run_dir = finished_run(tmp_path, PIPELINE)
    data = [json.loads(line) for line in (tmp_path / "sft.jsonl").read_text().splitlines()]
    answers = {r["prompt"][-1]["content"]: r["completion"][-1]["content"] for r in data}

    events, _ = read_events(run_dir / "events.jsonl")
    samples = [e for e in events if e.type == "samples"]
    # start, every evaluation before the last step, end
    assert [(e.data["when"], e.data["global_step"]) for e in samples] == [
        ("start", 0), ("eval", 2), ("eval", 4), ("end", 6)]
    for event in samples:
        rows = event.data["samples"]
        assert rows and all(r["expected"] == answers[r["prompt"]] for r in rows)

    summary = open_summary(run_dir).summary
    kept = summary.state.stages["sft"].samples
    assert set(kept) == {"start", "eval", "end"} and kept["eval"]["global_step"] == 4

    printed = CliRunner().invoke(app, ["logs", run_dir.name, "--kind", "samples"])
    assert printed.exit_code == 0, printed.output
    assert printed.output.count("at an evaluation during the sft stage") == 2
    assert "(expected " in printed.output

    # attached mid-stage, just after the first evaluation: the live column is that evaluation
    upto = next(i for i, e in enumerate(events) if e.type == "samples"
                and e.data["when"] == "eval")
    live = RunModel()
    live.apply(events[:upto + 1])
    titles, probes, rows = sample_table(live)
    assert titles == ["before", "sft (step 2)"]
    assert [cells[1][0] for cells in rows] == [
        next(r["answer"] for r in samples[1].data["samples"] if r["prompt"] == p)
        for p in probes]
    assert expected_answers(live) == {p: answers[p] for p in probes}

    console = GraftlineApp(run_dir, run_dir.parent)
    async with console.run_test(size=(120, 40)) as pilot:
        await wait_for(pilot, lambda: isinstance(console.screen, DashboardScreen)
                       and console.screen.loaded, what="the dashboard")
        await pilot.press("a")
        await wait_for(pilot, lambda: isinstance(console.screen, SamplesScreen)
                       and console.screen.query_one(DataTable).row_count > 0,
                       what="the Samples view")
        table = console.screen.query_one(DataTable)
        assert [str(c.label) for c in table.columns.values()] == \
            ["probe", "expected", "before", "sft"]
        first = table.get_row_at(0)
        assert str(first[1]) == answers[str(first[0])][:28]

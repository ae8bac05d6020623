"""The console's pure parts: folding events into the view model, and the chart rasteriser."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from graftline.console.formats import format_metric, human_bytes, human_seconds
from graftline.console.plot import downsample, rasterise
from graftline.console.run_view import RunModel, fold
from graftline.engine.run.events import read_events

sys.path.insert(0, str(Path(__file__).parent / "fixtures"))
from synthetic_run import write_synthetic_run


def test_fold_whole_history_equals_fold_in_batches(tmp_path: Path) -> None:
    run = write_synthetic_run(tmp_path / "r", steps_per_stage=20)
    events, _ = read_events(run / "events.jsonl")
    whole = fold(events)
    batched = RunModel()
    for start in range(0, len(events), 7):
        batched.apply(events[start:start + 7])
    assert [(s.name, s.status, s.step) for s in whole.stages] == \
        [(s.name, s.status, s.step) for s in batched.stages]
    assert list(whole.series["loss"].values) == list(batched.series["loss"].values)
    # A re-read of the same events (a reader restarted at offset 0) changes nothing.
    assert not batched.apply(events)


def test_stages_curves_and_boundaries_on_the_global_axis(tmp_path: Path) -> None:
    run = write_synthetic_run(tmp_path / "r", steps_per_stage=20)
    model = fold(read_events(run / "events.jsonl")[0])
    assert model.status == "finished"
    assert [s.name for s in model.stages] == ["sft", "merged", "sft_r16", "ipo", "grpo"]
    assert all(s.status == "complete" for s in model.stages)
    assert model.boundaries == [(0, "sft"), (20, "sft_r16"), (40, "ipo"), (60, "grpo")]
    loss = model.series["loss"]
    assert list(loss.steps)[:3] == [1.0, 2.0, 3.0] and max(loss.steps) == 80.0
    assert model.stages[3].key_metric[0] == "rewards/margins"
    assert model.chart_metrics()[0] == "loss" and "reward" in model.chart_metrics()
    assert model.stages[0].checks[0].status == "pass"
    assert model.log[-1].text.startswith("run finished")
    assert model.telemetry.gpus is None and model.telemetry.gpu_reason


def test_live_run_progress_eta_and_default_metric(tmp_path: Path) -> None:
    run = write_synthetic_run(tmp_path / "r", steps_per_stage=20, stop_in="ipo", finish=False)
    model = fold(read_events(run / "events.jsonl")[0])
    assert model.status == "running" and model.current == "ipo"
    ipo = model.current_stage
    assert ipo.status == "running" and ipo.step == 10 and ipo.progress == 0.5
    assert model.default_metric() == "rewards/margins"
    # ETA per stage from measured rates: the rest of ipo at its own live rate (10 steps at
    # 4/s); grpo has no rate of its own yet, so it borrows the finished training stages'
    # (sft, sft_r16: 20 steps in 10 s each); merge is done.
    assert abs(model.stage_eta(ipo) - 10 / 4) < 1e-6
    assert abs(model.stage_eta(model.stages[-1]) - 20 * 10 / 20) < 1e-6
    assert abs(model.eta() - (10 / 4 + 20 * 10 / 20)) < 1e-6
    assert model.stages[-1].status == "pending"


def test_failed_check_and_warning_go_to_the_log() -> None:
    from graftline.engine.run.events import Event

    model = fold([
        Event(1, 100.0, "run_started", None,
              {"run": "r", "stages": [{"name": "a", "kind": "sft"}]}),
        Event(2, 101.0, "stage_started", "a", {"kind": "sft", "max_steps": 4}),
        Event(3, 102.0, "warning", "a", {"message": "loss jumped", "fix": "lower lr"}),
        Event(4, 103.0, "check_result", "a", {"name": "collapse", "status": "fail",
                                              "message": "all-EOS output"}),
        Event(5, 104.0, "stage_finished", "a", {"kind": "sft", "status": "failed"}),
        Event(6, 105.0, "run_finished", None, {"status": "failed", "message": "check failed"}),
    ])
    levels = [(line.level, line.text) for line in model.log]
    assert ("warning", "loss jumped — fix: lower lr") in levels
    assert ("error", "check collapse: all-EOS output") in levels
    assert model.log[-1].time == 5.0  # seconds since the start, not a wall clock
    assert model.status == "failed" and model.stages[0].status == "failed"


def test_downsample_keeps_spikes_and_orders_resumed_steps() -> None:
    steps = np.arange(1, 100_001, dtype=float)
    values = np.ones_like(steps)
    values[54_321] = 50.0  # one spike in 100k points
    buckets = downsample(steps, values, 0, 100_000, 80)
    assert buckets.columns.size == 80
    assert buckets.high.max() == 50.0 and buckets.low.min() == 1.0
    # a resumed run logs a step twice, out of order: still one sorted column per bucket
    again = downsample(np.array([1, 2, 3, 2, 3, 4.0]), np.arange(6.0), 0, 4, 5)
    assert list(again.columns) == sorted(set(again.columns.tolist()))


def test_rasterise_braille_and_ascii_with_boundaries() -> None:
    steps = np.arange(0, 200, dtype=float)
    values = np.linspace(2.0, 0.5, 200)
    lines, (low, high) = rasterise(steps, values, x0=0, x1=200, width=40, height=8,
                                   current_from=100, boundaries=(100.0,))
    text = ["".join(chunk for chunk, _ in line) for line in lines]
    assert len(text) == 8 and all(len(row) == 40 for row in text)
    assert any("│" in row for row in text)
    assert all(0x2800 <= ord(c) <= 0x28FF or c in " │" for row in text for c in row)
    roles = {role for line in lines for _, role in line}
    assert {"past", "current"} <= roles
    assert low == 0.5 and high == 2.0
    ascii_lines, _ = rasterise(steps, values, x0=0, x1=200, width=40, height=8,
                               boundaries=(100.0,), ascii_only=True)
    flat = "".join(chunk for line in ascii_lines for chunk, _ in line)
    assert set(flat) <= {"*", " ", "|"} and "*" in flat
    # a falling curve: the first column's mark is near the top, the last one's near the bottom
    first_row = next(r for r, row in enumerate(ascii_lines) if "".join(c for c, _ in row)[0] == "*")
    assert first_row <= 1


def test_formatting_helpers() -> None:
    assert human_bytes(1_500_000) == "1.5 MB" and human_bytes(None) == "—"
    assert human_seconds(3725) == "1:02:05" and human_seconds(65) == "1:05"
    assert format_metric(0.123456) == "0.1235" and format_metric(1e-6) == "1.00e-06"


def test_resume_keeps_earlier_results_and_eta_counts_stages_without_steps(
        tmp_path: Path) -> None:
    """A resume's `skipped` is "done earlier", with the earlier results kept; the ETA includes
    stages that count no steps, at their kind's measured time."""
    run = write_synthetic_run(tmp_path / "r", steps_per_stage=20, stop_in="ipo", finish=False)
    from graftline.engine.run.events import EventWriter

    with EventWriter(run) as writer:
        writer.emit("run_started", run="r", pipeline="demo.toml", backend="hf", resumed=True,
                    stages=[])
        writer.emit("stage_finished", "sft", kind="sft", status="skipped", seconds=0.0,
                    metrics={}, evaluation={})
    model = fold(read_events(run / "events.jsonl")[0])
    sft = model.stages[0]
    assert sft.display_status("running") == "done earlier" and sft.seconds == 10.0
    assert sft.exportable is not None and model.resumes == 1
    # a second merge would take what the first one took
    merged = model.stages[1]
    assert model.seconds_per_stage("merge") == merged.seconds == 10.0
    # the final model so far: the newest exportable checkpoint in pipeline order
    final = model.final_checkpoint()
    assert final is not None and final[0].name == "sft_r16"


def test_eta_per_stage_kind_from_measured_rates(tmp_path: Path) -> None:
    """GRPO steps cost several SFT steps: each kind's own measured rate, never one global one;
    stages with no steps (merge, export) count at their kind's measured time."""
    from graftline.engine.run.events import EventWriter

    run = tmp_path / "r"
    run.mkdir()
    plan = [("sft", "sft", 20), ("merged", "merge", None), ("grpo", "grpo", 10),
            ("grpo2", "grpo", 10), ("merged2", "merge", None), ("sft2", "sft", 20)]
    with EventWriter(run) as w:
        w.emit("run_started", run="r", pipeline="p", backend="hf", resumed=False,
               stages=[{"name": n, "kind": k, "max_steps": m} for n, k, m in plan])
        w.emit("stage_started", "sft", kind="sft", index=0, max_steps=20, global_step_offset=0)
        w.emit("stage_finished", "sft", kind="sft", status="complete", seconds=10.0)
        w.emit("stage_started", "merged", kind="merge", index=1, global_step_offset=20)
        w.emit("stage_finished", "merged", kind="merge", status="complete", seconds=30.0)
        w.emit("stage_started", "grpo", kind="grpo", index=2, max_steps=10,
               global_step_offset=20)
        w.emit("metrics", "grpo", step=4, global_step=24, max_steps=10, reward=0.5,
               steps_per_s=0.25, eta_s=24.0)
    model = fold(read_events(run / "events.jsonl")[0])
    by_name = {s.name: s for s in model.stages}
    assert model.stage_eta(by_name["grpo"]) == 6 / 0.25  # its own live rate
    assert model.stage_eta(by_name["grpo2"]) == 10 / 0.25  # the GRPO rate, not SFT's 2 steps/s
    assert model.stage_eta(by_name["merged2"]) == 30.0  # as long as the first merge took
    assert model.stage_eta(by_name["sft2"]) == 20 * (10.0 / 20)  # SFT's measured rate
    assert model.eta() == 24 + 40 + 30 + 10


def test_labels_for_rows_evaluation_and_gpu() -> None:
    from graftline.console.formats import evaluation_text, gpu_reason_label
    from graftline.console.widgets.pipeline_table import fit

    assert fit("sft_r16 at start", 8) == "sft_r16…" and fit("short", 8) == "short"
    assert fit("sft_r16 at start", 8, "...") == "sft_r..."
    assert evaluation_text({"rows": 200.0, "loss": 0.41234, "exact_match": 0.79}) == \
        "loss 0.4123, exact_match 79.0% (200 rows)"
    assert evaluation_text({"exact_match": 0.5}, short=True) == "eval exact 50.0%"
    assert evaluation_text({}) == ""
    raw = "no GPU: NVMLError_LibraryNotFound: NVML Shared Library Not Found"
    assert gpu_reason_label(raw) == "no NVIDIA driver" and "NVML" not in gpu_reason_label(raw)


def test_a_truncated_log_of_a_finished_run_reads_as_finished_with_a_warning(
        tmp_path: Path) -> None:
    """state.json says finished; the log lost its end. No RUNNING, no ETA, and a line that says
    the log is short."""
    run = write_synthetic_run(tmp_path / "r", steps_per_stage=20)
    events, _ = read_events(run / "events.jsonl")
    model = fold(events[: len(events) // 2])
    assert model.run_status() == "running" and model.eta() is not None
    assert model.observe_engine("finished")
    assert model.run_status() == "finished" and model.eta() is None
    assert "event log ends before that" in model.log[-1].text

"""The engine's disk guard: a forecast larger than the free space pauses the run with a warning
before the next stage, instead of letting it die mid-save."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from pathlib import Path

from graftline.engine.common.control import RunControl
from graftline.engine.run import state as runstate
from graftline.engine.run.daemon import EngineSink
from graftline.engine.run.events import EventWriter, read_raw
from graftline.engine.run.state import RunState, StateKeeper


@dataclass(frozen=True)
class Step:
    name: str
    bytes: int | None


@dataclass(frozen=True)
class Plan:  # the two fields of engine.plan.Plan the guard reads
    steps: tuple[Step, ...]


def test_forecast_over_free_space_pauses_before_the_next_stage(tmp_path: Path) -> None:
    plan = Plan((Step("small", 10), Step("huge", 1 << 62)))
    keeper = StateKeeper(tmp_path, RunState("r", "p", status="running", pid=1))
    control = RunControl()
    with EventWriter(tmp_path) as writer:
        sink = EngineSink(writer, keeper, control, tmp_path, plan)
        assert sink.forecast() == 10 + (1 << 62)
        sink.emit("stage_started", "small", index=0, global_step_offset=0)
        sink.emit("stage_finished", "small", status="complete", seconds=1.0)
        assert sink.remaining() == ["huge"]
        assert control.paused.is_set()
        assert runstate.read(tmp_path).status == "paused"

        # the next stage_started holds the runner until someone un-pauses (or stops)
        started = threading.Event()

        def next_stage() -> None:
            sink.emit("stage_started", "huge", index=1, global_step_offset=5)
            started.set()

        thread = threading.Thread(target=next_stage)
        thread.start()
        time.sleep(0.5)
        assert not started.is_set()
        control.paused.clear()
        thread.join(timeout=10)
        assert started.is_set()
    rows = read_raw(tmp_path / "events.jsonl")[0]
    warning = next(r for r in rows if r["type"] == "warning")
    assert warning["stage"] == "huge" and "paused before stage 'huge'" in warning["data"]["message"]
    assert warning["data"]["forecast_bytes"] > warning["data"]["disk_free"]


def test_forecast_that_fits_does_not_pause(tmp_path: Path) -> None:
    plan = Plan((Step("a", 10), Step("b", 10)))
    keeper = StateKeeper(tmp_path, RunState("r", "p", status="running", pid=1))
    control = RunControl()
    with EventWriter(tmp_path) as writer:
        sink = EngineSink(writer, keeper, control, tmp_path, plan)
        sink.emit("stage_finished", "a", status="complete", seconds=1.0)
    assert not control.paused.is_set()
    assert [r["type"] for r in read_raw(tmp_path / "events.jsonl")[0]] == ["stage_finished"]


def test_superseded_checkpoints_are_all_but_the_newest_complete_one(tmp_path: Path) -> None:
    """What a paused-for-disk run can free safely: its own older Trainer checkpoints, never the
    one a resume will use, and nothing in a stage whose checkpoints are all half-written."""
    from graftline.engine.run.disk_pause import fix_for, superseded_checkpoints

    run_dir = tmp_path / "run"
    trainer = run_dir / "stages" / "sft" / "trainer"
    for step in (10, 20, 30):  # a checkpoint a resume accepts: a state and whole weights
        folder = trainer / f"checkpoint-{step}"
        folder.mkdir(parents=True)
        (folder / "trainer_state.json").write_text(f'{{"global_step": {step}}}')
        (folder / "adapter_model.safetensors").write_bytes((2).to_bytes(8, "little") + b"{}")
    (trainer / "checkpoint-30" / "trainer_state.json").write_text("")  # torn by a kill
    half = run_dir / "stages" / "ipo" / "trainer" / "checkpoint-5"
    half.mkdir(parents=True)
    expected = [trainer / "checkpoint-30", trainer / "checkpoint-10"]
    assert superseded_checkpoints(run_dir) == expected
    assert f"rm -r {expected[0]} {expected[1]}" in fix_for(run_dir)
    assert superseded_checkpoints(tmp_path / "absent") == []

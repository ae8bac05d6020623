"""The in-process runner: events, manifests and lineage on disk, global steps, stop and resume."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from stage_helpers import one_thread, pipeline, write_data  # noqa: F401

from graftline.engine.common.control import RunControl
from graftline.engine.common.sink import ListSink
from graftline.engine.lineage import manifest as mf
from graftline.engine.run.events import EventWriter, read_events
from graftline.engine.run.runner import run_pipeline

TWO_SFT = """
[defaults.train]
batch_size = 8
lr = 3e-3

[[stage]]
name = "a"
kind = "sft"
data = "sft.jsonl"
lora = { r = 4 }
train = { max_steps = 6 }

[[stage]]
name = "b"
kind = "sft"
data = "sft2.jsonl"
train = { max_steps = 4, lr_multiplier = 0.5 }

[[stage]]
name = "check"
kind = "eval"
data = "eval.jsonl"
limit = 32
"""

pytestmark = pytest.mark.usefixtures("one_thread")


def test_events_manifests_and_global_steps(tmp_path: Path, toy_base: Path) -> None:
    root = write_data(tmp_path)
    run_dir = root / "runs" / "r1"
    run_dir.mkdir(parents=True)
    with EventWriter(run_dir) as writer:
        result = run_pipeline(pipeline(root, TWO_SFT), run_dir, writer)
    assert result.status == "finished", result.message
    events, _ = read_events(run_dir / "events.jsonl")
    types = [e.type for e in events]
    assert types[0] == "run_started" and types[-1] == "run_finished"
    started = events[0].data
    assert [s["name"] for s in started["stages"]] == ["a", "b", "check"]
    assert [s["action"] for s in started["stages"]] == ["new", "continue", "none"]
    assert started["backend"] == "hf" and started["resumed"] is False

    starts = {e.stage: e.data for e in events if e.type == "stage_started"}
    assert starts["a"]["global_step_offset"] == 0 and starts["b"]["global_step_offset"] == 6
    metrics = [e for e in events if e.type == "metrics"]
    assert [m.data["global_step"] for m in metrics] == list(range(1, 11))
    assert [m.data["step"] for m in metrics if m.stage == "b"] == [1, 2, 3, 4]
    for m in metrics:
        assert m.data["max_steps"] in (6, 4) and "loss" in m.data and "eta_s" in m.data
    b_lr = [m.data["learning_rate"] for m in metrics if m.stage == "b"]
    assert max(b_lr) <= 1.5e-3 + 1e-12  # lr × lr_multiplier, fresh schedule
    checks = [e.data for e in events if e.type == "check_result"]
    assert {c["name"] for c in checks} >= {"single_adapter", "trainable_fraction",
                                            "base_unchanged", "lora_config_kept",
                                            "generation_sanity", "no_stray_ref",
                                            "adapter_base", "loss_continuity"}
    assert all(c["status"] != "fail" for c in checks)
    finished = {e.stage: e.data for e in events if e.type == "stage_finished"}
    assert all(f["status"] == "complete" for f in finished.values())

    a = mf.read(run_dir / "stages/a")
    b = mf.read(run_dir / "stages/b")
    assert a.status == b.status == "complete" and a.kind == b.kind == "adapter"
    assert a.parents[0].relation == "trained_on" and a.parents[0].path == str(toy_base)
    assert b.parents[0].relation == "continued_from" and b.parents[0].id == a.id
    assert a.base == b.base == str(toy_base) and a.lora == b.lora and a.lora.r == 4
    assert a.run == "r1" and b.stage_kind == "sft" and b.bytes > 0
    assert {c.name for c in b.checks} >= {"lora_config_kept", "base_unchanged"}
    saved = {e.data["path"] for e in events if e.type == "checkpoint_saved"}
    assert str(run_dir / "stages/a") in saved
    history = json.loads((run_dir / "stages/b/metrics.json").read_text())
    assert len(history["history"]) == 4 and history["summary"]["steps"] == 4
    evaluation = json.loads((run_dir / "stages/check/evaluation.json").read_text())
    assert evaluation["rows"] == 32 and 0 <= evaluation["exact_match"] <= 1
    assert evaluation["loss"] > 0
    assert not (run_dir / "stages/b/ref").exists()


RESUMABLE = """
[[stage]]
name = "a"
kind = "sft"
data = "sft.jsonl"
lora = { r = 4 }
train = { max_steps = 3, batch_size = 8 }

[[stage]]
name = "long"
kind = "sft"
data = "sft2.jsonl"
train = { max_steps = 40, batch_size = 8, save_steps = 4 }
"""

CHILD = """
import sys
import threading
import torch
torch.set_num_threads(1)
from pathlib import Path
from graftline.engine.run.events import EventWriter
from graftline.engine.pipeline.file import load
from graftline.engine.run.runner import run_pipeline
run_dir = Path(sys.argv[2])
run_dir.mkdir(parents=True, exist_ok=True)


# waits for the kill once checkpoint-8 is saved: a fast machine ran past it (and rotated it
# away) between two of the test's looks
class HoldAfterCheckpoint8(EventWriter):
    def emit(self, type, stage=None, **data):
        event = super().emit(type, stage, **data)
        if type == "checkpoint_saved" and str(data.get("path")).endswith("checkpoint-8"):
            threading.Event().wait()
        return event


with HoldAfterCheckpoint8(run_dir) as writer:
    pf = load(sys.argv[1])
    # as the engine does, before the stack's first import (run/stack_imports.py)
    from graftline.engine.run.stack_imports import keep_out_what_the_run_does_not_load
    keep_out_what_the_run_does_not_load(pf)
    run_pipeline(pf, run_dir, writer)
"""


def test_a_killed_run_resumes_from_its_last_trainer_checkpoint(tmp_path: Path,
                                                               toy_base: Path) -> None:
    root = write_data(tmp_path)
    pf = pipeline(root, RESUMABLE)
    run_dir = root / "runs" / "r"
    child = subprocess.Popen([sys.executable, "-c", CHILD, str(pf.path), str(run_dir)],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                             start_new_session=True)
    trainer_dir = run_dir / "stages/long/trainer"
    deadline = time.monotonic() + 600
    try:
        while not (trainer_dir / "checkpoint-8" / "trainer_state.json").exists():
            assert child.poll() is None, "the run ended before it could be killed"
            assert time.monotonic() < deadline
            time.sleep(0.2)
    finally:
        os.killpg(child.pid, signal.SIGKILL)
        child.wait()
    assert mf.read(run_dir / "stages/long").status == "partial"

    with EventWriter(run_dir) as writer:
        result = run_pipeline(pf, run_dir, writer, resume=True)
    assert result.status == "finished", result.message
    assert result.stages == {"a": "skipped", "long": "complete"}
    events, _ = read_events(run_dir / "events.jsonl")
    resumed = [i for i, e in enumerate(events) if e.type == "run_started"][-1]
    after = events[resumed:]
    start = next(e for e in after if e.type == "stage_started" and e.stage == "long")
    checkpoint = int(start.data["resumed_from"].rsplit("-", 1)[1])
    assert checkpoint >= 8
    metrics = [e.data for e in after if e.type == "metrics"]
    assert metrics[0]["step"] == checkpoint + 1  # at most one save interval lost
    assert metrics[0]["global_step"] == 3 + checkpoint + 1
    assert metrics[-1]["step"] == 40
    done = mf.read(run_dir / "stages/long")
    assert done.status == "complete" and done.metrics["steps"] == 40


class StopAfter(ListSink):
    """Sets the stop flag once the named stage has logged `steps` steps, like the control socket."""

    def __init__(self, control: RunControl, stage: str, steps: int) -> None:
        super().__init__()
        self.control, self.stage, self.steps = control, stage, steps

    def emit(self, type: str, stage: str | None = None, **data: object) -> None:
        super().emit(type, stage, **data)
        if type == "metrics" and stage == self.stage and data["step"] >= self.steps:
            self.control.stop.set()


def test_stop_saves_a_checkpoint_and_resume_finishes(tmp_path: Path, toy_base: Path) -> None:
    root = write_data(tmp_path)
    pf = pipeline(root, RESUMABLE)
    run_dir = root / "runs" / "r"
    control = RunControl()
    sink = StopAfter(control, "long", 5)
    result = run_pipeline(pf, run_dir, sink, control)
    assert result.status == "stopped" and result.failed_stage == "long"
    assert sink.of_type("run_finished")[-1]["status"] == "stopped"
    assert [d["status"] for d in sink.of_type("stage_finished")] == ["complete", "stopped"]
    saved = [d for d in sink.of_type("checkpoint_saved") if d["kind"] == "trainer"]
    assert saved and saved[-1]["path"].endswith("checkpoint-5")
    assert mf.read(run_dir / "stages/long").status == "partial"

    again = ListSink()
    result = run_pipeline(pf, run_dir, again, RunControl(), resume=True)
    assert result.status == "finished"
    assert again.of_type("metrics")[0]["step"] == 6
    assert mf.read(run_dir / "stages/long").status == "complete"


class SaveAndPause(ListSink):
    """At step 2 asks for a save now; at step 3 pauses, looks a while later, then resumes."""

    def __init__(self, control: RunControl) -> None:
        super().__init__()
        self.control = control
        self.seen_while_paused: int | None = None
        self.watcher: threading.Thread | None = None

    def emit(self, type: str, stage: str | None = None, **data: object) -> None:
        super().emit(type, stage, **data)
        if type != "metrics" or stage != "long":
            return
        if data["step"] == 2:
            self.control.save_now.set()
        if data["step"] == 3:
            self.control.paused.set()
            self.watcher = threading.Thread(target=self._watch)
            self.watcher.start()

    def _watch(self) -> None:
        # the trainer holds in this very emit's step end, so a pause that failed would show
        # further steps within milliseconds
        time.sleep(0.5)
        self.seen_while_paused = len([d for d in self.of_type("metrics")
                                      if d["step"] > 3 and d["max_steps"] == 6])
        self.control.paused.clear()


def test_save_now_and_pause(tmp_path: Path, toy_base: Path) -> None:
    root = write_data(tmp_path)
    stages = RESUMABLE.replace("max_steps = 40, batch_size = 8, save_steps = 4",
                               "max_steps = 6, batch_size = 8")
    control = RunControl()
    sink = SaveAndPause(control)
    result = run_pipeline(pipeline(root, stages), root / "runs" / "r", sink, control)
    sink.watcher.join()
    assert result.status == "finished", result.message
    saved = [d["path"] for d in sink.of_type("checkpoint_saved") if d["kind"] == "trainer"]
    assert [Path(p).name for p in saved] == ["checkpoint-2"]  # no save_steps: only the asked one
    assert sink.seen_while_paused == 0  # no step ran while paused
    assert [d["step"] for d in sink.of_type("metrics")][-3:] == [4, 5, 6]


@pytest.mark.usefixtures("one_thread")
def test_a_stop_on_the_last_step_completes_the_stage(tmp_path: Path, toy_base: Path) -> None:
    """A stop that arrives as the last step ends has cut off nothing: the stage is complete and
    saves its adapter, instead of 'stopped' at a final checkpoint from which a resume would train
    a step past max_steps (seen in the distributed pause/stop test)."""
    from transformers import TrainerCallback

    from graftline.engine.stages import StageHooks

    control = RunControl()

    class StopAtTheEnd(TrainerCallback):
        def on_step_end(self, args, state, control_, **kwargs):  # type: ignore[no-untyped-def]
            if state.global_step == state.max_steps:
                control.stop.set()  # the StageCallback sees it at this step's log

    root = write_data(tmp_path)
    pf = pipeline(root, """
[[stage]]
name = "sft"
kind = "sft"
data = "sft.jsonl"
lora = { r = 4 }
train = { max_steps = 3, batch_size = 8, save_steps = 1 }
""")
    sink = ListSink()
    hooks = {"sft": StageHooks(before_train=lambda trainer: trainer.add_callback(StopAtTheEnd()))}
    result = run_pipeline(pf, root / "runs" / "r", sink, control, hooks=hooks)
    assert control.stop.is_set()  # the stop really was asked, at the last step
    assert result.status == "finished", result.message
    assert [f["status"] for f in sink.of_type("stage_finished")] == ["complete"]
    assert (root / "runs" / "r" / "stages" / "sft" / "adapter_model.safetensors").is_file()
    assert max(m["step"] for m in sink.of_type("metrics")) == 3

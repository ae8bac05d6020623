"""A crash after a stage's final Trainer checkpoint: the resume trains no step past max_steps.

transformers 5.17 resumed at `global_step == max_steps` still trains one step. The engine is
killed with SIGKILL (a real crash) once the last checkpoint's `checkpoint_saved` event is in
events.jsonl and before the stage's adapter save; `resume` must then finish the stage from that
checkpoint: no optimizer step, no metrics step beyond max_steps, the saved adapter equal to the
checkpoint's tensors. The schedule is constant so an extra step would change the weights (a
cosine or linear one ends at lr 0 and would hide it). Each value compared is measured in the
same test.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from stage_helpers import one_thread, pipeline, write_data  # noqa: F401

from graftline.engine.common.layout import DONE
from graftline.engine.common.sink import ListSink
from graftline.engine.lineage import manifest as mf
from graftline.engine.run.events import EventWriter, read_events
from graftline.engine.run.runner import latest_trainer_checkpoint, run_pipeline
from graftline.engine.stages import resume

pytestmark = pytest.mark.usefixtures("one_thread")

SFT_STAGE = """
[[stage]]
name = "sft"
kind = "sft"
data = "sft.jsonl"
lora = {{ r = 4, dropout = 0.0 }}
train = {{ batch_size = 8, lr = 3e-3, {train} }}
"""
# the stage killed at its final checkpoint (a constant schedule: a step past the end would move
# the weights, where cosine's last learning rate of 0 would hide it)
SFT = SFT_STAGE.format(train='max_steps = 4, scheduler = "constant", save_steps = 2')
SFT_THEN = SFT_STAGE.format(train="max_steps = 3")  # the adapter a later stage continues

IPO = SFT_THEN + """
[[stage]]
name = "last"
kind = "dpo"
loss = "ipo"
beta = 0.5
adapter = "continue"
data = "pref.jsonl"
train = { max_steps = 4, batch_size = 8, lr = 1e-3, scheduler = "constant", save_steps = 2 }
"""

GRPO = SFT_THEN + """
[[stage]]
name = "last"
kind = "grpo"
adapter = "continue"
data = "grpo.jsonl"
reward = ["answer_similarity"]
num_generations = 4
max_completion_length = 4
temperature = 3.0
train = { max_steps = 2, batch_size = 8, lr = 5e-3, scheduler = "constant", save_steps = 1 }
"""

# The engine, held at its final checkpoint: once the Trainer's `checkpoint_saved` for
# checkpoint-<last> is written, it says so in a file and waits there to be killed.
CHILD = """
import os
import sys
import time
import torch
torch.set_num_threads(1)
from pathlib import Path
from graftline.engine.pipeline.file import load
from graftline.engine.run.events import EventWriter
from graftline.engine.run.runner import run_pipeline

run_dir, stage, last = Path(sys.argv[2]), sys.argv[3], sys.argv[4]
run_dir.mkdir(parents=True, exist_ok=True)
os.environ["GL_TEST_ENGINE_PID"] = str(os.getpid())  # for a rank's hook (HOLD_RANK_0)


class HoldAtTheLastCheckpoint(EventWriter):
    def emit(self, type, stage_=None, **data):
        written = super().emit(type, stage_, **data)
        if (type == "checkpoint_saved" and stage_ == stage and data.get("kind") == "trainer"
                and Path(data["path"]).name == f"checkpoint-{last}"):
            (run_dir / "held").write_text("")
            while True:
                time.sleep(1)
        return written


with HoldAtTheLastCheckpoint(run_dir) as writer:
    pf = load(sys.argv[1])
    # as the engine does, before the stack's first import (run/stack_imports.py)
    from graftline.engine.run.stack_imports import keep_out_what_the_run_does_not_load
    keep_out_what_the_run_does_not_load(pf)
    run_pipeline(pf, run_dir, writer)
"""


def _crash_after_the_last_checkpoint(pf, run_dir: Path, stage: str, last: int,
                                     env: dict[str, str] | None = None,
                                     held: Path | None = None) -> None:
    """Run the pipeline in a real engine process and kill -9 it at its final checkpoint."""
    child = subprocess.Popen([sys.executable, "-c", CHILD, str(pf.path), str(run_dir), stage,
                              str(last)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                             start_new_session=True, env=env)
    held = held or run_dir / "held"
    deadline = time.monotonic() + 600
    try:
        while not held.exists():
            assert child.poll() is None, "the engine ended before its final checkpoint"
            assert time.monotonic() < deadline
            time.sleep(0.2)
    finally:
        os.killpg(child.pid, signal.SIGKILL)
        child.wait()
    assert child.returncode == -signal.SIGKILL


def _adapter(directory: Path) -> dict[str, torch.Tensor]:
    return load_file(str(directory / "adapter_model.safetensors"))


def _equal(want: dict[str, torch.Tensor], got: dict[str, torch.Tensor]) -> bool:
    return want.keys() == got.keys() and all(torch.equal(want[k], got[k]) for k in want)


def _resume(pf, run_dir: Path) -> tuple[object, list]:
    with EventWriter(run_dir) as writer:
        result = run_pipeline(pf, run_dir, writer, resume=True)
    events, _ = read_events(run_dir / "events.jsonl")
    started = [i for i, e in enumerate(events) if e.type == "run_started"][-1]
    return result, events[started:]


def _the_crash_left(stage_dir: Path, last: int) -> Path:
    """What a crash between the final checkpoint and the adapter save leaves."""
    checkpoint = stage_dir / "trainer" / f"checkpoint-{last}"
    assert latest_trainer_checkpoint(stage_dir) == checkpoint
    assert mf.read(stage_dir).status == "partial"
    assert not (stage_dir / "adapter_model.safetensors").exists()
    assert not (stage_dir / DONE).exists() and not (stage_dir / mf.METRICS).exists()
    return checkpoint


def test_a_crash_after_the_final_checkpoint_resumes_without_another_step(
        tmp_path: Path, toy_base: Path) -> None:
    root = write_data(tmp_path)
    pf = pipeline(root, SFT)
    straight = run_pipeline(pf, root / "runs" / "straight", ListSink())
    assert straight.status == "finished", straight.message

    run_dir = root / "runs" / "crashed"
    _crash_after_the_last_checkpoint(pf, run_dir, "sft", 4)
    stage_dir = run_dir / "stages" / "sft"
    checkpoint = _the_crash_left(stage_dir, 4)
    before, _ = read_events(run_dir / "events.jsonl")
    logged = [e.data for e in before if e.type == "metrics"]
    assert [m["step"] for m in logged][-1] == 4
    held = _adapter(checkpoint)

    result, after = _resume(pf, run_dir)
    assert result.status == "finished", result.message
    assert result.stages == {"sft": "complete"}
    start = next(e for e in after if e.type == "stage_started")
    assert start.data["resumed_from"] == str(checkpoint)
    # no step was trained, and the events say so
    assert [e for e in after if e.type == "metrics"] == []
    said = [e.data for e in after if e.type == "info" and "steps_trained" in e.data]
    assert len(said) == 1 and said[0]["steps_trained"] == 0
    assert said[0]["step"] == said[0]["max_steps"] == 4
    assert "no step is trained" in said[0]["message"]
    checks = {e.data["name"]: e.data["status"] for e in after if e.type == "check_result"}
    assert checks["resumed_weights"] == "pass"
    # none fails; a warning is what a base tells about itself (end_of_turn on another seed's
    # base), not what the resume did
    assert all(status != "fail" for status in checks.values()), checks
    assert [e.data["status"] for e in after if e.type == "stage_finished"] == ["complete"]
    assert not (stage_dir / "trainer" / "checkpoint-5").exists()

    # the saved adapter is the checkpoint's, and the one an uninterrupted run ends with
    saved = _adapter(stage_dir)
    assert _equal(held, saved)
    assert _equal(_adapter(root / "runs/straight/stages/sft"), saved)
    done = mf.read(stage_dir)
    assert done.status == "complete" and done.metrics["steps"] == 4
    # the stage's summary comes from the checkpoint's log history: the killed run's last loss
    assert done.metrics["loss_last"] == pytest.approx(logged[-1]["loss"], rel=0, abs=0)
    history = json.loads((stage_dir / mf.METRICS).read_text())["history"]
    assert [h["step"] for h in history] == [m["step"] for m in logged]


@pytest.mark.slow
@pytest.mark.parametrize(("stages", "last", "ref"), [(IPO, 4, True), (GRPO, 2, False)],
                         ids=["ipo", "grpo"])
def test_dpo_and_grpo_finish_from_their_final_checkpoint(tmp_path: Path, toy_base: Path,
                                                         stages: str, last: int,
                                                         ref: bool) -> None:
    """The same for the other trainers sharing stages/training.py, on a continued adapter. The
    IPO checkpoint also holds TRL's ref/ copy (the Trainer would load only that); GRPO with its
    default beta 0 has no reference."""
    root = write_data(tmp_path)
    pf = pipeline(root, stages)
    run_dir = root / "runs" / "crashed"
    _crash_after_the_last_checkpoint(pf, run_dir, "last", last)
    stage_dir = run_dir / "stages" / "last"
    checkpoint = _the_crash_left(stage_dir, last)
    assert (checkpoint / "ref" / "adapter_model.safetensors").is_file() == ref
    held = _adapter(checkpoint)
    # the stage did train: IPO from its reference's gradient; GRPO from the spread of a graded
    # reward within each group of sampled completions. Sampled at temperature 3 every group
    # spreads on any base: a confident one answers the same four times at 1.0 (a seed-2 base:
    # "2<|end|>" eight times out of eight), and identical completions have zero advantages
    assert not _equal(held, _adapter(run_dir / "stages" / "sft"))

    result, after = _resume(pf, run_dir)
    assert result.status == "finished", result.message
    assert result.stages == {"sft": "skipped", "last": "complete"}
    assert [e for e in after if e.type == "metrics"] == []
    assert [e.data["steps_trained"] for e in after
            if e.type == "info" and "steps_trained" in e.data] == [0]
    checks = {e.data["name"]: e.data["status"] for e in after if e.type == "check_result"}
    assert checks["resumed_weights"] == "pass" and checks["no_stray_ref"] == "pass"
    assert _equal(held, _adapter(stage_dir))
    assert not (stage_dir / "ref").exists()
    assert mf.read(stage_dir).metrics["steps"] == last


def test_final_step_reads_the_trainer_state(tmp_path: Path) -> None:
    """Only a checkpoint at (or past) the Trainer's max_steps is final; a state without the
    numbers is not taken for one."""
    def state(name: str, **fields: object) -> Path:
        path = tmp_path / name
        path.mkdir()
        (path / resume.TRAINER_STATE).write_text(json.dumps(fields))
        return path

    four = resume.CheckpointSteps(4, 4)
    assert resume.final_step(state("c4", global_step=4, max_steps=4)) == four
    assert resume.final_step(state("c2", global_step=2, max_steps=4)) is None
    assert resume.final_step(state("c0", global_step=0, max_steps=0)) is None
    assert resume.final_step(state("cx", global_step=4)) is None
    assert resume.final_step(None) is None
    assert resume.final_step(tmp_path / "absent") is None


# Rank 0 of a distributed stage reports through group_io.FileSink in its own process; this
# sitecustomize (on the ranks' PYTHONPATH only in the crashed run) holds it right after it
# reports the final checkpoint, as CHILD holds a one-process engine.
HOLD_RANK_0 = """
import os
if os.environ.get("GL_TEST_HOLD_AT"):
    import signal
    import time
    from pathlib import Path

    from graftline.engine.run import group_io

    emit = group_io.FileSink.emit

    def held(self, type, stage=None, **data):
        final = (type == "checkpoint_saved" and data.get("kind") == "trainer"
                 and Path(str(data["path"])).name == os.environ["GL_TEST_HOLD_AT"])
        if final:  # the engine stops relaying: this line is left for the resume to relay
            os.kill(int(os.environ["GL_TEST_ENGINE_PID"]), signal.SIGSTOP)
        emit(self, type, stage, **data)
        if final:
            Path(os.environ["GL_TEST_HELD"]).write_text("")
            while True:
                time.sleep(1)

    group_io.FileSink.emit = held
"""

TWO_PROCESSES = """
[[stage]]
name = "sft"
kind = "sft"
data = "sft.jsonl"
lora = { r = 4, dropout = 0.0 }
processes = 2

[stage.train]
max_steps = 4
batch_size = 4
lr = 3e-3
scheduler = "constant"
save_steps = 2
max_length = 32
"""


def _ranks_alive(run_dir: Path) -> list[int]:
    """pids of live rank processes of this run (from /proc: real processes)."""
    found = []
    for entry in Path("/proc").iterdir():
        try:
            cmd = (entry / "cmdline").read_bytes() if entry.name.isdigit() else b""
            zombie = "State:\tZ" in (entry / "status").read_text() if cmd else True
        except OSError:
            continue
        if not zombie and b"graftline.engine.run.rank_main" in cmd and str(run_dir).encode() in cmd:
            found.append(int(entry.name))
    return found


@pytest.mark.slow
def test_a_two_process_stage_finishes_from_its_final_checkpoint(tmp_path: Path,
                                                                toy_base: Path) -> None:
    """The same path serves a distributed stage: every rank runs stages/training.py, so no rank
    enters the Trainer's loop; rank 1 leaves, rank 0 saves and checks."""
    root = write_data(tmp_path)
    pf = pipeline(root, TWO_PROCESSES)
    hook = tmp_path / "hold"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(HOLD_RANK_0)
    run_dir = root / "runs" / "crashed"
    held = tmp_path / "rank-0-held"
    env = dict(os.environ, GL_TEST_HOLD_AT="checkpoint-4", GL_TEST_HELD=str(held),
               PYTHONPATH=os.pathsep.join(p for p in (str(hook), os.environ.get("PYTHONPATH"))
                                          if p))
    _crash_after_the_last_checkpoint(pf, run_dir, "none", 0, env=env, held=held)
    deadline = time.monotonic() + 60
    while _ranks_alive(run_dir):  # they end with the engine (their parent-death signal)
        assert time.monotonic() < deadline, _ranks_alive(run_dir)
        time.sleep(0.2)
    stage_dir = run_dir / "stages" / "sft"
    checkpoint = _the_crash_left(stage_dir, 4)
    before, _ = read_events(run_dir / "events.jsonl")
    assert [e.type for e in before].count("stage_finished") == 0
    rank_0_wrote = [json.loads(line) for line in
                    (run_dir / "dist" / "sft" / "events.jsonl").read_text().splitlines()]
    assert [e["data"]["step"] for e in rank_0_wrote if e["type"] == "metrics"][-1] == 4
    held_weights = _adapter(checkpoint)

    result, after = _resume(pf, run_dir)
    assert result.status == "finished", result.message
    # The engine relays rank 0's lines every 0.2 s; the hook stopped it before the final
    # checkpoint's line, so the kill left that line (and maybe the last step's metrics)
    # unrelayed. The resume relays them before it clears the stage's files; no step is trained
    # again, so any metrics after the resume are that leftover.
    def final_saved(events: list) -> list:
        return [e for e in events if e.type == "checkpoint_saved"
                and e.data.get("kind") == "trainer" and Path(e.data["path"]) == checkpoint]

    assert final_saved(before) == []
    assert len(final_saved(after)) == 1
    recovered = [e.data["recovered_events"] for e in after if "recovered_events" in e.data]
    relayed_again = [e.data["step"] for e in after if e.type == "metrics"]
    assert len(recovered) == 1 and recovered[0] >= 1 + len(relayed_again), recovered
    steps = [e.data["step"] for e in before if e.type == "metrics"] + relayed_again
    assert sorted(set(steps)) == [1, 2, 3, 4] and steps[-1] == 4, steps
    said = [e.data for e in after if e.type == "info" and "steps_trained" in e.data]
    assert [(s["steps_trained"], s["world_size"]) for s in said] == [(0, 2)]
    checks = {e.data["name"]: e.data["status"] for e in after if e.type == "check_result"}
    assert checks["resumed_weights"] == "pass"
    assert _equal(held_weights, _adapter(stage_dir))
    assert not (stage_dir / "trainer" / "checkpoint-5").exists()
    assert mf.read(stage_dir).metrics["steps"] == 4
    assert not _ranks_alive(run_dir)

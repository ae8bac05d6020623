"""Resuming a training stage trains the checkpoint's weights, not the stage's starting point.

Issue 23: after a stop (or a kill) right after an IPO Trainer checkpoint, `resume` logged
`resumed_from …/checkpoint-N` but trained from the SFT adapter, because transformers loads only
the adapter subfolders (TRL's `ref/`) of such a checkpoint. Each test compares against an
uninterrupted run measured in the same test.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from stage_helpers import one_thread, pipeline, write_data  # noqa: F401

from graftline.engine.common.control import RunControl
from graftline.engine.common.sink import ListSink
from graftline.engine.run.runner import run_pipeline
from graftline.engine.stages import resume

pytestmark = pytest.mark.usefixtures("one_thread")

SFT_THEN_IPO = """
[defaults.train]
batch_size = 8
lr = 3e-3

[[stage]]
name = "sft"
kind = "sft"
data = "sft.jsonl"
lora = { r = 4, dropout = 0.0 }
train = { max_steps = 4 }

[[stage]]
name = "ipo"
kind = "dpo"
loss = "ipo"
beta = 0.5
adapter = "continue"
data = "pref.jsonl"
train = { max_steps = 8, save_steps = 3, lr = 1e-3 }
"""


class StopAt(ListSink):
    def __init__(self, control: RunControl, stage: str, step: int) -> None:
        super().__init__()
        self.control, self.stage, self.step = control, stage, step

    def emit(self, type: str, stage: str | None = None, **data: object) -> None:
        super().emit(type, stage, **data)
        if type == "metrics" and stage == self.stage and data["step"] >= self.step:
            self.control.stop.set()


def _adapter(stage_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(str(stage_dir / "adapter_model.safetensors"))


def test_a_resumed_ipo_stage_ends_bit_identical_to_an_uninterrupted_one(
        tmp_path: Path, toy_base: Path) -> None:
    root = write_data(tmp_path)
    pf = pipeline(root, SFT_THEN_IPO)
    straight = run_pipeline(pf, root / "runs" / "straight", ListSink())
    assert straight.status == "finished", straight.message

    run_dir = root / "runs" / "resumed"
    control = RunControl()
    first = run_pipeline(pf, run_dir, StopAt(control, "ipo", 3), control)
    assert first.status == "stopped"
    checkpoint = run_dir / "stages/ipo/trainer/checkpoint-3"
    # the checkpoint that triggered the bug: the root adapter plus TRL's ref/ subfolder
    assert (checkpoint / "adapter_model.safetensors").is_file()
    assert (checkpoint / "ref" / "adapter_model.safetensors").is_file()

    sink = ListSink()
    again = run_pipeline(pf, run_dir, sink, RunControl(), resume=True)
    assert again.status == "finished", again.message
    verified = [c for c in sink.of_type("check_result") if c["name"] == "resumed_weights"]
    assert [c["status"] for c in verified] == ["pass"]
    assert verified[0]["data"]["checkpoint"] == str(checkpoint)

    want, got = _adapter(root / "runs/straight/stages/ipo"), _adapter(run_dir / "stages/ipo")
    assert want.keys() == got.keys()
    for key in want:
        assert torch.equal(want[key], got[key]), key


def test_the_check_fails_when_the_weights_are_not_the_checkpoints(tmp_path: Path,
                                                                 toy_base: Path) -> None:
    """The guard itself: a policy whose adapter differs from the checkpoint fails the check, and
    restore_policy makes it pass (bit for bit) without replacing the parameter objects."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = get_peft_model(AutoModelForCausalLM.from_pretrained(toy_base),
                           LoraConfig(r=4, target_modules="all-linear", lora_dropout=0.0))
    checkpoint = tmp_path / "checkpoint-1"
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.add_(0.01)
    model.save_pretrained(str(checkpoint))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.zero_()
    failed = resume.resumed_weights(model, checkpoint)
    assert failed.status == "fail" and "differ" in failed.message
    ids = {name: id(p) for name, p in model.named_parameters()}
    assert resume.restore_policy(model, checkpoint) > 0
    assert {name: id(p) for name, p in model.named_parameters()} == ids
    assert resume.resumed_weights(model, checkpoint).status == "pass"


def _fake_checkpoint(path: Path, step: int) -> Path:
    """A checkpoint laid out as the Trainer writes one (weights, torch files, state last)."""
    import json

    from safetensors.torch import save_file

    path.mkdir(parents=True)
    save_file({"w": torch.ones(3)}, str(path / "adapter_model.safetensors"))
    for name in ("optimizer.pt", "scheduler.pt", "rng_state.pth"):
        torch.save({"step": step}, path / name)
    (path / "trainer_state.json").write_text(json.dumps({"global_step": step}))
    return path


@pytest.mark.parametrize("damage", ["empty_state", "no_state", "torn_weights", "no_weights",
                                    "torn_optimizer"])
def test_resume_picks_the_newest_complete_checkpoint(tmp_path: Path, damage: str) -> None:
    from graftline.engine.run.runner import checkpoint_problem, latest_trainer_checkpoint

    stage = tmp_path / "stage"
    older = _fake_checkpoint(stage / "trainer/checkpoint-4", 4)
    newer = _fake_checkpoint(stage / "trainer/checkpoint-8", 8)
    assert latest_trainer_checkpoint(stage) == newer
    if damage == "empty_state":
        (newer / "trainer_state.json").write_text("")
    elif damage == "no_state":
        (newer / "trainer_state.json").unlink()
    elif damage == "torn_weights":
        data = (newer / "adapter_model.safetensors").read_bytes()
        (newer / "adapter_model.safetensors").write_bytes(data[:-4])
    elif damage == "no_weights":
        (newer / "adapter_model.safetensors").unlink()
    else:
        data = (newer / "optimizer.pt").read_bytes()
        (newer / "optimizer.pt").write_bytes(data[: len(data) // 2])
    assert checkpoint_problem(newer) is not None
    assert checkpoint_problem(older) is None
    assert latest_trainer_checkpoint(stage) == older

"""Planted faults, each caught by the health checks with the message that names it.

Every fault is real: a real adapter trained on the toy model, then the mistake users make
(stacking, forgetting the LoRA, a frozen adapter, touching base weights, an in-memory merge,
collapse, the wrong DPO reference), run through the real runner and TRL trainers.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from peft import LoraConfig, PeftModel
from stage_helpers import one_thread, pipeline, write_data  # noqa: F401
from transformers import AutoModelForCausalLM, AutoTokenizer

from graftline.engine.common.sink import ListSink
from graftline.engine.lineage import manifest as mf
from graftline.engine.run.runner import run_pipeline
from graftline.engine.stages import StageHooks

FIRST = """
[[stage]]
name = "sft1"
kind = "sft"
data = "sft.jsonl"
lora = { r = 8 }
train = { max_steps = 12, batch_size = 16, lr = 3e-3 }

[[stage]]
name = "merge1"
kind = "merge"
"""

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory, toy_base: Path) -> Path:
    """A run with a real SFT adapter (sft1) and its merge (merge1), shared by the tests."""
    root = write_data(tmp_path_factory.mktemp("faults"))
    result = run_pipeline(pipeline(root, FIRST), root / "runs" / "r", ListSink())
    assert result.status == "finished", result.message
    return root


def _rerun(trained: Path, tmp_path: Path, extra: str, hooks: dict[str, StageHooks]
           ) -> tuple[object, ListSink, Path]:
    root = tmp_path / "w"
    shutil.copytree(trained, root)
    sink = ListSink()
    result = run_pipeline(pipeline(root, FIRST + extra), root / "runs" / "r", sink,
                          resume=True, hooks=hooks)
    return result, sink, root


def _failed_check(sink: ListSink) -> dict:
    fails = [d for d in sink.of_type("check_result") if d["status"] == "fail"]
    assert fails, [t for t, _s, _d in sink.events]
    return fails[0]


def _load_base(path: str | Path):
    return AutoModelForCausalLM.from_pretrained(str(path)), AutoTokenizer.from_pretrained(str(path))


CONTINUE = """
[[stage]]
name = "sft2"
kind = "sft"
from = "sft1"
adapter = "continue"
data = "sft2.jsonl"
train = { max_steps = 2, batch_size = 8 }
"""


def test_stacked_adapter(trained: Path, tmp_path: Path) -> None:
    def stack(ctx):
        model, tok = _load_base(ctx.base_path)
        model.load_adapter(str(ctx.dir_of("sft1")), adapter_name="sft1")  # transformers' way
        return model, tok, LoraConfig(r=8, lora_alpha=16, target_modules="all-linear",
                                      task_type="CAUSAL_LM")

    result, sink, root = _rerun(trained, tmp_path, CONTINUE,
                                {"sft2": StageHooks(prepare_model=stack)})
    fail = _failed_check(sink)
    assert fail["name"] == "single_adapter" and "stacked adapters" in fail["message"]
    assert "load_adapter" in fail["data"]["cause"]
    assert result.status == "failed" and result.failed_stage == "sft2"
    assert "stage 'sft2' failed" in result.message and "fix:" in result.message
    assert mf.read(root / "runs/r/stages/sft2").status == "failed"


def test_lora_never_applied(trained: Path, tmp_path: Path) -> None:
    def plain(ctx):
        model, tok = _load_base(ctx.base_path)
        return model, tok, None

    result, sink, _ = _rerun(trained, tmp_path, CONTINUE, {"sft2": StageHooks(prepare_model=plain)})
    fail = _failed_check(sink)
    assert "never applied" in fail["data"]["cause"] and result.status == "failed"


def test_frozen_adapter(trained: Path, tmp_path: Path) -> None:
    def frozen(ctx):
        model, tok = _load_base(ctx.base_path)
        return PeftModel.from_pretrained(model, str(ctx.dir_of("sft1"))), tok, None

    result, sink, _ = _rerun(trained, tmp_path, CONTINUE,
                             {"sft2": StageHooks(prepare_model=frozen)})
    fail = _failed_check(sink)
    assert fail["message"].startswith("frozen adapter")
    assert "is_trainable=True" in fail["data"]["fix"] and result.status == "failed"


def test_base_weights_modified(trained: Path, tmp_path: Path) -> None:
    def touch_base(trainer) -> None:
        model = trainer.model
        with torch.no_grad():
            for name, param in model.named_parameters():
                if "embed_tokens" in name:
                    param.add_(0.01)

    result, sink, _ = _rerun(trained, tmp_path, CONTINUE,
                             {"sft2": StageHooks(before_train=touch_base)})
    fail = _failed_check(sink)
    assert fail["name"] == "base_unchanged" and "embed_tokens" in fail["message"]
    assert result.status == "failed"


def test_adapter_trained_on_an_in_memory_merge(trained: Path, tmp_path: Path) -> None:
    new_on_merge = """
[[stage]]
name = "sft2"
kind = "sft"
from = "merge1"
adapter = "new"
data = "sft2.jsonl"
lora = { r = 4 }
train = { max_steps = 2, batch_size = 8 }
"""

    def merged_in_memory(ctx):
        model, tok = _load_base(ctx.base_path)
        merged = PeftModel.from_pretrained(model, str(ctx.dir_of("sft1"))).merge_and_unload()
        return merged, tok, LoraConfig(r=4, lora_alpha=8, target_modules="all-linear",
                                       task_type="CAUSAL_LM")

    result, sink, _ = _rerun(trained, tmp_path, new_on_merge,
                             {"sft2": StageHooks(prepare_model=merged_in_memory)})
    fail = _failed_check(sink)
    assert fail["name"] == "adapter_base" and "in memory" in fail["data"]["cause"]
    assert "merge1" in fail["message"]
    assert result.status == "failed"


def test_collapse_to_eos_stops_the_run_naming_the_stage(trained: Path, tmp_path: Path) -> None:
    collapse = """
[[stage]]
name = "collapse"
kind = "sft"
from = "sft1"
data = "empty.jsonl"
train = { max_steps = 25, batch_size = 16, lr = 1e-2 }

[[stage]]
name = "after"
kind = "eval"
data = "eval.jsonl"
"""
    result, sink, _ = _rerun(trained, tmp_path, collapse, {})
    fail = _failed_check(sink)
    assert fail["name"] == "generation_sanity" and fail["message"].startswith("collapse")
    assert "empty" in fail["message"]
    assert result.failed_stage == "collapse" and "stage 'collapse' failed" in result.message
    assert "after" not in result.stages  # the run stopped there


def test_wrong_reference_is_caught_at_the_first_step(trained: Path, tmp_path: Path) -> None:
    dpo = """
[[stage]]
name = "dpo"
kind = "dpo"
from = "sft1"
data = "pref.jsonl"
beta = 0.5
precompute_ref = false
train = { max_steps = 20, batch_size = 8, lr = 1e-3 }
"""

    def disable_instead_of_copy(trainer) -> None:
        # TRL then scores the reference with the adapter disabled: the base, not the SFT policy
        trainer.model.delete_adapter("ref")

    result, sink, _ = _rerun(trained, tmp_path, dpo,
                             {"dpo": StageHooks(before_train=disable_instead_of_copy)})
    fail = _failed_check(sink)
    assert fail["name"] == "reference_start" and "nonzero margin" in fail["message"]
    assert "frozen copy" in fail["message"]  # what the plan promised
    assert len(sink.of_type("metrics")) == 1  # stopped at the first logged step
    assert result.status == "failed"

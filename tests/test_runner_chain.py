"""The demo-like chain end to end on the tiny model, with every number that says it learned.

sft (r=8) → merge → sft (new adapter, r=16, on the merged model) → IPO (continuing it, frozen
copy as reference, precomputed) → GRPO (continuing, exact-match reward) → export (float32).
One test, marked slow: a few minutes of real CPU training.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from peft import PeftModel
from safetensors.torch import load_file
from stage_helpers import one_thread, pipeline, write_jsonl  # noqa: F401
from transformers import AutoModelForCausalLM, AutoTokenizer

from graftline.engine.common.sink import ListSink
from graftline.engine.lineage import manifest as mf
from graftline.engine.run.runner import run_pipeline
from graftline.engine.toy import tasks
from graftline.engine.toy.model import accuracy

CHAIN = """
[defaults.train]
batch_size = 32
lr = 3e-3
warmup = 10

[[stage]]
name = "sft1"
kind = "sft"
data = "sft.jsonl"
lora = { r = 8 }
train = { max_steps = SFT1_STEPS }

[[stage]]
name = "merge1"
kind = "merge"

[[stage]]
name = "sft2"
kind = "sft"
adapter = "new"
data = "sft2.jsonl"
lora = { r = 16 }
train = { max_steps = SFT2_STEPS, lr = 2e-3 }

[[stage]]
name = "ipo"
kind = "dpo"
loss = "ipo"
beta = 0.5
data = "pref.jsonl"
train = { max_steps = IPO_STEPS, lr = 1e-3, batch_size = 16 }

[[stage]]
name = "grpo"
kind = "grpo"
data = "grpo.jsonl"
reward = "exact_match"
num_generations = 8
max_completion_length = 6
temperature = 1.5
train = { max_steps = GRPO_STEPS, lr = 2e-3, batch_size = 64 }

[[stage]]
name = "final"
kind = "export"
out = "exported"
dtype = "float32"
"""
# sft1 is kept short so it stops early and sft2 has something to add
STEPS = {"SFT1_STEPS": 15, "SFT2_STEPS": 40, "IPO_STEPS": 40, "GRPO_STEPS": 60}

pytestmark = pytest.mark.usefixtures("one_thread")


def _accuracy(base: Path, adapter: Path | None = None) -> float:
    model = AutoModelForCausalLM.from_pretrained(str(base))
    tokenizer = AutoTokenizer.from_pretrained(str(base))
    if adapter is not None:
        model = PeftModel.from_pretrained(model, str(adapter))
    return accuracy(model, tokenizer, limit=300)


@pytest.mark.slow
def test_demo_chain_learns_and_records_its_lineage(tmp_path: Path, toy_base: Path) -> None:
    write_jsonl(tmp_path / "sft.jsonl", tasks.sft_rows(1500, 1))
    write_jsonl(tmp_path / "sft2.jsonl", tasks.sft_rows(1500, 2))
    write_jsonl(tmp_path / "pref.jsonl", tasks.preference_rows(800, 3))
    write_jsonl(tmp_path / "grpo.jsonl", tasks.grpo_rows(800, 4))
    text = CHAIN
    for key, value in STEPS.items():
        text = text.replace(key, str(value))
    run_dir = tmp_path / "runs" / "chain"
    sink = ListSink()
    result = run_pipeline(pipeline(tmp_path, text), run_dir, sink)
    assert result.status == "finished", result.message
    stages = run_dir / "stages"
    m = {name: mf.read(stages / name) for name in ("sft1", "merge1", "sft2", "ipo", "grpo")}
    export = mf.read(tmp_path / "exported")

    # learning, each against a baseline measured in this run (no figure from one machine): SFT
    # loss falls; the second SFT improves accuracy; IPO and GRPO improve their own objectives.
    # (start/end are the means of the first/last logged windows, see stages/callbacks.py)
    sft1 = m["sft1"].metrics
    assert sft1["loss_end"] < 0.6 * sft1["loss_start"]
    before = _accuracy(stages / "merge1")
    after = _accuracy(stages / "merge1", stages / "sft2")
    assert after > before, (before, after)
    ipo = m["ipo"].metrics
    assert ipo["rewards/accuracies_end"] > ipo["rewards/accuracies_start"] + 0.1, ipo
    assert ipo["rewards/margins_end"] > ipo["rewards/margins_start"] + 0.2, ipo
    # GRPO by its mechanics, which hold on any base that passes the self-check: its reward rising
    # within 60 steps is not sure on every base (a seed-1 base went 0.22 → 0.10 here, where the
    # shipped base climbs; the demo shows and judges the climb), but a sampled group spreads at
    # temperature 1.5, and those advantages move the adapter
    grpo = m["grpo"].metrics
    assert 0.0 < grpo["reward_start"] < 1.0, grpo
    continued, trained = (load_file(stages / s / "adapter_model.safetensors")
                          for s in ("ipo", "grpo"))
    assert any(not continued[k].equal(trained[k]) for k in continued)

    # checks: merge equality, the IPO reference starting at zero margin, all passed
    merge_check = next(c for c in m["merge1"].checks if c.name == "merge_equal")
    assert merge_check.status == "pass"
    assert merge_check.data["max_abs_diff"] <= merge_check.data["tolerance"]
    ref = next(c for c in m["ipo"].checks if c.name == "reference_start")
    assert ref.status == "pass"
    assert all(c["status"] != "fail" for c in sink.of_type("check_result"))
    assert not (stages / "ipo" / "ref").exists() and not (stages / "grpo" / "ref").exists()

    # lineage: kinds, parents by id, the base each adapter applies to, LoRA shapes
    assert [m[n].kind for n in m] == ["adapter", "merged", "adapter", "adapter", "adapter"]
    assert all(x.status == "complete" and x.run == "chain" for x in m.values())
    assert m["sft1"].parents[0].relation == "trained_on"
    assert m["sft1"].base == str(toy_base)
    assert m["merge1"].parents[0].relation == "merged_from"
    assert m["merge1"].parents[0].id == m["sft1"].id
    assert m["sft2"].parents[0].relation == "trained_on"
    assert m["sft2"].parents[0].id == m["merge1"].id
    assert m["sft2"].base == m["ipo"].base == m["grpo"].base == str(stages / "merge1")
    config = json.loads((stages / "sft2" / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == str(stages / "merge1")
    assert m["ipo"].parents[0].relation == "continued_from"
    assert m["ipo"].parents[0].id == m["sft2"].id
    assert m["grpo"].parents[0].id == m["ipo"].id
    assert (m["sft1"].lora.r, m["sft2"].lora.r, m["ipo"].lora.r, m["grpo"].lora.r) == (8, 16,
                                                                                       16, 16)
    assert export.kind == "export" and export.parents[0].id == m["grpo"].id
    assert export.status == "complete"
    assert all(c.status == "pass" for c in export.checks) and export.checks
    for name in ("config.json", "generation_config.json", "tokenizer.json", "model.safetensors"):
        assert (tmp_path / "exported" / name).is_file(), name

    # global steps run on across the stages
    steps = [d["global_step"] for d in sink.of_type("metrics")]
    assert steps == list(range(1, sum(STEPS.values()) + 1))

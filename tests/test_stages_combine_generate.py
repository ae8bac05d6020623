"""combine (exact weighted sum with `cat`, weights as given) and generate → a later stage's data."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from peft import PeftModel
from peft.tuners.lora import LoraLayer
from stage_helpers import one_thread, pipeline, write_data, write_jsonl  # noqa: F401
from transformers import AutoModelForCausalLM, AutoTokenizer

from graftline.engine.common.sink import ListSink
from graftline.engine.lineage import manifest as mf
from graftline.engine.run.runner import run_pipeline
from graftline.engine.toy import tasks
from graftline.engine.toy.model import answer

STAGES = """
[defaults.train]
batch_size = 8
lr = 3e-3

[[stage]]
name = "s4"
kind = "sft"
from = "base"
data = "sft.jsonl"
lora = { r = 4 }
train = { max_steps = 3 }

[[stage]]
name = "s8"
kind = "sft"
from = "base"
data = "sft2.jsonl"
lora = { r = 8 }
train = { max_steps = 3 }

[[stage]]
name = "mix"
kind = "combine"
adapters = ["s4", "s8"]
weights = [1.0, 0.25]

[[stage]]
name = "gen"
kind = "generate"
from = "base"
prompts = "prompts/plain-*.jsonl"  # two shards: `prompts` reads what `data` reads
keep = "correct"
max_new_tokens = 4

[[stage]]
name = "boot"
kind = "sft"
from = "base"
data = "@gen"
lora = { r = 4 }
train = { max_steps = 2 }
"""

pytestmark = pytest.mark.usefixtures("one_thread")


def _question(row: dict) -> str:
    prompt = row["prompt"]
    text = prompt if isinstance(prompt, str) else prompt[-1]["content"]
    return text.removeprefix("<s>").removesuffix("=")


def test_combine_cat_is_the_exact_weighted_sum_and_generate_feeds_a_stage(
        tmp_path: Path, toy_base: Path) -> None:
    root = write_data(tmp_path)
    # the base answers the plain `a+b=` format (its pre-training), so keep="correct" keeps the
    # rows it gets right: which ones is measured below, on this machine's base
    sums = tasks.sample(tasks.train_sums(), 24, seed=9)
    (root / "prompts").mkdir()
    for shard, part in (("a", sums[:12]), ("b", sums[12:])):
        write_jsonl(root / "prompts" / f"plain-{shard}.jsonl",
                    ({"prompt": f"<s>{s.question}=", "answer": s.answer} for s in part))
    run_dir = root / "runs" / "r"
    sink = ListSink()
    result = run_pipeline(pipeline(root, STAGES), run_dir, sink)
    assert result.status == "finished", result.message

    mix = mf.read(run_dir / "stages/mix")
    s4, s8 = mf.read(run_dir / "stages/s4"), mf.read(run_dir / "stages/s8")
    assert mix.kind == "combined" and mix.status == "complete"
    assert [(p.relation, p.id) for p in mix.parents] == [("combined_from", s4.id),
                                                         ("combined_from", s8.id)]
    assert mix.combine == {"method": "cat", "adapters": ["s4", "s8"],  # type: ignore[attr-defined]
                           "weights_given": [1.0, 0.25], "weights_used": [1.0, 0.25],
                           "normalized": False}
    assert mix.lora.r == 12 and mix.base == str(toy_base)

    model = AutoModelForCausalLM.from_pretrained(str(toy_base))
    model = PeftModel.from_pretrained(model, str(run_dir / "stages/s4"), adapter_name="s4")
    model.load_adapter(str(run_dir / "stages/s8"), adapter_name="s8")
    model.load_adapter(str(run_dir / "stages/mix"), adapter_name="mix")
    layers = [m for m in model.modules() if isinstance(m, LoraLayer)]
    assert layers
    for layer in layers:
        want = layer.get_delta_weight("s4") + 0.25 * layer.get_delta_weight("s8")
        torch.testing.assert_close(layer.get_delta_weight("mix"), want, atol=1e-6, rtol=1e-5)

    rows = [json.loads(x) for x in (run_dir / "stages/gen/data.jsonl").read_text().splitlines()]
    assert all(r["completion"] == r["answer"] for r in rows)
    # baseline from the same base in this test: its own greedy plain answers. Generation is
    # greedy, so generate keeps exactly the rows the base gets right, however many that is
    base_model = AutoModelForCausalLM.from_pretrained(str(toy_base))
    tokenizer = AutoTokenizer.from_pretrained(str(toy_base))
    got = answer(base_model, tokenizer, [s.question for s in sums], chat=False, max_new_tokens=4)
    right = sorted(s.question for s, g in zip(sums, got, strict=True) if g == s.answer)
    assert right, "the self-checked base (>= 95% held-out) gets none of 24 training sums right"
    assert sorted(_question(r) for r in rows) == right  # from both shards
    [gen] = [d for t, stage, d in sink.events if t == "stage_finished" and stage == "gen"]
    assert gen["metrics"]["prompts"] == len(sums)
    boot = mf.read(run_dir / "stages/boot")
    assert boot.status == "complete" and boot.metrics["steps"] == 2

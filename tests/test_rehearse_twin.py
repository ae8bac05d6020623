"""The twin: the base's architecture family, tiny, from its published config.json."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from graftline.engine.pipeline.file import load
from graftline.engine.pipeline.plan import build_plan
from graftline.engine.rehearse.rehearsal import (
    NUM_GENERATIONS,
    derive,
    needed_dirs,
)
from graftline.engine.rehearse.twin import build_twin, shrink_config

CONFIGS = Path(__file__).parent / "fixtures" / "configs"
EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def test_fixture_configs_are_the_published_values() -> None:
    oss = json.loads((CONFIGS / "gpt-oss-20b" / "config.json").read_text())
    assert (oss["model_type"], oss["num_hidden_layers"], oss["num_local_experts"],
            oss["num_experts_per_tok"], oss["hidden_size"], oss["vocab_size"]) == \
        ("gpt_oss", 24, 32, 4, 2880, 201088)
    llama = json.loads((CONFIGS / "llama-3.1-8b-instruct" / "config.json").read_text())
    assert (llama["hidden_size"], llama["intermediate_size"], llama["num_key_value_heads"],
            llama["rope_scaling"]["rope_type"]) == (4096, 14336, 8, "llama3")
    qwen = json.loads((CONFIGS / "qwen3-8b" / "config.json").read_text())
    assert (qwen["model_type"], qwen["num_hidden_layers"], qwen["head_dim"]) == ("qwen3", 36, 128)


def test_shrink_keeps_the_family_and_drops_the_checkpoint_format() -> None:
    raw = json.loads((CONFIGS / "gpt-oss-20b" / "config.json").read_text())
    model_type, shrunk = shrink_config(raw, vocab_size=100)
    assert model_type == "gpt_oss"
    assert "quantization_config" not in shrunk  # MXFP4 describes the weights file, not the model
    assert shrunk["num_hidden_layers"] == 2 and shrunk["hidden_size"] == 64
    assert shrunk["num_local_experts"] == 4 and shrunk["num_experts_per_tok"] == 2
    assert shrunk["layer_types"] == ["sliding_attention", "full_attention"]
    assert shrunk["num_key_value_heads"] < shrunk["num_attention_heads"]  # still grouped
    assert shrunk["rope_scaling"]["rope_type"] == "yarn"


def test_gpt_oss_twin_is_a_small_moe_that_loads_and_runs(tmp_path: Path) -> None:
    twin = build_twin(str(CONFIGS / "gpt-oss-20b"), tmp_path / "twin")
    assert (twin.source, twin.model_type, twin.experts, twin.tokenizer) == \
        ("config", "gpt_oss", 4, "toy")
    assert any("no tokenizer" in note for note in twin.notes)
    model = AutoModelForCausalLM.from_pretrained(twin.base)
    assert type(model).__name__ == "GptOssForCausalLM"
    assert model.config.num_local_experts == 4 and model.config.num_hidden_layers == 2
    assert sum(p.numel() for p in model.parameters()) < 1_000_000
    out = model(input_ids=torch.tensor([[5, 6, 7]]))
    assert out.logits.shape[-1] == len(AutoTokenizer.from_pretrained(twin.base))


@pytest.mark.parametrize("name, family", [("llama-3.1-8b-instruct", "LlamaForCausalLM"),
                                          ("qwen3-8b", "Qwen3ForCausalLM")])
def test_dense_twins(tmp_path: Path, name: str, family: str) -> None:
    twin = build_twin(str(CONFIGS / name), tmp_path / "twin")
    model = AutoModelForCausalLM.from_pretrained(twin.base)
    assert type(model).__name__ == family and twin.experts == 0
    assert model.config.num_key_value_heads == 2  # GQA kept (8 of 32 in the base)


def test_twin_uses_the_base_tokenizer_and_template_when_it_is_there(
        tmp_path: Path, toy_base: Path) -> None:
    base = tmp_path / "base"
    base.mkdir()
    for item in toy_base.iterdir():  # config + tokenizer, no weights
        if item.suffix != ".safetensors":
            shutil.copy(item, base / item.name)
    twin = build_twin(str(base), tmp_path / "twin")
    assert twin.tokenizer == "base" and twin.notes == ()
    original = AutoTokenizer.from_pretrained(str(toy_base))
    copied = AutoTokenizer.from_pretrained(twin.base)
    assert copied.chat_template == original.chat_template


def test_unknown_hub_id_falls_back_to_the_toy_model_and_says_why(tmp_path: Path,
                                                                  toy_base: Path) -> None:
    twin = build_twin("nobody/not-cached-7b", tmp_path / "twin")
    assert twin.source == "toy" and twin.base == "toy:addition"
    assert "no config.json for 'nobody/not-cached-7b'" in twin.notes[0]


def test_derive_scales_down_and_moves_every_path_into_scratch(tmp_path: Path) -> None:
    pf = load(EXAMPLES / "demo.toml")
    scratch = tmp_path / "scratch"
    derived = derive(pf, base="toy:addition", scratch=scratch, steps=2)
    header = derived.pipeline.pipeline
    assert header.runs_dir == str(scratch / "runs")
    for stage in derived.pipeline.stage:
        if getattr(stage, "train", None) is not None:
            assert stage.train.max_steps == 2 and stage.train.batch_size <= 4
        for attr in ("data", "eval_data", "prompts", "out"):
            value = getattr(stage, attr, None)
            if value is not None:
                assert value.startswith(str(scratch)), (stage.name, attr, value)
    grpo = derived.pipeline.by_name("grpo")
    assert grpo.num_generations == NUM_GENERATIONS
    assert grpo.train.batch_size % NUM_GENERATIONS == 0
    # the same stages, adapter flow and references as the real pipeline
    real, twin = build_plan(pf.pipeline), build_plan(derived.pipeline)
    assert [(s.name, s.action, s.parent, s.model_stage) for s in real.steps] == \
        [(s.name, s.action, s.parent, s.model_stage) for s in twin.steps]
    assert len({s.target for s in derived.samples}) == len(derived.samples)  # one per file


def test_derive_keeps_generated_data_references(tmp_path: Path) -> None:
    pf = load(EXAMPLES / "bootstrap.toml")
    derived = derive(pf, base="toy:addition", scratch=tmp_path)
    refs = [getattr(s, "data", "") for s in derived.pipeline.stage]
    assert any(r and r.startswith("@") for r in refs)


def test_derive_says_what_this_machine_cannot_rehearse(tmp_path: Path) -> None:
    text = (EXAMPLES / "demo.toml").read_text().replace('backend = "auto"', 'backend = "unsloth"')
    text = text.replace("seed = 0", 'seed = 0\nquantization = "4bit"')
    path = EXAMPLES / "demo.toml"
    from graftline.engine.pipeline.file import parse

    derived = derive(parse(text, path), base="toy:addition", scratch=tmp_path, cuda=False)
    assert derived.pipeline.pipeline.quantization == "none"
    assert derived.pipeline.pipeline.backend == "hf"
    assert any("4bit" in n for n in derived.notes) and any("Unsloth" in n for n in derived.notes)


def test_needed_dirs_name_the_merged_base_the_export_needs(tmp_path: Path) -> None:
    pf = load(EXAMPLES / "coding_tui.toml")
    needs = needed_dirs(list(build_plan(pf.pipeline).steps), tmp_path)
    export = {d.name: why for d, why in needs["export"].items()}
    assert export["grpo"] == "the checkpoint it starts from"
    assert "base model" in export["merged_tools"]

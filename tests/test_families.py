"""The family matrix: tiny pre-trained twins of nine families through the engine's pipeline
runner (the stages `graftline run` runs), the export checked against plain PEFT applying the same
chain, and the export stage's own GGUF f32 (+ Ollama Modelfile) verified where the family
converts; every family's chain rehearsed (on its published config, or on its twin).

Twins are built once and cached (graftline.engine.rehearse.families, a few seconds each).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from family_helpers import (
    TRAINED,
    char_level_copy,
    model_logits,
    peft_chain_logits,
    probe_ids,
    run_in_process,
    tokenizer_bytes,
    write_chain,
)
from gguf_known import LLAMA_CPP_DIFFERS

from graftline.engine.rehearse.families import FAMILIES, build_family, family

EXPORT_BOUND = 1e-5  # max |logit diff| of the export against plain PEFT's chain, float32


# The chain's own export stage writes the GGUF where the pinned converter takes the family's
# tokenizer and llama.cpp runs it like transformers: the engine converts and verifies it in the
# process that trained the chain. The refusals (a BPE the converter does not know) and q8_0 of
# every family are tested in test_gguf_families.py, on each twin, in one converter process.
GGUF_STAGE = 'gguf_type = "f32"\nformats = ["safetensors", "gguf", "ollama"]\n'


# Each family is rehearsed, in this process, with the same `rehearse` the engine's rehearsal
# child runs: on its published config where fixtures/real_configs holds one (the twin builder
# meets the real config), else on its own twin. The chain below runs without it: the engine's
# rehearsal phase itself is family-blind plumbing, tested on the toy base (test_run_detached,
# test_console_tmux_launch).
REAL_CONFIGS = Path(__file__).parent / "fixtures" / "real_configs"


def _text_model_type(config: dict) -> str:  # gemma-3's config wraps its text model's
    return str((config.get("text_config") or {}).get("model_type") or config["model_type"])


REHEARSED_ON_A_REAL_CONFIG = frozenset(
    _text_model_type(json.loads((folder / "config.json").read_text()))
    for folder in REAL_CONFIGS.iterdir())


def _gguf_in_chain(name: str) -> bool:
    return family(name).tokenizer == "spm" and (name, "f32") not in LLAMA_CPP_DIFFERS


@pytest.mark.slow
@pytest.mark.spread
@pytest.mark.parametrize("name", list(FAMILIES))
def test_family_runs_the_demo_chain_exports_exactly_and_converts(name: str,
                                                                 tmp_path: Path) -> None:
    spec = family(name)
    base = build_family(name)
    gguf = _gguf_in_chain(name)
    pipeline = write_chain(tmp_path, name, base, export_extra=GGUF_STAGE if gguf else "")
    # The engine's own runner in this process, not a detached engine: the daemon around it
    # (events file, state, control, rehearsal phase) is family-blind and tested on the toy base
    # (test_run_detached, test_daemon, test_console_tmux*), and nine daemons each paid ~7 s of
    # CPU importing torch, transformers, PEFT and TRL, which this process has already imported.
    run_dir, rows = run_in_process(pipeline)
    finished = [r for r in rows if r["type"] == "run_finished"][-1]["data"]
    said = [r for r in rows if r["type"] in ("error", "stage_finished")]
    assert finished["status"] == "finished", (finished, said)
    failed = [r["data"] for r in rows if r["type"] == "check_result"
              and r["data"]["status"] == "fail"]
    assert not failed

    # the tokenizer the twin was built with travels through every stage and the export unchanged
    stages = run_dir / "stages"
    want = tokenizer_bytes(base)
    assert want
    for stage in TRAINED:
        assert tokenizer_bytes(stages / stage) == want, stage
    export = tmp_path / "exports" / name
    assert tokenizer_bytes(export) == want
    verification = json.loads((export / "verification.json").read_text())
    assert verification["passed"] and verification["tokenizer_same"] is True

    # the export equals plain PEFT merging the same chain (sft into the base, then grpo's)
    ids = probe_ids(base)
    reference = peft_chain_logits(base, stages / "sft", stages / "grpo", ids)
    diff = float((model_logits(export, ids) - reference).abs().max())
    print(f"\n{name}: export vs plain PEFT chain max |logit diff| {diff:.2e}; engine check: "
          f"{verification['message']}")
    assert diff <= EXPORT_BOUND, diff
    if not gguf:
        assert not list(export.glob("*.gguf"))
        return

    # GGUF f32 of the trained chain, verified tensor by tensor and run in llama.cpp by the stage
    report = json.loads((export / "gguf_verification.json").read_text())
    assert report["passed"] and report["gguf_type"] == "f32", report["message"]
    print(f"{name}: GGUF f32: {report['message']}")
    # Ollama: the Modelfile loads the verified GGUF and stops at the family's end-of-turn token
    modelfile = (export / "Modelfile").read_text()
    assert "FROM ./model-f32.gguf" in modelfile
    assert f'PARAMETER stop "{spec.end_of_turn}"' in modelfile, modelfile


@torch.no_grad()
def _random_adapter(base: Path, out: Path) -> Path:
    """An all-linear adapter with random (non-zero) weights: every targeted tensor merges."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    peft_model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules="all-linear",
                                                  task_type="CAUSAL_LM"))
    generator = torch.Generator().manual_seed(0)
    for param_name, param in peft_model.named_parameters():
        if "lora_" in param_name:
            param.copy_(torch.randn(param.shape, generator=generator) * 0.05)
    peft_model.save_pretrained(str(out))
    return out


@pytest.mark.slow
@pytest.mark.spread
@pytest.mark.parametrize("name", ["qwen3_moe", "gpt_oss", "gemma3"])
def test_experts_and_padded_embeddings_convert_and_verify(name: str, tmp_path: Path) -> None:
    """Mixture-of-experts (per-expert tensors stacked; gpt-oss's fused experts transposed and
    split) and an embedding padded past the vocabulary: merged, converted, verified."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from graftline.engine.export.writer import plan_export, run_export

    base = char_level_copy(build_family(name), tmp_path / "base")
    adapter = _random_adapter(base, tmp_path / "adapter")
    config = json.loads((adapter / "adapter_config.json").read_text())
    if name == "qwen3_moe":  # PEFT reaches the experts as parameters (target_parameters)
        assert {"gate_up_proj", "down_proj"} <= set(config["target_parameters"])
    plan = plan_export(adapter, tmp_path / "out", dtype="float32", gguf_type="f32")
    result = run_export(plan)
    assert result.gguf_verification is not None
    if (name, "f32") in LLAMA_CPP_DIFFERS:  # tensors verified; llama.cpp runs it differently
        assert result.gguf_verification["tensors_passed"], result.gguf_verification
        assert any("GGUF failed in llama.cpp" in p for p in result.problems), result.problems
    else:
        assert result.ok, result.problems
        assert result.gguf_verification["passed"], result.gguf_verification

    ids = torch.tensor([[1, 20, 30, 14, 40, 7, 9, 12]])
    with torch.no_grad():
        merged = PeftModel.from_pretrained(
            AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32),
            adapter).merge_and_unload()
        reference = merged(input_ids=ids).logits
    diff = float((model_logits(tmp_path / "out", ids) - reference).abs().max())
    assert diff <= EXPORT_BOUND, diff


def _zero_rows(model_dir: Path, token_ids: list[int]) -> None:
    """Zero the rows of `token_ids` in the embedding and lm_head, as Llama-3 base ships its
    never-trained template tokens."""
    from safetensors.torch import load_file, save_file

    path = model_dir / "model.safetensors"
    tensors = load_file(path)
    for name in ("model.embed_tokens.weight", "lm_head.weight"):
        tensors[name][token_ids] = 0.0
    save_file(tensors, path, metadata={"format": "pt"})


def test_validate_warns_of_template_tokens_the_base_never_learned(tmp_path: Path) -> None:
    from graftline.engine.pipeline.validate import validate_file
    from graftline.engine.rehearse.families import FAMILIES

    def warnings(base: Path) -> list:
        path = write_chain(tmp_path / base.name, "t", base)
        _, problems = validate_file(path)
        return [p for p in problems if p.code == "untrained_template_tokens"]

    twin = build_family("llama")
    assert warnings(twin) == []  # its template tokens were pre-trained with it
    untrained = tmp_path / "untrained"
    shutil.copytree(twin, untrained)
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(untrained)
    eot = tokenizer.convert_tokens_to_ids(FAMILIES["llama"].end_of_turn)
    _zero_rows(untrained, [eot])
    found = warnings(untrained)
    assert len(found) == 1 and found[0].severity == "warning"
    assert "<|eot_id|>" in found[0].message and f"id {eot}" in found[0].message
    assert "trainable_token_indices" in (found[0].fix or "") and "instruct" in found[0].fix


def test_plan_says_what_all_linear_reaches_on_a_mixture_of_experts(tmp_path: Path) -> None:
    from graftline.engine.pipeline.file import load
    from graftline.engine.pipeline.plan import build_plan

    def notes(name: str, lora: str) -> str:
        path = write_chain(tmp_path / f"{name}-{len(lora)}", "t", build_family(name))
        path.write_text(path.read_text().replace(
            'lora = { dropout = 0.0, target_modules = "all-linear" }', lora))
        pf = load(path)
        return " ".join(build_plan(pf.pipeline, search_dir=pf.directory).notes)

    all_linear = 'lora = { dropout = 0.0, target_modules = "all-linear" }'
    assert "attention projections only" in notes("gpt_oss", all_linear)
    said = notes("qwen3_moe", all_linear)
    assert "mixture of experts" in said and "target_parameters" in said
    named = notes("qwen3_moe", 'lora = { dropout = 0.0, target_modules = ["q_proj"], '
                               'target_parameters = ["mlp.experts.gate_up_proj"] }')
    assert "LoRA on parameters: mlp.experts.gate_up_proj" in named
    assert "mixture of experts" not in named
    assert notes("qwen3", all_linear) == ""



@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(p.name for p in REAL_CONFIGS.iterdir()))
def test_rehearsal_twins_real_configs_and_rehearses_the_chain(name: str, tmp_path: Path) -> None:
    """The rehearsal builds a twin of each published config.json (stored here without weights
    or tokenizer: the twin takes the toy tokenizer) and rehearses the demo chain on it."""
    from graftline.engine.pipeline.validate import DISK_FORECAST
    from graftline.engine.rehearse.rehearsal import rehearse

    base = tmp_path / name
    shutil.copytree(REAL_CONFIGS / name, base)
    report = rehearse(write_chain(tmp_path, "real", base))
    assert report.stages and not report.failures, [(s.name, s.error) for s in report.failures]
    # the real model's merge and export may not fit this disk: said, and rehearsed anyway
    assert all(p.code == DISK_FORECAST for p in report.problems), report.problems
    assert "toy model" not in report.twin, report.twin  # a twin of the config, not the fallback


@pytest.mark.slow
@pytest.mark.parametrize("name", [name for name in FAMILIES
                                  if family(name).model_type not in REHEARSED_ON_A_REAL_CONFIG])
def test_a_family_without_a_published_config_here_rehearses_the_chain_on_its_twin(
        name: str, tmp_path: Path) -> None:
    from graftline.engine.rehearse.rehearsal import rehearse

    report = rehearse(write_chain(tmp_path, name, build_family(name)))
    assert report.stages and not report.failures, [(s.name, s.error) for s in report.failures]
    assert not report.problems, report.problems
    assert [s.name for s in report.stages] == ["sft", "merged", "sft_r16", "ipo", "grpo", "export"]
    assert "toy model" not in report.twin, report.twin  # a twin of the family's config


def test_collapse_needs_a_margin_of_newly_degenerate_probes_and_a_rehearsal_only_reports(
        tmp_path: Path) -> None:
    """One probe flipping (the gemma2 case: 3 of 4 degenerate, 2 before) warns; most probes
    newly degenerate fails; in a rehearsal (`gate` False) that failure is a warning."""
    from graftline.engine.rehearse.twin import build_twin
    from graftline.engine.stages.checks import Generation, generation_sanity

    fine, stuck = Generation("46", (5, 7), True), Generation("", (), True)
    probes = [f"p{i}" for i in range(8)]
    flip = generation_sanity([stuck] * 5 + [fine] * 3, [stuck] * 6 + [fine] * 2, probes, 12)
    assert flip.status == "warn" and flip.data["newly_degenerate"] == 1
    collapse = generation_sanity([fine] * 8, [stuck] * 7 + [fine], probes, 12)
    assert collapse.status == "fail" and collapse.message.startswith("collapse")
    reported = generation_sanity([fine] * 8, [stuck] * 7 + [fine], probes, 12, gate=False)
    assert reported.status == "warn" and "not gated" in reported.message

    twin = build_twin(str(build_family("qwen3")), tmp_path / "twin")
    assert twin.source == "config"
    # the rehearsal's twin keeps the base's tokenizer files byte for byte
    assert tokenizer_bytes(Path(twin.base)) == tokenizer_bytes(build_family("qwen3"))


def test_soft_capped_attention_is_trained_as_inference_computes_it() -> None:
    """Gemma 2 caps its attention logits; transformers' default attention (SDPA) silently drops
    the cap, so the backend loads such a model with eager attention, as inference runs it."""
    from transformers import AutoModelForCausalLM

    from graftline.engine.backends.hf import HFBackend

    base = build_family("gemma2")
    model, _tokenizer = HFBackend().load_model(base)
    assert model.config._attn_implementation == "eager"
    sdpa = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32,
                                                attn_implementation="sdpa")
    ids = probe_ids(base)
    with torch.no_grad():  # the cap changes this twin's logits: the choice is not cosmetic
        assert float((model(input_ids=ids).logits - sdpa(input_ids=ids).logits).abs().max()) > 0
    plain, _tokenizer = HFBackend().load_model(build_family("llama"))
    assert plain.config._attn_implementation != "eager"  # uncapped families keep the default

"""Every family of the matrix through GGUF f32 and q8_0, run in llama.cpp itself; and every
family's Ollama Modelfile rendered against its chat template.

Cheap on purpose: each family's twin base as built (cached; no training), all conversions in
one converter process (`gguf_convert.convert_many`), each file read back tensor by tensor
(`verify_gguf`) and run in llama.cpp (`run_gguf`: logits within the type's derived bound,
tokenization of the probes and of rendered chats, BOS/EOS, end-of-turn, chat template). Where
the pinned converter cannot take the twin's own tokenizer (byte-level BPE it does not know), the
refusal before conversion is checked (family, reason, fix), and the same architecture is then
converted with graftline's character-level tokenizer, so llama.cpp still runs every family.
"""

from __future__ import annotations

import json
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
from family_helpers import char_level_copy
from gguf_known import LLAMA_CPP_DIFFERS
from go_template import read_modelfile
from go_template import render as render_go
from transformers import AutoTokenizer

from graftline.engine.export.gguf_convert import (
    GgufError,
    convert_many,
    find_converter,
    gguf_filename,
    preflight,
)
from graftline.engine.export.gguf_run import (
    NOT_INSTALLED,
    RuntimeCheck,
    gguf_report,
    run_gguf,
    runtime_missing,
)
from graftline.engine.export.gguf_verify import GgufVerification, verify_gguf
from graftline.engine.export.ollama import modelfile
from graftline.engine.rehearse.families import FAMILIES, build_family, family

TYPES = ("f32", "q8_0")


@dataclass(frozen=True)
class Converted:
    name: str
    refusal: GgufError | None  # the twin's own tokenizer refused before conversion
    model_dir: Path  # what was converted: the twin, or its character-level copy
    files: dict[str, Path]
    tensors: dict[str, GgufVerification]
    runtime: dict[str, RuntimeCheck]


@pytest.fixture(scope="module")
def converted(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Converted]:
    converter = find_converter()
    if converter is None:
        pytest.fail("llama.cpp's converter is not installed: run `make setup`")
    if runtime_missing():
        pytest.fail(f"{runtime_missing()}: run `make setup`")
    root = tmp_path_factory.mktemp("gguf-families")
    plans: dict[str, tuple[GgufError | None, Path]] = {}
    jobs: list[tuple[Path, Path, str]] = []
    for name in FAMILIES:
        base = build_family(name)
        refusal: GgufError | None = None
        try:
            preflight(converter, base)
            model_dir = base
        except GgufError as exc:
            refusal = exc
            model_dir = char_level_copy(base, root / f"{name}-chars")
            preflight(converter, model_dir)
        plans[name] = (refusal, model_dir)
        # beside the cached twin is not ours to write: the files go to this module's folder
        jobs += [(model_dir, root / name / gguf_filename(t), t) for t in TYPES]
        (root / name).mkdir()
    # K-quant blocks need rows of 256: the twins are 64 wide. One wider, untrained copy of the
    # mistral twin's architecture, converted in the same converter process
    wide = _wide_copy(build_family("mistral"), root / WIDE)
    jobs.append((wide, root / WIDE / gguf_filename("f32"), "f32"))
    written = iter(convert_many(converter, jobs))
    found: dict[str, Converted] = {}
    for name, (refusal, model_dir) in plans.items():
        files, tensors, runtime = {}, {}, {}
        for gguf_type in TYPES:
            result = next(written)
            assert isinstance(result, Path), f"{name} {gguf_type}: {result}"
            files[gguf_type] = result
            tensors[gguf_type] = verify_gguf(result, model_dir, gguf_type)
            runtime[gguf_type] = run_gguf(result, model_dir, gguf_type)
        found[name] = Converted(name, refusal, model_dir, files, tensors, runtime)
    wide_f32 = next(written)
    assert isinstance(wide_f32, Path), wide_f32
    found[WIDE] = Converted(WIDE, None, wide, {"f32": wide_f32}, {}, {})
    return found


WIDE = "mistral-wide"


def _wide_copy(base: Path, out: Path) -> Path:
    """The twin's architecture and tokenizer at 256 wide (intermediate 512), random weights
    (seeded): a model whose matrices take K-quant blocks."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    shutil.copytree(base, out)
    config = json.loads((out / "config.json").read_text())
    model_type = config.pop("model_type")
    for key in ("architectures", "transformers_version", "dtype"):
        config.pop(key, None)
    config.update(hidden_size=256, intermediate_size=512, head_dim=64, initializer_range=0.05)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(AutoConfig.for_model(model_type, **config),
                                             dtype=torch.float32)
    for stale in out.glob("*.safetensors"):
        stale.unlink()
    model.save_pretrained(out)
    return out


@pytest.mark.parametrize("name", list(FAMILIES))
def test_family_gguf_f32_and_q8_0_verified_and_run_in_llama_cpp(
        name: str, converted: dict[str, Converted]) -> None:
    spec, found = family(name), converted[name]
    if spec.tokenizer == "bpe":
        # the twin's byte-level BPE is not in the pinned converter's pre-tokenizer table
        assert found.refusal is not None
        said = f"{found.refusal.message} {found.refusal.fix}"
        assert "GGUF refused before conversion" in said and spec.model_type in said
        assert "pre-tokenizer" in said and "safetensors" in found.refusal.fix
        assert found.model_dir.name.endswith("-chars")
    else:
        assert found.refusal is None and found.model_dir == build_family(name)
    config = json.loads((found.model_dir / "config.json").read_text())
    # the model's own sliding/full layers, written for llama.cpp (gguf_driver): a 2-layer
    # [sliding, full] Gemma 3 is not the 5 : 1 pattern llama.cpp otherwise assumes
    layers = ([kind == "sliding_attention" for kind in config["layer_types"]]
              if config.get("sliding_window") and "sliding_attention" in
              config.get("layer_types", []) else None)
    for gguf_type in TYPES:
        tensors, ran = found.tensors[gguf_type], found.runtime[gguf_type]
        assert tensors.passed, tensors.message
        assert tensors.metadata["sliding_window_pattern"] == layers
        known = LLAMA_CPP_DIFFERS.get((name, gguf_type), frozenset())
        print(f"\n{name} {gguf_type}: {tensors.message}; {ran.message}")
        assert {d.what for d in ran.differences} == known, [(d.what, d.detail)
                                                             for d in ran.differences]
        if known:  # a failed check, named: the export would fail saying this
            assert ran.status == "failed" and all(d.detail for d in ran.differences)
            continue
        assert ran.passed
        assert ran.bound is not None and ran.max_abs_diff is not None
        assert ran.max_abs_diff <= ran.bound
        assert ran.tokenization and all(row["equal"] for row in ran.tokenization)
        assert any(row["text"] for row in ran.tokenization if not row["add_special"])  # a chat
        assert ran.chat_template_equal is True
        assert all(e["eog"] for e in ran.special_tokens["end_of_turn"])
    # q8_0 rounds, and its bound grows with the drift that rounding causes in the HF export
    # itself; f32 rounds only what ggml computes in float16 (GELU: the gemma families)
    f32, q8 = found.runtime["f32"], found.runtime["q8_0"]
    assert f32.reference_drift is not None and q8.reference_drift is not None
    assert q8.reference_drift > f32.reference_drift >= 0
    assert (f32.reference_drift > 0) == name.startswith("gemma")
    if f32.passed and q8.passed:
        assert q8.max_abs_diff is not None and f32.max_abs_diff is not None
        assert q8.max_abs_diff > f32.max_abs_diff


CONVERSATIONS = [
    [{"role": "user", "content": "12+34"}],
    [{"role": "user", "content": "1+2"}, {"role": "assistant", "content": "3"},
     {"role": "user", "content": "{{ x }} 40+2"}],
    [{"role": "system", "content": "Add."}, {"role": "user", "content": "7+7"},
     {"role": "assistant", "content": "14"}, {"role": "user", "content": "99+1"}],
]


@pytest.mark.parametrize("name", list(FAMILIES))
def test_family_modelfile_renders_like_its_chat_template_and_stops_at_its_end_of_turn(
        name: str, converted: dict[str, Converted], tmp_path: Path) -> None:
    """What Ollama would feed the model (BOS where the GGUF adds it, then TEMPLATE rendered by
    Go's rules) equals the tokenizer's chat template, and PARAMETER stop holds the family's
    end-of-turn token. The twin's own tokenizer; for a family whose GGUF is refused the
    Modelfile loads the safetensors directory, and the tokenizer adds BOS as it does."""
    spec, found = family(name), converted[name]
    base = build_family(name)
    tokenizer = AutoTokenizer.from_pretrained(base)
    generation = json.loads((base / "generation_config.json").read_text())
    adds_bos = (None if found.refusal is not None
                else found.tensors["f32"].metadata["add_bos_token"])
    source = "." if found.refusal is not None else f"./{found.files['f32'].name}"
    (tmp_path / "Modelfile").write_text(modelfile(tokenizer, generation, source,
                                                  adds_bos=adds_bos))
    written = read_modelfile(tmp_path / "Modelfile")
    assert written.template is not None and written.source == source
    if adds_bos is None:
        ids = tokenizer("1").input_ids
        adds_bos = bool(ids) and ids[0] == tokenizer.bos_token_id
    for conversation in CONVERSATIONS:
        try:
            want = tokenizer.apply_chat_template(conversation, tokenize=False,
                                                 add_generation_prompt=True)
        except Exception:  # a template without system turns
            continue
        prompt = (tokenizer.bos_token if adds_bos else "") + render_go(written.template,
                                                                       conversation)
        assert prompt == want, (name, conversation)
    assert spec.end_of_turn in written.stops, written.stops
    eos = generation["eos_token_id"]
    assert written.stops[0] == tokenizer.convert_ids_to_tokens(
        eos if isinstance(eos, int) else eos[0])


def test_a_refused_family_still_delivers_the_verified_safetensors_export(tmp_path: Path) -> None:
    """The refusal comes before conversion and after the safetensors export: that export is
    complete and verified, no GGUF is written and no Modelfile points at one."""
    from graftline.engine.export.writer import plan_export, run_export

    result = run_export(plan_export(build_family("qwen3"), tmp_path / "out", dtype="float32",
                                    formats=("ollama",), gguf_type="q8_0"))
    assert result.verification is not None and result.verification["passed"]
    assert result.manifest.status == "complete" and not result.ok
    assert (tmp_path / "out" / "model.safetensors").is_file()
    assert not list((tmp_path / "out").glob("*.gguf"))
    assert any("GGUF refused before conversion" in p and "qwen3" in p for p in result.problems)
    assert any("Modelfile not written" in p for p in result.problems)


def test_a_gguf_llama_cpp_reads_differently_fails_naming_what_differs(
        converted: dict[str, Converted], tmp_path: Path) -> None:
    """The same mistral f32 file against an HF export whose weights and chat template moved:
    the failure is structured, one Difference per thing, named."""
    from safetensors.torch import load_file, save_file

    found = converted["mistral"]
    moved = shutil.copytree(found.model_dir, tmp_path / "moved")
    tensors = load_file(moved / "model.safetensors")
    tensors["model.layers.1.mlp.down_proj.weight"] *= 1.5
    save_file(tensors, moved / "model.safetensors", metadata={"format": "pt"})
    config = json.loads((moved / "tokenizer_config.json").read_text())
    template = moved / "chat_template.jinja"
    if template.is_file():
        template.write_text(template.read_text().replace("[INST]", "[USER]"))
    else:
        config["chat_template"] = config["chat_template"].replace("[INST]", "[USER]")
        (moved / "tokenizer_config.json").write_text(json.dumps(config))
    ran = run_gguf(found.files["f32"], moved, "f32")
    assert ran.status == "failed"
    what = {d.what for d in ran.differences}
    assert what == {"logits", "chat_template"}, ran.differences
    logits = next(d for d in ran.differences if d.what == "logits")
    assert logits.got == ran.max_abs_diff and logits.expected == ran.bound
    assert "exceeds the f32 bound" in ran.message and "chat_template" in ran.message
    report = gguf_report(found.tensors["f32"], ran)
    assert report["passed"] is False and report["tensors_passed"] is True
    assert {d["what"] for d in report["runtime"]["differences"]} == what


class _NoLlamaCpp:
    """A meta-path finder under which `llama_cpp` is not installed (as on a machine without
    the gguf extra's runtime)."""

    @staticmethod
    def find_spec(name: str, path: object = None, target: object = None) -> None:
        if name == "llama_cpp" or name.startswith("llama_cpp."):
            raise ModuleNotFoundError(name)


def test_without_the_runtime_the_report_says_not_run_and_the_tensors_stand(
        converted: dict[str, Converted], monkeypatch: pytest.MonkeyPatch) -> None:
    found = converted["gemma3"]
    monkeypatch.setattr(sys, "meta_path", [_NoLlamaCpp(), *sys.meta_path])
    monkeypatch.delitem(sys.modules, "llama_cpp", raising=False)
    ran = run_gguf(found.files["q8_0"], found.model_dir, "q8_0")
    assert ran.status == "not_run"
    assert ran.message == f"not run: {NOT_INSTALLED}"
    assert NOT_INSTALLED == "llama.cpp runtime not installed (pip install 'graftline[gguf]')"
    report = gguf_report(found.tensors["q8_0"], ran)
    assert report["passed"] is True and report["tensors_passed"] is True
    assert report["message"].endswith(f"not run: {NOT_INSTALLED}")


def test_a_phi3_export_is_named_so_llama_cpp_strips_after_its_special_tokens() -> None:
    """llama.cpp gives phi3's special tokens Phi-3's rstrip only when general.name says phi3:
    an export named otherwise gets "-phi3" (the family matrix's CLI export, named "gguf-f32",
    runs alike in llama.cpp because of it)."""
    from graftline.engine.export.gguf_convert import runtime_name

    assert runtime_name(build_family("phi3"), "my-bot") == "my-bot-phi3"
    assert runtime_name(build_family("phi3"), "Phi-3-mini-ft") == "Phi-3-mini-ft"
    assert runtime_name(build_family("mistral"), "my-bot") == "my-bot"
    assert runtime_name(build_family("phi3"), None) is None


# What llama.cpp derives instead of reading (gguf_limits): each changed the twin's logits by
# more than 1.5 on a logit scale of 10 when converted anyway (query_pre_attn_scalar 24 against
# head_dim 16), or stops the pinned converter (the soft-caps).
MISCONFIGURED = [
    ("gemma2", {"query_pre_attn_scalar": 24}, "query_pre_attn_scalar"),
    ("gemma2", {"attn_logit_softcapping": None}, "attn_logit_softcapping"),
    ("gemma2", {"final_logit_softcapping": None}, "final_logit_softcapping"),
    ("gemma3", {"query_pre_attn_scalar": 24}, "query_pre_attn_scalar"),
    ("gemma3", {"attn_logit_softcapping": 50.0}, "attn_logit_softcapping"),
]


@pytest.mark.parametrize(("name", "change", "field"), MISCONFIGURED)
def test_a_gemma_config_llama_cpp_would_run_differently_is_refused_before_conversion(
        name: str, change: dict[str, object], field: str, tmp_path: Path) -> None:
    converter = find_converter()
    assert converter is not None, "run `make setup`"
    config = json.loads((build_family(name) / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**config, **change}))
    with pytest.raises(GgufError) as refused:
        preflight(converter, tmp_path)
    said = refused.value.message
    assert said.startswith("GGUF refused before conversion") and name in said and field in said
    assert "safetensors export is complete" in said and "safetensors" in refused.value.fix


def test_the_published_gemma_shapes_are_not_refused() -> None:
    """llama.cpp's own rule: 1/sqrt(hidden/heads) for the 46-layer Gemma 2 and the 62-layer
    Gemma 3 (27B, query_pre_attn_scalar 144 and 168), 1/sqrt(head_dim) otherwise."""
    from graftline.engine.export.gguf_limits import runtime_limit

    gemma2 = {"model_type": "gemma2", "attn_logit_softcapping": 50.0,
              "final_logit_softcapping": 30.0}
    gemma3 = {"model_type": "gemma3_text", "attn_logit_softcapping": None}
    published = [
        {**gemma2, "num_hidden_layers": 26, "hidden_size": 2304, "num_attention_heads": 8,
         "head_dim": 256, "query_pre_attn_scalar": 256},
        {**gemma2, "num_hidden_layers": 46, "hidden_size": 4608, "num_attention_heads": 32,
         "head_dim": 128, "query_pre_attn_scalar": 144},
        {**gemma3, "num_hidden_layers": 26, "hidden_size": 1152, "num_attention_heads": 4,
         "head_dim": 256, "query_pre_attn_scalar": 256},
        # gemma-3-27b-it's published config.json (multimodal wrapper, defaults left out)
        json.loads((Path(__file__).parent / "fixtures" / "real_configs" / "gemma-3-27b-it"
                    / "config.json").read_text()),
    ]
    assert [runtime_limit(config) for config in published] == [None] * len(published)
    # the same 27B shape at another depth runs with 1/sqrt(head_dim): refused
    shallower = {**published[1], "num_hidden_layers": 30}
    limit = runtime_limit(shallower)
    assert limit is not None and limit.field == "query_pre_attn_scalar"
    assert "1/sqrt(head_dim = 128)" in limit.reason


@pytest.mark.parametrize(("name", "blocks"), [
    (WIDE, {"Q4_K", "Q6_K"}),  # K-quant blocks, their inputs rounded to Q8_K
    ("mistral", {"Q5_0", "Q8_0"}),  # 64 wide: llama.cpp's fallback blocks
])
def test_a_k_quant_made_by_the_runtime_is_verified_and_run_within_a_bound_from_its_own_matrices(
        name: str, blocks: set[str], converted: dict[str, Converted], tmp_path: Path) -> None:
    """q4_k_m by llama.cpp's own quantizer (the runtime's `llama_model_quantize`; no
    llama-quantize binary here) from an f32 file: tensors within their RMS bounds, and in
    llama.cpp within twice the drift of the HF export run with the file's own dequantized
    matrices and each matmul input rounded as llama.cpp's dot product for that type does."""
    import gguf

    from graftline.engine.export.gguf_convert import quantize_in_runtime, unavailable_reason

    assert unavailable_reason("q4_k_m") is None
    found = converted[name]
    path = quantize_in_runtime(found.files["f32"], tmp_path / "model-q4_k_m.gguf", "q4_k_m")
    types = {t.tensor_type.name for t in gguf.GGUFReader(path).tensors}
    assert types - {"F32"} == blocks, types
    tensors = verify_gguf(path, found.model_dir, "q4_k_m")
    assert tensors.passed, tensors.message
    ran = run_gguf(path, found.model_dir, "q4_k_m")
    print(f"\n{name} q4_k_m: {tensors.message}; {ran.message}")
    assert ran.passed, ran.message
    assert ran.bound is not None and ran.reference_drift is not None and ran.reference_drift > 0
    assert ran.max_abs_diff is not None and ran.max_abs_diff <= ran.bound
    assert "the file's own dequantized matrices" in ran.bound_rule
    assert ran.tokenization and all(row["equal"] for row in ran.tokenization)


def test_a_k_quant_whose_experts_cannot_be_put_back_says_its_logits_are_not_gated(
        converted: dict[str, Converted], tmp_path: Path) -> None:
    """qwen3_moe's experts are stacked in the file (one tensor per projection, not one per
    expert as the checkpoint stores them): no drift from the file's matrices, so the logits are
    reported, said not gated, and everything else is checked."""
    from graftline.engine.export.gguf_convert import quantize_in_runtime

    found = converted["qwen3_moe"]
    path = quantize_in_runtime(found.files["f32"], tmp_path / "model-q4_k_m.gguf", "q4_k_m")
    ran = run_gguf(path, found.model_dir, "q4_k_m")
    assert ran.passed and ran.bound is None and ran.reference_drift is None
    assert ran.max_abs_diff is not None and ran.top1_agreement is not None
    assert "logits not gated for q4_k_m" in ran.message
    assert ran.bound_rule.startswith("q4_k_m: logits not gated")
    assert ran.tokenization and all(row["equal"] for row in ran.tokenization)

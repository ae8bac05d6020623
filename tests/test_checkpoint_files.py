"""One place for checkpoint file names and one account of what a folder holds
(`common.checkpoint_files`), and the three readers that decide from it: `from` (pipeline.foreign),
export (export.chain) and the lineage scan. Real folders saved by transformers/peft and torch, no
stand-ins: the readers agree on what they see and differ only where their purpose does (export
and `from` need safetensors; the lineage only needs to recognise a model).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from lineage_helpers import files_under, make_adapter
from safetensors.torch import load_file
from stage_helpers import pipeline, write_data
from transformers import AutoModelForCausalLM

from graftline.engine.common.checkpoint_files import (
    ADAPTER_CONFIG,
    MODEL_CONFIG,
    MODEL_PICKLE,
    MODEL_SAFETENSORS,
    MODEL_SAFETENSORS_INDEX,
    files_from_names,
    folder_files,
)
from graftline.engine.export.chain import ExportRefused, resolve_chain, weight_files
from graftline.engine.export.writer import plan_export
from graftline.engine.lineage import scan
from graftline.engine.pipeline.foreign import ForeignError, is_full_model, read_foreign
from graftline.engine.pipeline.validate import validate


def _pickled(toy_base: Path, dest: Path) -> Path:
    """The toy base as a pickle-only model: config.json + pytorch_model.bin (what older
    save_pretrained calls and many hand-made scripts leave)."""
    dest.mkdir()
    shutil.copy(toy_base / MODEL_CONFIG, dest / MODEL_CONFIG)
    torch.save(load_file(str(toy_base / MODEL_SAFETENSORS)), dest / MODEL_PICKLE)
    return dest


def _sharded(toy_base: Path, dest: Path) -> Path:
    AutoModelForCausalLM.from_pretrained(toy_base).save_pretrained(dest, max_shard_size="200KB")
    return dest


def _kinds(root: Path) -> dict[str, str]:
    """Node kind by folder name, for the nodes the scan found under `root`."""
    return {Path(n.path).name: n.kind for n in scan([root]).nodes
            if n.path and n.path.startswith(str(root.resolve()))}


def test_names_are_classified_by_form() -> None:
    files = files_from_names([MODEL_CONFIG, "model-00001-of-00002.safetensors",
                              "model-00002-of-00002.safetensors", MODEL_SAFETENSORS_INDEX,
                              "optimizer.pt", "training_args.bin", "adapter_model.bin",
                              "tokenizer.json"])
    assert files.safetensors == ("model-00001-of-00002.safetensors",
                                 "model-00002-of-00002.safetensors", MODEL_SAFETENSORS_INDEX)
    assert files.pickle == ()  # the Trainer's own pickles and the adapter's are not model weights
    assert files.adapter_weights == ("adapter_model.bin",)
    assert files.is_model and files.is_safetensors_model
    bare_shards = files_from_names([MODEL_CONFIG, "model-00001-of-00002.safetensors"])
    assert bare_shards.is_model and not bare_shards.is_safetensors_model  # no index: unloadable
    pickled = files_from_names([MODEL_CONFIG, MODEL_PICKLE])
    assert pickled.is_model and not pickled.is_safetensors_model
    assert "pickle weights (pytorch_model.bin)" in pickled.describe()
    adapter_over_model = files_from_names([ADAPTER_CONFIG, MODEL_CONFIG, MODEL_SAFETENSORS])
    assert adapter_over_model.is_model and not adapter_over_model.is_safetensors_model


def test_the_three_readers_agree_on_safetensors_models(toy_base: Path, tmp_path: Path) -> None:
    single = tmp_path / "single"
    shutil.copytree(toy_base, single)
    sharded = _sharded(toy_base, tmp_path / "sharded")
    assert len(weight_files(sharded) or []) > 1  # really sharded, through its index
    for folder in (single, sharded):
        assert folder_files(folder).is_safetensors_model
        assert is_full_model(folder)
        assert read_foreign(str(folder), tmp_path).kind == "model"
        assert resolve_chain(folder).kind == "model"
    assert _kinds(tmp_path) == {"single": "base", "sharded": "base"}


def test_a_pickle_only_model_is_seen_by_lineage_and_refused_with_the_fix(
        toy_base: Path, tmp_path: Path) -> None:
    """Changed: `from` and export named it "not a checkpoint"; both now say it is a model with
    pickle weights and how to re-save it. The lineage shows it (and protects what needs it)."""
    model = _pickled(toy_base, tmp_path / "pickled")
    before = files_under(tmp_path)
    assert _kinds(tmp_path) == {"pickled": "base"}
    with pytest.raises(ForeignError) as foreign:
        read_foreign(str(model), tmp_path)
    assert "pickle weights only (pytorch_model.bin)" in foreign.value.message
    assert "safe_serialization=True" in (foreign.value.fix or "")
    with pytest.raises(ExportRefused) as export:
        plan_export(model, tmp_path / "out")
    assert "pickle weights (pytorch_model.bin)" in export.value.message
    assert "safe_serialization=True" in (export.value.fix or "")
    assert files_under(tmp_path) == before  # nothing written, nothing moved


def test_an_adapter_on_a_pickle_only_base_is_refused_by_export(toy_base: Path,
                                                               tmp_path: Path) -> None:
    base = _pickled(toy_base, tmp_path / "pickled")
    adapter = make_adapter(tmp_path / "adapter", toy_base)
    config = (adapter / ADAPTER_CONFIG).read_text().replace(str(toy_base), str(base))
    (adapter / ADAPTER_CONFIG).write_text(config)
    with pytest.raises(ExportRefused) as refused:
        plan_export(adapter, tmp_path / "out")
    assert "no safetensors weights" in refused.value.message
    assert "pytorch_model.bin" in refused.value.message
    assert not (tmp_path / "out").exists()


def test_validate_names_a_pickle_only_base_of_a_foreign_adapter(toy_base: Path,
                                                                tmp_path: Path) -> None:
    """Changed: the adapter's base was "not a full model"; validate now says it holds pickle
    weights only and that re-saving it as safetensors is the fix."""
    base = _pickled(toy_base, tmp_path / "pickled")
    adapter = make_adapter(tmp_path / "adapter", toy_base)
    config = (adapter / ADAPTER_CONFIG).read_text().replace(str(toy_base), str(base))
    (adapter / ADAPTER_CONFIG).write_text(config)
    write_data(tmp_path)
    pf = pipeline(tmp_path, """
[[stage]]
name = "more"
kind = "sft"
from = "./adapter"
base_from = "adapter"
data = "sft.jsonl"
train = { max_steps = 2 }
""")
    errors = [p for p in validate(pf) if p.severity == "error"]
    assert [(e.stage, e.field) for e in errors] == [("more", "from")], errors
    assert "pickle weights only (pytorch_model.bin)" in errors[0].message
    assert "safe_serialization=True" in (errors[0].fix or "")


def test_trainer_state_beside_a_config_is_not_a_model(toy_base: Path, tmp_path: Path) -> None:
    """Changed: the lineage took any .bin/.pt beside config.json for weights, so a folder holding
    only a Trainer's optimizer.pt and training_args.bin showed as a base model."""
    folder = tmp_path / "leftovers"
    folder.mkdir()
    shutil.copy(toy_base / MODEL_CONFIG, folder / MODEL_CONFIG)
    torch.save({"state": {}}, folder / "optimizer.pt")
    torch.save({"lr": 1e-4}, folder / "training_args.bin")
    assert not folder_files(folder).is_model
    assert _kinds(tmp_path) == {}
    with pytest.raises(ForeignError):
        read_foreign(str(folder), tmp_path)
    torch.save(load_file(str(toy_base / MODEL_SAFETENSORS)), folder / MODEL_PICKLE)
    assert _kinds(tmp_path) == {"leftovers": "base"}  # with weights it is one


def test_a_damaged_shard_index_is_refused_not_a_traceback(toy_base: Path,
                                                          tmp_path: Path) -> None:
    """Changed: a corrupt model.safetensors.index.json raised JSONDecodeError out of export."""
    base = _sharded(toy_base, tmp_path / "sharded")
    adapter = make_adapter(tmp_path / "adapter", base)
    (base / MODEL_SAFETENSORS_INDEX).write_text('{"weight_map": ')
    before = files_under(tmp_path)
    with pytest.raises(ExportRefused) as refused:
        plan_export(adapter, tmp_path / "out")
    assert MODEL_SAFETENSORS_INDEX in refused.value.message
    assert "restore the index" in (refused.value.fix or "")
    assert files_under(tmp_path) == before

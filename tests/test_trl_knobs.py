"""The TRL knobs (train.optim, precision, max_grad_norm, packing, neftune_noise_alpha,
lr_scheduler_kwargs, max_prompt_length, use_liger_kernel) and the `trl = { … }` escape hatch.

Training tests run real tiny SFT → DPO → GRPO stages for a few steps and read the trainers'
own `args` through the stage's before_train hook; validate tests run the real checks against
the TRL and transformers installed here.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from stage_helpers import one_thread, pipeline, write_data  # noqa: F401

from graftline.engine.common.sink import ListSink
from graftline.engine.pipeline import trl_knobs
from graftline.engine.pipeline.problems import PipelineError, Problem
from graftline.engine.pipeline.validate import validate

KNOBS = """
[defaults]
# every training stage's, under its own `trl` (the sft stage sets dataloader_drop_last itself)
trl = { dataloader_drop_last = false, logging_nan_inf_filter = false }

[[stage]]
name = "sft"
kind = "sft"
data = "sft.jsonl"
lora = { r = 8 }

[stage.train]
max_steps = 3
batch_size = 8
lr = 3e-3
optim = "adamw_torch"
precision = "fp32"
max_grad_norm = 0.5
neftune_noise_alpha = 5.0
packing = true
lr_scheduler_kwargs = { num_cycles = 0.25 }

[stage.trl]
shuffle_dataset = false
dataloader_drop_last = true

[[stage]]
name = "dpo"
kind = "dpo"
from = "sft"
adapter = "continue"
loss = "ipo"
data = "pref.jsonl"
train = { max_steps = 2, batch_size = 8, optim = "sgd", max_grad_norm = 2.0 }
trl = { precompute_ref_batch_size = 4, use_weighting = true }

[[stage]]
name = "grpo"
kind = "grpo"
from = "dpo"
adapter = "continue"
data = "grpo.jsonl"
num_generations = 4
train = { max_steps = 2, batch_size = 8, lr_scheduler_kwargs = { num_cycles = 0.5 } }
trl = { scale_rewards = "batch", top_k = 5 }
"""


@pytest.mark.usefixtures("one_thread")
def test_knobs_reach_each_trainer(tmp_path: Path, toy_base: Path) -> None:
    from graftline.engine.run.runner import run_pipeline
    from graftline.engine.stages import StageHooks

    root = write_data(tmp_path)
    pf = pipeline(root, KNOBS)
    assert [p for p in validate(pf) if p.severity == "error"] == []
    seen: dict[str, Any] = {}

    def capture(name: str):
        def hook(trainer: Any) -> None:
            seen[name] = (trainer.args, len(trainer.train_dataset))
        return hook

    hooks = {n: StageHooks(before_train=capture(n)) for n in ("sft", "dpo", "grpo")}
    result = run_pipeline(pf, root / "runs" / "r", ListSink(), hooks=hooks)
    assert result.status == "finished", result.message

    sft, sft_rows = seen["sft"]
    assert str(sft.optim.value) == "adamw_torch"
    assert sft.max_grad_norm == 0.5
    assert sft.neftune_noise_alpha == 5.0
    assert sft.lr_scheduler_kwargs == {"num_cycles": 0.25}
    assert sft.packing is True
    assert sft.bf16 is False and sft.fp16 is False
    assert sft.shuffle_dataset is False and sft.dataloader_drop_last is True  # the escape hatch
    assert sft.logging_nan_inf_filter is False  # from [defaults]; the stage's own key won
    assert sft.run_name == "r" and sft.report_to == []  # no trackers asked: none reports
    # packing really packed: 400 short rows fit in far fewer sequences of max_length
    assert sft_rows < 400

    dpo, _ = seen["dpo"]
    assert str(dpo.optim.value) == "sgd" and dpo.max_grad_norm == 2.0
    assert dpo.precompute_ref_batch_size == 4 and dpo.use_weighting is True
    assert dpo.loss_type == ["ipo"]  # the stage's own fields are untouched by the hatch
    assert dpo.logging_nan_inf_filter is False and dpo.dataloader_drop_last is False
    # unset knobs keep TRL's defaults (the config class's own)
    from trl import DPOConfig

    assert dpo.neftune_noise_alpha == DPOConfig.neftune_noise_alpha

    grpo, _ = seen["grpo"]
    assert grpo.scale_rewards == "batch" and grpo.top_k == 5
    assert grpo.logging_nan_inf_filter is False
    assert grpo.lr_scheduler_kwargs == {"num_cycles": 0.5}
    assert grpo.num_generations == 4


@pytest.mark.parametrize("kind", sorted(trl_knobs.CONFIG_CLASSES))
def test_fields_read_without_import_match_the_dataclass(kind: str) -> None:
    """The ast reading of TRL's sources (what validate uses) against the imported class."""
    trl_knobs.config_annotations.cache_clear()
    read, imported = trl_knobs.config_annotations(kind), trl_knobs.imported_fields(kind)
    assert set(read) == set(imported)
    # the value kinds validate judges by: the same wherever the imported form can be judged
    for name, annotation in imported.items():
        taken = trl_knobs.kinds_taken(annotation)
        assert taken is None or taken == trl_knobs.kinds_taken(read[name]), name


def test_optimizer_names_match_transformers() -> None:
    from transformers.training_args import OptimizerNames

    trl_knobs.optimizer_names.cache_clear()
    assert trl_knobs.optimizer_names() == {str(o.value) for o in OptimizerNames}


PROBE = """
import sys
from graftline.engine.pipeline.file import load
from graftline.engine.pipeline.validate import validate
problems = validate(load(sys.argv[1]))
heavy = sorted(m for m in ("torch", "transformers", "trl", "peft", "datasets") if m in sys.modules)
print(len([p for p in problems if p.severity == "error"]), " ".join(heavy) or "-")
"""


def test_validating_a_trl_table_imports_no_training_library(tmp_path: Path) -> None:
    root = write_data(tmp_path)
    pipeline(root, KNOBS.replace('precision = "fp32"\n', ""))
    out = subprocess.run([sys.executable, "-c", PROBE, str(root / "pipeline.toml")],
                         capture_output=True, text=True, check=True).stdout
    errors, heavy = out.split()
    assert errors == "0", out
    assert heavy == "-", f"validate imported {heavy}"


def _problems(root: Path, stages: str) -> list:
    return [p for p in validate(pipeline(root, stages)) if p.severity == "error"]


SFT = """
[[stage]]
name = "sft"
kind = "sft"
data = "sft.jsonl"
train = {{ max_steps = 2{train} }}
{extra}
"""


def test_unknown_trl_key_did_you_mean_with_its_line(tmp_path: Path) -> None:
    root = write_data(tmp_path)
    found = _problems(root, SFT.format(train="", extra="\n[stage.trl]\nshufle_dataset = false\n"))
    (problem,) = found
    assert problem.field == "trl.shufle_dataset" and problem.stage == "sft"
    text = (root / "pipeline.toml").read_text().splitlines()
    assert text[problem.line - 1].startswith("shufle_dataset")  # the key's own line
    assert "SFTConfig has no field 'shufle_dataset'" in problem.message
    assert "did you mean 'shuffle_dataset'" in (problem.fix or "")


def test_a_defaults_trl_key_one_kind_lacks_is_named_at_the_defaults_line(tmp_path: Path) -> None:
    root = write_data(tmp_path)
    stages = """
[defaults]
trl = { dataset_text_field = "text" }
""" + SFT.format(train="", extra="") + """
[[stage]]
name = "dpo"
kind = "dpo"
from = "sft"
adapter = "continue"
data = "pref.jsonl"
train = { max_steps = 2 }
trl = { use_weighting = true }
"""
    (problem,) = _problems(root, stages)  # SFTConfig has the field; DPOConfig does not
    assert problem.stage == "dpo" and problem.field == "trl.dataset_text_field"
    assert "(from [defaults])" in problem.message and "DPOConfig has no field" in problem.message
    text = (root / "pipeline.toml").read_text().splitlines()
    assert text[problem.line - 1].startswith("trl = { dataset_text_field")  # [defaults]' line
    assert "stages' own `trl`" in (problem.fix or "")


def test_a_defaults_trl_key_graftline_owns_is_refused(tmp_path: Path) -> None:
    root = write_data(tmp_path)
    (problem,) = _problems(root, "[defaults]\ntrl = { learning_rate = 1e-4 }\n"
                           + SFT.format(train="", extra=""))
    assert problem.field == "trl.learning_rate" and "set by graftline" in problem.message
    assert "train.lr" in (problem.fix or "")


def test_trl_values_of_the_wrong_kind_are_named_before_training(tmp_path: Path) -> None:
    root = write_data(tmp_path)
    extra = '\n[stage.trl]\nshuffle_dataset = "no"\ndataset_num_proc = "4"\n' \
            'dataset_text_field = 3\nmodel_init_kwargs = { dtype = "float32" }\n'
    found = {p.field: p for p in _problems(root, SFT.format(train="", extra=extra))}
    assert set(found) == {"trl.shuffle_dataset", "trl.dataset_num_proc",
                          "trl.dataset_text_field"}  # a table where a dict goes is fine
    text = (root / "pipeline.toml").read_text().splitlines()
    flag = found["trl.shuffle_dataset"]
    assert "SFTConfig.shuffle_dataset is bool, not the str 'no'" in flag.message
    assert "true or false" in (flag.fix or "")
    assert text[flag.line - 1].startswith("shuffle_dataset")
    assert "whole number" in (found["trl.dataset_num_proc"].fix or "")
    assert "quoted string" in (found["trl.dataset_text_field"].fix or "")


def test_inline_trl_table_points_at_its_line(tmp_path: Path) -> None:
    root = write_data(tmp_path)
    (problem,) = _problems(root, SFT.format(train="", extra='trl = { dataset_txt_field = "t" }'))
    text = (root / "pipeline.toml").read_text().splitlines()
    assert text[problem.line - 1].startswith("trl = {")
    assert "'dataset_text_field'" in (problem.fix or "")


@pytest.mark.parametrize(("key", "use"), [
    ("output_dir", "run directory"),
    ("learning_rate", "train.lr"),
    ("report_to", "[pipeline] report_to"),
    ("bf16", "train.precision"),
    ("max_steps", "train.max_steps"),
    ("packing", "train.packing"),
])
def test_trl_keys_graftline_owns_are_refused(tmp_path: Path, key: str, use: str) -> None:
    root = write_data(tmp_path)
    (problem,) = _problems(root, SFT.format(train="", extra=f"trl = {{ {key} = 1 }}"))
    assert problem.field == f"trl.{key}" and "set by graftline" in problem.message
    assert use in (problem.fix or "")


def test_a_typo_of_an_owned_field_names_the_graftline_field(tmp_path: Path) -> None:
    root = write_data(tmp_path)
    stages = SFT.format(train="", extra="") + """
[[stage]]
name = "dpo"
kind = "dpo"
from = "sft"
data = "pref.jsonl"
train = { max_steps = 2 }
trl = { betta = 0.3 }
"""
    (problem,) = _problems(root, stages)
    assert "DPOConfig has no field 'betta'" in problem.message
    assert "the stage's beta" in (problem.fix or "")


def test_packing_is_sft_only(tmp_path: Path) -> None:
    root = write_data(tmp_path)
    stages = SFT.format(train="", extra="") + """
[[stage]]
name = "dpo"
kind = "dpo"
from = "sft"
data = "pref.jsonl"
train = { max_steps = 2, packing = true }
"""
    (problem,) = _problems(root, stages)
    assert problem.stage == "dpo" and problem.field == "train.packing"


@pytest.mark.parametrize("kind", ["dpo", "grpo"])
def test_max_prompt_length_follows_the_installed_trl(tmp_path: Path, kind: str) -> None:
    root = write_data(tmp_path)
    data = "pref.jsonl" if kind == "dpo" else "grpo.jsonl"
    extra = "num_generations = 4\n" if kind == "grpo" else ""
    stages = SFT.format(train="", extra="") + f"""
[[stage]]
name = "{kind}"
kind = "{kind}"
from = "sft"
data = "{data}"
{extra}train = {{ max_steps = 2, batch_size = 8, max_prompt_length = 16 }}
"""
    found = [p for p in _problems(root, stages) if p.field == "train.max_prompt_length"]
    has_it = "max_prompt_length" in trl_knobs.imported_fields(kind)
    assert bool(found) is not has_it, found
    if found:
        assert "max_length" in (found[0].fix or "")


def test_unknown_optim_did_you_mean(tmp_path: Path) -> None:
    root = write_data(tmp_path)
    (problem,) = _problems(root, SFT.format(train=', optim = "adamw_torch_fusd"', extra=""))
    assert problem.field == "train.optim" and "'adamw_torch_fused'" in (problem.fix or "")


def test_liger_kernel_needs_its_package(tmp_path: Path) -> None:
    import importlib.util

    if importlib.util.find_spec("liger_kernel") is not None:
        pytest.skip("liger-kernel is installed here")
    root = write_data(tmp_path)
    (problem,) = _problems(root, SFT.format(train=", use_liger_kernel = true", extra=""))
    assert problem.field == "train.use_liger_kernel"
    assert "pip install liger-kernel" in (problem.fix or "")


def test_bf16_on_a_cpu_without_bf16_units(tmp_path: Path) -> None:
    from graftline.engine.pipeline.scaleout import visible_gpus

    if visible_gpus() or trl_knobs.cpu_has_bf16() is not False:
        pytest.skip("this machine has a GPU or a CPU with bf16 units (or does not say)")
    root = write_data(tmp_path)
    (problem,) = _problems(root, SFT.format(train=', precision = "bf16"', extra=""))
    assert problem.field == "train.precision" and '"auto"' in (problem.fix or "")


def test_cpu_flags_are_read(tmp_path: Path) -> None:
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nflags\t\t: fpu sse2 avx512f avx512_bf16 amx_tile\n")
    assert trl_knobs.cpu_has_bf16(info) is True
    info.write_text("processor\t: 0\nflags\t\t: fpu sse2 avx2\n")
    assert trl_knobs.cpu_has_bf16(info) is False
    info.write_text("processor\t: 0\nFeatures\t: fp asimd bf16 i8mm\n")  # aarch64
    assert trl_knobs.cpu_has_bf16(info) is True
    assert trl_knobs.cpu_has_bf16(tmp_path / "absent") is None


def _refused(tmp_path: Path, train: str = "", extra: str = "") -> Problem:
    """The one problem the file's parse refuses an SFT stage with."""
    root = write_data(tmp_path)
    with pytest.raises(PipelineError) as caught:
        pipeline(root, SFT.format(train=train, extra=extra))
    (problem,) = caught.value.problems
    return problem


def test_precision_is_a_closed_choice(tmp_path: Path) -> None:
    problem = _refused(tmp_path, train=', precision = "bfloat16"')
    assert "precision" in (problem.field or "")


def test_a_trl_field_written_as_a_stage_key_points_at_trl(tmp_path: Path) -> None:
    problem = _refused(tmp_path, extra="dataset_num_proc = 2")
    assert "trl = { … }" in (problem.fix or "")


def test_foreach_trl_sub_table_keys_have_their_lines(tmp_path: Path) -> None:
    root = write_data(tmp_path)
    stages = """
[[foreach]]
as = "t"
values = ["a", "b"]

  [[foreach.stage]]
  name = "sft_{t}"
  kind = "sft"
  data = "sft.jsonl"
  train = { max_steps = 2 }

  [foreach.stage.trl]
  shuffle_datasett = false
"""
    found = _problems(root, stages)
    assert [p.stage for p in found] == ["sft_a", "sft_b"]
    text = (root / "pipeline.toml").read_text().splitlines()
    assert all(text[p.line - 1].strip().startswith("shuffle_datasett") for p in found)


def test_a_run_started_without_validate_stops_with_the_fix(tmp_path: Path, toy_base: Path
                                                           ) -> None:
    """The engine checks the keys again when it builds the config: a clear error, no
    traceback from TRL."""
    from graftline.engine.run.runner import run_pipeline

    root = write_data(tmp_path)
    pf = pipeline(root, SFT.format(train="", extra="trl = { learning_rate = 0.1 }"))
    sink = ListSink()
    result = run_pipeline(pf, root / "runs" / "r", sink)
    assert result.status == "failed"
    errors = sink.of_type("error")
    assert any("trl.learning_rate is set by graftline" in e["message"] for e in errors), errors
    assert any("train.lr" in (e.get("fix") or "") for e in errors), errors

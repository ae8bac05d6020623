"""`combine` takes adapter folders made outside the run (docs/bring-your-own.md).

The foreign adapter is made here with plain peft, no graftline: a LoRA on the same toy base,
saved with save_pretrained. A pipeline trains an SFT stage and combines it with that folder
(`cat`, 1.0 / 0.25); the combined delta is compared with the weighted sum of the two deltas as
plain peft computes them in the same test.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from lineage_helpers import files_under, make_adapter
from peft import PeftModel
from peft.tuners.lora import LoraLayer
from stage_helpers import one_thread, pipeline, write_data  # noqa: F401
from transformers import AutoModelForCausalLM

from graftline.engine.common.sink import ListSink
from graftline.engine.lineage import cleanup, scan
from graftline.engine.lineage import manifest as mf
from graftline.engine.pipeline.validate import plan_of, validate
from graftline.engine.run.runner import run_pipeline

pytestmark = pytest.mark.usefixtures("one_thread")

# Tolerance of the delta comparison: float32 sums of products of the same factors in another
# order (cat concatenates A and B; the reference adds two products).
ATOL, RTOL = 1e-6, 1e-5

SFT = """
[[stage]]
name = "s4"
kind = "sft"
from = "base"
data = "sft.jsonl"
lora = { r = 4 }
train = { max_steps = 3, batch_size = 8, lr = 3e-3 }
"""

COMBINE = SFT + """
[[stage]]
name = "mix"
kind = "combine"
adapters = ["s4", "{entry}"]
weights = [1.0, 0.25]
"""


@pytest.fixture(scope="module")
def top(toy_base: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder holding the pipeline's data and a notebook's adapters, made with plain peft."""
    top = tmp_path_factory.mktemp("combine-foreign")
    write_data(top)
    nb = top / "notebook"
    make_adapter(nb / "foreign", toy_base, r=4, seed=3)  # on the same toy base
    # a different base: a merge saved by hand, and an adapter made on it
    merged = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(toy_base),
                                       make_adapter(nb / "first", toy_base, r=4, seed=1))
    merged.merge_and_unload().save_pretrained(nb / "merged")
    make_adapter(nb / "on-merged", nb / "merged", r=4, seed=2)
    make_adapter(nb / "on-merged-2", nb / "merged", r=8, seed=5)
    # not adapters: notes only, and a config without weights
    (nb / "notes").mkdir()
    (nb / "notes" / "README.txt").write_text("not an adapter\n")
    (nb / "no-weights").mkdir()
    (nb / "no-weights" / "adapter_config.json").write_text(
        (nb / "foreign" / "adapter_config.json").read_text())
    return top


def _errors(pf):
    return [p for p in validate(pf) if p.severity == "error"]


def test_combine_a_stage_with_a_foreign_adapter_is_the_exact_weighted_sum(
        top: Path, toy_base: Path) -> None:
    nb = top / "notebook"
    before = files_under(nb)
    pf = pipeline(top, COMBINE.replace("{entry}", "notebook/foreign"), "mix.toml")
    assert not _errors(pf), _errors(pf)
    plan = plan_of(pf)
    mix = plan.step("mix")
    foreign = os.path.realpath(nb / "foreign")
    assert [(p.stage, p.foreign.path if p.foreign else None) for p in mix.parts] == [
        ("s4", None), (None, foreign)]
    assert (mix.model_stage, mix.model_foreign, mix.lora.r) == (None, None, 8)
    # plan says in words where the foreign part comes from
    (words,) = plan.chain_words
    assert words == (f"'mix' combines a PEFT adapter at {foreign} (r=4, recorded base "
                     f"{os.path.realpath(toy_base)}) (adapters[1])")
    assert "notebook/foreign" in mix.starts_from and "s4" in mix.starts_from

    run_dir = top / "runs" / "r"
    sink = ListSink()
    result = run_pipeline(pf, run_dir, sink)
    assert result.status == "finished", [e for e in sink.events if e[0] == "error"]

    manifest = mf.read(run_dir / "stages" / "mix")
    s4 = mf.read(run_dir / "stages" / "s4")
    assert manifest.kind == "combined" and manifest.status == "complete"
    staged, outside = manifest.parents
    assert (staged.relation, staged.id, staged.foreign) == ("combined_from", s4.id, False)
    assert (outside.relation, outside.path, outside.foreign, outside.kind, outside.ref) == (
        "combined_from", foreign, True, "adapter", "notebook/foreign")
    assert outside.base == os.path.realpath(toy_base)
    assert os.path.realpath(manifest.base) == os.path.realpath(toy_base)
    assert manifest.lora.r == 8

    # the combined delta = 1.0·Δ(s4) + 0.25·Δ(foreign), each delta computed by plain peft here.
    # The SFT stage targets every linear layer, the notebook's adapter q_proj and v_proj only:
    # where a part has no LoRA its delta is zero.
    model = AutoModelForCausalLM.from_pretrained(str(toy_base))
    model = PeftModel.from_pretrained(model, str(run_dir / "stages" / "s4"), adapter_name="s4")
    model.load_adapter(str(nb / "foreign"), adapter_name="nb")
    model.load_adapter(str(run_dir / "stages" / "mix"), adapter_name="mix")
    layers = [m for m in model.modules() if isinstance(m, LoraLayer)]
    both = [m for m in layers if "nb" in m.lora_A and "s4" in m.lora_A]
    assert both, "no layer carries both parts: the test would not test the sum"
    for layer in layers:
        want = sum(w * layer.get_delta_weight(name) for name, w in (("s4", 1.0), ("nb", 0.25))
                   if name in layer.lora_A)
        torch.testing.assert_close(layer.get_delta_weight("mix"), want, atol=ATOL, rtol=RTOL)
    # and the foreign part really contributes (its share is not lost in the tolerance)
    layer = both[0]
    alone = layer.get_delta_weight("s4")
    assert (layer.get_delta_weight("mix") - alone).abs().max() > 100 * ATOL

    # lineage shows the foreign part, scanning the runs alone: outside the roots, never deleted.
    # A cleanup keeping only s4 deletes the run's combine and nothing outside the run.
    runs = scan([top / "runs"])
    node = runs.node(foreign)
    assert (node.kind, node.in_roots) == ("adapter", False)
    mix_key = os.path.realpath(run_dir / "stages" / "mix")
    keep_s4 = [cleanup.parse_keep(os.path.realpath(run_dir / "stages" / "s4"))]
    planned = cleanup.plan_cleanup(runs, keep_s4)
    assert mix_key in planned.delete and foreign not in planned.delete
    assert all(k.startswith(os.path.realpath(top / "runs") + os.sep) for k in planned.delete)
    # with the notebook scanned too, the same cleanup keeps the notebook's adapter: the run
    # combined it, it did not make it
    both_roots = scan([top / "runs", nb])
    assert both_roots.node(foreign).started == ("r/mix",)
    planned = cleanup.plan_cleanup(both_roots, keep_s4)
    assert mix_key in planned.delete
    assert foreign in planned.protected and foreign not in planned.delete
    assert "made outside graftline" in " ".join(planned.protected[foreign])
    assert files_under(nb) == before  # the notebook was read, never written


def test_validate_refuses_bad_adapter_folders_naming_field_and_fix(top: Path) -> None:
    nb = top / "notebook"
    before = files_under(top / "notebook")
    cases = {
        "./notebook/missing": ("not found", "relative to the pipeline file"),
        "notebook/notes": ("neither an adapter", "PEFT adapter directory"),
        "notebook/no-weights": ("no adapter weights", "weights included"),
        "notebook/merged": ("is a full model, not an adapter", "PEFT adapter folder"),
        "notebook/on-merged": (f"was trained on {os.path.realpath(nb / 'merged')}",
                               "same model"),
    }
    for entry, (message, fix) in cases.items():
        pf = pipeline(top, COMBINE.replace("{entry}", entry), "bad.toml")
        errors = _errors(pf)
        assert [(e.stage, e.field) for e in errors] == [("mix", "adapters[1]")], (entry, errors)
        (error,) = errors
        assert message in error.message and fix in (error.fix or ""), (entry, error)
        assert error.file == str(pf.path)
        assert error.line == pf.line("mix", "adapters")
    assert not (top / "runs" / "bad").exists()
    assert files_under(top / "notebook") == before  # validate changes nothing


def test_adapters_made_elsewhere_on_their_own_base(top: Path) -> None:
    """Only folders made elsewhere, on a merge saved by hand: as for `from = path`, validate asks
    which base wins; with base_from = "adapter" the combine sits on their recorded base. A
    second folder on another base is refused on its own entry."""
    nb = top / "notebook"
    merged = os.path.realpath(nb / "merged")
    stages = """
[[stage]]
name = "mix"
kind = "combine"
adapters = ["notebook/on-merged", "notebook/on-merged-2"]
weights = [1.0, 0.5]
{extra}
"""
    pf = pipeline(top, stages.format(extra=""), "own.toml")
    errors = _errors(pf)
    assert [e.field for e in errors] == ["adapters[0]", "adapters[1]"], errors
    assert all("base_from" in (e.fix or "") for e in errors)
    pf = pipeline(top, stages.format(extra='base_from = "adapter"'), "own.toml")
    assert not _errors(pf), _errors(pf)
    mix = plan_of(pf).step("mix")
    assert (mix.model_stage, mix.model_foreign, mix.lora.r) == (None, merged, 12)
    pf = pipeline(top, stages.format(extra='base_from = "adapter"').replace(
        "notebook/on-merged-2", "notebook/foreign"), "own.toml")
    (error,) = _errors(pf)
    assert error.field == "adapters[1]" and merged in error.message


def test_a_rehearsal_stands_a_stage_adapter_in_for_the_folder(top: Path) -> None:
    """On a base that is not its own twin, the folder's weights fit the real base, not the
    twin the rehearsed SFT trains on: the rehearsal combines the stage's adapter in its place,
    says so, and passes where validate passes the real file; the folder is not written."""
    from graftline.engine.rehearse import rehearse

    nb = top / "notebook"
    before = files_under(nb)
    pf = pipeline(top, COMBINE.replace("{entry}", "notebook/on-merged"), "rehearse.toml")
    pf.path.write_text(pf.path.read_text().replace('base = "toy:addition"',
                                                   'base = "notebook/merged"'))
    from graftline.engine.pipeline.file import load

    assert not _errors(load(pf.path))
    report = rehearse(pf.path, steps=2, scratch_parent=top / "scratch")
    assert report.ok, [(s.name, s.error) for s in report.failures]
    assert any("'mix'" in note and "notebook/on-merged" in note and "'s4' stands in" in note
               for note in report.notes), report.notes
    assert files_under(nb) == before

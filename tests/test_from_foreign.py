"""`from` = a checkpoint made elsewhere (issue 19, "Start from what exists").

A notebook's tree is built here with plain transformers/peft/trl, no graftline: an adapter merged
into the base and the merge saved; an adapter on that saved merge trained by a transformers
Trainer (checkpoint-N folders); DPO with TRL continuing checkpoint-N's adapter (which leaves
TRL's `ref/` folder). A pipeline continues that DPO adapter with IPO and exports it.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import torch
from lineage_helpers import files_under, make_adapter
from peft import LoraConfig, PeftModel, get_peft_model
from stage_helpers import one_thread, pipeline, write_data  # noqa: F401
from transformers import AutoModelForCausalLM, AutoTokenizer, Trainer, TrainingArguments

from graftline.engine.common.sink import ListSink
from graftline.engine.export.chain import resolve_chain
from graftline.engine.lineage import cleanup, scan
from graftline.engine.lineage import manifest as mf
from graftline.engine.pipeline.foreign import read_foreign
from graftline.engine.pipeline.validate import plan_of, validate
from graftline.engine.run.runner import run_pipeline
from graftline.engine.toy import tasks

pytestmark = pytest.mark.usefixtures("one_thread")


class _Rows(torch.utils.data.Dataset):
    """Chat rows of the toy task, tokenized: what a notebook's SFT loop feeds a Trainer."""

    def __init__(self, tokenizer, n: int = 16) -> None:
        rows = list(tasks.sft_rows(n, 7))
        self.ids = [tokenizer.apply_chat_template(r["prompt"] + r["completion"], tokenize=True,
                                                  return_dict=True)["input_ids"][:48]
                    for r in rows]

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        ids = self.ids[i][:10]  # same length for the default collator (a notebook's shortcut)
        ids = torch.tensor(ids + [ids[-1]] * (10 - len(ids)))
        return {"input_ids": ids, "labels": ids}


def _notebook(toy_base: Path, top: Path) -> Path:
    nb = top / "notebook"
    nb.mkdir()
    tokenizer = AutoTokenizer.from_pretrained(toy_base)
    # 1. an adapter on the base, merged, the merge SAVED and loaded back (the right way)
    first = make_adapter(nb / "sft1", toy_base, r=4, seed=1)
    merged = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(toy_base),
                                       first).merge_and_unload()
    merged.save_pretrained(nb / "merged")
    tokenizer.save_pretrained(nb / "merged")
    # 2. agent SFT on the saved merge with a plain Trainer: checkpoint-2, checkpoint-4
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(nb / "merged"),
                           LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"]))
    args = TrainingArguments(output_dir=str(nb / "agent"), max_steps=4, save_steps=2,
                             per_device_train_batch_size=4, use_cpu=True, report_to=[],
                             bf16=False, learning_rate=3e-3, disable_tqdm=True, logging_steps=1)
    Trainer(model=model, args=args, train_dataset=_Rows(tokenizer)).train()
    # 3. DPO with TRL continuing checkpoint-4's adapter: TRL saves its frozen ref/ beside it
    from datasets import Dataset
    from trl import DPOConfig, DPOTrainer

    from graftline.engine.stages import trl_compat

    trl_compat.install()
    policy = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(nb / "merged"),
                                       nb / "agent" / "checkpoint-4", is_trainable=True)
    config = DPOConfig(output_dir=str(nb / "dpo-run"), max_steps=2, per_device_train_batch_size=4,
                       use_cpu=True, bf16=False, report_to=[], learning_rate=1e-3,
                       gradient_checkpointing=False, disable_tqdm=True, max_length=64)
    trainer = DPOTrainer(model=policy, ref_model=None, args=config,
                         train_dataset=Dataset.from_list(list(tasks.preference_rows(16, 8))),
                         processing_class=tokenizer)
    trainer.train()
    trainer.save_model(str(nb / "dpo"))
    tokenizer.save_pretrained(nb / "dpo")
    return nb


@pytest.fixture(scope="module")
def notebook(toy_base: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _notebook(toy_base, tmp_path_factory.mktemp("foreign"))


def test_notebook_tree_is_what_a_notebook_leaves(notebook: Path) -> None:
    assert (notebook / "dpo" / "ref" / "adapter_config.json").is_file()
    assert (notebook / "agent" / "checkpoint-4" / "trainer_state.json").is_file()
    dpo = read_foreign("notebook/dpo", notebook.parent)
    assert (dpo.kind, dpo.source, dpo.has_ref) == ("adapter", "peft", True)
    assert dpo.base_path == os.path.realpath(notebook / "merged")
    assert dpo.lora is not None and dpo.lora.r == 8
    ckpt = read_foreign("./notebook/agent/checkpoint-4", notebook.parent)
    assert (ckpt.kind, ckpt.source, ckpt.step) == ("adapter", "trainer", 4)
    merged = read_foreign(str(notebook / "merged"), Path("/"))
    assert (merged.kind, merged.source) == ("model", "transformers")


IPO = """
[[stage]]
name = "ipo"
kind = "dpo"
loss = "ipo"
beta = 0.5
from = "notebook/dpo"
{base_from}data = "pref.jsonl"
train = {{ max_steps = 6, lr = 1e-3, batch_size = 8 }}
{extra}
[[stage]]
name = "final"
kind = "export"
out = "exported"
dtype = "float32"
"""


# a merge of the notebook's Trainer checkpoint, on the base its adapter records
MERGE_CHECKPOINT = """
[[stage]]
name = "m"
kind = "merge"
from = "notebook/agent/checkpoint-4"
base_from = "adapter"
"""


def _errors(pf):
    return [p for p in validate(pf) if p.severity == "error"]


def test_validate_reports_each_foreign_mistake(notebook: Path) -> None:
    top = notebook.parent
    write_data(top)
    # the adapter's base (the saved merge) is not [pipeline] base (toy): say which wins
    pf = pipeline(top, IPO.format(base_from="", extra=""), "disagree.toml")
    errors = _errors(pf)
    assert [(e.stage, e.field) for e in errors] == [("ipo", "from")], errors
    assert "base_from" in errors[0].fix and str(notebook / "merged") in errors[0].message
    # a rank change on a continued adapter: today's rank-change-without-merge error
    pf = pipeline(top, IPO.format(base_from='base_from = "adapter"\n',
                                  extra="lora = { r = 16 }"), "rank.toml")
    assert [(e.field, "rank 8 → 16" in e.message) for e in _errors(pf)] == [("lora", True)]
    # a Trainer output_dir is not a checkpoint: the fix names the newest checkpoint-N
    pf = pipeline(top, IPO.format(base_from="", extra="").replace("notebook/dpo",
                                                                   "notebook/agent"), "dir.toml")
    (error,) = _errors(pf)
    assert error.field == "from" and "checkpoint-4" in error.fix
    # missing; and a bare word stays a stage name with did-you-mean
    pf = pipeline(top, IPO.format(base_from="", extra="").replace("notebook/dpo",
                                                                   "./nowhere"), "gone.toml")
    assert "not found" in _errors(pf)[0].message
    pf = pipeline(top, IPO.format(base_from="", extra="").replace("notebook/dpo", "bsae"),
                  "typo.toml")
    assert "base" in (_errors(pf)[0].fix or "")
    # a new adapter on a foreign adapter would stack
    pf = pipeline(top, IPO.format(base_from='base_from = "adapter"\n',
                                  extra='adapter = "new"'), "stack.toml")
    assert [e.field for e in _errors(pf)] == ["adapter"]


def test_in_memory_merge_is_proven_from_weights(toy_base: Path, tmp_path: Path) -> None:
    """The seeds' pitfall: the next adapter trained on merge_and_unload()'s result names the OLD
    base. The merge saved beside it is the evidence; validate refuses with the fix."""
    nb = tmp_path / "nb"
    base = nb / "base"
    shutil.copytree(toy_base, base)
    first = make_adapter(nb / "a1", base, seed=1)
    merged = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base),
                                       first).merge_and_unload()
    merged.save_pretrained(nb / "merged")
    make_adapter(nb / "after", model=merged, seed=4)
    assert json.loads((nb / "after" / "adapter_config.json").read_text())[
        "base_model_name_or_path"] == str(base)
    write_data(tmp_path)
    stages = IPO.format(base_from='base_from = "adapter"\n', extra="").replace(
        "notebook/dpo", "nb/after")
    # only the first merge on disk: suspected, not proven (a warning that says so)
    problems = validate(pipeline(tmp_path, stages, "imm.toml"))
    assert [p.severity for p in problems if "in memory" in p.message] == ["warning"], problems
    # the notebook then merged that adapter too and saved it: merged2 == base + a1 + after
    # exactly, which only an adapter trained on the in-memory merge gives. Proven: an error.
    PeftModel.from_pretrained(merged, nb / "after").merge_and_unload().save_pretrained(
        nb / "merged2")
    errors = _errors(pipeline(tmp_path, stages, "imm.toml"))
    assert any("in-memory merge" in e.message and "save_pretrained" in e.fix for e in errors)
    # the same adapter's sibling made right (on the base, no merge in between) only warns
    fine = IPO.format(base_from='base_from = "adapter"\n', extra="").replace("notebook/dpo",
                                                                             "nb/a1")
    problems = validate(pipeline(tmp_path, fine, "fine.toml"))
    assert not [p for p in problems if p.severity == "error" and p.stage == "ipo"]


def test_continue_a_notebook_dpo_adapter_with_ipo_and_export(notebook: Path) -> None:
    top = notebook.parent
    write_data(top)
    before = files_under(notebook)
    pf = pipeline(top, IPO.format(base_from='base_from = "adapter"\n', extra=""))
    assert not _errors(pf), _errors(pf)
    plan = plan_of(pf)
    ipo = plan.step("ipo")
    assert (ipo.parent, ipo.action, ipo.foreign.path) == (None, "continue",
                                                          os.path.realpath(notebook / "dpo"))
    assert ipo.model_foreign == os.path.realpath(notebook / "merged")
    assert "frozen" in ipo.reference and "notebook/dpo" in ipo.reference
    assert any("PEFT adapter" in line and "ref/" in line for line in plan.chain_words)

    sink = ListSink()
    result = run_pipeline(pf, top / "runs" / "r1", sink)
    assert result.status == "finished", [e for e in sink.events if e["type"] == "error"]

    stage_dir = top / "runs" / "r1" / "stages" / "ipo"
    manifest = mf.read(stage_dir)
    continued, trained = manifest.parents
    assert (continued.relation, continued.path, continued.foreign, continued.kind) == (
        "continued_from", os.path.realpath(notebook / "dpo"), True, "adapter")
    assert continued.base == os.path.realpath(notebook / "merged")
    assert (trained.relation, trained.path) == ("trained_on",
                                                os.path.realpath(notebook / "merged"))
    assert manifest.base == os.path.realpath(notebook / "merged")
    checks = {c.name: c.status for c in manifest.checks}
    assert checks.get("reference_start") == "pass" and checks.get("lora_config_kept") == "pass"
    # IPO changed the adapter it continued
    from safetensors.torch import load_file

    old = load_file(notebook / "dpo" / "adapter_model.safetensors")
    new = load_file(stage_dir / "adapter_model.safetensors")
    assert any(not torch.equal(old[k], new[k]) for k in old)

    # the export (verified by the stage) reproduces merge + ipo adapter, measured here too
    exported = top / "exported"
    assert mf.read(exported).kind == "export"
    ids = torch.tensor([[1, 5, 6, 7, 8, 9]])
    with torch.no_grad():
        want = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(
            notebook / "merged"), stage_dir)(input_ids=ids).logits
        got = AutoModelForCausalLM.from_pretrained(exported)(input_ids=ids).logits
        off = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(
            notebook / "merged"), notebook / "dpo")(input_ids=ids).logits
    assert (got - want).abs().max() < 1e-3 < (got - off).abs().max()
    # export's walk goes through the notebook's adapter to its saved merge
    walked = [n.path for n in resolve_chain(stage_dir).lineage]
    assert walked[:2] == [os.path.realpath(notebook / "merged"),
                          os.path.realpath(notebook / "dpo")]

    # lineage shows the foreign parents, scanning the runs alone (outside: never deleted) ...
    runs = scan([top / "runs"])
    dpo_key = os.path.realpath(notebook / "dpo")
    node = runs.node(dpo_key)
    assert (node.kind, node.in_roots) == ("adapter", False)
    assert os.path.realpath(notebook / "merged") in runs.needs(str(stage_dir.resolve()))
    # ... and with the notebook scanned too: cleanup keeping only the run's result keeps the
    # notebook's adapter (a stage started from it) and the merge it needs
    both = scan([top / "runs", notebook])
    assert both.node(dpo_key).started == ("r1/ipo",)
    planned = cleanup.plan_cleanup(both, [cleanup.parse_keep(str(stage_dir.resolve()))])
    assert dpo_key in planned.protected and os.path.realpath(notebook / "merged") in \
        planned.protected
    assert not [k for k in planned.delete if k in (dpo_key,)]
    assert files_under(notebook) == before  # nothing in the notebook was written or removed


def test_run_reference_through_the_run_index(notebook: Path, tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """`from = "run:ID/STAGE"`: another run's stage, found through the per-user run index."""
    from graftline.engine.run import index

    monkeypatch.setenv(index.STATE_DIR_ENV, str(tmp_path / "state"))
    run_dir = tmp_path / "runs" / "older-run-1"
    stage = run_dir / "stages" / "sft"
    shutil.copytree(notebook / "dpo", stage, ignore=shutil.ignore_patterns("ref"))
    (run_dir / "events.jsonl").write_text("")
    mf.complete(stage, mf.Manifest(kind="adapter", stage="sft", run="older-run-1",
                                   base=os.path.realpath(notebook / "merged")))
    assert index.register(run_dir)
    found = read_foreign("run:older/sft", tmp_path)
    assert (found.kind, found.source, found.run, found.stage) == ("adapter", "graftline",
                                                                  "older-run-1", "sft")
    assert found.base_path == os.path.realpath(notebook / "merged")
    write_data(tmp_path)
    stages = IPO.format(base_from='base_from = "adapter"\n', extra="").replace(
        "notebook/dpo", "run:older-run-1/sft")
    plan = plan_of(pipeline(tmp_path, stages))
    assert plan.step("ipo").foreign.path == str(stage.resolve()) and not plan.problems
    for ref, words in (("run:nope/sft", "no run 'nope'"), ("run:older/grpo", "no stage")):
        bad = plan_of(pipeline(tmp_path, stages.replace("run:older-run-1/sft", ref), "bad.toml"))
        assert [words in p.message for p in bad.problems] == [True], bad.problems


def test_plan_new_on_a_foreign_model_and_merge_of_a_foreign_adapter(notebook: Path) -> None:
    top = notebook.parent
    write_data(top)
    stages = MERGE_CHECKPOINT + """
[[stage]]
name = "fresh"
kind = "sft"
from = "notebook/merged"
adapter = "new"
data = "sft.jsonl"
lora = { r = 4 }
train = { max_steps = 2 }

[[stage]]
name = "more"
kind = "sft"
data = "sft.jsonl"
train = { max_steps = 2 }
"""
    pf = pipeline(top, stages, "shapes.toml")
    plan = plan_of(pf)
    merge, fresh, more = plan.steps
    assert (merge.action, merge.foreign.source, merge.foreign.step) == ("merge", "trainer", 4)
    merged = os.path.realpath(notebook / "merged")
    assert (fresh.action, fresh.model_foreign, fresh.foreign.kind) == ("new", merged, "model")
    # the stage after it continues its adapter, still on the notebook's merge
    assert (more.parent, more.action, more.model_foreign) == ("fresh", "continue", merged)
    assert "the model at" in more.starts_from and merged in more.starts_from
    assert not [p for p in validate(pf) if p.severity == "error"]


def test_a_rehearsal_starts_a_foreign_stage_from_the_twin(notebook: Path, tmp_path: Path) -> None:
    """The notebook's adapter fits the real base, not a rehearsal's twin of it: the stage that
    continues it is rehearsed from the twin with a fresh adapter, the export after it too, and
    the report says so; the notebook is not written. On the toy base (its own twin) the
    checkpoint is rehearsed as it is."""
    from graftline.engine.rehearse import rehearse
    from graftline.engine.rehearse.rehearsal import derive

    top = notebook.parent
    write_data(top)
    before = files_under(notebook)
    on_toy = pipeline(top, IPO.format(base_from='base_from = "adapter"\n', extra=""), "toy.toml")
    as_is = derive(on_toy, base=on_toy.pipeline.pipeline.base, scratch=tmp_path / "d")
    assert as_is.pipeline.by_name("ipo").from_ == "notebook/dpo"

    pf = pipeline(top, IPO.format(base_from="", extra=""), "reh.toml")
    text = pf.path.read_text().replace('base = "toy:addition"', 'base = "notebook/merged"')
    pf.path.write_text(text.replace('out = "exported"', 'out = "rehearsed-export"'))
    report = rehearse(pf.path, steps=2, scratch_parent=tmp_path / "s")
    assert report.ok, [(s.name, s.error) for s in report.failures]
    assert any("'ipo' starts from notebook/dpo (made outside graftline)" in note
               and "fresh adapter" in note for note in report.notes), report.notes
    assert files_under(notebook) == before


def _logits(model_dir: Path, adapter: Path | None = None) -> torch.Tensor:
    ids = torch.tensor([[1, 5, 6, 7, 8, 9]])
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    if adapter is not None:
        model = PeftModel.from_pretrained(model, adapter)
    with torch.no_grad():
        return model(input_ids=ids).logits


def test_merge_and_export_straight_from_a_foreign_checkpoint(notebook: Path) -> None:
    """No training stage in between: a merge of the notebook's Trainer checkpoint, and an export
    of its DPO adapter, each on the base the adapter records. Both reproduce base + adapter as
    plain peft computes it here; the notebook is not written."""
    top = notebook.parent
    write_data(top)
    before = files_under(notebook)
    stages = MERGE_CHECKPOINT + """
[[stage]]
name = "out"
kind = "export"
from = "notebook/dpo"
base_from = "adapter"
out = "dpo-exported"
dtype = "float32"
"""
    pf = pipeline(top, stages, "straight.toml")
    assert not _errors(pf), _errors(pf)
    sink = ListSink()
    result = run_pipeline(pf, top / "runs" / "straight", sink)
    assert result.status == "finished", [e for e in sink.events if e["type"] == "error"]
    merged = notebook / "merged"
    want = _logits(merged, notebook / "agent" / "checkpoint-4")
    got = _logits(top / "runs" / "straight" / "stages" / "m")
    assert (got - want).abs().max() < 1e-4 < (got - _logits(merged)).abs().max()
    want = _logits(merged, notebook / "dpo")
    got = _logits(top / "dpo-exported")
    assert (got - want).abs().max() < 1e-3 < (got - _logits(merged)).abs().max()
    assert mf.read(top / "dpo-exported").kind == "export"
    assert files_under(notebook) == before

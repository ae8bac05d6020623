"""Hand-made checkpoint trees in the shapes users report, written with plain transformers and
peft the way a notebook or script writes them (graftline builds nothing here), cleaned with each
keep word from the tree's folder and from its parent; afterwards every checkpoint that stays
loads on the base the one resolver finds, and a symlinked canary outside survives.

Shapes: a notebook's `checkpoints/<stage>/{checkpoint-N, final}` (real Trainer checkpoints),
a DPO output with TRL's frozen `ref/` sub-adapter (saved by peft's save_pretrained with a second
adapter named `ref`, which is what TRL's save_model does), an IPO result with no checkpoint-N,
a `cat` combination saved with save_pretrained (one subfolder per adapter, nothing on top),
metrics kept in sibling folders, and every base recorded relative ("base"), as a script run
from the tree's own folder records it.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import torch
from lineage_helpers import files_under
from peft import LoraConfig, PeftModel, get_peft_model
from transformers import AutoModelForCausalLM, Trainer, TrainingArguments
from typer.testing import CliRunner

from graftline.console.cli import app
from graftline.engine import lineage
from graftline.engine.export import plan_export
from graftline.engine.export.chain import resolve_chain
from graftline.engine.lineage import cleanup
from graftline.engine.lineage.resolve import resolve_base

LORA = {"r": 4, "lora_alpha": 8, "target_modules": ["q_proj", "v_proj"]}


class _Rows(torch.utils.data.Dataset):
    def __len__(self) -> int:
        return 8

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        row = torch.tensor([1, *(5 + (i + k) % 10 for k in range(8)), 2])
        return {"input_ids": row, "labels": row}


def _perturb(model: torch.nn.Module, seed: int, adapter: str = "default") -> None:
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name and f".{adapter}." in name:
                param.add_(torch.randn(param.shape, generator=generator) * 0.05)


def _build(tree: Path, toy_base: Path) -> None:
    """Run from the tree's folder, as the user's script was: every base is recorded as "base"."""
    shutil.copytree(toy_base, tree / "base")
    here = os.getcwd()
    os.chdir(tree)
    try:
        ck = Path("checkpoints")
        # SFT: Trainer checkpoint-1..3 and a final/ save; metrics in training_logs/.
        sft = get_peft_model(AutoModelForCausalLM.from_pretrained("base"), LoraConfig(**LORA))
        args = TrainingArguments(
            output_dir=str(ck / "sft"), max_steps=3, save_steps=1, logging_steps=1,
            per_device_train_batch_size=4, use_cpu=True, report_to=[], bf16=False,
            learning_rate=1e-3, disable_tqdm=True, save_total_limit=None)
        Trainer(model=sft, args=args, train_dataset=_Rows()).train()
        _perturb(sft, 1)
        sft.save_pretrained(ck / "sft" / "final")
        (ck / "sft" / "training_logs").mkdir()
        (ck / "sft" / "training_logs" / "metrics.json").write_text(
            json.dumps({"summary": {"accuracy": 0.56, "loss": 0.9}}))
        # DPO continuing the SFT adapter: TRL keeps the start as a frozen `ref` adapter and
        # save_model writes it to ref/ inside the output.
        dpo = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained("base"),
                                        ck / "sft" / "final", is_trainable=True)
        dpo.load_adapter(ck / "sft" / "final", adapter_name="ref")
        _perturb(dpo, 2)
        dpo.save_pretrained(ck / "dpo" / "final")
        (ck / "dpo" / "test_results").mkdir()
        (ck / "dpo" / "test_results" / "evaluation.json").write_text(
            json.dumps({"accuracy": 0.79}))
        # IPO: a final/ only, no checkpoint-N at all.
        ipo = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained("base"),
                                        ck / "dpo" / "final", is_trainable=True)
        _perturb(ipo, 3)
        ipo.save_pretrained(ck / "ipo" / "final")
        (ck / "ipo" / "test_results").mkdir()
        (ck / "ipo" / "test_results" / "evaluation.json").write_text(
            json.dumps({"accuracy": 0.83}))
        # A cat combination: 1.0·DPO + 0.25·SFT, saved with save_pretrained.
        combo = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained("base"),
                                          ck / "dpo" / "final", adapter_name="dpo")
        combo.load_adapter(ck / "sft" / "final", adapter_name="sft")
        combo.add_weighted_adapter(["dpo", "sft"], [1.0, 0.25], "mix", combination_type="cat")
        combo.save_pretrained("combo")
    finally:
        os.chdir(here)


@pytest.fixture(scope="module")
def pristine(toy_base: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    top = tmp_path_factory.mktemp("shapes")
    tree = top / "project"
    tree.mkdir()
    _build(tree, toy_base)
    return tree


@pytest.fixture()
def tree(pristine: Path, tmp_path: Path) -> Path:
    """A fresh copy per test, with a canary outside it that a symlink inside points to."""
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "canary.bin").write_bytes(b"c" * 4096)
    copy = tmp_path / "work" / "project"
    shutil.copytree(pristine, copy, symlinks=True)
    os.symlink(outside / "canary.bin", copy / "checkpoints" / "sft" / "final" / "canary")
    os.symlink(outside, copy / "link-out")
    return copy


def _canary_alive(tree: Path) -> None:
    canary = tree.parent.parent / "outside" / "canary.bin"
    assert canary.read_bytes() == b"c" * 4096


def _every_remaining_adapter_loads(tree: Path) -> list[str]:
    """Load each adapter that stays on the base the resolver finds (from a third folder)."""
    loaded = []
    here = os.getcwd()
    os.chdir(tree.parent.parent)  # neither the tree's folder nor its parent
    try:
        for config in sorted(tree.rglob("adapter_config.json")):
            folder = config.parent
            if folder.name == "ref":
                continue  # loaded with its checkpoint, below
            ref = json.loads(config.read_text())["base_model_name_or_path"]
            found = resolve_base(ref, folder)
            assert found.kind == "path" and Path(found.path) == (tree / "base").resolve(), ref
            model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(found.path),
                                              folder)
            if (folder / "ref").is_dir():
                model.load_adapter(folder / "ref", adapter_name="ref")
            with torch.no_grad():
                logits = model(input_ids=torch.tensor([[1, 5, 6, 7]])).logits
            assert torch.isfinite(logits).all()
            # and it still exports: the whole chain to its base is there (plan_export reads
            # every header and config it would merge, and refuses a missing link)
            plan_export(folder, tree.parent / "exports" / folder.name, force=True)
            loaded.append(str(folder.relative_to(tree)))
    finally:
        os.chdir(here)
    return loaded


def _run(tree: Path, words: list[str], where: str, *, yes: bool = True) -> object:
    """`graftline cleanup` from the tree's folder (ROOT ".") or from its parent."""
    here = os.getcwd()
    os.chdir(tree if where == "folder" else tree.parent)
    try:
        root = "." if where == "folder" else tree.name
        args = ["cleanup", root, *(a for w in words for a in ("--keep", w))]
        return CliRunner().invoke(app, args + (["--yes"] if yes else []))
    finally:
        os.chdir(here)


def test_scan_reads_each_shape(pristine: Path) -> None:
    for root in (pristine, pristine.parent):
        lin = lineage.scan([root])
        by_rel = {os.path.relpath(n.path, pristine): n for n in lin.nodes
                  if n.path and n.path.startswith(str(pristine.resolve()))}
        base = str((pristine / "base").resolve())
        # The relative "base" resolves to the tree's base from either scan root.
        for rel in ("checkpoints/sft/final", "checkpoints/dpo/final", "checkpoints/ipo/final",
                    "combo/mix", "combo/sft", "combo/dpo"):
            assert [e.parent for e in lin.parents(by_rel[rel].key)
                    if e.relation == "trained_on"] == [base], rel
        # ref/ is the DPO stage's frozen reference: part of its checkpoint, not a node.
        assert "checkpoints/dpo/final/ref" not in by_rel
        # ...and it proves what the DPO stage continued.
        assert (by_rel["checkpoints/dpo/final"].key, by_rel["checkpoints/sft/final"].key,
                "continued_from") in {(e.child, e.parent, e.relation) for e in lin.edges}
        # Metrics kept in sibling folders are read.
        assert by_rel["checkpoints/ipo/final"].metrics["eval/accuracy"] == 0.83
        assert by_rel["checkpoints/sft/final"].metrics["accuracy"] == 0.56
        assert by_rel["checkpoints/sft/checkpoint-3"].kind == "trainer"


KEEPS = {
    "final": (["final"], {"checkpoints/sft/final", "checkpoints/dpo/final",
                          "checkpoints/ipo/final", "combo/mix", "combo/sft", "combo/dpo"}),
    "final+last:2": (["final", "last:2"], {"checkpoints/sft/final", "checkpoints/dpo/final",
                                           "checkpoints/ipo/final", "checkpoints/sft/checkpoint-2",
                                           "checkpoints/sft/checkpoint-3", "combo/mix",
                                           "combo/sft", "combo/dpo"}),
    "last:1": (["last:1"], {"checkpoints/sft/final", "checkpoints/dpo/final",
                            "checkpoints/ipo/final", "checkpoints/sft/checkpoint-3"}),
    "best": (["best:eval/accuracy"], {"checkpoints/dpo/final", "checkpoints/ipo/final"}),
    "path": (["checkpoints/dpo/final"], {"checkpoints/dpo/final"}),
}


@pytest.mark.parametrize("where", ["folder", "parent"])
@pytest.mark.parametrize("case", sorted(KEEPS))
def test_each_keep_word_from_each_folder(tree: Path, case: str, where: str) -> None:
    words, must_stay = KEEPS[case]
    if case == "path" and where == "parent":
        words = ["project/checkpoints/dpo/final"]
    out = _run(tree, words, where)
    assert out.exit_code == 0, out.output
    for rel in must_stay:
        assert (tree / rel / "adapter_config.json").is_file(), (rel, out.output)
    assert (tree / "base" / "config.json").is_file()  # every kept adapter needs it
    assert (tree / "checkpoints" / "dpo" / "final" / "ref" / "adapter_config.json").is_file() \
        or not (tree / "checkpoints" / "dpo" / "final").exists()
    if case in ("final", "best", "path"):
        assert not (tree / "checkpoints" / "sft" / "checkpoint-1").exists()
    _canary_alive(tree)
    assert (tree / "link-out").is_symlink()
    loaded = _every_remaining_adapter_loads(tree)
    assert set(must_stay) <= set(loaded)


def test_the_same_plan_from_the_folder_and_from_its_parent(pristine: Path) -> None:
    plans = []
    for root in (pristine, pristine.parent):
        lin = lineage.scan([root])
        plan = cleanup.plan_cleanup(lin, [cleanup.parse_keep("final")])
        plans.append({os.path.relpath(k, pristine) for k in plan.delete})
    assert plans[0] == plans[1] and plans[0]


@pytest.mark.parametrize("word", ["best:eval/acuracy", "best:eval_los", "checkpoints/dpo/fnal"])
def test_a_typo_deletes_nothing_and_says_what_exists(tree: Path, word: str) -> None:
    before = files_under(tree)
    out = _run(tree, ["final", word], "folder")
    assert out.exit_code != 0
    text = " ".join(out.output.split())
    assert "did you mean" in text and "Nothing was deleted" in text
    assert files_under(tree) == before
    _canary_alive(tree)


def test_yes_without_keep_words_is_refused(tree: Path) -> None:
    before = files_under(tree)
    out = _run(tree, [], "folder")
    assert out.exit_code != 0 and "say what to keep" in out.output
    assert files_under(tree) == before


def test_export_resolves_the_relative_base_from_any_folder(pristine: Path) -> None:
    here = os.getcwd()
    try:
        for cwd in (pristine, pristine.parent, pristine / "checkpoints"):
            os.chdir(cwd)
            chain = resolve_chain(pristine / "checkpoints" / "ipo" / "final")
            assert chain.base == (pristine / "base").resolve()
    finally:
        os.chdir(here)


def test_a_corrupt_checkpoint_is_flagged_and_last_skips_it(tree: Path) -> None:
    state = tree / "checkpoints" / "sft" / "checkpoint-3" / "trainer_state.json"
    state.write_text(state.read_text()[:40])  # truncated
    lin = lineage.scan([tree])
    node = next(n for n in lin.nodes if n.path and n.path.endswith("checkpoint-3"))
    assert node.status == "corrupt" and any("CORRUPT" in w for w in node.warnings)
    plan = cleanup.plan_cleanup(lin, [cleanup.parse_keep("last:1")])
    kept = {os.path.relpath(k, lin.roots[0]) for k in plan.keep}
    assert "checkpoints/sft/checkpoint-2" in kept  # the newest one that can resume
    assert "checkpoints/sft/checkpoint-3" not in kept
    assert "CORRUPT" in cleanup.format_plan(plan, lin)


def test_a_deleted_checkpoint_shows_as_deleted_not_as_a_new_root(
        tmp_path: Path, toy_base: Path) -> None:
    from lineage_helpers import make_adapter

    root = tmp_path / "root"
    shutil.copytree(toy_base, root / "base")
    make_adapter(root / "a1", root / "base", seed=1)
    make_adapter(root / "a1" / "checkpoint-2", root / "base", seed=2)
    (root / "a1" / "checkpoint-2" / "trainer_state.json").write_text('{"global_step": 2}')
    lin = lineage.scan([root])
    plan = cleanup.plan_cleanup(lin, [cleanup.parse_keep("a1/checkpoint-2")])
    assert str((root / "a1").resolve()) in plan.delete
    result = cleanup.execute(plan, lin)
    assert (root / "a1" / "checkpoint-2").is_dir()  # the kept nested one keeps the folder
    # A script still names the deleted adapter's folder as a base.
    make_adapter(root / "later", root / "base", seed=3)
    config = json.loads((root / "later" / "adapter_config.json").read_text())
    config["base_model_name_or_path"] = str(root / "a1")
    (root / "later" / "adapter_config.json").write_text(json.dumps(config))
    lin = lineage.scan([root])
    gone = lin.node(str((root / "a1").resolve()))
    assert gone.kind == "missing" and gone.removed_by.startswith(f"cleanup {result.cleanup}")
    later = next(n for n in lin.nodes if n.name == "later")
    assert "removed by cleanup" in (later.broken or "")
    text = " ".join(CliRunner().invoke(app, ["lineage", str(root)]).output.split())
    assert "DELETED" in text and "outside the roots" not in text


def test_the_console_plans_with_the_same_planner(pristine: Path) -> None:
    from graftline.console import cleanup_bridge

    lin = lineage.scan([pristine])
    dpo = str((pristine / "checkpoints" / "dpo" / "final").resolve())
    console = cleanup_bridge.plan(lin, [dpo])
    cli = cleanup.plan_cleanup(lin, [cleanup.parse_keep("checkpoints/dpo/final")])
    assert console.delete == cli.delete and set(console.protected) == set(cli.protected)
    # The frozen reference inside the kept checkpoint is never planned on its own.
    assert not any(k.endswith("/ref") for k in (*console.delete, *console.keep))
    text = cleanup_bridge.describe_plan(console, lin, pristine).plain
    assert "checkpoints/sft/checkpoint-1" in text and "protected" in text


def test_the_in_memory_merge_pitfall_is_proven_and_flagged(tmp_path: Path, toy_base: Path) -> None:
    """stage 2 trained on base + stage 1 merged in memory records the plain base; the saved
    final merge equals base + stage 1 + stage 2 exactly, and neither stage alone."""
    root = tmp_path / "root"
    shutil.copytree(toy_base, root / "base")
    model = AutoModelForCausalLM.from_pretrained(root / "base")
    for i, name in enumerate(("stage1", "stage2"), start=1):
        peft_model = get_peft_model(model, LoraConfig(**LORA))
        _perturb(peft_model, 10 + i)
        peft_model.save_pretrained(root / name)
        model = peft_model.merge_and_unload()  # the next stage trains on this, in memory
    model.save_pretrained(root / "final_merged")
    lin = lineage.scan([root])
    by_name = {n.name: n for n in lin.nodes}
    assert by_name["stage2"].base_ref == str(root / "base")  # what PEFT recorded
    merged = by_name["final_merged"]
    assert merged.kind == "merged"
    parents = {lin.node(e.parent).name for e in lin.parents(merged.key)
               if e.relation == "merged_from"}
    assert parents == {"base", "stage1", "stage2"}
    assert any("IN-MEMORY MERGE" in w for w in by_name["stage2"].warnings)
    assert not any("IN-MEMORY MERGE" in w for w in by_name["stage1"].warnings)
    # export says so too, instead of verifying the wrong model (base + stage 2 alone)
    from graftline.engine.export import ExportRefused, plan_export

    with pytest.raises(ExportRefused, match="IN-MEMORY MERGE") as refused:
        plan_export(root / "stage2", tmp_path / "out2")
    assert "save_pretrained" in refused.value.fix
    plan_export(root / "stage1", tmp_path / "out1")  # trained on the plain base: fine
    # An identical copy of the base is no merge of it (no weights differ).
    shutil.copytree(root / "base", root / "base_copy")
    os.utime(root / "base_copy" / "model.safetensors")
    lin = lineage.scan([root])
    copy = next(n for n in lin.nodes if n.name == "base_copy")
    assert copy.kind == "base" and not lin.parents(copy.key)

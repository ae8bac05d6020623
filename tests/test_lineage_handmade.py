"""A checkpoint tree made by hand with plain transformers + peft (no graftline), scanned,
planned, cleaned, and then loaded again."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import torch
from lineage_helpers import files_under, forward_with, make_adapter
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM, Trainer, TrainingArguments
from typer.testing import CliRunner

from graftline.console.cli import app
from graftline.engine import lineage
from graftline.engine.lineage import cleanup

HUB = "meta-llama/Llama-3.2-1B"


class _Addition(torch.utils.data.Dataset):
    def __init__(self, n: int = 8) -> None:
        self.rows = [torch.tensor([1, *(5 + (i + k) % 10 for k in range(8)), 2]) for i in range(n)]

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"input_ids": self.rows[i], "labels": self.rows[i]}


def _trainer_checkpoints(base: Path, out: Path) -> None:
    """checkpoint-1..3 written by a real transformers Trainer on a PEFT model."""
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(base),
                           LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]))
    args = TrainingArguments(
        output_dir=str(out), max_steps=3, save_steps=1, save_strategy="steps", logging_steps=1,
        per_device_train_batch_size=4, use_cpu=True, report_to=[], bf16=False,
        learning_rate=1e-3, disable_tqdm=True,
    )
    Trainer(model=model, args=args, train_dataset=_Addition()).train()


@pytest.fixture(scope="module")
def tree(toy_base: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    top = tmp_path_factory.mktemp("handmade")
    root = top / "root"
    outside = top / "outside"
    outside.mkdir()
    (outside / "precious.bin").write_bytes(b"x" * 1000)
    root.mkdir()
    base = root / "base"
    shutil.copytree(toy_base, base)
    adapters = root / "adapters"
    a1 = make_adapter(adapters / "a1", base, seed=1)
    make_adapter(adapters / "a2", base, seed=2)
    os.symlink(outside / "precious.bin", adapters / "a2" / "notes")
    # A merge saved to disk, and an adapter trained on it loaded back from disk (names merged).
    from peft import PeftModel

    merged_model = PeftModel.from_pretrained(
        AutoModelForCausalLM.from_pretrained(base), a1).merge_and_unload()
    merged_model.save_pretrained(root / "merged")
    make_adapter(adapters / "on-merged", root / "merged", seed=3)
    # The classic mistake: the next adapter trained on the in-memory merge names the OLD base.
    make_adapter(adapters / "after-merge", model=merged_model, seed=4)
    # A hub base.
    shutil.copytree(adapters / "a2", adapters / "hub", symlinks=True)
    os.unlink(adapters / "hub" / "notes")
    config = json.loads((adapters / "hub" / "adapter_config.json").read_text())
    config["base_model_name_or_path"] = HUB
    (adapters / "hub" / "adapter_config.json").write_text(json.dumps(config))
    # An adapter whose base was deleted by hand.
    shutil.copytree(toy_base, root / "base2")
    make_adapter(adapters / "orphan", root / "base2", seed=5)
    shutil.rmtree(root / "base2")
    _trainer_checkpoints(base, root / "sft-out")
    os.symlink(outside, root / "link-out")
    # A config that is a symlink out of the root: never read through.
    shutil.copytree(adapters / "a2", adapters / "linked-config", symlinks=True)
    (outside / "adapter_config.json").write_text(json.dumps(config))
    os.unlink(adapters / "linked-config" / "adapter_config.json")
    os.symlink(outside / "adapter_config.json", adapters / "linked-config" / "adapter_config.json")
    return root


def test_scan_shows_each_case(tree: Path) -> None:
    lin = lineage.scan([tree])
    by_id = {n.id: n for n in lin.nodes}
    up = {(e.child, e.parent, e.relation) for e in lin.edges}
    root = str(tree.resolve())

    def key(rel: str) -> str:
        return f"{root}/{rel}"

    assert by_id["base"].kind == "base"
    for name in ("a1", "a2", "orphan", "on-merged", "after-merge", "hub"):
        assert by_id[f"adapters/{name}"].kind == "adapter"
        assert by_id[f"adapters/{name}"].lora.r == 4
    assert (key("adapters/a1"), key("base"), "trained_on") in up
    assert (key("adapters/on-merged"), key("merged"), "trained_on") in up
    # The saved merge is recognised as a merge of base (same config, same untouched norms).
    assert by_id["merged"].kind == "merged"
    assert (key("merged"), key("base"), "merged_from") in up
    # A hub id is an external base, not a broken one.
    assert (key("adapters/hub"), f"hub:{HUB}", "trained_on") in up
    assert lin.node(f"hub:{HUB}").kind == "external"
    assert by_id["adapters/hub"].broken is None
    # A deleted base makes its adapter broken, loudly.
    assert "no longer exists" in by_id["adapters/orphan"].broken
    assert lin.node(key("base2")).kind == "missing"
    # The in-memory-merge adapter names the old base; it is flagged and linked to the merge.
    stale = by_id["adapters/after-merge"]
    assert stale.base_ref == str(tree / "base")
    assert any("in memory" in w for w in stale.warnings)
    assert (key("adapters/after-merge"), key("merged"), "trained_on") in up
    assert not by_id["adapters/on-merged"].warnings
    # a2 was written after a1 on the same recorded base, with no manifest: nothing on disk can
    # tell whether it sat on base + a1 merged in memory, so it says so (issue 32, part 5)
    unsaved = by_id["adapters/a2"].in_memory_merge
    assert unsaved is not None and unsaved.certainty == "unproven"
    assert unsaved.chain == (key("adapters/a1"),) and "--check-data" in unsaved.fix
    # Trainer checkpoints: step, loss from trainer_state.json, and their base.
    steps = sorted((n.step, n.kind) for n in lin.nodes if n.id.startswith("sft-out/"))
    assert steps == [(1, "trainer"), (2, "trainer"), (3, "trainer")]
    assert "loss" in by_id["sft-out/checkpoint-3"].metrics
    assert (key("sft-out/checkpoint-3"), key("base"), "trained_on") in up
    # Symlinks are reported, never followed: nothing outside becomes a node.
    links = {Path(s.path).name: s for s in lin.symlinks}
    assert links["link-out"].outside and links["notes"].outside
    assert not any("outside" in (n.path or "") for n in lin.nodes)
    linked = by_id["adapters/linked-config"]
    assert any("symlink" in w for w in linked.warnings)
    assert f"hub:{HUB}" not in {e.parent for e in lin.parents(linked.key)}
    # Sizes are stat-only and add up per directory.
    for name in ("adapters/a1", "merged", "sft-out/checkpoint-2"):
        assert by_id[name].bytes == sum(files_under(tree / name).values())


def test_cli_json_and_dry_run_change_nothing(tree: Path) -> None:
    before = files_under(tree)
    runner = CliRunner()
    out = runner.invoke(app, ["lineage", str(tree), "--json"])
    assert out.exit_code == 0, out.output
    data = json.loads(out.stdout)
    assert any(k.endswith("adapters/orphan") for k in data["broken"])
    tree_out = runner.invoke(app, ["lineage", str(tree)])
    assert tree_out.exit_code == 0 and "BROKEN" in tree_out.output
    plan_out = runner.invoke(app, ["cleanup", str(tree), "--keep", "adapters/on-merged"])
    assert plan_out.exit_code == 0, plan_out.output
    text = " ".join(plan_out.output.split())
    assert "merged is the base of on-merged, which you keep" in text
    assert "Dry run: nothing deleted" in text
    bad = runner.invoke(app, ["cleanup", str(tree), "--keep", "adapters/on-mreged"])
    assert bad.exit_code == 2 and "matched no checkpoint" in bad.output
    assert files_under(tree) == before


def test_cleanup_keeps_what_kept_adapters_need(tree: Path) -> None:
    lin = lineage.scan([tree])
    rules = [cleanup.parse_keep(w) for w in ("adapters/on-merged", "adapters/after-merge",
                                              "last:1")]
    plan = cleanup.plan_cleanup(lin, rules)
    root = str(tree.resolve())
    deleted = {os.path.relpath(k, root) for k in plan.delete}
    # merged = base + a1 exactly (weights checked): a kept merge keeps both of its parents.
    assert deleted == {"adapters/a2", "adapters/hub", "adapters/orphan",
                       "adapters/linked-config", "sft-out/checkpoint-1", "sft-out/checkpoint-2"}
    assert {os.path.relpath(k, root) for k in plan.protected} == {"base", "merged", "adapters/a1"}
    assert any("link-out" in w for w in plan.warnings)

    result = cleanup.execute(plan, lin)
    assert set(result.removed) == set(plan.delete) and not result.skipped
    for rel in deleted:
        assert not (tree / rel).exists()
    # Nothing outside the root was touched, not even through links.
    assert (tree.parent / "outside" / "precious.bin").stat().st_size == 1000
    assert (tree.parent / "outside" / "adapter_config.json").is_file()
    assert (tree / "link-out").is_symlink()
    # Every kept adapter still loads on what it needs and runs.
    on_base = forward_with(tree / "base", tree / "sft-out" / "checkpoint-3")
    on_merged = forward_with(tree / "merged", tree / "adapters" / "on-merged")
    assert on_base.shape == on_merged.shape
    forward_with(tree / "merged", tree / "adapters" / "after-merge")
    forward_with(tree / "base", tree / "adapters" / "after-merge")
    # The history remembers what went, and the journal is gone.
    assert cleanup.removed_by(tree / "adapters" / "a2") == f"cleanup {result.cleanup} at " + \
        cleanup_history_time(tree, result.cleanup)
    assert cleanup.pending_cleanup(tree) is None


def cleanup_history_time(root: Path, cleanup_id: str) -> str:
    from graftline.engine.lineage.journal import read_history

    times = {r.time for r in read_history(root).values() if r.cleanup == cleanup_id}
    assert len(times) == 1
    return times.pop()

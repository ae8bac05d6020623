"""The in-memory merge nobody saved (seed workflow 002), on a hand-made per-topic tree.

Built here from the shipped toy base as a user's notebook would: topic 1's adapter trained on
the base; topic 2's trained on `merge_and_unload()` of topic 1 in memory, nothing merged saved,
so its `adapter_config.json` names the plain base like topic 1's. Beside it, the same tree made
the right way (topic 2 trained on the base itself). The files of the two trees look alike: the
lineage and export warn on both that it cannot be proven, with the fix; `--check-data` with
topic 2's data decides each (trained on the chain, refused by export; trained on the base).
Each adapter trains for a few steps at a high learning rate, so the answer is sure.
"""

from __future__ import annotations

import contextlib
import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM, AutoTokenizer
from typer.testing import CliRunner

from graftline.console.cli import app
from graftline.engine.export import ExportRefused, plan_export, run_export
from graftline.engine.export.provenance import batches, decide
from graftline.engine.lineage import manifest, scan
from graftline.engine.toy import tasks

STEPS = 8


@contextlib.contextmanager
def one_thread() -> Iterator[None]:
    """A tiny model trains faster on one thread than on contended ones (restored after)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def train(model: torch.nn.Module, rows: list[dict], seed: int, out: Path) -> torch.nn.Module:
    """A few real AdamW steps of a new LoRA adapter on `model` (a user's loop), saved."""
    torch.manual_seed(seed)
    tokenizer = AutoTokenizer.from_pretrained(model.name_or_path)
    peft = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=[
        "q_proj", "v_proj", "o_proj", "down_proj"]))
    data = batches(tokenizer, [(r["prompt"], r["completion"]) for r in rows], 8)
    optimizer = torch.optim.AdamW([p for p in peft.parameters() if p.requires_grad], lr=1e-2)
    peft.train()
    for step in range(STEPS):
        peft(**data[step % len(data)]).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    peft.save_pretrained(out)
    return peft


@pytest.fixture(scope="module")
def trees(toy_base: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    """(wrong, right, topic 2's data): the per-topic tree made with an unsaved merge, and made
    the right way."""
    root = tmp_path_factory.mktemp("topics")
    low = [s for s in tasks.train_sums() if tasks.topic_of(s) == "low"]
    high = [s for s in tasks.train_sums() if tasks.topic_of(s) == "high"]
    data = root / "topic2.jsonl"
    rows2 = list(tasks.sft_rows(48, 3, high))
    data.write_text("".join(json.dumps(r) + "\n" for r in rows2))
    wrong, right = root / "wrong", root / "right"

    def load() -> torch.nn.Module:
        return AutoModelForCausalLM.from_pretrained(toy_base, dtype=torch.float32)

    with one_thread():
        topic1 = train(load(), list(tasks.sft_rows(48, 4, low)), 0, wrong / "topic1")
        shutil.copytree(wrong / "topic1", right / "topic1")  # copy2: the same write times
        merged = topic1.merge_and_unload()  # in memory only: nothing saved
        train(merged, rows2, 1, wrong / "topic2")
        train(load(), rows2, 1, right / "topic2")
    for tree in (wrong, right):  # both name the plain base: the files cannot tell them apart
        config = json.loads((tree / "topic2" / "adapter_config.json").read_text())
        assert config["base_model_name_or_path"] == str(toy_base)
    return wrong, right, data


def test_lineage_warns_that_an_adapter_after_another_on_one_base_cannot_be_proven(
        trees: tuple[Path, Path, Path]) -> None:
    for tree in trees[:2]:
        lineage = scan([tree])
        first, second = (lineage.node(str((tree / n).resolve())) for n in ("topic1", "topic2"))
        assert first.in_memory_merge is None and not first.warnings
        found = second.in_memory_merge
        assert found is not None and found.certainty == "unproven"
        assert found.chain == (first.key,)
        shown = CliRunner().invoke(app, ["lineage", str(tree)], terminal_width=200)
        assert shown.exit_code == 0, shown.output
        text = " ".join(shown.output.split())
        assert "CANNOT BE PROVEN" in text and "--check-data" in text
        assert "export the chain" in text and "retrain it on a saved merge" in text


def test_check_data_says_which_model_each_adapter_was_trained_on(
        trees: tuple[Path, Path, Path]) -> None:
    wrong, right, data = trees
    with one_thread():
        answers = {}
        for tree in (wrong, right):
            shown = CliRunner().invoke(app, ["lineage", str(tree), "--json", "--check-data",
                                             str(data)])
            assert shown.exit_code == 0, shown.output
            answers[tree] = json.loads(shown.stdout)["data_check"]
    assert answers[wrong]["verdict"] == "chain", answers[wrong]
    assert "merged in memory" in answers[wrong]["message"]
    assert answers[wrong]["chain_with"] < answers[wrong]["base_with"]
    assert answers[right]["verdict"] == "base", answers[right]
    assert "trained on its recorded base" in answers[right]["message"]


def test_export_warns_and_with_data_refuses_the_wrong_model(
        trees: tuple[Path, Path, Path], tmp_path: Path) -> None:
    wrong, right, data = trees
    plan = plan_export(wrong / "topic2", tmp_path / "unchecked", dtype="float32")
    assert any("CANNOT BE PROVEN" in w for w in plan.warnings)
    assert any(line.startswith("warning") and "--check-data" in line for line in plan.describe())
    # the export records the doubt; the lineage shows it on the export too
    result = run_export(plan)
    assert result.ok
    record = manifest.read(tmp_path / "unchecked")
    assert record is not None and any("CANNOT BE PROVEN" in w for w in record.warnings)

    with one_thread():
        with pytest.raises(ExportRefused, match="merged in memory") as refused:
            plan_export(wrong / "topic2", tmp_path / "checked", dtype="float32",
                        check_data=data)
        assert "export the chain" in (refused.value.fix or "")
        assert not (tmp_path / "checked").exists()
        fine = plan_export(right / "topic2", tmp_path / "right", dtype="float32",
                           check_data=data)
    assert any("trained on its recorded base" in w for w in fine.warnings)


def test_decide_needs_a_clear_gap() -> None:
    assert decide(1.0, 0.5) == "chain"
    assert decide(0.5, 1.0) == "base"
    assert decide(1.0, 0.99) == "unclear"

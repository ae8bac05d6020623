"""Streaming export: the exported model equals base + adapter (PeftModel) in fp32.

Adapters are built here with plain PEFT on the toy base, with random non-zero LoRA weights or a
few steps of real training, and saved to disk; the reference is always PeftModel loaded from
those files, as a user would load it.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch
from peft import LoraConfig, PeftModel, get_peft_model
from transformers import AutoModelForCausalLM, AutoTokenizer

from graftline.engine.common.sink import ListSink
from graftline.engine.export.safetensors import read_header
from graftline.engine.export.writer import plan_export, run_export
from graftline.engine.lineage import manifest as manifest_io
from graftline.engine.toy import tasks
from graftline.engine.toy.model import chat_prompt

TOL = 1e-4


def load(path: Path):
    return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()


def random_adapter(base: Path, out: Path, *, seed: int = 0, **lora) -> Path:
    """An adapter with random, non-zero A and B (init_lora_weights=False), saved to `out`."""
    torch.manual_seed(seed)
    lora.setdefault("target_modules", "all-linear")
    model = get_peft_model(load(base), LoraConfig(init_lora_weights=False, **lora))
    model.save_pretrained(out)
    return out


def write_manifest(path: Path, **fields) -> manifest_io.Manifest:
    record = manifest_io.Manifest(**fields)
    return manifest_io.complete(path, record)


def probe_batch(tokenizer) -> dict[str, torch.Tensor]:
    questions = [s.question for s in tasks.eval_sums()[:6]]
    texts = [chat_prompt(tokenizer, q) + "12" for q in questions]
    tokenizer.padding_side = "right"
    return tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)


@torch.no_grad()
def max_logit_diff(export_dir: Path, base: Path, adapter: Path) -> float:
    tokenizer = AutoTokenizer.from_pretrained(export_dir)
    batch = probe_batch(tokenizer)
    reference = PeftModel.from_pretrained(load(base), adapter).eval()
    want = reference(**batch).logits
    got = load(export_dir)(**batch).logits
    mask = batch["attention_mask"].bool()
    return float((got - want).abs()[mask].max())


def export(checkpoint: Path, out: Path, **options):
    sink = ListSink()
    plan = plan_export(checkpoint, out, **{"dtype": "float32", **options})
    updates = []
    result = run_export(plan, progress=updates.append, sink=sink)
    assert result.ok, result.problems
    assert result.verification is not None and result.verification["passed"]
    assert updates and updates[-1].phase == "done"
    assert updates[-2].done_bytes == plan.total_bytes or updates[-1].done_bytes == plan.total_bytes
    return plan, result, sink


def test_adapter_on_base_exports_complete_verified_directory(toy_base: Path, tmp_path: Path):
    adapter = random_adapter(toy_base, tmp_path / "sft", r=8, lora_alpha=16, use_rslora=True)
    write_manifest(adapter, kind="adapter", name="sft", stage="sft", stage_kind="sft",
                   base=str(toy_base), parents=[manifest_io.Parent(relation="trained_on",
                                                                   path=str(toy_base))],
                   lora=manifest_io.LoraSpec(r=8, alpha=16, use_rslora=True),
                   metrics={"train_loss": 0.42})
    out = tmp_path / "exported"
    plan, _result, sink = export(adapter, out)

    assert max_logit_diff(out, toy_base, adapter) <= TOL
    assert plan.merged_tensors == 3 * 7  # every linear layer of three blocks
    for name in ("config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json",
                 "chat_template.jinja", "model.safetensors", "README.md", "verification.json",
                 "graftline.json"):
        assert (out / name).is_file(), name
    tokenizer = AutoTokenizer.from_pretrained(out)
    original = AutoTokenizer.from_pretrained(toy_base)
    assert tokenizer.chat_template == original.chat_template
    assert json.loads((out / "config.json").read_text())["dtype"] == "float32"

    record = manifest_io.read(out)
    assert record is not None and record.kind == "export" and record.status == "complete"
    assert record.parents[0].relation == "exported_from"
    assert record.parents[0].path == str(adapter.resolve())
    assert record.checks[0].name == "export_logits" and record.checks[0].status == "pass"
    verification = json.loads((out / "verification.json").read_text())
    assert verification["passed"] and verification["max_abs_diff"] <= TOL
    assert verification["tokenizer_loaded"] and all(verification["export_generation"])

    card = (out / "README.md").read_text()
    assert str(toy_base) in card and "train_loss = 0.42" in card and "r=8" in card
    types = [t for t, _stage, _data in sink.events]
    assert "progress" in types and "check_result" in types
    saved = sink.of_type("checkpoint_saved")
    assert saved == [{"path": str(out), "kind": "export", "id": record.id, "bytes": record.bytes}]


def test_adapter_on_merged_base_after_rank_change(toy_base: Path, tmp_path: Path):
    first = random_adapter(toy_base, tmp_path / "sft1", r=4, lora_alpha=8, seed=1)
    write_manifest(first, kind="adapter", stage="sft1", stage_kind="sft", base=str(toy_base),
                   metrics={"train_loss": 1.5})
    merged_dir = tmp_path / "merged"
    merged = PeftModel.from_pretrained(load(toy_base), first).merge_and_unload()
    merged.save_pretrained(merged_dir)  # no tokenizer here: export finds it up the lineage
    write_manifest(merged_dir, kind="merged", stage="merge", stage_kind="merge",
                   parents=[manifest_io.Parent(relation="merged_from", path=str(first))])
    second = random_adapter(merged_dir, tmp_path / "sft2", r=16, lora_alpha=16, seed=2)
    write_manifest(second, kind="adapter", stage="sft2", stage_kind="sft", base=str(merged_dir),
                   lora=manifest_io.LoraSpec(r=16, alpha=16), metrics={"train_loss": 0.7})

    out = tmp_path / "exported"
    plan, _result, _sink = export(second, out)
    assert plan.base == merged_dir.resolve()
    assert plan.tokenizer_source == toy_base.resolve()
    assert max_logit_diff(out, merged_dir, second) <= TOL
    card = (out / "README.md").read_text()
    # The whole chain, root first, with each stage's metrics.
    table = card.split("## Lineage")[1].split("## ")[0]
    rows = [table.index(s) for s in (str(toy_base), "sft1 (sft)", "merge (merge)", "sft2 (sft)")]
    assert rows == sorted(rows)
    assert "train_loss = 1.5" in card and "train_loss = 0.7" in card


def _pairwise_loss(model, tokenizer, rows) -> torch.Tensor:
    """A DPO-like loss without a reference: prefer the chosen completion's log-probability."""
    def logp(prompt: str, completion: str) -> torch.Tensor:
        ids = tokenizer(prompt + completion, return_tensors="pt", add_special_tokens=False)
        start = len(tokenizer(prompt, add_special_tokens=False)["input_ids"])
        logits = model(**ids).logits[0, start - 1:-1]
        target = ids["input_ids"][0, start:]
        return torch.log_softmax(logits, -1).gather(-1, target[:, None]).sum()

    losses = []
    for row in rows:
        prompt = tokenizer.apply_chat_template(row["prompt"], tokenize=False,
                                               add_generation_prompt=True)
        margin = logp(prompt, row["chosen"][0]["content"]) - \
            logp(prompt, row["rejected"][0]["content"])
        losses.append(-torch.nn.functional.logsigmoid(0.5 * margin))
    return torch.stack(losses).mean()


def test_continued_adapter_after_preference_training(toy_base: Path, tmp_path: Path):
    sft = random_adapter(toy_base, tmp_path / "sft", r=8, lora_alpha=16, seed=3)
    tokenizer = AutoTokenizer.from_pretrained(toy_base)
    model = PeftModel.from_pretrained(load(toy_base), sft, is_trainable=True)
    model.train()
    rows = list(tasks.preference_rows(8, seed=0))
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=5e-3)
    losses = []
    for _ in range(12):
        loss = _pairwise_loss(model, tokenizer, rows)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    assert losses[-1] < losses[0]  # the continued adapter really trained
    ipo = tmp_path / "ipo"
    model.save_pretrained(ipo)
    write_manifest(ipo, kind="adapter", stage="ipo", stage_kind="dpo", base=str(toy_base),
                   parents=[manifest_io.Parent(relation="continued_from", path=str(sft))],
                   lora=manifest_io.LoraSpec(r=8, alpha=16), metrics={"rewards/margins": 0.3})

    out = tmp_path / "exported"
    export(ipo, out)
    assert max_logit_diff(out, toy_base, ipo) <= TOL
    assert "rewards/margins = 0.3" in (out / "README.md").read_text()


def test_combined_cat_adapter(toy_base: Path, tmp_path: Path):
    dpo = random_adapter(toy_base, tmp_path / "dpo", r=4, lora_alpha=8, seed=4)
    sft = random_adapter(toy_base, tmp_path / "sft", r=8, lora_alpha=8, seed=5)
    model = PeftModel.from_pretrained(load(toy_base), dpo, adapter_name="dpo")
    model.load_adapter(sft, adapter_name="sft")
    model.add_weighted_adapter(["dpo", "sft"], [1.0, 0.25], "combined", combination_type="cat")
    saved = tmp_path / "saved"
    model.save_pretrained(saved, selected_adapters=["combined"])
    combined = saved / "combined"
    assert json.loads((combined / "adapter_config.json").read_text())["r"] == 12

    out = tmp_path / "exported"
    export(combined, out)
    assert max_logit_diff(out, toy_base, combined) <= TOL


def test_sharded_tied_base(toy_base_tied: Path, tmp_path: Path):
    base = tmp_path / "base-sharded"
    load(toy_base_tied).save_pretrained(base, max_shard_size="200KB")
    AutoTokenizer.from_pretrained(toy_base_tied).save_pretrained(base)
    shards = json.loads((base / "model.safetensors.index.json").read_text())["weight_map"]
    assert len(set(shards.values())) >= 4 and "lm_head.weight" not in shards

    # All linear layers: the tie is kept, the export mirrors the base's shards.
    linear = random_adapter(base, tmp_path / "linear", r=4, lora_alpha=8, seed=6)
    out = tmp_path / "exported-linear"
    plan, _result, _sink = export(linear, out)
    assert len(plan.shards) == len(set(shards.values())) and not plan.untie
    assert max_logit_diff(out, base, linear) <= TOL
    index = json.loads((out / "model.safetensors.index.json").read_text())
    assert set(index["weight_map"]) == set(shards)
    assert json.loads((out / "config.json").read_text())["tie_word_embeddings"] is True

    # LoRA on the input embedding too: PeftModel changes only the input side, so the export
    # stores both embeddings (untied), repacked into 300 kB files.
    embed = random_adapter(base, tmp_path / "embed", r=4, lora_alpha=8, seed=7,
                           target_modules=["q_proj", "v_proj", "down_proj", "embed_tokens"])
    out = tmp_path / "exported-embed"
    plan, _result, _sink = export(embed, out, shard_size="300KB")
    assert plan.untie and len(plan.shards) >= 4
    assert max_logit_diff(out, base, embed) <= TOL
    assert json.loads((out / "config.json").read_text())["tie_word_embeddings"] is False
    stored: set[str] = set()
    for shard in plan.shards:
        header, _meta = read_header(out / shard.filename)
        assert sum(info.nbytes for info in header.values()) <= 300_000 or len(header) == 1
        stored |= set(header)
    assert {"lm_head.weight", "model.embed_tokens.weight"} <= stored


def test_bfloat16_export_verifies_and_halves_size(toy_base: Path, tmp_path: Path):
    adapter = random_adapter(toy_base, tmp_path / "sft", r=8, lora_alpha=16, seed=8)
    out = tmp_path / "exported"
    plan, result, _sink = export(adapter, out, dtype="bfloat16", formats=("ollama",))
    header, _meta = read_header(out / "model.safetensors")
    assert {info.dtype for info in header.values()} == {"BF16"}
    base_header, _meta = read_header(toy_base / "model.safetensors")
    assert plan.total_bytes * 2 == sum(info.nbytes for info in base_header.values())
    assert result.verification["dtype"] == "bfloat16"
    modelfile = (out / "Modelfile").read_text()
    assert "FROM ." in modelfile and "<|user|>{{ .Content }}" in modelfile
    assert 'PARAMETER stop "<|end|>"' in modelfile


def test_a_half_precision_bound_comes_from_the_reference_run_in_that_precision(
        toy_base: Path, tmp_path: Path) -> None:
    """bf16's bound is measured, not assumed: the reference run in bf16 says how far rounding
    alone moves the logits, and the export may drift up to twice that. An export checked against
    another adapter (the wrong model) is still far outside it."""
    from graftline.engine.export.verify import verify

    adapter = random_adapter(toy_base, tmp_path / "sft", r=8, lora_alpha=16, seed=8)
    other = random_adapter(toy_base, tmp_path / "other", r=8, lora_alpha=16, seed=9)
    out = tmp_path / "exported"
    _plan, result, _sink = export(adapter, out, dtype="bfloat16")
    right = result.verification
    assert right["passed"] and right["baseline_diff"] > 0
    assert right["tolerance"] >= 2 * right["baseline_diff"]
    assert f"the reference itself in bfloat16: {right['baseline_diff']:.3g}" in right["message"]
    wrong = verify(out, toy_base, other, "bfloat16")
    assert not wrong.passed and wrong.max_abs_diff > wrong.tolerance
    assert "do not reproduce base + adapter" in wrong.message
    exact = verify(out, toy_base, adapter, "float32")  # bf16 weights judged as float32: no
    assert exact.baseline_diff is None and not exact.passed


def test_full_model_export_is_a_verified_copy(toy_base: Path, tmp_path: Path):
    source = tmp_path / "merged"
    shutil.copytree(toy_base, source)
    out = tmp_path / "exported"
    plan, result, _sink = export(source, out)
    assert plan.kind == "model" and plan.merged_tensors == 0
    assert result.verification["max_abs_diff"] == 0.0
    assert read_header(out / "model.safetensors")[0].keys() == \
        read_header(source / "model.safetensors")[0].keys()

"""Every planted fault of tests/test_checks_faults.py, caught on every family of the matrix.

tests/test_checks_faults.py plants each fault users make into a real run on the toy Llama; the
family matrix (tests/test_families.py) runs healthy chains on nine families. Here, in-process on
each family's pre-trained twin (cached by `build_family`), each fault is planted the same way and
judged by the same check functions the engine calls (graftline.engine.stages.checks), beside its
healthy counterpart, which must pass: stacked adapters, a LoRA never applied, a frozen adapter,
base weights changed (the embedding, and the family's own last MLP or experts tensor), an adapter
trained on a model merged in memory, a collapse to the end token or to one repeated token, and
DPO's reference silently the base instead of the policy at the start (TRL's own first step).
Plus the other checks the engine calls on an adapter or a merge: a continued adapter whose LoRA
shape changed, TRL's `ref` copy saved beside the adapter, a merge not unloaded or in a lossy
dtype.

Each family's adapter is real: a LoRA on all linear layers, trained for a few steps on the
family's own chat format (one per family, reused by every test). The whole file costs seconds a
family.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch
from peft import LoraConfig, PeftModel, get_peft_model
from stage_helpers import one_thread  # noqa: F401
from transformers import AutoModelForCausalLM, AutoTokenizer

from graftline.engine.lineage.manifest import LoraSpec
from graftline.engine.rehearse.families import FAMILIES, build_family
from graftline.engine.stages import checks
from graftline.engine.toy import tasks

pytestmark = pytest.mark.usefixtures("one_thread")

NAMES = list(FAMILIES)
PROBES = ["12+34", "55+27", "90+19", "23+45", "61+8", "7+70", "33+33", "80+15"]
# DPO's beta in the reference test: the rewards scale with it. With its frozen `ref` copy the
# margin is zero at any beta; with `ref` gone it is beta × how far 8 steps moved the adapter from
# the base, which at beta 0.5 came to 0.029 on gpt_oss's twin on the plain vector path, under the
# check's 0.05. At 5 the fault stands well clear of the tolerance on any path.
BETA = 5.0
ADAPTER_STEPS = 8  # a few real optimizer steps: the adapter moves the model as training does
LORA = {"r": 4, "lora_alpha": 8, "target_modules": "all-linear", "task_type": "CAUSAL_LM"}


@dataclass(frozen=True)
class Twin:
    """One family's twin: its folder, a pristine model, its tokenizer, and its trained adapter,
    saved and as the trainable policy (tests work on copies: wrapping a model in PEFT costs more
    than copying one)."""

    name: str
    base: Path
    model: Any
    tokenizer: Any
    adapter: Path
    policy: Any

    def fresh(self) -> Any:
        return copy.deepcopy(self.model)

    def with_adapter(self) -> Any:
        """The adapter continued: a PeftModel as `from_pretrained(..., is_trainable=True)`."""
        return copy.deepcopy(self.policy)


def _chat_batch(tokenizer: Any, rows: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
    texts = [tokenizer.apply_chat_template(r["prompt"] + r["completion"], tokenize=False)
             for r in rows]
    side, tokenizer.padding_side = tokenizer.padding_side, "right"
    try:
        enc = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)
    finally:
        tokenizer.padding_side = side
    return {**enc, "labels": enc["input_ids"].masked_fill(enc["attention_mask"] == 0, -100)}


def _train_steps(model: Any, batch: dict[str, torch.Tensor], steps: int, lr: float) -> None:
    """Plain AdamW steps on the trainable parameters (the LoRA), as a trainer would take."""
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr)
    model.train()
    for _ in range(steps):
        model(**batch).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    model.eval()


@pytest.fixture(scope="module")
def twins(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[[str], Twin]]:
    made: dict[str, Twin] = {}
    root = tmp_path_factory.mktemp("family-checks")

    def twin(name: str) -> Twin:
        if name not in made:
            base = build_family(name)
            model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
            model.eval()
            tokenizer = AutoTokenizer.from_pretrained(base)
            policy = get_peft_model(copy.deepcopy(model), LoraConfig(**LORA))
            _train_steps(policy, _chat_batch(tokenizer, list(tasks.sft_rows(16, 1))),
                         ADAPTER_STEPS, 1e-2)
            adapter = root / name / "adapter"
            policy.save_pretrained(str(adapter))
            continued = PeftModel.from_pretrained(copy.deepcopy(model), str(adapter),
                                                  is_trainable=True)
            made[name] = Twin(name, base, model, tokenizer, adapter, continued)
        return made[name]

    yield twin


# ---------------------------------------------------------------- adapters and trainable weights

@pytest.mark.parametrize("name", NAMES)
def test_adapter_faults_are_caught_and_a_continued_or_new_adapter_passes(
        name: str, twins: Callable[[str], Twin]) -> None:
    twin = twins(name)
    # healthy: the adapter continued (is_trainable=True), and a new one as the trainer makes it
    for healthy in (twin.with_adapter(), get_peft_model(twin.fresh(), LoraConfig(**LORA))):
        assert checks.adapters(healthy).status == "pass"
        fraction = checks.trainable_fraction(healthy)
        assert fraction.status == "pass", fraction.message

    # stacked: transformers' load_adapter, then the trainer's peft_config adds a second LoRA
    loaded = twin.fresh()
    loaded.load_adapter(str(twin.adapter), adapter_name="sft1")
    stacked = checks.adapters(get_peft_model(loaded, LoraConfig(**LORA)))
    assert stacked.status == "fail" and "stacked adapters" in stacked.message, stacked.message
    assert "load_adapter" in stacked.data["cause"]

    # never applied: the plain model reached the trainer, every weight trainable
    plain = twin.fresh()
    plain.requires_grad_(True)
    never = checks.adapters(plain)
    assert never.status == "fail" and "never applied" in never.data["cause"]
    fraction = checks.trainable_fraction(plain)
    assert fraction.status == "fail" and "LoRA never applied" in fraction.message

    # frozen: loaded without is_trainable=True
    frozen = checks.adapters(PeftModel.from_pretrained(twin.fresh(), str(twin.adapter)))
    assert frozen.status == "fail" and frozen.message.startswith("frozen adapter")
    assert "is_trainable=True" in frozen.data["fix"]

    # continued with the shape its parent was saved with, or with another one
    saved = LoraSpec(r=LORA["r"], alpha=LORA["lora_alpha"])
    assert checks.lora_config_kept(saved, twin.with_adapter()).status == "pass"
    other = get_peft_model(twin.fresh(), LoraConfig(**{**LORA, "r": 8, "lora_alpha": 16}))
    changed = checks.lora_config_kept(saved, other)
    assert changed.status == "fail" and "r=8" in changed.message, changed.message


# ---------------------------------------------------------------- base weights

def _last_base_mlp(model: Any) -> str:
    """The family's own last feed-forward tensor: an expert tensor on a mixture of experts
    (stored as parameters, not linear layers), else the last MLP weight."""
    names = [n for n, _ in model.named_parameters()
             if ".mlp." in n and not any(p in n for p in checks.ADAPTER_PARTS)]
    experts = [n for n in names if ".experts." in n]
    return (experts or names)[-1]


@pytest.mark.parametrize("name", NAMES)
def test_base_change_is_caught_and_training_the_adapter_leaves_the_base(
        name: str, twins: Callable[[str], Twin]) -> None:
    twin = twins(name)
    policy = twin.with_adapter()
    before = checks.fingerprint(policy)
    lora_before = {n: p.detach().clone() for n, p in policy.named_parameters() if p.requires_grad}
    _train_steps(policy, _chat_batch(twin.tokenizer, list(tasks.sft_rows(8, 2))), 1, 1e-2)
    assert any(not torch.equal(p, lora_before[n]) for n, p in policy.named_parameters()
               if p.requires_grad)  # the step trained the adapter
    kept = checks.base_unchanged(before, checks.fingerprint(policy))
    assert kept.status == "pass", kept.message

    for planted in ("embed_tokens", _last_base_mlp(policy)):
        touched = twin.with_adapter()
        before = checks.fingerprint(touched)
        with torch.no_grad():
            for param_name, param in touched.named_parameters():
                if planted in param_name and not any(p in param_name
                                                     for p in checks.ADAPTER_PARTS):
                    param.add_(0.01)
        changed = checks.base_unchanged(before, checks.fingerprint(touched))
        shown = planted.removeprefix("base_model.model.").replace(".base_layer", "")
        assert changed.status == "fail" and shown in changed.message, (planted, changed.message)


# ---------------------------------------------------------------- an adapter's recorded base

@pytest.mark.parametrize("name", NAMES)
def test_adapter_trained_on_an_in_memory_merge_is_caught(name: str, twins: Callable[[str], Twin],
                                                         tmp_path: Path) -> None:
    twin = twins(name)
    merged_dir = tmp_path / "merged"
    merged = twin.with_adapter().merge_and_unload()
    # healthy: the merge saved and loaded from disk, as a merge stage does
    merged.config.name_or_path = str(merged_dir)
    merged.save_pretrained(str(merged_dir))
    twin.tokenizer.save_pretrained(str(merged_dir))
    from_disk = AutoModelForCausalLM.from_pretrained(merged_dir, dtype=torch.float32)
    get_peft_model(from_disk, LoraConfig(**LORA)).save_pretrained(str(tmp_path / "healthy"))
    assert checks.adapter_base(tmp_path / "healthy", merged_dir).status == "pass"

    # the fault: the next adapter on the merge still in memory, which keeps the old base's name
    in_memory = twin.with_adapter().merge_and_unload()
    get_peft_model(in_memory, LoraConfig(**LORA)).save_pretrained(str(tmp_path / "faulty"))
    fault = checks.adapter_base(tmp_path / "faulty", merged_dir)
    assert fault.status == "fail" and "in memory" in fault.data["cause"], fault.message
    assert str(twin.base) in fault.message


# ---------------------------------------------------------------- generation sanity

def _biased_head(model: Any, token_id: int) -> None:
    """The collapsed model: every position's logits lean on one token (the end of the turn,
    or one token repeated), as a stage that drove the model there leaves it."""
    bias = torch.zeros(model.get_output_embeddings().weight.shape[0])
    bias[token_id] = 1e4
    model.get_output_embeddings().register_forward_hook(lambda _m, _i, out: out + bias)


@pytest.mark.parametrize("name", NAMES)
def test_collapse_to_the_end_or_a_repeat_is_caught_and_a_trained_adapter_passes(
        name: str, twins: Callable[[str], Twin]) -> None:
    twin = twins(name)
    tokenizer = twin.tokenizer
    start = checks.generate(twin.fresh(), tokenizer, PROBES)  # a new adapter starts as the base
    trained = checks.generate(twin.with_adapter(), tokenizer, PROBES)
    healthy = checks.generation_sanity(start, trained, PROBES)
    assert healthy.status == "pass", (healthy.message, healthy.data["samples"])

    end = tokenizer.convert_tokens_to_ids(FAMILIES[name].end_of_turn)
    digit = tokenizer("7", add_special_tokens=False)["input_ids"][-1]
    for token_id, kind in ((end, "empty"), (digit, "repeating")):
        collapsed = twin.with_adapter()
        _biased_head(collapsed, token_id)
        said = checks.generate(collapsed, tokenizer, PROBES)
        fault = checks.generation_sanity(start, said, PROBES)
        assert fault.status == "fail" and fault.message.startswith("collapse"), fault.message
        assert kind in fault.message, fault.message


# ---------------------------------------------------------------- DPO's reference

@pytest.mark.parametrize("name", NAMES)
def test_a_wrong_dpo_reference_is_caught_at_the_first_step(name: str,
                                                           twins: Callable[[str], Twin],
                                                           tmp_path: Path) -> None:
    """TRL's own first DPO step on the continued adapter: with its frozen `ref` copy the margin
    starts at zero; with `ref` gone TRL scores the reference with the adapter disabled (the
    base), and the check names it."""
    from datasets import Dataset
    from transformers import TrainerCallback
    from trl import DPOConfig, DPOTrainer

    from graftline.engine.stages import trl_compat

    trl_compat.install()
    twin = twins(name)
    rows = Dataset.from_list(list(tasks.preference_rows(4, 2)))
    first: list[dict[str, float]] = []

    class FirstLog(TrainerCallback):
        def on_log(self, args: Any, state: Any, control: Any, logs: Any = None,
                   **kwargs: Any) -> None:
            first.append(dict(logs or {}))

    config = DPOConfig(output_dir=str(tmp_path / "dpo"), max_steps=1, logging_steps=1,
                       per_device_train_batch_size=4, learning_rate=1e-3, beta=BETA,
                       loss_type=["sigmoid"], max_length=48, use_cpu=True, bf16=False,
                       gradient_checkpointing=False, report_to=[], save_strategy="no",
                       disable_tqdm=True, precompute_ref_log_probs=False)
    trainer = DPOTrainer(model=twin.with_adapter(), ref_model=None, args=config,
                         train_dataset=rows, processing_class=twin.tokenizer,
                         callbacks=[FirstLog()])
    trainer.train()
    healthy = checks.reference_start("dpo", first[0], "sft")
    assert healthy.status == "pass", healthy.message
    # saved with every adapter, TRL's `ref` copy lands beside `default`; saved as the engine
    # saves (`default` only), it does not
    trainer.model.save_pretrained(str(tmp_path / "all"))
    stray = checks.no_stray_ref(tmp_path / "all")
    assert stray.status == "fail" and "ref" in stray.message, stray.message
    trainer.model.save_pretrained(str(tmp_path / "one"), selected_adapters=[checks.ADAPTER])
    assert checks.no_stray_ref(tmp_path / "one").status == "pass"

    # the fault: the same trainer with its `ref` copy gone, from the first step again
    trainer.model.delete_adapter(checks.REFERENCE_ADAPTER)
    first.clear()
    trainer.train()
    fault = checks.reference_start("dpo", first[0], "sft")
    assert fault.status == "fail" and "nonzero margin" in fault.message, fault.message


# ---------------------------------------------------------------- merges

@pytest.mark.parametrize("name", NAMES)
def test_merge_faults_are_caught_and_a_float32_merge_passes(name: str,
                                                            twins: Callable[[str], Twin]) -> None:
    twin = twins(name)
    ids = checks.probe_ids(twin.tokenizer, PROBES)
    expected = checks.logits(twin.with_adapter(), ids)
    merged = checks.merge_equal(twin.with_adapter().merge_and_unload(),
                                expected, ids)
    assert merged.status == "pass", merged.message

    not_unloaded = checks.merge_equal(twin.with_adapter(), expected, ids)
    assert not_unloaded.status == "fail" and "peft_config" in not_unloaded.message
    lossy = twin.with_adapter().merge_and_unload().to(torch.bfloat16)
    fault = checks.merge_equal(lossy, expected, ids)
    assert fault.status == "fail" and "merged logits differ" in fault.message, fault.message

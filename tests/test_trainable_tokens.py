"""`lora.trainable_tokens`: template tokens the base never learned, trained, checked and exported.

The planted fault is the Llama-3-base one: the toy base's `<|end|>` rows (embedding and lm_head)
zeroed, as a base ships a chat token it never trained. A LoRA on the linear layers cannot train
those rows; `trainable_tokens = ["<|end|>"]` does (PEFT's trainable_token_indices), the
`end_of_turn` check after each stage sees the difference, and the export merges the rows exactly
as PEFT's merge_and_unload does.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from peft import LoraConfig, PeftModel, get_peft_model
from safetensors.torch import load_file, save_file
from stage_helpers import one_thread, write_data, write_jsonl  # noqa: F401
from transformers import AutoModelForCausalLM, AutoTokenizer

from graftline.engine.common.sink import ListSink
from graftline.engine.export.writer import plan_export, run_export
from graftline.engine.lineage import manifest as mf
from graftline.engine.pipeline.file import parse
from graftline.engine.pipeline.validate import validate_file
from graftline.engine.run.runner import run_pipeline
from graftline.engine.toy import tasks
from graftline.engine.toy.recipe import END

pytestmark = pytest.mark.usefixtures("one_thread")

EXPORT_BOUND = 1e-5  # float32, against plain PEFT merge_and_unload (as the family matrix)


def zero_rows(model_dir: Path, token_ids: list[int]) -> None:
    """Zero the rows of `token_ids` in the embedding (and lm_head, when stored)."""
    path = model_dir / "model.safetensors"
    tensors = load_file(path)
    for name in ("model.embed_tokens.weight", "lm_head.weight"):
        if name in tensors:
            tensors[name][token_ids] = 0.0
    save_file(tensors, path, metadata={"format": "pt"})


def end_id(model_dir: Path) -> int:
    return int(AutoTokenizer.from_pretrained(model_dir).convert_tokens_to_ids(END))


@pytest.fixture(scope="module")
def untrained_base(tmp_path_factory: pytest.TempPathFactory, toy_base: Path) -> Path:
    """The toy base with its `<|end|>` rows zeroed (untied lm_head: both rows)."""
    base = tmp_path_factory.mktemp("untrained") / "base"
    shutil.copytree(toy_base, base)
    zero_rows(base, [end_id(base)])
    return base


def header(base: Path) -> str:
    return f"""
[pipeline]
name = "t"
base = "{base}"
probes = ["12+34", "50+27"]
"""


SFT = """
[[stage]]
name = "sft"
kind = "sft"
data = "sft.jsonl"
lora = {{ r = 8{tokens} }}
train = {{ max_steps = 12, batch_size = 16, lr = 3e-3 }}
"""


def test_validate_resolves_tokens_and_names_an_unknown_one(untrained_base: Path,
                                                           tmp_path: Path) -> None:
    write_data(tmp_path)

    def problems(tokens: str) -> list:
        path = tmp_path / "p.toml"
        path.write_text(header(untrained_base) + SFT.format(tokens=tokens))
        return validate_file(path)[1]

    # without the field: the warning before training names the field that fixes it
    [warned] = [p for p in problems("") if p.code == "untrained_template_tokens"]
    assert 'trainable_tokens = ["<|end|>"]' in (warned.fix or "")
    # with it (by name or as "template"): nothing to warn about, nothing wrong
    for tokens in (', trainable_tokens = ["<|end|>"]', ', trainable_tokens = "template"'):
        found = problems(tokens)
        assert not [p for p in found if p.code == "untrained_template_tokens"], found
        assert not [p for p in found if p.severity == "error"], found
    # a token the tokenizer does not have: an error at the stage's lora line, with the fix
    [bad] = [p for p in problems(', trainable_tokens = ["<|eot_id|>"]')
             if p.severity == "error"]
    text = (tmp_path / "p.toml").read_text().splitlines()
    assert bad.file == str(tmp_path / "p.toml") and bad.stage == "sft"
    assert bad.field == "lora.trainable_tokens" and "lora = {" in text[bad.line - 1]
    assert '"<|eot_id|>"' in bad.message
    assert '"<|end|>"' in (bad.fix or "") and '"template"' in (bad.fix or "")
    # in [defaults]: said once, at the defaults' lora line, however many stages inherit it
    path = tmp_path / "p.toml"
    path.write_text(header(untrained_base) + '[defaults]\nlora = { trainable_tokens = ["<|x|>"] }\n'
                    + SFT.format(tokens="").replace("lora = { r = 8 }\n", "")
                    + SFT.format(tokens="").replace('"sft"\nkind', '"sft2"\nkind')
                    .replace("lora = { r = 8 }\n", ""))
    errors = [p for p in validate_file(path)[1] if p.severity == "error"]
    assert len(errors) == 1 and errors[0].field == "defaults.lora.trainable_tokens", errors
    assert errors[0].line == 7 and '"<|x|>"' in errors[0].message


def _end_of_turn(sink: ListSink, stage: str) -> dict:
    [found] = [d for _t, s, d in sink.events
               if _t == "check_result" and s == stage and d["name"] == "end_of_turn"]
    return found


def _logits(model, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model.eval()(input_ids=ids).logits


@pytest.mark.slow
def test_trained_token_rows_end_the_turn_continue_merge_and_export_exactly(
        untrained_base: Path, tmp_path: Path) -> None:
    end = end_id(untrained_base)
    root = write_data(tmp_path)
    write_jsonl(root / "pref.jsonl", tasks.preference_rows(32, 3))

    # the same stage without the field: the end token's rows stay as the base had them
    plain = ListSink()
    text = header(untrained_base) + SFT.format(tokens="")
    result = run_pipeline(parse(text, root / "plain.toml"), root / "runs" / "plain", plain)
    assert result.status == "finished", result.message
    without = _end_of_turn(plain, "sft")
    assert without["status"] == "warn" and "trainable_tokens" in without["data"]["fix"]
    assert without["data"]["token"] == END and without["data"]["trained"] is False

    text = header(untrained_base) + SFT.format(tokens=', trainable_tokens = ["<|end|>"]') + f"""
[[stage]]
name = "ipo"
kind = "dpo"
loss = "ipo"
adapter = "continue"
precompute_ref = true
data = "pref.jsonl"
train = {{ max_steps = 2, batch_size = 8, lr = 1e-3 }}

[[stage]]
name = "merged"
kind = "merge"

[[stage]]
name = "export"
kind = "export"
from = "ipo"
out = "{root / 'export'}"
dtype = "float32"
"""
    sink = ListSink()
    result = run_pipeline(parse(text, root / "p.toml"), root / "runs" / "r", sink)
    assert result.status == "finished", result.message
    checks = {(s, d["name"]): d for t, s, d in sink.events if t == "check_result"}
    assert not [d for d in checks.values() if d["status"] == "fail"]

    # the rows moved: the adapter holds <|end|>'s embedding and lm_head rows, and the lm_head
    # row (what predicts the end of the turn) is off zero. The embedding row gets no gradient
    # here: nothing after a turn's end is in the completion loss.
    stages = root / "runs" / "r" / "stages"
    config = json.loads((stages / "sft" / "adapter_config.json").read_text())
    assert config["trainable_token_indices"] == {"model.embed_tokens": [end], "lm_head": [end]}
    rows = {k: v for k, v in load_file(stages / "sft" / "adapter_model.safetensors").items()
            if "trainable_tokens_delta" in k}
    assert len(rows) == 2, rows
    assert float(rows["base_model.model.lm_head.token_adapter.trainable_tokens_delta"]
                 .abs().max()) > 0
    assert mf.read(stages / "sft").lora.trainable_tokens == [end]

    # the end-of-turn check, on the same rows: P(<|end|>) rose in the stage and beyond the run
    # without the field
    tokens = _end_of_turn(sink, "sft")["data"]
    assert tokens["trained"] is True and tokens["rows"] == without["data"]["rows"] > 0
    assert tokens["after"] > tokens["before"] * 2, tokens
    assert tokens["after"] > without["data"]["after"] * 2, (tokens, without["data"])

    # continued: the rows go on (kept config), and IPO's frozen reference is the policy at its
    # start, rows included (TRL copies only `.default.` parameters; the rows' name ends there)
    kept = checks[("ipo", "lora_config_kept")]
    assert kept["status"] == "pass" and f"trainable tokens [{end}]" in kept["message"]
    assert checks[("ipo", "reference_start")]["status"] == "pass"
    assert mf.read(stages / "ipo").lora.trainable_tokens == [end]

    # merged by PEFT into a full model: the rows are there
    merged = load_file(stages / "merged" / "model.safetensors")
    ipo_rows = {k.split(".token_adapter")[0].removeprefix("base_model.model."): v
                for k, v in load_file(stages / "ipo" / "adapter_model.safetensors").items()
                if "trainable_tokens_delta" in k}
    for module, row in ipo_rows.items():
        assert torch.equal(merged[f"{module}.weight"][end], row[0]), module

    # the streaming export against plain PEFT merge_and_unload of the same adapter
    base = AutoModelForCausalLM.from_pretrained(untrained_base, dtype=torch.float32)
    reference = PeftModel.from_pretrained(base, str(stages / "ipo")).merge_and_unload()
    exported = AutoModelForCausalLM.from_pretrained(root / "export", dtype=torch.float32)
    ids = torch.tensor([[1, 4, 7, 8, 18, 9, 10, 5, 12, 12, end, 4, 9]])
    diff = float((_logits(exported, ids) - _logits(reference, ids)).abs().max())
    assert diff <= EXPORT_BOUND, diff
    assert checks[("export", "export_logits")]["status"] == "pass"


def test_export_merges_token_rows_of_tied_embeddings_exactly(toy_base_tied: Path,
                                                             tmp_path: Path) -> None:
    """On tied embeddings PEFT trains one set of rows for both sides: the export writes them
    once, keeps the tie, and equals merge_and_unload."""
    base = AutoModelForCausalLM.from_pretrained(toy_base_tied, dtype=torch.float32)
    end = end_id(toy_base_tied)
    ids = [end, 3]
    torch.manual_seed(0)
    model = get_peft_model(base, LoraConfig(r=4, target_modules=["q_proj", "v_proj"],
                                            init_lora_weights=False,
                                            trainable_token_indices=ids))
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "trainable_tokens_delta" in name:
                param.copy_(torch.randn_like(param))
    adapter = tmp_path / "adapter"
    model.save_pretrained(adapter)
    assert [k for k in load_file(adapter / "adapter_model.safetensors")
            if "trainable_tokens" in k] == [
        "base_model.model.model.embed_tokens.token_adapter.trainable_tokens_delta"]

    plan = plan_export(adapter, tmp_path / "out", dtype="float32", verify=False)
    assert run_export(plan, sink=ListSink()).ok
    config = json.loads((tmp_path / "out" / "config.json").read_text())
    assert config.get("tie_word_embeddings") is True

    fresh = AutoModelForCausalLM.from_pretrained(toy_base_tied, dtype=torch.float32)
    reference = PeftModel.from_pretrained(fresh, str(adapter)).merge_and_unload()
    exported = AutoModelForCausalLM.from_pretrained(tmp_path / "out", dtype=torch.float32)
    assert torch.equal(exported.get_input_embeddings().weight,
                       reference.get_input_embeddings().weight)
    probe = torch.tensor([[1, 4, 7, 8, 18, 9, 10, 5, 12, end]])
    diff = float((_logits(exported, probe) - _logits(reference, probe)).abs().max())
    assert diff <= EXPORT_BOUND, diff


def test_end_of_turn_verdicts_say_low_from_the_start_dropped_or_fine() -> None:
    from graftline.engine.stages.checks import end_of_turn

    low = end_of_turn(0.02, 0.03, "<|eot_id|>", trained=False, rows=8)
    assert low.status == "warn" and "already low at the start" in low.message
    assert 'trainable_tokens = ["<|eot_id|>"]' in low.data["fix"]
    dropped = end_of_turn(0.9, 0.2, "<|eot_id|>", trained=False, rows=8)
    assert dropped.status == "warn" and "dropped from 0.90" in dropped.message
    trained = end_of_turn(0.02, 0.2, "<|eot_id|>", trained=True, rows=8)
    assert trained.status == "warn" and "more steps" in trained.data["fix"]
    assert end_of_turn(0.5, 0.97, "<|end|>", trained=False, rows=8).status == "pass"
    # in a rehearsal: reported, never judged; nothing to measure: said so
    twin = end_of_turn(0.01, 0.01, "<|end|>", trained=False, judge=False, rows=8)
    assert twin.status == "pass" and "not judged" in twin.message
    assert "not measured" in end_of_turn(None, None, "<|end|>", trained=False).message

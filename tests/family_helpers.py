"""Helpers for the family matrix: the demo-like chain as a pipeline file, the engine's pipeline
runner on it, and plain PEFT applying the same chain for the reference logits."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import torch

from graftline.engine.common.tokenizer_files import TOKENIZER_FILES
from graftline.engine.toy import tasks

PROBES = ["12+34", "55+27", "90+19", "23+45"]

CHAIN = """
[pipeline]
name = "{name}"
base = "{base}"
runs_dir = "runs"
seed = 0
probes = {probes}

[defaults]
train = {{ batch_size = 16, warmup = 2, max_length = 48, logging_steps = 5 }}
lora = {{ dropout = 0.0, target_modules = "all-linear" }}

[[stage]]
name = "sft"
kind = "sft"
data = "sft.jsonl"
lora = {{ r = 8, alpha = 16 }}
train = {{ max_steps = 12, lr = 3e-3, save_steps = 12 }}

[[stage]]
name = "merged"
kind = "merge"

[[stage]]
name = "sft_r16"
kind = "sft"
adapter = "new"
data = "sft.jsonl"
lora = {{ r = 16, alpha = 32 }}
train = {{ max_steps = 6, lr = 2e-3, save_steps = 6 }}

[[stage]]
name = "ipo"
kind = "dpo"
loss = "ipo"
beta = 0.5
adapter = "continue"
precompute_ref = true
data = "prefs.jsonl"
train = {{ max_steps = 4, lr = 1e-3, batch_size = 8, save_steps = 4 }}

[[stage]]
name = "grpo"
kind = "grpo"
adapter = "continue"
data = "grpo.jsonl"
reward = ["exact_match"]
num_generations = 4
max_completion_length = 6
train = {{ max_steps = 4, lr = 5e-4, batch_size = 8, save_steps = 4 }}

[[stage]]
name = "export"
kind = "export"
from = "grpo"
out = "exports/{name}"
dtype = "float32"
{export_extra}"""
TRAINED = ("sft", "merged", "sft_r16", "ipo", "grpo")


def _jsonl(path: Path, rows: Any) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def write_chain(directory: Path, name: str, base: Path, *, export_extra: str = "") -> Path:
    """The chain as a pipeline file; `export_extra` adds lines to its export stage."""
    directory.mkdir(parents=True, exist_ok=True)
    # the rows the chain's steps reach (12 × 16, 4 × 8, 4 × 8): TRL tokenizes every row, and the
    # precomputed IPO reference scores every row, before the first step
    _jsonl(directory / "sft.jsonl", tasks.sft_rows(192, 1))
    _jsonl(directory / "prefs.jsonl", tasks.preference_rows(32, 2))
    _jsonl(directory / "grpo.jsonl", tasks.grpo_rows(64, 3))
    path = directory / "p.toml"
    path.write_text(CHAIN.format(name=name, base=base, probes=json.dumps(PROBES),
                                 export_extra=export_extra))
    return path


def run_in_process(pipeline: Path) -> tuple[Path, list[dict[str, Any]]]:
    """The engine's pipeline runner on `pipeline`, in this process, without a rehearsal: its run
    directory and its events as the engine's event log holds them (`type`, `stage`, `data`)."""
    from graftline.engine.common.sink import ListSink
    from graftline.engine.pipeline import file as pipeline_file
    from graftline.engine.run.runner import run_pipeline

    run_dir = pipeline.parent / "runs" / "r1"  # the chain's runs_dir
    sink = ListSink()
    run_pipeline(pipeline_file.load(pipeline), run_dir, sink)
    return run_dir, [{"type": t, "stage": stage, "data": data} for t, stage, data in sink.events]


def tokenizer_bytes(folder: Path) -> dict[str, bytes]:
    return {name: (folder / name).read_bytes() for name in TOKENIZER_FILES
            if (folder / name).is_file()}


@torch.no_grad()
def peft_chain_logits(base: Path, merged_adapter: Path, final_adapter: Path,
                      ids: torch.Tensor) -> torch.Tensor:
    """Plain PEFT applying the chain: base + the first adapter merged, + the final adapter
    merged, in float32."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    model: Any = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    model = PeftModel.from_pretrained(model, merged_adapter).merge_and_unload()
    model = PeftModel.from_pretrained(model, final_adapter).merge_and_unload()
    model.eval()
    return model(input_ids=ids).logits.float()


@torch.no_grad()
def model_logits(folder: Path, ids: torch.Tensor) -> torch.Tensor:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    model.eval()
    return model(input_ids=ids).logits.float()


def probe_ids(folder: Path) -> torch.Tensor:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(folder)
    rows = [tokenizer(tokenizer.apply_chat_template([{"role": "user", "content": p}],
                                                    tokenize=False, add_generation_prompt=True),
                      add_special_tokens=False)["input_ids"] for p in PROBES]
    width = min(len(r) for r in rows)
    return torch.tensor([r[:width] for r in rows])


def char_level_copy(base: Path, out: Path) -> Path:
    """The twin with graftline's character-level tokenizer, which the converter takes for any
    architecture (graftline's driver): the way to convert and run the families whose twin
    tokenizer the pinned converter refuses, and a generation config whose end of turn is that
    tokenizer's EOS (the GGUF's run in llama.cpp checks that it ends a generation)."""
    from graftline.engine.toy.tokenizer import build_tokenizer

    shutil.copytree(base, out)
    for path in out.iterdir():
        if path.name.startswith(("tokenizer", "special_tokens", "chat_template")):
            path.unlink()
    tokenizer = build_tokenizer()
    tokenizer.save_pretrained(str(out))
    generation = json.loads((out / "generation_config.json").read_text())
    generation.update(bos_token_id=tokenizer.bos_token_id, eos_token_id=[tokenizer.eos_token_id],
                      pad_token_id=tokenizer.pad_token_id)
    (out / "generation_config.json").write_text(json.dumps(generation))
    return out

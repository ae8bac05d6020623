"""Generate: a stage's model writes the dataset for a later stage (progressive bootstrapping).

Writes `<stage dir>/data.jsonl` with the prompt, the generated completion (as an assistant
message when the prompts are conversational) and every other column of the prompt file.
`prompts` takes what `data` takes (files, globs, lists, hf:, `columns`, `on_bad_rows`), read by
the one stage loader (pipeline/stage_rows.py);
`keep = "correct"` keeps only rows whose completion equals the row's `answer` column.
"""

from __future__ import annotations

from typing import Any

import torch

from graftline.engine.pipeline import spec
from graftline.engine.pipeline.datasets import GENERATED, write_jsonl
from graftline.engine.pipeline.rewards import completion_text
from graftline.engine.stages import checks
from graftline.engine.stages.context import StageContext, StageOutcome
from graftline.engine.stages.loading import load_checkpoint_model
from graftline.engine.stages.stage_data import stage_rows

BATCH = 64


def prompt_text(tokenizer: Any, prompt: Any) -> str:
    if isinstance(prompt, list):
        return tokenizer.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True)
    return str(prompt)


@torch.no_grad()
def complete(model: Any, tokenizer: Any, prompts: list[Any], *, max_new_tokens: int,
             temperature: float = 0.0, seed: int = 0) -> list[str]:
    """Completions for `prompts` (strings or message lists), in batches, left-padded."""
    model.eval()
    texts = [prompt_text(tokenizer, p) for p in prompts]
    chat = bool(getattr(tokenizer, "chat_template", None)) and isinstance(prompts[0], list)
    ends = getattr(model.generation_config, "eos_token_id", None) or tokenizer.eos_token_id
    side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    torch.manual_seed(seed)
    out: list[str] = []
    try:
        for i in range(0, len(texts), BATCH):
            enc = tokenizer(texts[i:i + BATCH], return_tensors="pt", padding=True,
                            add_special_tokens=not chat)
            enc = {k: v.to(model.device) for k, v in enc.items()}
            sample = temperature > 0
            gen = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=sample,
                                 temperature=temperature if sample else None,
                                 top_p=None, top_k=None,
                                 pad_token_id=tokenizer.pad_token_id, eos_token_id=ends)
            new = gen[:, enc["input_ids"].shape[1]:]
            out += [tokenizer.decode(row, skip_special_tokens=True).strip() for row in new]
    finally:
        tokenizer.padding_side = side
    return out


def run(ctx: StageContext) -> StageOutcome:
    stage = ctx.spec_as(spec.GenerateStage)
    model, tokenizer, _ = load_checkpoint_model(ctx, ctx.step.parent)
    log = checks.CheckLog(ctx.name, ctx.sink)  # a bad_rows warning when rows were skipped
    rows = stage_rows(ctx, stage, "prompts", "generate", log).to_list()
    prompts = [r["prompt"] for r in rows]
    written: list[dict[str, Any]] = []
    for sample in range(stage.num_samples):
        texts = complete(model, tokenizer, prompts, max_new_tokens=stage.max_new_tokens,
                         temperature=stage.temperature, seed=ctx.seed + sample)
        for row, text in zip(rows, texts, strict=True):
            if stage.keep == "correct" and "answer" in row and \
                    completion_text(text).strip() != str(row["answer"]).strip():
                continue
            completion: Any = [{"role": "assistant", "content": text}] \
                if isinstance(row["prompt"], list) else text
            written.append({**row, "completion": completion})
    write_jsonl(ctx.stage_dir / GENERATED, written)
    outcome = StageOutcome(kind=None, checks=log)
    outcome.metrics = {"rows": float(len(written)), "prompts": float(len(rows))}
    if "answer" in (rows[0] if rows else {}):
        outcome.metrics["kept_fraction"] = len(written) / max(1, len(rows) * stage.num_samples)
    ctx.sink.emit("info", ctx.name, message=f"wrote {len(written)} rows to "
                                           f"{ctx.stage_dir / GENERATED}")
    return outcome

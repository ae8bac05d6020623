"""The tiny offline base model: a ~350k-parameter Llama pre-trained on two-digit addition.

Built deterministically from a recipe and cached on disk keyed by the recipe's hash, so the test
suite, the demo and the benchmarks build it once. Everything downstream loads it through the real
`from_pretrained` path.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

import torch
from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from graftline.engine.toy import tasks
from graftline.engine.toy.recipe import ToyRecipe
from graftline.engine.toy.tokenizer import ASSISTANT, END, USER, build_tokenizer

TOY_SCHEME = "toy:"


def cache_root() -> Path:
    return Path(os.environ.get("GRAFTLINE_CACHE", Path.home() / ".cache" / "graftline"))


def model_config(
    recipe: ToyRecipe, vocab_size: int, tokenizer: PreTrainedTokenizerFast
) -> LlamaConfig:
    return LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=recipe.hidden_size,
        intermediate_size=recipe.intermediate_size,
        num_hidden_layers=recipe.layers,
        num_attention_heads=recipe.heads,
        num_key_value_heads=recipe.heads,
        max_position_embeddings=128,
        tie_word_embeddings=recipe.tie_word_embeddings,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        attn_implementation="eager",
    )


def generation_config(tokenizer: PreTrainedTokenizerFast) -> GenerationConfig:
    # A chat answer ends with <|end|>; a plain one with </s>.
    return GenerationConfig(
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=[tokenizer.convert_tokens_to_ids(END), tokenizer.eos_token_id],
        pad_token_id=tokenizer.pad_token_id,
        max_new_tokens=6,
        do_sample=False,
    )


def _plain_batch(tokenizer: PreTrainedTokenizerFast, rng: random.Random, size: int) -> dict:
    pool = tasks.train_sums()
    texts = [f"{s.question}={s.answer}" for s in (rng.choice(pool) for _ in range(size))]
    enc = tokenizer(
        [tokenizer.bos_token + t + tokenizer.eos_token for t in texts],
        padding=True,
        return_tensors="pt",
        add_special_tokens=False,
    )
    labels = enc["input_ids"].clone()
    labels[enc["attention_mask"] == 0] = -100
    return {
        "input_ids": enc["input_ids"],
        "attention_mask": enc["attention_mask"],
        "labels": labels,
    }


def pretrain(recipe: ToyRecipe, progress: Callable[[int, float], None] | None = None):
    """Full-parameter pre-training on the plain `a+b=c` format. Returns (model, tokenizer)."""
    torch.manual_seed(recipe.seed)
    rng = random.Random(recipe.seed)
    tokenizer = build_tokenizer()
    model = LlamaForCausalLM(model_config(recipe, len(tokenizer), tokenizer))
    model.generation_config = generation_config(tokenizer)
    optimizer = torch.optim.AdamW(model.parameters(), lr=recipe.lr, weight_decay=0.01)

    def schedule(step: int) -> float:
        if step < recipe.warmup:
            return (step + 1) / recipe.warmup
        done = (step - recipe.warmup) / max(1, recipe.steps - recipe.warmup)
        return 0.5 * (1 + torch.cos(torch.tensor(done * torch.pi)).item())

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
    model.train()
    for step in range(recipe.steps):
        loss = model(**_plain_batch(tokenizer, rng, recipe.batch_size)).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        if progress is not None:
            progress(step + 1, loss.item())
    model.eval()
    return model, tokenizer


def build_base(
    recipe: ToyRecipe = ToyRecipe(),
    *,
    cache: Path | None = None,
    progress: Callable[[int, float], None] | None = None,
) -> Path:
    """The cached base directory for `recipe`, building it the first time.

    Concurrent builders (pytest-xdist workers, two demos) race safely: each builds into its own
    temporary directory and the first rename wins.
    """
    root = (cache or cache_root()) / "toy-base"
    target = root / recipe.key
    if (target / "config.json").exists():
        return target
    root.mkdir(parents=True, exist_ok=True)
    model, tokenizer = pretrain(recipe, progress)
    staging = Path(tempfile.mkdtemp(prefix=f".{recipe.key}-", dir=root))
    model.save_pretrained(staging)
    tokenizer.save_pretrained(staging)
    (staging / "toy_recipe.json").write_text(json.dumps(asdict(recipe), indent=2))
    try:
        staging.rename(target)
    except OSError:  # another builder finished first; theirs is identical
        shutil.rmtree(staging, ignore_errors=True)
    return target


def resolve_base(base: str, *, cache: Path | None = None) -> str:
    """`toy:addition` (optionally `toy:addition?tied=1`) names the built-in tiny model; anything
    else is returned unchanged (a local path or a hub id)."""
    if not base.startswith(TOY_SCHEME):
        return base
    recipe = ToyRecipe(tie_word_embeddings="tied=1" in base)
    return str(build_base(recipe, cache=cache))


def chat_prompt(tokenizer: PreTrainedTokenizerFast, question: str) -> str:
    return tokenizer.apply_chat_template(
        tasks.user(question), tokenize=False, add_generation_prompt=True
    )


@torch.no_grad()
def answer(
    model,
    tokenizer: PreTrainedTokenizerFast,
    questions: list[str],
    *,
    chat: bool = True,
    max_new_tokens: int = 5,
) -> list[str]:
    """Greedy answers to `questions`, decoded without special tokens."""
    if chat:
        texts = [chat_prompt(tokenizer, q) for q in questions]
    else:
        texts = [tokenizer.bos_token + q + "=" for q in questions]
    old_side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    try:
        enc = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)
    finally:
        tokenizer.padding_side = old_side
    enc = {k: v.to(model.device) for k, v in enc.items()}
    out = model.generate(
        **enc,
        max_new_tokens=max_new_tokens,
        do_sample=False,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=[tokenizer.convert_tokens_to_ids(END), tokenizer.eos_token_id],
    )
    new = out[:, enc["input_ids"].shape[1] :]
    return [tokenizer.decode(row, skip_special_tokens=True).strip() for row in new]


def accuracy(
    model,
    tokenizer: PreTrainedTokenizerFast,
    *,
    chat: bool = True,
    limit: int | None = None,
    batch: int = 256,
) -> float:
    """Exact-match accuracy on the held-out sums."""
    sums = tasks.eval_sums()[:limit]
    right = 0
    for i in range(0, len(sums), batch):
        chunk = sums[i : i + batch]
        got = answer(model, tokenizer, [s.question for s in chunk], chat=chat)
        right += sum(g == s.answer for g, s in zip(got, chunk, strict=True))
    return right / len(sums)


__all__ = ["ASSISTANT", "USER", "ToyRecipe", "accuracy", "answer", "build_base", "resolve_base"]

"""The tiny offline base model: a ~350k-parameter Llama pre-trained on two-digit addition.

Built deterministically from a recipe and cached on disk keyed by the recipe's hash, so the test
suite, the demo and the benchmarks build it once. Everything downstream loads it through the real
`from_pretrained` path.
"""

from __future__ import annotations

import fcntl
import json
import os
import random
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path

import torch
from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from graftline.engine.common.checkpoint_files import MODEL_CONFIG
from graftline.engine.toy import tasks
from graftline.engine.toy.recipe import (
    RECORD,
    AttemptResult,
    BaseRecord,
    Fallback,
    ToyBaseTooWeak,
    ToyRecipe,
    base_dir,
    cache_root,
    default_recipe,
    verified,
)
from graftline.engine.toy.shipped import SHIPPED_ROOT, install, shipped_dir
from graftline.engine.toy.tokenizer import ASSISTANT, END, USER, build_tokenizer


def model_config(
    recipe: ToyRecipe, vocab_size: int, tokenizer: PreTrainedTokenizerFast
) -> LlamaConfig:
    return LlamaConfig(  # type: ignore[call-arg]  # attn_implementation is read from kwargs
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
    # Every answer ends with <|end|> (the plain pre-training format too); </s> ends a document.
    return GenerationConfig(
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=[tokenizer.convert_tokens_to_ids(END), tokenizer.eos_token_id],
        pad_token_id=tokenizer.pad_token_id,
        max_new_tokens=6,
        do_sample=False,
    )


def _plain_batch(tokenizer: PreTrainedTokenizerFast, rng: random.Random, size: int,
                 pool: list[tasks.Sum]) -> dict:
    texts = [f"{s.question}={s.answer}" for s in (rng.choice(pool) for _ in range(size))]
    # Every answer ends with the chat template's <|end|>: a base that never predicted it has an
    # `lm_head` row no LoRA on the linear layers can train, and every tuned model then runs on
    # past its answer (GRPO's sampled completions hit their length limit, the reward stays flat).
    enc = tokenizer(
        [tokenizer.bos_token + t + END for t in texts],
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


Progress = Callable[[int, float], None]


def _train(model, tokenizer, recipe: ToyRecipe, rng: random.Random, steps: int,
           progress: Progress | None = None, offset: int = 0) -> list[float]:
    """`steps` steps of AdamW with warmup and a cosine to zero; returns the losses. A fresh
    optimizer each call: a continuation is a warm restart, the same schedule again."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=recipe.lr, weight_decay=0.01)
    warmup = min(recipe.warmup, max(1, steps // 4))

    def schedule(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        done = (step - warmup) / max(1, steps - warmup)
        return 0.5 * (1 + torch.cos(torch.tensor(done * torch.pi)).item())

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
    losses: list[float] = []
    pool = tasks.train_sums()  # once: building it is a fifth of a step's time at this size
    model.train()
    for step in range(steps):
        loss = model(**_plain_batch(tokenizer, rng, recipe.batch_size, pool)).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss.item())
        if progress is not None:
            progress(offset + step + 1, losses[-1])
    model.eval()
    return losses


def _fresh(recipe: ToyRecipe, seed: int) -> tuple[LlamaForCausalLM, PreTrainedTokenizerFast,
                                                  random.Random]:
    """A new model and data stream for `seed` (in the order the original recipe drew them)."""
    torch.manual_seed(seed)
    rng = random.Random(seed)
    tokenizer = build_tokenizer()
    model = LlamaForCausalLM(model_config(recipe, len(tokenizer), tokenizer))
    model.generation_config = generation_config(tokenizer)
    return model, tokenizer, rng


def pretrain(recipe: ToyRecipe, progress: Progress | None = None):
    """Full-parameter pre-training on the plain `a+b=c` format, one attempt with the recipe's own
    seed and steps, no self-check. Returns (model, tokenizer)."""
    model, tokenizer, rng = _fresh(recipe, recipe.seed)
    _train(model, tokenizer, recipe, rng, recipe.steps, progress)
    return model, tokenizer


def pretrain_checked(recipe: ToyRecipe, fallback: Fallback = Fallback(),
                     progress: Progress | None = None, log: Callable[[str], None] | None = None):
    """Pre-train until the held-out plain exact match reaches `recipe.min_accuracy`, following
    `fallback`'s plan when an attempt falls short (a recipe can land on a loss plateau on one
    CPU family and not another). Returns (model, tokenizer, record); raises ToyBaseTooWeak."""
    # One thread: the same build in the test suite (one thread) and in the engine (torch's
    # default) then takes the same floating-point path on a machine, and a model this small
    # gains nothing from a second thread (on a busy 2-core box it made steps many times slower)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _attempts(recipe, fallback, progress, log)
    finally:
        torch.set_num_threads(threads)


def _attempts(recipe: ToyRecipe, fallback: Fallback, progress: Progress | None,
              log: Callable[[str], None] | None):
    results: list[AttemptResult] = []
    model: LlamaForCausalLM | None = None
    tokenizer: PreTrainedTokenizerFast | None = None
    rng: random.Random | None = None
    total = 0
    for attempt in fallback.plan(recipe):
        started = time.monotonic()
        if not attempt.continues or model is None or tokenizer is None or rng is None:
            model, tokenizer, rng = _fresh(recipe, attempt.seed)
            total = 0
        losses = _train(model, tokenizer, recipe, rng, attempt.steps, progress, total)
        total += attempt.steps
        reached = accuracy(model, tokenizer, chat=False)
        tail = losses[-20:]
        results.append(AttemptResult(attempt.seed, total, attempt.continues, round(reached, 4),
                                     round(sum(tail) / len(tail), 4),
                                     round(time.monotonic() - started, 1)))
        if log is not None:
            log(f"toy base: seed {attempt.seed}, {total} steps: held-out plain exact match "
                f"{reached:.1%} (needs ≥ {recipe.min_accuracy:.0%})")
        if reached >= recipe.min_accuracy:
            record = BaseRecord(recipe.key, round(reached, 4), recipe.min_accuracy, attempt.seed,
                                total, tuple(results))
            return model, tokenizer, record
    tried = ", ".join(f"seed {r.seed} {r.steps} steps → {r.accuracy:.1%}" for r in results)
    raise ToyBaseTooWeak(
        f"the toy base did not reach {recipe.min_accuracy:.0%} held-out exact match on this "
        f"machine ({tried}); nothing was cached",
        f"set GRAFTLINE_TOY_SEED to another seed (e.g. {recipe.seed + fallback.seeds}) and run "
        "again, or report the attempts above with your CPU model")


def _measure(directory: Path, recipe: ToyRecipe) -> BaseRecord:
    """The record of a base built without one (before the self-check): measured, not assumed."""
    try:
        model = LlamaForCausalLM.from_pretrained(str(directory))
        tokenizer = PreTrainedTokenizerFast.from_pretrained(str(directory))
        reached = round(accuracy(model, tokenizer, chat=False), 4)
    except (OSError, ValueError):  # half-written or damaged: as good as absent
        reached = 0.0
    return BaseRecord(recipe.key, reached, recipe.min_accuracy, recipe.seed, recipe.steps, ())


def _discard(directory: Path, root: Path) -> None:
    """Remove a rejected build: only a real directory directly inside the toy-base cache."""
    if directory.is_symlink() or directory.parent.resolve() != root.resolve():
        raise ToyBaseTooWeak(f"{directory} holds an unverified toy base and is not a plain "
                             "directory of the cache", f"remove {directory} yourself")
    shutil.rmtree(directory)


def build_base(
    recipe: ToyRecipe | None = None,
    *,
    cache: Path | None = None,
    progress: Progress | None = None,
    fallback: Fallback = Fallback(),
    log: Callable[[str], None] | None = None,
    shipped: Path | None = SHIPPED_ROOT,
) -> Path:
    """The cached, verified base directory for `recipe` (default: `toy:addition`'s), building it
    the first time. A recipe that ships with graftline (toy/shipped.py) is copied from the
    package under `shipped` instead (None: always build), its bytes checked against its record.
    A cached base is handed out only with a record saying it reached the recipe's threshold; one
    without (built before the self-check) is measured first, and rebuilt when it falls short.

    Concurrent builders (pytest-xdist workers, a demo and a test run) train it once: the first
    holds the recipe's build lock and the others wait for it, then find the finished base. The
    staging directory and rename keep a crashed builder from leaving half a base behind.
    """
    recipe = recipe or default_recipe()
    target = base_dir(recipe, cache)
    if verified(target, recipe) is not None:
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with _build_lock(target, log):
        return _build_locked(recipe, target, progress, fallback, log, shipped)


@contextmanager
def _build_lock(target: Path, log: Callable[[str], None] | None) -> Iterator[None]:
    """An exclusive flock beside the target; the kernel drops it when a holder dies."""
    fd = os.open(target.parent / f".{target.name}.lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if log is not None:
                log(f"toy base {target.name}: another process is building it; waiting")
            fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _build_locked(recipe: ToyRecipe, target: Path, progress: Progress | None,
                  fallback: Fallback, log: Callable[[str], None] | None,
                  shipped: Path | None) -> Path:
    root = target.parent
    if verified(target, recipe) is not None:  # built by whoever held the lock before us
        return target
    source = None if shipped is None else shipped_dir(recipe, shipped)
    if source is not None:
        if target.exists():  # an older or damaged copy: the shipped bytes replace it
            _discard(target, root)
        return install(source, target)
    if (target / MODEL_CONFIG).is_file():
        record = _measure(target, recipe)
        if record.accuracy >= recipe.min_accuracy:
            _write_record(target, record)
            return target
        if log is not None:
            log(f"toy base {recipe.key}: cached build reaches only {record.accuracy:.1%}; "
                "rebuilding it")
        _discard(target, root)
    model, tokenizer, record = pretrain_checked(recipe, fallback, progress, log)
    staging = Path(tempfile.mkdtemp(prefix=f".{recipe.key}-", dir=root))
    model.save_pretrained(staging)
    tokenizer.save_pretrained(staging)
    (staging / "toy_recipe.json").write_text(json.dumps(asdict(recipe), indent=2))
    _write_record(staging, record)  # last: a directory with a record is a finished build
    try:
        staging.rename(target)
    except OSError:  # another builder finished first; theirs passed the same check
        shutil.rmtree(staging, ignore_errors=True)
    return target


def _write_record(directory: Path, record: BaseRecord) -> None:
    partial = directory / f".{RECORD}.partial"
    partial.write_text(record.to_json())
    partial.replace(directory / RECORD)


def chat_prompt(tokenizer: PreTrainedTokenizerFast, question: str) -> str:
    return str(tokenizer.apply_chat_template(
        tasks.user(question), tokenize=False, add_generation_prompt=True
    ))


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
    return [str(tokenizer.decode(row, skip_special_tokens=True)).strip() for row in new]


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


__all__ = [
    "ASSISTANT",
    "USER",
    "ToyRecipe",
    "accuracy",
    "answer",
    "build_base",
    "cache_root",
    "pretrain",
    "pretrain_checked",
]

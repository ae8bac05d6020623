"""Tiny pre-trained twins of the model families people train, built offline and cached.

    build_family("qwen3")   # the cached twin directory, built once (a few seconds)
    FAMILIES                # the family specs: model type, tokenizer kind, chat template

Each twin is its family's architecture at 2 layers and 64 wide (`twin.shrink_config`'s sizes),
with a tokenizer of the family's kind trained offline on the toy task's text:

- byte-level BPE (`tokenizers`' BPE over bytes, GPT-2/Llama-3/Qwen/o200k style) for llama,
  qwen2, qwen3, qwen3_moe and gpt_oss;
- SentencePiece (a real `tokenizer.model` trained with `sentencepiece`, BPE with byte
  fallback as the real ones, with its `tokenizer.json` read from it) for mistral, phi3, gemma2
  and gemma3;

the family's chat-template shape (ChatML, Llama-3 headers, [INST], Gemma turns, Phi-3 tags,
gpt-oss harmony; none has `{% generation %}`), the template's special tokens as special added
tokens, the embedding padded past the vocabulary to a multiple of 64 like real checkpoints, and
a few seconds of full-parameter pre-training on the toy addition sums, in the plain format and in
the family's own chat format, so the template's tokens are learned and the checks see a model,
not noise. The cache lives under `$GRAFTLINE_CACHE/families/<family>-<key>` (the key hashes the
spec and the recipe), next to the toy base.

The nine twins of the default recipe ship with graftline as package data (`twins/<family>-<key>/`,
built once with the math pinned, as the toy base is: toy/shipped.py), so every machine checks its
families on the same bytes and nothing is trained on first use: `build_family` copies the shipped
twin into the cache, its files checked against the sha256 in its record. Another recipe is built.

    python -m graftline.engine.rehearse.families    # rebuild the shipped twins (maintainers only)
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import random
import shutil
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from graftline.engine.common.checkpoint_files import MODEL_CONFIG
from graftline.engine.common.errors import GraftlineError
from graftline.engine.common.shipped_files import changed_files, copy_out, install_checked
from graftline.engine.rehearse.twin import (
    EXPERTS,
    EXPERTS_PER_TOKEN,
    HEAD_DIM,
    HEADS,
    HIDDEN,
    INTERMEDIATE,
    LAYERS,
)
from graftline.engine.toy import tasks
from graftline.engine.toy.recipe import cache_root

BUILD_VERSION = 2
# 4: SentencePiece BPE, byte fallback, Gemma without a dummy prefix, Phi-3's rstrip tokens,
# add_bos_token said in tokenizer_config.json
SPM_VERSION = 4
RECORD = "family_twin.json"
SHIPPED_ROOT = Path(__file__).resolve().with_name("twins")
PAD_MULTIPLE = 64
# The Qwen2 / Llama-3 / o200k shape of byte-level BPE pre-tokenization (one digit per piece, as
# Qwen2's; transformers 5 rebuilds a qwen2 tokenizer with this regex whatever the file says).
BPE_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
             r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")

CHATML = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
LLAMA3 = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' + message['content']"
    " + '<|eot_id|>' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}"
    "{% endif %}"
)
MISTRAL = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{% if message['role'] == 'user' %}{{ '[INST] ' + message['content'] + ' [/INST]' }}"
    "{% elif message['role'] == 'assistant' %}{{ message['content'] + eos_token }}"
    "{% else %}{{ message['content'] + '\\n\\n' }}{% endif %}"
    "{% endfor %}"
)
GEMMA = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{% set role = 'model' if message['role'] == 'assistant' else message['role'] %}"
    "{{ '<start_of_turn>' + role + '\\n' + message['content'] + '<end_of_turn>\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<start_of_turn>model\\n' }}{% endif %}"
)
PHI3 = (
    "{% for message in messages %}"
    "{{ '<|' + message['role'] + '|>\\n' + message['content'] + '<|end|>\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\\n' }}{% endif %}"
)
HARMONY = (
    "{% for message in messages %}"
    "{% if message['role'] == 'assistant' %}"
    "{{ '<|start|>assistant<|channel|>final<|message|>' + message['content'] + '<|return|>' }}"
    "{% else %}{{ '<|start|>' + message['role'] + '<|message|>' + message['content'] + '<|end|>' }}"
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start|>assistant<|channel|>final<|message|>' }}"
    "{% endif %}"
)


@dataclass(frozen=True)
class Family:
    """One family's twin: its architecture, tokenizer kind, special tokens and template."""

    name: str
    model_type: str
    tokenizer: str  # "bpe" (byte-level BPE) or "spm" (SentencePiece BPE, byte fallback)
    template: str
    bos: str | None
    eos: str  # the tokenizer's eos token
    end_of_turn: str  # the token that ends an assistant turn (generation's eos)
    pad: str
    unk: str | None
    specials: tuple[str, ...]  # the template's other special tokens
    config: tuple[tuple[str, Any], ...] = ()  # family-specific config values
    add_bos: bool = False  # the tokenizer adds BOS to plain text (SentencePiece kinds)

    @property
    def all_specials(self) -> list[str]:
        named = [self.pad, self.bos, self.eos, self.unk, self.end_of_turn, *self.specials]
        return list(dict.fromkeys(t for t in named if t))


_BPE_TEXT = ("<|endoftext|>",)
FAMILIES: dict[str, Family] = {f.name: f for f in (
    Family("llama", "llama", "bpe", LLAMA3, "<|begin_of_text|>", "<|end_of_text|>", "<|eot_id|>",
           "<|finetune_right_pad_id|>", None, ("<|start_header_id|>", "<|end_header_id|>"),
           (("tie_word_embeddings", False),)),
    Family("mistral", "mistral", "spm", MISTRAL, "<s>", "</s>", "</s>", "<pad>", "<unk>",
           ("[INST]", "[/INST]"), (("sliding_window", None),), add_bos=True),
    Family("qwen2", "qwen2", "bpe", CHATML, None, "<|im_end|>", "<|im_end|>", "<|endoftext|>",
           None, ("<|im_start|>",), (("tie_word_embeddings", True),)),
    Family("qwen3", "qwen3", "bpe", CHATML, None, "<|im_end|>", "<|im_end|>", "<|endoftext|>",
           None, ("<|im_start|>",), (("tie_word_embeddings", True),)),
    Family("qwen3_moe", "qwen3_moe", "bpe", CHATML, None, "<|im_end|>", "<|im_end|>",
           "<|endoftext|>", None, ("<|im_start|>",),
           (("num_experts", EXPERTS), ("num_experts_per_tok", EXPERTS_PER_TOKEN),
            ("moe_intermediate_size", INTERMEDIATE // 2), ("decoder_sparse_step", 1),
            ("mlp_only_layers", []), ("tie_word_embeddings", False),
            # as the published Qwen3-MoE models (transformers' default is False): llama.cpp's
            # qwen3moe always renormalises the top-k weights, and the converter keeps no flag
            ("norm_topk_prob", True))),
    Family("gemma2", "gemma2", "spm", GEMMA, "<bos>", "<eos>", "<end_of_turn>", "<pad>", "<unk>",
           ("<start_of_turn>",), (("query_pre_attn_scalar", HEAD_DIM), ("sliding_window", 32)),
           add_bos=True),
    Family("gemma3", "gemma3_text", "spm", GEMMA, "<bos>", "<eos>", "<end_of_turn>", "<pad>",
           "<unk>", ("<start_of_turn>",),
           (("query_pre_attn_scalar", HEAD_DIM), ("sliding_window", 32),
            ("layer_types", ["sliding_attention", "full_attention"])), add_bos=True),
    Family("phi3", "phi3", "spm", PHI3, "<s>", "<|endoftext|>", "<|end|>", "<|endoftext|>",
           "<unk>", ("<|user|>", "<|assistant|>", "<|system|>"), (("tie_word_embeddings", False),)),
    Family("gpt_oss", "gpt_oss", "bpe", HARMONY, "<|startoftext|>", "<|return|>", "<|return|>",
           "<|endoftext|>", None, ("<|start|>", "<|message|>", "<|end|>", "<|channel|>"),
           (("num_local_experts", EXPERTS), ("num_experts_per_tok", EXPERTS_PER_TOKEN),
            ("experts_per_token", EXPERTS_PER_TOKEN), ("sliding_window", 32),
            ("layer_types", ["sliding_attention", "full_attention"]),
            ("rope_parameters", {"rope_type": "default", "rope_theta": 150000.0}),
            ("tie_word_embeddings", False))),
)}


@dataclass(frozen=True)
class TwinRecipe:
    steps: int = 300
    batch_size: int = 48
    lr: float = 3e-3
    seed: int = 0
    chat_share: float = 0.25  # a quarter of each batch in the chat format: its tokens are learned
    version: int = BUILD_VERSION


class FamilyUnknown(GraftlineError):
    pass


class ShippedTwinDamaged(GraftlineError):
    """A shipped family twin's files differ from the sha256 its record holds."""


def family(name: str) -> Family:
    if name not in FAMILIES:
        raise FamilyUnknown(f"no family twin '{name}'", f"one of: {', '.join(FAMILIES)}")
    return FAMILIES[name]


def key(spec: Family, recipe: TwinRecipe) -> str:
    parts: list[Any] = [asdict(spec), asdict(recipe)]
    if spec.tokenizer == "spm":  # only these twins changed (SentencePiece BPE since then)
        parts.append({"spm": SPM_VERSION})
    blob = json.dumps(parts, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:12]


def twin_name(name: str, recipe: TwinRecipe | None = None) -> str:
    """The twin's directory name, in the cache and where it ships: `<family>-<key>`."""
    return f"{name}-{key(family(name), recipe or TwinRecipe())}"


def twin_dir(name: str, recipe: TwinRecipe | None = None, cache: Path | None = None) -> Path:
    return (cache or cache_root()) / "families" / twin_name(name, recipe)


# ---------------------------------------------------------------- tokenizers

def _corpus() -> list[str]:
    """The text a twin's tokenizer is trained on: the toy task in plain and spoken forms."""
    rng = random.Random(7)
    lines = [f"{s.question}={s.answer}" for s in tasks.all_sums()[::7]]
    words = ("what is the sum of and plus equals answer question model user assistant system "
             "hello world the quick brown fox jumps over lazy dog numbers add two digits")
    lines += [" ".join(rng.sample(words.split(), 6)) for _ in range(300)]
    lines += ["".join(chr(c) for c in range(32, 127))]
    return lines


def _bpe(spec: Family, folder: Path) -> None:
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    core = Tokenizer(models.BPE())
    core.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(BPE_SPLIT), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    core.decoder = decoders.ByteLevel()
    core.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(vocab_size=384, special_tokens=spec.all_specials,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    core.train_from_iterator(_corpus(), trainer)
    _wrap(spec, core, folder)


def _spm(spec: Family, folder: Path) -> None:
    """A real SentencePiece BPE model with byte fallback (`tokenizer.model`, what llama.cpp's
    converter reads for these families; the kind Llama-2, Mistral, Phi-3 and Gemma ship) and
    the same vocabulary and merges as a `tokenizers` BPE (`tokenizer.json`, the Llama-2
    layout: "▁" prepended, spaces as "▁", bytes as <0xNN>). Not unigram: llama.cpp's SPM
    tokenizer applies merges by score, so it splits a unigram model's text differently, and
    without byte pieces it aborts on a character outside the vocabulary (a newline)."""
    import io

    import sentencepiece as spm
    from tokenizers import Tokenizer, decoders, models, normalizers
    from transformers.tokenization_utils_base import generate_merges

    unk, bos = spec.unk or "<unk>", spec.bos or "<s>"
    eos = spec.eos if spec.eos != spec.pad else "</s>"
    controls = {unk, bos, eos}
    # Gemma's SentencePiece adds no dummy "▁" prefix (llama.cpp's gemma converter says so);
    # Llama-2's, Mistral's and Phi-3's do
    prefix = not spec.model_type.startswith("gemma")
    written = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(_corpus()), model_writer=written, vocab_size=400,
        model_type="bpe", character_coverage=1.0, byte_fallback=True,
        hard_vocab_limit=False, normalization_rule_name="identity", pad_id=-1, unk_id=0,
        bos_id=1, eos_id=2, unk_piece=unk, bos_piece=bos, eos_piece=eos,
        user_defined_symbols=[t for t in spec.all_specials if t not in controls],
        add_dummy_prefix=prefix, remove_extra_whitespaces=False, minloglevel=2, num_threads=1)
    (folder / "tokenizer.model").write_bytes(written.getvalue())
    processor = spm.SentencePieceProcessor(model_proto=written.getvalue())
    pieces = [(processor.id_to_piece(i), processor.get_score(i))
              for i in range(processor.get_piece_size())]
    vocab = {piece: i for i, (piece, _) in enumerate(pieces)}
    merges = generate_merges(vocab, dict(pieces))
    core = Tokenizer(models.BPE(vocab, merges, unk_token=unk, fuse_unk=True, byte_fallback=True))
    core.normalizer = normalizers.Sequence(
        [normalizers.Prepend("\u2581")] * prefix + [normalizers.Replace(" ", "\u2581")])
    core.decoder = decoders.Sequence([decoders.Replace("\u2581", " "), decoders.ByteFallback(),
                                      decoders.Fuse(), *[decoders.Strip(" ", 1, 0)] * prefix])
    _wrap(spec, core, folder)


def _wrap(spec: Family, core: Any, folder: Path) -> None:
    from tokenizers import AddedToken, processors
    from transformers import PreTrainedTokenizerFast

    # Phi-3's template tokens swallow the white space after them (rstrip), as in the published
    # tokenizer and as llama.cpp treats phi3's special tokens; BOS, UNK and EOS do not
    plain = {spec.bos, spec.unk, spec.eos, spec.pad}
    core.add_special_tokens([AddedToken(t, special=True, normalized=False,
                                        rstrip=spec.model_type == "phi3" and t not in plain)
                             for t in spec.all_specials])
    if spec.add_bos and spec.bos:
        bos_id = core.token_to_id(spec.bos)
        core.post_processor = processors.TemplateProcessing(
            single=f"{spec.bos} $A", pair=f"{spec.bos} $A {spec.bos} $B",
            special_tokens=[(spec.bos, bos_id)])
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=core, bos_token=spec.bos, eos_token=spec.eos, pad_token=spec.pad,
        unk_token=spec.unk, additional_special_tokens=list(spec.specials)
        + ([spec.end_of_turn] if spec.end_of_turn != spec.eos else []))
    tokenizer.chat_template = spec.template
    tokenizer.padding_side = "right"
    tokenizer.save_pretrained(str(folder))
    if spec.tokenizer == "spm":
        # said in the file, as published SentencePiece tokenizers say it: the GGUF converter
        # reads it (without it llama.cpp adds BOS to every SentencePiece text)
        config_path = folder / "tokenizer_config.json"
        config = json.loads(config_path.read_text(encoding="utf-8"))
        config.update(add_bos_token=spec.add_bos, add_eos_token=False)
        config_path.write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")


# ---------------------------------------------------------------- the model

def _config(spec: Family, tokenizer: Any) -> Any:
    from transformers import AutoConfig

    vocab = -(-len(tokenizer) // PAD_MULTIPLE) * PAD_MULTIPLE
    kwargs: dict[str, Any] = dict(
        vocab_size=vocab, num_hidden_layers=LAYERS, hidden_size=HIDDEN,
        num_attention_heads=HEADS, num_key_value_heads=HEADS // 2, head_dim=HEAD_DIM,
        intermediate_size=INTERMEDIATE, max_position_embeddings=256,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id, attn_implementation="eager",
    )
    kwargs.update(dict(spec.config))
    return AutoConfig.for_model(spec.model_type, **kwargs)


def _batches(spec: Family, tokenizer: Any, recipe: TwinRecipe) -> Iterator[dict[str, Any]]:
    rng = random.Random(recipe.seed)
    pool = tasks.train_sums()
    n_chat = int(recipe.batch_size * recipe.chat_share)
    while True:
        sums = [rng.choice(pool) for _ in range(recipe.batch_size)]
        texts = [(spec.bos or "") + f"{s.question}={s.answer}" + spec.eos
                 for s in sums[n_chat:]]
        texts += [tokenizer.apply_chat_template(
            [*tasks.user(s.question), *tasks.assistant(s.answer)], tokenize=False)
            for s in sums[:n_chat]]
        enc = tokenizer(texts, padding=True, return_tensors="pt", add_special_tokens=False)
        labels = enc["input_ids"].clone()
        labels[enc["attention_mask"] == 0] = -100
        yield {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"],
               "labels": labels}


def _pretrain(model: Any, spec: Family, tokenizer: Any, recipe: TwinRecipe) -> list[float]:
    import torch

    optimizer = torch.optim.AdamW(model.parameters(), lr=recipe.lr, weight_decay=0.01)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=recipe.lr,
                                                    total_steps=recipe.steps, pct_start=0.1)
    losses: list[float] = []
    model.train()
    batches = _batches(spec, tokenizer, recipe)
    for _ in range(recipe.steps):
        loss = model(**next(batches)).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(float(loss.item()))
    model.eval()
    return losses


def _build(spec: Family, recipe: TwinRecipe, folder: Path) -> dict[str, Any]:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    (_bpe if spec.tokenizer == "bpe" else _spm)(spec, folder)
    tokenizer = AutoTokenizer.from_pretrained(str(folder))
    config = _config(spec, tokenizer)
    torch.manual_seed(recipe.seed)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
        losses = _pretrain(model, spec, tokenizer, recipe)
    finally:
        torch.set_num_threads(threads)
    ends = list(dict.fromkeys([tokenizer.convert_tokens_to_ids(spec.end_of_turn),
                               tokenizer.eos_token_id]))
    model.generation_config = GenerationConfig(
        bos_token_id=tokenizer.bos_token_id, eos_token_id=ends,
        pad_token_id=tokenizer.pad_token_id, max_new_tokens=8, do_sample=False)
    model.save_pretrained(str(folder), safe_serialization=True)
    tail = losses[-20:]
    return {"family": spec.name, "model_type": spec.model_type, "tokenizer": spec.tokenizer,
            "steps": recipe.steps, "first_loss": round(losses[0], 4),
            "final_loss": round(sum(tail) / len(tail), 4),
            "params": sum(p.numel() for p in model.parameters())}


@contextmanager
def _lock(target: Path) -> Iterator[None]:
    fd = os.open(target.parent / f".{target.name}.lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def build_family(name: str, recipe: TwinRecipe | None = None, *,
                 cache: Path | None = None, shipped: Path | None = SHIPPED_ROOT) -> Path:
    """The cached twin of family `name`: copied from the twin that ships under `shipped` when
    the recipe ships (checked against its record), else built the first time (a few seconds on
    one core). None for `shipped` always builds."""
    recipe = recipe or TwinRecipe()
    spec = family(name)
    target = twin_dir(name, recipe, cache)
    source = None if shipped is None else shipped / target.name
    if source is not None and not (source / RECORD).is_file():
        source = None  # this recipe does not ship
    if _current(target, source):
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with _lock(target):
        if _current(target, source):  # made by whoever held the lock before us
            return target
        if target.exists():  # a half build, or one built here before this recipe shipped
            shutil.rmtree(target)
        if source is not None:
            install_checked(source, target, checked_twin)
        else:
            _build_into(spec, recipe, target)
    assert (target / MODEL_CONFIG).is_file()
    return target


def _current(target: Path, source: Path | None) -> bool:
    """A finished twin in the cache that is, where the recipe ships, the shipped bytes."""
    if not (target / RECORD).is_file():
        return False
    if source is None:
        return True
    files = read_record(source).get("files", {})
    try:
        cached = read_record(target).get("files")
    except ValueError:  # a torn or hand-edited record: the shipped copy replaces it
        return False
    return cached == files and not changed_files(target, files)


def _build_into(spec: Family, recipe: TwinRecipe, target: Path) -> None:
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        record = _build(spec, recipe, staging)
        (staging / RECORD).write_text(json.dumps(record, indent=2))  # last: a finished build
        staging.rename(target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def checked_twin(directory: Path) -> dict[str, Any]:
    """The record of a shipped twin whose every file matches it; raises ShippedTwinDamaged."""
    try:
        record = read_record(directory)
    except (OSError, ValueError):
        record = {}
    files = record.get("files")
    if record.get("origin") != "shipped" or not files:
        raise ShippedTwinDamaged(f"{directory / RECORD} is missing or holds no file digests",
                                 "reinstall graftline (the family twins are package data)")
    changed = changed_files(directory, files)
    if changed:
        raise ShippedTwinDamaged(
            f"the shipped family twin {directory} differs from its record: "
            f"{', '.join(changed)} (sha256 not as recorded)", "reinstall graftline")
    return record


def ship(root: Path = SHIPPED_ROOT) -> list[Path]:
    """Build every family's twin of the default recipe with the math pinned (the toy base's
    pins: toy/pinned_math.py) and write it under `root` with its files' digests."""
    from graftline.engine.toy.pinned_math import built_with, pin_math

    pins = pin_math()  # before torch is imported: it picks its kernels once
    import torch

    torch.set_num_threads(1)  # as `_build` trains: the record says so
    shipped = []
    with tempfile.TemporaryDirectory() as cache:
        for name in FAMILIES:
            built = build_family(name, cache=Path(cache), shipped=None)
            out = root / built.name
            files = copy_out(built, out, RECORD)
            record = {**read_record(built), "origin": "shipped", "built_with": built_with(pins),
                      "files": files}
            (out / RECORD).write_text(json.dumps(record, indent=2) + "\n")
            shipped.append(out)
    keep = {path.name for path in shipped}
    for stale in root.iterdir():  # twins of recipes or specs that no longer ship
        if stale.is_dir() and stale.name not in keep:
            shutil.rmtree(stale)
    return shipped


def read_record(folder: Path) -> dict[str, Any]:
    return dict(json.loads((Path(folder) / RECORD).read_text()))


def main() -> int:
    for out in ship():
        record = checked_twin(out)
        print(f"shipped {out.name}: {record['params']:,} parameters, loss "
              f"{record['first_loss']} → {record['final_loss']} in {record['steps']} steps")
    return 0


if __name__ == "__main__":
    sys.exit(main())

__all__ = ["FAMILIES", "RECORD", "SHIPPED_ROOT", "Family", "FamilyUnknown", "ShippedTwinDamaged",
           "TwinRecipe", "build_family", "checked_twin", "family", "key", "read_record", "ship",
           "twin_dir", "twin_name"]

"""A tiny, randomly initialised twin of a pipeline's base model, for rehearsals.

The twin keeps what makes a pipeline break — the architecture family (attention layout, rope
settings, MoE routing, tied embeddings), the tokenizer and its chat template — and drops what
makes it expensive: it has 2 layers, a 64-wide hidden state and at most 4 experts. It is built
from the base's own `config.json` when that is on this machine (a local directory or the Hugging
Face cache; nothing is downloaded), with the base's tokenizer when that is there too. Otherwise it
falls back to graftline's toy model (or the toy tokenizer) and says why.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from graftline.engine.common.errors import GraftlineError
from graftline.engine.common.tokenizer_files import save_tokenizer
from graftline.engine.pipeline.modelinfo import config_path

TOY_BASE = "toy:addition"
LAYERS = 2
HIDDEN = 64
HEADS = 4
HEAD_DIM = 16
INTERMEDIATE = 128
EXPERTS = 4
EXPERTS_PER_TOKEN = 2
# Keys of a published config.json that describe the checkpoint file, not the architecture.
DROP_KEYS = frozenset({"quantization_config", "transformers_version", "architectures",
                       "torch_dtype", "dtype", "auto_map", "_name_or_path", "model_type"})
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model")


@dataclass(frozen=True)
class Twin:
    """What the rehearsal runs on, and how it came to be."""

    base: str  # what the rehearsal's pipeline names as its base: a directory or `toy:…`
    source: str  # "config" (a twin of the real base) or "toy"
    model_type: str
    experts: int = 0
    params: int = 0
    tokenizer: str = "base"  # "base" or "toy"
    config_from: str | None = None
    notes: tuple[str, ...] = field(default_factory=tuple)

    @property
    def describe(self) -> str:
        if self.source == "toy":
            return "graftline's toy model (Llama, ~350k parameters)"
        moe = f", {self.experts} experts" if self.experts else ""
        return (f"a {LAYERS}-layer {self.model_type} twin ({self.params:,} parameters{moe}, "
                f"random weights, {self.tokenizer} tokenizer)")


class TwinError(GraftlineError):
    """The twin could not be built from the config; the caller falls back to the toy model."""


def _representative_layers(types: list[str], count: int) -> list[str]:
    """The first `count` layer types, preferring one of each kind (sliding, full, …), so a twin
    of an interleaved model still has both attention kinds."""
    chosen: list[str] = []
    for kind in types:
        if kind not in chosen:
            chosen.append(kind)
    for kind in types:
        if len(chosen) >= count:
            break
        chosen.append(kind)
    return chosen[:count]


def shrink_config(raw: Mapping[str, Any], *, vocab_size: int | None = None,
                  special_ids: Mapping[str, Any] | None = None) -> tuple[str, dict[str, Any]]:
    """(model_type, kwargs for AutoConfig.for_model): the same family, tiny. Pure."""
    if "model_type" not in raw:
        raise TwinError("config.json has no model_type")
    model_type = str(raw["model_type"])
    text = raw.get("text_config")
    if isinstance(text, Mapping) and "hidden_size" not in raw:
        if not text.get("model_type"):
            raise TwinError(f"'{model_type}' keeps its language model in text_config "
                            "(a multimodal wrapper) without naming its type; twins are built "
                            "for causal LMs")
        # a multimodal wrapper (gemma-3-*-it): the twin is its language model
        outer = {k: raw[k] for k in ("bos_token_id", "eos_token_id", "pad_token_id")
                 if k in raw and k not in text}
        raw = {**text, **outer}
        model_type = str(text["model_type"])
    kv = raw.get("num_key_value_heads")
    heads = raw.get("num_attention_heads") or HEADS
    shrunk: dict[str, Any] = {k: v for k, v in raw.items() if k not in DROP_KEYS}
    shrunk.update(
        num_hidden_layers=LAYERS,
        hidden_size=HIDDEN,
        num_attention_heads=HEADS,
        # keep grouped-query attention grouped: the LoRA shapes of k/v differ from q/o
        num_key_value_heads=HEADS // 2 if kv is not None and kv < heads else HEADS,
        head_dim=HEAD_DIM,
        intermediate_size=INTERMEDIATE,
    )
    for key in ("moe_intermediate_size", "shared_expert_intermediate_size"):
        if key in raw:
            shrunk[key] = INTERMEDIATE // 2
    for key in ("num_local_experts", "num_experts", "n_routed_experts"):
        if raw.get(key):
            shrunk[key] = min(int(raw[key]), EXPERTS)
    for key in ("num_experts_per_tok", "experts_per_token"):
        if raw.get(key):
            shrunk[key] = min(int(raw[key]), EXPERTS_PER_TOKEN)
    if isinstance(raw.get("layer_types"), list):
        shrunk["layer_types"] = _representative_layers(list(raw["layer_types"]), LAYERS)
    for key in ("max_window_layers", "first_k_dense_replace"):
        if isinstance(raw.get(key), int):
            cap = LAYERS - 1 if key == "first_k_dense_replace" else LAYERS
            shrunk[key] = min(int(raw[key]), cap)
    _shrink_rope_factors(shrunk)
    if vocab_size is not None:
        shrunk["vocab_size"] = vocab_size
    shrunk.update(special_ids or {})
    return model_type, shrunk


def _shrink_rope_factors(shrunk: dict[str, Any]) -> None:
    """LongRoPE's per-frequency factors (Phi-3/Phi-4) have one entry per rotary frequency: cut
    them to the twin's head_dim (rotary dim / 2 entries)."""
    rotary = int(HEAD_DIM * float(shrunk.get("partial_rotary_factor") or 1.0)) // 2
    for key in ("rope_scaling", "rope_parameters"):
        rope = shrunk.get(key)
        if not isinstance(rope, Mapping):
            continue
        rope = dict(rope)
        for name in ("short_factor", "long_factor"):
            if isinstance(rope.get(name), list) and len(rope[name]) > rotary:
                rope[name] = list(rope[name])[:rotary]
        shrunk[key] = rope


def _tokenizer_dir(config_file: Path) -> Path | None:
    folder = config_file.parent
    return folder if any((folder / name).is_file() for name in TOKENIZER_FILES) else None


def _load_tokenizer(folder: Path) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(folder), local_files_only=True)


def _experts(config: Any) -> int:
    for key in ("num_local_experts", "num_experts", "n_routed_experts"):
        value = getattr(config, key, None)
        if isinstance(value, int) and value:
            return value
    return 0


def _toy(base: str, notes: tuple[str, ...]) -> Twin:
    from graftline.engine.toy.named import built_toy_base

    built_toy_base(base)  # build (or find) the cached toy model now, so its time is the twin's
    return Twin(base=base, source="toy", model_type="llama", tokenizer="toy", notes=notes)


def build_twin(base: str, out: Path, *, search_dir: Path | None = None, seed: int = 0) -> Twin:
    """A twin of `base` saved in `out` (save_pretrained + tokenizer), or the toy model."""
    if base.startswith("toy:"):
        return _toy(base, ("the base is graftline's toy model, already tiny: the rehearsal "
                           "uses it as it is",))
    found = config_path(base, search_dir)
    if found is None:
        return _toy(TOY_BASE, (f"no config.json for '{base}' on this machine (not a local "
                               "directory, not in the Hugging Face cache, and nothing is "
                               "downloaded): the rehearsal runs on graftline's toy model, so the "
                               "architecture and tokenizer are not the base's",))
    try:
        return _from_config(found, out, seed)
    except Exception as exc:  # an architecture this transformers cannot build: say so, go on
        reason = exc.args[0] if isinstance(exc, TwinError) else f"{type(exc).__name__}: {exc}"
        return _toy(TOY_BASE, (f"cannot build a twin from {found}: {reason}; the rehearsal runs "
                               "on graftline's toy model instead",))


def _from_config(found: Path, out: Path, seed: int) -> Twin:
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, GenerationConfig

    raw = json.loads(found.read_text())
    notes: list[str] = []
    if isinstance(raw.get("text_config"), Mapping) and "hidden_size" not in raw:
        notes.append(f"{raw.get('model_type')} is a multimodal wrapper: the twin is its language "
                     f"model ({raw['text_config'].get('model_type')}); the vision tower is not "
                     "rehearsed")
    tokenizer = None
    tok_dir = _tokenizer_dir(found)
    if tok_dir is not None:
        try:
            tokenizer = _load_tokenizer(tok_dir)
        except Exception as exc:  # a broken or unsupported tokenizer: the toy one still rehearses
            notes.append(f"the tokenizer in {tok_dir} does not load ({type(exc).__name__}: "
                         f"{exc}); using the toy tokenizer and chat template")
    else:
        notes.append(f"no tokenizer next to {found}: the twin uses the toy tokenizer and chat "
                     "template, so the base's own template is not rehearsed")
    special: dict[str, Any] = {}
    if tokenizer is None:
        from graftline.engine.toy.model import generation_config
        from graftline.engine.toy.tokenizer import build_tokenizer

        tokenizer = build_tokenizer()
        vocab = len(tokenizer)
        special = {"bos_token_id": tokenizer.bos_token_id, "eos_token_id": tokenizer.eos_token_id,
                   "pad_token_id": tokenizer.pad_token_id}
        generation = generation_config(tokenizer)
        source_tokenizer = "toy"
    else:
        vocab = max(int(raw.get("vocab_size") or 0), len(tokenizer))
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
        generation = None
        source_tokenizer = "base"
    model_type, shrunk = shrink_config(raw, vocab_size=vocab, special_ids=special)
    try:
        config = AutoConfig.for_model(model_type, **shrunk)
    except (KeyError, ValueError) as exc:
        raise TwinError(f"this transformers does not know model_type '{model_type}' ({exc})") \
            from None
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.eval()
    with torch.no_grad():  # a twin that cannot run a forward pass rehearses nothing
        model(input_ids=torch.tensor([[min(5, vocab - 1)] * 4]))
    if generation is None:
        generation_file = found.parent / "generation_config.json"
        generation = (GenerationConfig.from_pretrained(str(found.parent))
                      if generation_file.is_file() else GenerationConfig.from_model_config(config))
    model.generation_config = generation
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(out), safe_serialization=True)
    save_tokenizer(tokenizer, out)
    return Twin(
        base=str(out.resolve()), source="config", model_type=model_type,
        experts=_experts(config), params=sum(p.numel() for p in model.parameters()),
        tokenizer=source_tokenizer, config_from=str(found), notes=tuple(notes),
    )

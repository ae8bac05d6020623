"""Sizes of a model and of LoRA adapters on it, from its `config.json` alone (no weights read).

Used by `plan` and `validate` for the disk forecast. A hub id is looked up in the local Hugging
Face cache; nothing is downloaded. When no config is found the size is unknown, and we say so.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from graftline.engine.common.checkpoint_files import MODEL_CONFIG

DTYPE_BYTES = {"float32": 4, "float16": 2, "bfloat16": 2, "float64": 8}


@dataclass(frozen=True)
class ModelInfo:
    source: str  # where the config came from, for the plan's wording
    hidden: int
    intermediate: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    vocab: int
    experts: int = 0
    tied: bool = False
    dtype: str = "bfloat16"
    model_type: str = ""

    @property
    def params(self) -> int:
        attention = self.hidden * self.head_dim * (self.heads * 2 + self.kv_heads * 2)
        mlp = 3 * self.hidden * self.intermediate * max(1, self.experts)
        embeddings = self.vocab * self.hidden * (1 if self.tied else 2)
        return self.layers * (attention + mlp + 2 * self.hidden) + embeddings

    def full_bytes(self, dtype: str | None = None) -> int:
        return self.params * DTYPE_BYTES.get(dtype or self.dtype, 2)

    def lora_bytes(self, r: int, target_modules: list[str] | str = "all-linear") -> int:
        """fp32 LoRA weights for the attention and dense MLP projections a target list names.
        Expert weights of MoE models are fused parameters that `all-linear` does not reach."""
        q_out, kv_out = self.heads * self.head_dim, self.kv_heads * self.head_dim
        shapes = {
            "q_proj": (self.hidden, q_out),
            "k_proj": (self.hidden, kv_out),
            "v_proj": (self.hidden, kv_out),
            "o_proj": (q_out, self.hidden),
        }
        if not self.experts:
            shapes |= {
                "gate_proj": (self.hidden, self.intermediate),
                "up_proj": (self.hidden, self.intermediate),
                "down_proj": (self.intermediate, self.hidden),
            }
        names = (
            shapes if target_modules == "all-linear" else [m for m in target_modules if m in shapes]
        )
        per_layer = sum(r * (shapes[n][0] + shapes[n][1]) for n in names)
        return per_layer * self.layers * 4


def _hf_cache_config(repo_id: str) -> Path | None:
    home = Path(os.environ.get("HF_HOME", Path.home() / ".cache" / "huggingface"))
    hub = Path(os.environ.get("HF_HUB_CACHE", home / "hub"))
    snapshots = hub / f"models--{repo_id.replace('/', '--')}" / "snapshots"
    if not snapshots.is_dir():
        return None
    found = sorted(snapshots.glob(f"*/{MODEL_CONFIG}"), key=lambda p: p.stat().st_mtime)
    return found[-1] if found else None


def config_path(base: str, search_dir: Path | None = None) -> Path | None:
    """The base's config.json if it is on this machine: a local directory or the HF cache."""
    from graftline.engine.lineage.resolve import resolve_base

    if base.endswith(MODEL_CONFIG) and Path(base).expanduser().is_file():
        return Path(base).expanduser()
    # The one resolver for a recorded base (lineage/resolve.py); the hub cache is looked at below.
    found = resolve_base(base, search_dir or Path.cwd(), hub_cache=False) \
        if not base.startswith("toy:") else None
    if found is not None and found.kind == "path" and found.path:
        candidate = Path(found.path) / MODEL_CONFIG
        if candidate.is_file():
            return candidate
    return _hf_cache_config(base) if "/" in base and not base.startswith((".", "/")) else None


def from_config(config: dict, source: str) -> ModelInfo:
    text = config.get("text_config") or config  # multimodal wrappers keep the LM inside
    hidden = int(text["hidden_size"])
    heads = int(text.get("num_attention_heads", 1))
    return ModelInfo(
        source=source,
        hidden=hidden,
        intermediate=int(
            text.get("intermediate_size") or text.get("moe_intermediate_size") or 4 * hidden
        ),
        layers=int(text.get("num_hidden_layers", 1)),
        heads=heads,
        kv_heads=int(text.get("num_key_value_heads") or heads),
        head_dim=int(text.get("head_dim") or hidden // heads),
        vocab=int(text.get("vocab_size", 32000)),
        experts=int(text.get("num_local_experts") or text.get("num_experts") or 0),
        tied=bool(config.get("tie_word_embeddings", False)),
        dtype=str(config.get("torch_dtype") or config.get("dtype") or "bfloat16"),
        model_type=str(text.get("model_type") or config.get("model_type") or ""),
    )


def describe(base: str, search_dir: Path | None = None) -> ModelInfo | None:
    """What we can know about `base` without downloading anything; None when unknown."""
    if base.startswith("toy:"):
        # the recipe as plain data: sizing the toy base must not import torch (validate ≤ 1 s)
        from graftline.engine.toy.recipe import CHARACTERS, SPECIAL_TOKENS, ToyRecipe

        recipe = ToyRecipe(tie_word_embeddings="tied=1" in base)
        return ModelInfo(
            "toy model recipe",
            recipe.hidden_size,
            recipe.intermediate_size,
            recipe.layers,
            recipe.heads,
            recipe.heads,
            recipe.hidden_size // recipe.heads,
            len(SPECIAL_TOKENS) + len(CHARACTERS),
            tied=recipe.tie_word_embeddings,
            dtype="float32",
        )
    path = config_path(base, search_dir)
    if path is None:
        return None
    try:
        return from_config(json.loads(path.read_text()), str(path))
    except (ValueError, KeyError, TypeError):
        return None

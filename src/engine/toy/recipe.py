"""The toy model's recipe and vocabulary as plain data: what a planner needs to size the toy base
(`graftline validate`, `plan`) without importing torch, transformers or tokenizers."""

from __future__ import annotations

import hashlib
import json
import string
from dataclasses import asdict, dataclass

PAD, BOS, EOS, UNK = "<pad>", "<s>", "</s>", "<unk>"
USER, ASSISTANT, END = "<|user|>", "<|assistant|>", "<|end|>"
SPECIAL_TOKENS = [PAD, BOS, EOS, UNK, USER, ASSISTANT, END]
CHARACTERS = string.digits + string.ascii_letters + " +-=*/?.,:;!'\"()[]{}<>_#@%&\n"


@dataclass(frozen=True)
class ToyRecipe:
    hidden_size: int = 96
    layers: int = 3
    heads: int = 4
    intermediate_size: int = 256
    tie_word_embeddings: bool = False
    steps: int = 800
    batch_size: int = 128
    lr: float = 3e-3
    warmup: int = 50
    seed: int = 0
    version: int = 2  # bump when the build changes in a way the fields do not show

    @property
    def key(self) -> str:
        blob = json.dumps(asdict(self), sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:12]

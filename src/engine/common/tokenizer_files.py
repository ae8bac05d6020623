"""A tokenizer's files travel unchanged: copied byte for byte, not re-serialised.

transformers 5 loads a tokenizer by the model's type (a `qwen2` folder gives `Qwen2Tokenizer`
whatever `tokenizer_config.json` names) and `save_pretrained` then writes its own serialisation
(a WordLevel `tokenizer.json` comes back as BPE with Qwen2's regex). What a user trained with is
what they ship: a checkpoint gets the files of the folder its tokenizer was loaded from, and only a
tokenizer the pipeline changed (added tokens, a pad token it had to set, another chat template)
is saved by `save_pretrained`.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

TOKENIZER_FILES = (
    "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja",
    "chat_template.json", "tokenizer.model", "vocab.json", "merges.txt", "added_tokens.json",
    "vocab.txt", "spiece.model",
)


def tokenizer_folder(path: str | Path) -> Path | None:
    """`path` when it is a local folder holding tokenizer files."""
    folder = Path(path)
    if not str(path) or not folder.is_dir():
        return None
    return folder if any((folder / name).is_file() for name in TOKENIZER_FILES) else None


def _same_as_files(tokenizer: Any, folder: Path) -> bool:
    """Whether the loaded tokenizer is still what its folder's files describe."""
    from transformers import AutoTokenizer

    try:
        fresh = AutoTokenizer.from_pretrained(str(folder))
    except Exception:  # files a tokenizer class cannot read back: save what we hold
        return False
    return (len(fresh) == len(tokenizer)
            and fresh.get_vocab() == tokenizer.get_vocab()
            and fresh.all_special_tokens == tokenizer.all_special_tokens
            and getattr(fresh, "chat_template", None) == getattr(tokenizer, "chat_template", None))


def save_tokenizer(tokenizer: Any, out: str | Path) -> str:
    """Write `tokenizer` into `out`: a byte-for-byte copy of the files it was loaded from when
    it is unchanged, else `save_pretrained`. Returns "copied" or "saved"."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    source = tokenizer_folder(getattr(tokenizer, "name_or_path", "") or "")
    if source is not None and source.resolve() == out.resolve():
        return "copied"
    if source is not None and _same_as_files(tokenizer, source):
        for name in TOKENIZER_FILES:
            if (source / name).is_file():
                shutil.copyfile(source / name, out / name)
        return "copied"
    tokenizer.save_pretrained(str(out))
    return "saved"

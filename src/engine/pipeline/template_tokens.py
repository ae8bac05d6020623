"""Chat-template tokens the base never learned, found before training from the base's weights.

Fine-tuning a base model on a chat template whose special tokens it never saw (Llama-3 base's
`<|eot_id|>` is the famous case) gives a model that answers and never stops: a LoRA on the linear
layers cannot train those tokens' embedding and `lm_head` rows. This reads the template's special
tokens from the tokenizer files, then their rows of the input embedding and of `lm_head` straight
from the safetensors files (only those rows: no torch, no model), and compares their norms with
the rows of ordinary tokens the model surely trained (digits, common letters and words). A row at
zero, or far below every trained row's scale, is a token the base never learned.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from graftline.engine.common.safetensors_header import read_header

# A template token's row is "never learned" when its norm is below this share of the median
# norm of the trained rows (initialisation leaves rows ~ initializer_range·√hidden, training
# moves the rows it uses well above it), or (almost) zero.
UNTRAINED_SHARE = 0.3
ZERO = 1e-6
REFERENCE_TEXT = "0123456789 + = , . ? the and of to in is a that it for you"
EMBEDDING_NAMES = ("model.embed_tokens.weight", "model.language_model.embed_tokens.weight",
                   "transformer.wte.weight", "embed_tokens.weight")
OUTPUT_NAMES = ("lm_head.weight",)
_DTYPES = {"F32": np.float32, "F16": np.float16, "F64": np.float64}


@dataclass(frozen=True)
class UntrainedToken:
    token: str
    id: int
    where: str  # "embedding", "lm_head" or "embedding and lm_head"
    ratio: float  # the row's norm / the trained rows' median norm


def _header(path: Path) -> tuple[dict[str, Any], int]:
    header = read_header(path)
    return header.tensors, header.data_start


def _tensor_files(model_dir: Path) -> dict[str, Path]:
    index = model_dir / "model.safetensors.index.json"
    if index.is_file():
        weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
        return {name: model_dir / file for name, file in weight_map.items()}
    single = model_dir / "model.safetensors"
    if not single.is_file():
        return {}
    header, _ = _header(single)
    return {name: single for name in header}


def _rows(path: Path, name: str, ids: list[int]) -> np.ndarray | None:
    """Rows `ids` of a 2-D tensor as float32, read one row at a time."""
    header, start = _header(path)
    info = header.get(name)
    if not info or len(info["shape"]) != 2:
        return None
    rows, cols = info["shape"]
    dtype = info["dtype"]
    width = {"F32": 4, "F16": 2, "BF16": 2, "F64": 8}.get(dtype)
    if width is None:
        return None
    begin = start + int(info["data_offsets"][0])
    out = np.zeros((len(ids), cols), dtype=np.float32)
    with path.open("rb") as handle:
        for i, row in enumerate(ids):
            if not 0 <= row < rows:
                continue
            handle.seek(begin + row * cols * width)
            raw = handle.read(cols * width)
            if dtype == "BF16":
                bits = np.frombuffer(raw, dtype=np.uint16).astype(np.uint32) << 16
                out[i] = bits.view(np.float32)
            else:
                out[i] = np.frombuffer(raw, dtype=_DTYPES[dtype]).astype(np.float32)
    return out


def _template(model_dir: Path, config: dict[str, Any]) -> str:
    jinja = model_dir / "chat_template.jinja"
    if jinja.is_file():
        return jinja.read_text(encoding="utf-8")
    found = config.get("chat_template") or ""
    if isinstance(found, list):  # named templates
        return "\n".join(str(t.get("template", "")) for t in found if isinstance(t, dict))
    return str(found)


def _token_text(value: Any) -> str | None:
    if isinstance(value, dict):
        value = value.get("content")
    return value if isinstance(value, str) else None


def template_tokens(model_dir: Path) -> dict[str, int]:
    """The special tokens the chat template writes: added tokens named in it, and the bos/eos
    tokens it refers to as variables."""
    spec_path, config_path = model_dir / "tokenizer.json", model_dir / "tokenizer_config.json"
    if not spec_path.is_file():
        return {}
    spec = json.loads(spec_path.read_text(encoding="utf-8"))
    config = json.loads(config_path.read_text(encoding="utf-8")) if config_path.is_file() else {}
    template = _template(model_dir, config)
    if not template:
        return {}
    added = {t["content"]: int(t["id"]) for t in spec.get("added_tokens", [])
             if t.get("special")}
    found = {token: i for token, i in added.items() if token in template}
    for variable in ("bos_token", "eos_token"):
        token = _token_text(config.get(variable))
        if variable in template and token in added:
            found[token] = added[token]
    return found


def _reference_ids(model_dir: Path) -> list[int]:
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
    ids = tokenizer.encode(REFERENCE_TEXT, add_special_tokens=False).ids
    special = {int(t["id"]) for t in json.loads(
        (model_dir / "tokenizer.json").read_text(encoding="utf-8")).get("added_tokens", [])}
    return sorted(set(ids) - special)


def untrained_template_tokens(model_dir: Path) -> list[UntrainedToken]:
    """The chat template's special tokens whose embedding or lm_head rows the base never
    trained. Empty when nothing can be read (no tokenizer.json, no safetensors, no template)."""
    model_dir = Path(model_dir)
    tokens = template_tokens(model_dir)
    files = _tensor_files(model_dir)
    if not tokens or not files:
        return []
    reference = _reference_ids(model_dir)
    if len(reference) < 3:
        return []
    ids = sorted(set(tokens.values()))
    ratios: dict[int, dict[str, float]] = {i: {} for i in ids}
    for where, names in (("embedding", EMBEDDING_NAMES), ("lm_head", OUTPUT_NAMES)):
        name = next((n for n in names if n in files), None)
        if name is None:
            continue
        trained = _rows(files[name], name, reference)
        rows = _rows(files[name], name, ids)
        if trained is None or rows is None:
            continue
        scale = float(np.median(np.linalg.norm(trained, axis=1)))
        if scale <= ZERO:
            continue
        for i, row in zip(ids, rows, strict=True):
            norm = float(np.linalg.norm(row))
            if norm <= ZERO or norm < UNTRAINED_SHARE * scale:
                ratios[i][where] = norm / scale
    by_id = {i: t for t, i in tokens.items()}
    return [UntrainedToken(by_id[i], i, " and ".join(found), round(min(found.values()), 4))
            for i, found in sorted(ratios.items()) if found]

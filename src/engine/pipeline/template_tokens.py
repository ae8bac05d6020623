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
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from graftline.engine.common.safetensors_header import read_header
from graftline.engine.pipeline.problems import Problem

if TYPE_CHECKING:
    from graftline.engine.pipeline.file import PipelineFile
    from graftline.engine.pipeline.plan import Plan, StepPlan

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


def written_by_template(template: str, special: Mapping[str, int], bos: str | None,
                        eos: str | None) -> dict[str, int]:
    """The special tokens a chat template writes: the added special tokens named in its text,
    and the bos/eos tokens it refers to as variables. Pure: the tokenizer files (validate) and
    a loaded tokenizer (a training stage) both come here."""
    if not template:
        return {}
    found = {token: i for token, i in special.items() if token in template}
    for variable, token in (("bos_token", bos), ("eos_token", eos)):
        if token is not None and variable in template and token in special:
            found[token] = special[token]
    return found


def template_tokens(model_dir: Path) -> dict[str, int]:
    """The special tokens the chat template of the tokenizer files in `model_dir` writes."""
    spec_path, config_path = model_dir / "tokenizer.json", model_dir / "tokenizer_config.json"
    if not spec_path.is_file():
        return {}
    spec = json.loads(spec_path.read_text(encoding="utf-8"))
    config = json.loads(config_path.read_text(encoding="utf-8")) if config_path.is_file() else {}
    added = {t["content"]: int(t["id"]) for t in spec.get("added_tokens", [])
             if t.get("special")}
    return written_by_template(_template(model_dir, config), added,
                               _token_text(config.get("bos_token")),
                               _token_text(config.get("eos_token")))


def resolve_trainable_tokens(wanted: Sequence[str] | str, vocab: Mapping[str, int],
                             template: Mapping[str, int]) -> tuple[dict[str, int], list[str]]:
    """`lora.trainable_tokens` as ids: (token -> id, the tokens `vocab` does not have).
    `"template"` means the special tokens the chat template writes (`template`). Pure."""
    if isinstance(wanted, str):  # "template"
        return dict(sorted(template.items(), key=lambda item: item[1])), []
    found: dict[str, int] = {}
    unknown: list[str] = []
    for token in wanted:
        if token in vocab:
            found[token] = int(vocab[token])
        else:
            unknown.append(token)
    return found, unknown


def tokenizer_vocab(model_dir: Path) -> dict[str, int]:
    """Every token of the tokenizer files in `model_dir` (added tokens included)."""
    from tokenizers import Tokenizer

    return dict(Tokenizer.from_file(str(model_dir / "tokenizer.json"))
                .get_vocab(with_added_tokens=True))


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


# ---------------------------------------------------------------- lora.trainable_tokens in validate

def tokenizer_dir(base: str, search_dir: Path, model_foreign: str | None = None) -> Path | None:
    """The folder of the tokenizer files a stage trains with: a full model outside the run that
    the stage sits on, else the pipeline's base (a toy base: the shipped one's, the same bytes
    for every toy recipe). None when they are not on this machine."""
    from graftline.engine.pipeline.modelinfo import config_path

    if model_foreign and (Path(model_foreign) / "tokenizer.json").is_file():
        return Path(model_foreign)
    if base.startswith("toy:"):
        from graftline.engine.toy.recipe import SHIPPED_ROOT

        return next((p.parent for p in sorted(SHIPPED_ROOT.glob("*/tokenizer.json"))), None)
    found = config_path(base, search_dir)
    if found is None or not (found.parent / "tokenizer.json").is_file():
        return None
    return found.parent


def trainable_token_ids(pf: PipelineFile, plan: Plan) -> dict[str, set[int]]:
    """Each stage that starts a new adapter with `lora.trainable_tokens`: the ids they resolve
    to with its tokenizer (what is unknown is left out; `trainable_token_problems` says it)."""
    found: dict[str, set[int]] = {}
    for step, folder, wanted in _asking(pf, plan):
        vocab = tokenizer_vocab(folder)
        ids, _ = resolve_trainable_tokens(wanted, vocab, template_tokens(folder))
        found[step.name] = set(ids.values())
    return found


def _asking(pf: PipelineFile, plan: Plan) -> Iterator[tuple[StepPlan, Path, list[str] | str]]:
    folders: dict[str | None, Path | None] = {}
    for step in plan.steps:
        if step.action != "new" or step.lora is None or not step.lora.trainable_tokens:
            continue
        if step.model_foreign not in folders:
            try:
                folders[step.model_foreign] = tokenizer_dir(
                    pf.pipeline.pipeline.base, pf.directory, step.model_foreign)
            except (OSError, ValueError):
                folders[step.model_foreign] = None
        folder = folders[step.model_foreign]
        if folder is not None:
            yield step, folder, step.lora.trainable_tokens


def trainable_token_problems(pf: PipelineFile, plan: Plan) -> Iterator[Problem]:
    """`lora.trainable_tokens` that the stage's tokenizer does not have, or "template" on a
    tokenizer whose chat template writes no special token: errors, at the `lora` line."""
    from graftline.engine.pipeline.file import DEFAULTS_BLOCK

    said: set[tuple[int | None, str]] = set()  # [defaults]' field: once, not once per stage
    for step, folder, wanted in _asking(pf, plan):
        try:
            vocab, template = tokenizer_vocab(folder), template_tokens(folder)
        except (OSError, ValueError, KeyError) as exc:
            yield Problem(f"lora.trainable_tokens: the tokenizer in {folder} cannot be read "
                          f"({exc})", str(pf.path), pf.line(step.name, "lora"), step.name,
                          "lora.trainable_tokens", "check the model's tokenizer.json")
            continue
        ids, unknown = resolve_trainable_tokens(wanted, vocab, template)
        block = pf.blocks.get(step.name)
        own = block is not None and "lora" in block.keys
        line = pf.line(step.name, "lora") if own else pf.line(DEFAULTS_BLOCK, "lora")
        field = "lora.trainable_tokens" if own else "defaults.lora.trainable_tokens"
        stage = step.name if own else None
        if (line, str(folder)) in said:
            continue
        said.add((line, str(folder)))
        special = ", ".join(json.dumps(t) for t in sorted(template, key=template.__getitem__))
        if unknown:
            yield Problem(
                f"lora.trainable_tokens names {', '.join(json.dumps(t) for t in unknown)}, "
                f"which the tokenizer in {folder} does not have as one token",
                str(pf.path), line, stage, field,
                "name tokens exactly as the tokenizer spells them"
                + (f" (its chat template writes {special})" if special else "")
                + ', or use trainable_tokens = "template"')
        elif not ids:
            yield Problem(
                f'lora.trainable_tokens = "template", but the chat template of the tokenizer in '
                f"{folder} writes no special token", str(pf.path), line, stage, field,
                'list the tokens to train, e.g. trainable_tokens = ["<|eot_id|>"]')


def covered(untrained: Sequence[UntrainedToken], plan: Plan,
            trained: Mapping[str, set[int]]) -> bool:
    """Whether every stage that starts a new adapter on the base itself trains the rows of every
    untrained token (a later stage on a merged model inherits the rows trained before it)."""
    from graftline.engine.pipeline.spec import TRAINING_KINDS

    ids = {t.id for t in untrained}
    on_base = [s.name for s in plan.steps if s.kind in TRAINING_KINDS and s.action == "new"
               and s.model_stage is None and not s.model_foreign]
    return bool(on_base) and all(ids <= trained.get(name, set()) for name in on_base)

"""Verify a GGUF file tensor by tensor against the merged weights it was converted from.

Read back with PyPI's `gguf.GGUFReader` (not the converter's copy): architecture, file type,
hyper-parameters, tensor count and shapes, tokenizer (tokens, special ids, chat template), then
every tensor dequantized (`gguf.quants.dequantize`) and compared with the exported safetensors,
after undoing the converter's documented rewrites: the llama converter permutes the rows of
`q_proj`/`k_proj` per head (`LlamaModel.permute`, interleaved → halved rotary layout) and GGUF
stores shapes innermost-first.

Bounds, element by element (w = merged weight in float32, e = |gguf − w|):
  F32   exact (bit-identical)
  F16   e ≤ 2⁻¹¹·|w| + 2⁻²⁵            half an ulp of round-to-nearest, subnormals included
  BF16  e ≤ 2⁻⁸·|w| + 2⁻¹³³             the same for bfloat16's 8-bit significand
  Q8_0  e ≤ d·(½ + 127·2⁻¹¹ + 10⁻⁴)     d = max|block of 32|/127: half a quantisation step
            + 127·2⁻²⁵                  plus the float16 rounding of the block's scale
Other types of llama.cpp's quantizer (K-quants, Q4_0, …) are lossy by design: their bound is on the
tensor's relative RMS error (see RMS_BOUNDS), a check that the tensor is the right one and was
quantized, not that each value is near.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from graftline.engine.common.checkpoint_files import MODEL_CONFIG, MODEL_SAFETENSORS_INDEX

GGUF_VERIFICATION = "gguf_verification.json"
Q8_BLOCK = 32
ELEMENT_BOUNDS = {"F32": "exact", "F16": "2^-11*|w| + 2^-25", "BF16": "2^-8*|w| + 2^-133",
                  "Q8_0": "(1/2 + 127*2^-11 + 1e-4) * max|block|/127 + 127*2^-25"}
RMS_BOUNDS = {"Q2_K": 0.6, "Q3_K": 0.35, "Q4_0": 0.2, "Q4_1": 0.2, "Q4_K": 0.2, "Q5_0": 0.1,
              "Q5_1": 0.1, "Q5_K": 0.1, "Q6_K": 0.05}
# HF model_type → GGUF general.architecture, where graftline knows the converter's choice.
ARCHITECTURES = {"llama": "llama", "mistral": "llama", "qwen2": "qwen2", "qwen3": "qwen3",
                 "qwen3_moe": "qwen3moe", "gemma": "gemma", "gemma2": "gemma2",
                 "gemma3_text": "gemma3", "gemma3": "gemma3", "phi3": "phi3",
                 "gpt_oss": "gpt-oss"}
# GGUF architectures whose converter stores RMSNorm weights + 1 (Gemma's norm is x·(1 + w)).
NORM_PLUS_ONE = {"gemma", "gemma2", "gemma3"}
# Per-expert tensors a checkpoint stores apart; the converter stacks them into one `*_exps`.
_SPLIT_EXPERT = re.compile(r"(.+\.mlp\.experts)\.(\d+)\.(gate_proj|up_proj|down_proj)\.weight")
EMBEDDINGS = ("token_embd.weight", "output.weight")
# GGUF architectures whose converter permutes Q/K rows (LlamaModel.undo_permute = True).
PERMUTED = {"llama"}
FILE_TYPES = {"f32": "ALL_F32", "f16": "MOSTLY_F16", "bf16": "MOSTLY_BF16", "q8_0": "MOSTLY_Q8_0"}
SPM_SPACE = "\u2581"


@dataclass(frozen=True)
class TensorCheck:
    name: str
    source: str
    ggml_type: str
    shape: tuple[int, ...]
    max_abs_err: float
    ratio: float  # worst error / its bound: 0 is exact, above 1 fails
    passed: bool
    detail: str = ""


@dataclass(frozen=True)
class GgufVerification:
    path: str
    gguf_type: str
    passed: bool
    message: str
    problems: tuple[str, ...]
    tensors: tuple[TensorCheck, ...] = field(repr=False)
    worst: TensorCheck | None
    metadata: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["problems"] = list(self.problems)
        data["bounds"] = {**ELEMENT_BOUNDS, **{k: f"rms(e)/rms(w) <= {v}"
                                               for k, v in RMS_BOUNDS.items()}}
        return data


def unpermute(weight: np.ndarray, n_head: int) -> np.ndarray:
    """The inverse of the converter's `LlamaModel.permute(weight, n_head, ...)`."""
    rows = weight.shape[0]
    return (weight.reshape(n_head, rows // n_head // 2, 2, *weight.shape[1:])
            .swapaxes(1, 2).reshape(weight.shape))


def _field(reader: Any, key: str) -> Any:
    found = reader.fields.get(key)
    return None if found is None else found.contents()


def _merged_tensors(model_dir: Path) -> dict[str, Path]:
    """HF tensor name → the safetensors file holding it."""
    from graftline.engine.export.safetensors import read_header

    index = model_dir / MODEL_SAFETENSORS_INDEX
    if index.is_file():
        weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
        return {name: model_dir / file for name, file in weight_map.items()}
    names: dict[str, Path] = {}
    for file in sorted(model_dir.glob("*.safetensors")):
        tensors, _ = read_header(file)
        names.update({name: file for name in tensors})
    return names


def _load(file: Path, name: str) -> np.ndarray:
    from safetensors import safe_open

    with safe_open(str(file), framework="pt") as handle:
        return handle.get_tensor(name).float().numpy()


def _bound(kind: str, want: np.ndarray) -> np.ndarray | None:
    """Per-element bound for the exact-rounding types; None for the RMS-bounded ones."""
    magnitude = np.abs(want.astype(np.float64))
    if kind == "F32":
        return np.zeros_like(magnitude)
    if kind == "F16":
        return magnitude * 2.0**-11 + 2.0**-25
    if kind == "BF16":
        return magnitude * 2.0**-8 + 2.0**-133
    if kind == "Q8_0" and want.shape[-1] % Q8_BLOCK == 0:
        blocks = magnitude.reshape(*want.shape[:-1], -1, Q8_BLOCK)
        step = blocks.max(axis=-1, keepdims=True) / 127.0
        # + 1e-4 step: x·(1/d) in float32 may round a tie the other way; + 127·2⁻²⁵: a scale
        # below float16's normal range is rounded to a subnormal with an absolute error
        bound = np.broadcast_to(step * (0.5 + 127 * 2.0**-11 + 1e-4) + 127 * 2.0**-25,
                                blocks.shape)
        return bound.reshape(want.shape)
    return None


def compare(name: str, source: str, kind: str, got: np.ndarray,
            want: np.ndarray) -> TensorCheck:
    """One tensor against its merged weight, within its type's bound."""
    shape = tuple(int(s) for s in want.shape)
    if got.shape != want.shape:
        return TensorCheck(name, source, kind, shape, float("inf"), float("inf"), False,
                           f"shape {tuple(got.shape)} != {shape}")
    error = np.abs(got.astype(np.float64) - want.astype(np.float64))
    finite = np.isfinite(error)
    max_err = float(error[finite].max()) if finite.any() else float("inf")
    if not finite.all():
        where = np.unravel_index(int(np.argmin(finite)), error.shape)
        return TensorCheck(name, source, kind, shape, float("inf"), float("inf"), False,
                           f"{int((~finite).sum())} non-finite value(s), first at "
                           f"{list(map(int, where))}")
    bound = _bound(kind, want)
    if bound is None:
        limit = RMS_BOUNDS.get(kind)
        if limit is None:
            return TensorCheck(name, source, kind, shape, max_err, float("inf"), False,
                               f"no stated bound for {kind}")
        scale = float(np.sqrt(np.mean(want.astype(np.float64) ** 2))) or 1.0
        relative = float(np.sqrt(np.mean(error**2))) / scale
        ratio = relative / limit
        return TensorCheck(name, source, kind, shape, max_err, ratio, ratio <= 1.0,
                           f"relative RMS error {relative:.3g} (bound {limit})")
    if kind == "F32":
        exact = bool(np.array_equal(got, want))
        where = np.unravel_index(int(np.argmax(error)), error.shape)
        return TensorCheck(name, source, kind, shape, max_err, 0.0 if exact else float("inf"),
                           exact, "" if exact else f"first worst element at "
                                                   f"{list(map(int, where))}")
    excess = error / np.maximum(bound, 1e-300)
    worst = np.unravel_index(int(np.argmax(excess)), excess.shape)
    ratio = float(excess[worst])
    return TensorCheck(name, source, kind, shape, max_err, ratio, ratio <= 1.0,
                       "" if ratio <= 1.0 else f"worst element at {list(map(int, worst))}: "
                                               f"|err| {float(error[worst]):.3g} > bound "
                                               f"{float(bound[worst]):.3g}")


def _check_metadata(reader: Any, config: dict[str, Any], gguf_type: str, tokenizer: Any,
                    problems: list[str]) -> tuple[str, dict[str, Any]]:
    import gguf

    arch = _field(reader, "general.architecture")
    text = config.get("text_config", config)
    expected = ARCHITECTURES.get(str(text.get("model_type")))
    if expected is not None and arch != expected:
        problems.append(f"general.architecture is {arch!r}, expected {expected!r}")
    want_type = FILE_TYPES.get(gguf_type, f"MOSTLY_{gguf_type.upper()}")
    file_type = _field(reader, "general.file_type")
    if file_type is None or file_type != int(gguf.LlamaFileType[want_type]):
        problems.append(f"general.file_type is {file_type}, expected {want_type}")
    for key, hf_key in (("block_count", "num_hidden_layers"), ("embedding_length", "hidden_size"),
                        ("attention.head_count", "num_attention_heads"),
                        ("attention.head_count_kv", "num_key_value_heads"),
                        ("feed_forward_length", "intermediate_size"),
                        ("context_length", "max_position_embeddings")):
        value, want = _field(reader, f"{arch}.{key}"), text.get(hf_key)
        if want is not None and value is not None and int(value) != int(want):
            problems.append(f"{arch}.{key} is {value}, config.json {hf_key} is {want}")
        elif want is not None and value is None and key != "attention.head_count_kv":
            problems.append(f"{arch}.{key} is missing")

    layers = _check_layer_pattern(reader, arch, text, problems)

    tokens = _field(reader, "tokenizer.ggml.tokens") or []
    vocab_size = int(text.get("vocab_size") or len(tokenizer))
    if len(tokens) != vocab_size and not len(tokenizer) <= len(tokens) < vocab_size:
        # fewer is the converter dropping the embedding's padding rows (every token kept)
        problems.append(f"tokenizer.ggml.tokens has {len(tokens)} tokens, the model "
                        f"{vocab_size}")
    by_id = {i: t for t, i in tokenizer.get_vocab().items()}
    if _field(reader, "tokenizer.ggml.model") == "llama" and tokens and not any(
            SPM_SPACE in str(t) for t in by_id.values()):
        # graftline's character-level path (gguf_driver): the same tokens, spaces as U+2581
        wrong = [i for i, t in enumerate(tokens) if i in by_id and
                 t != by_id[i].replace(" ", SPM_SPACE) and t != by_id[i]]
        if wrong:
            problems.append(f"tokenizer.ggml.tokens differ from the tokenizer's at "
                            f"{len(wrong)} id(s), first {wrong[0]}: {tokens[wrong[0]]!r} != "
                            f"{by_id[wrong[0]]!r}")
    for role, key in (("bos", "bos_token_id"), ("eos", "eos_token_id"),
                      ("unk", "unknown_token_id"), ("pad", "padding_token_id")):
        want_id = getattr(tokenizer, f"{role}_token_id", None)
        got_id = _field(reader, f"tokenizer.ggml.{key}")
        if want_id is not None and got_id is not None and int(got_id) != int(want_id):
            problems.append(f"tokenizer.ggml.{key} is {got_id}, the tokenizer's {role} is "
                            f"{want_id}")
        elif want_id is not None and got_id is None and role in ("bos", "eos"):
            problems.append(f"tokenizer.ggml.{key} is missing (the tokenizer's is {want_id})")
    template = _field(reader, "tokenizer.chat_template")
    want_template = getattr(tokenizer, "chat_template", None)
    if want_template and template != want_template:
        problems.append("tokenizer.chat_template is missing" if template is None else
                        "tokenizer.chat_template differs from the tokenizer's chat template")
    return str(arch), {"architecture": arch, "file_type": want_type, "tokens": len(tokens),
                       "chat_template": template is not None,
                       "bos_token_id": _field(reader, "tokenizer.ggml.bos_token_id"),
                       "eos_token_id": _field(reader, "tokenizer.ggml.eos_token_id"),
                       "add_bos_token": _field(reader, "tokenizer.ggml.add_bos_token"),
                       "sliding_window_pattern": layers}


ATTENTION_KINDS = {"sliding_attention": True, "full_attention": False}


def _check_layer_pattern(reader: Any, arch: Any, text: dict[str, Any],
                         problems: list[str]) -> list[bool] | None:
    """The file's per-layer sliding/full pattern (`{arch}.attention.sliding_window_pattern`,
    true = sliding) against config.json's `layer_types`, where the file has a sliding window.
    A file without it runs in llama.cpp with the family's assumed pattern (Gemma 3: 5 sliding :
    1 full), which is wrong for any other `layer_types`: the mask and the RoPE base of the
    layers that differ (gguf_driver writes it; a 2-layer Gemma 3 [sliding, full] measured
    max |logit diff| 1.5 on a logit scale of 10 without it)."""
    pattern = _field(reader, f"{arch}.attention.sliding_window_pattern")
    layer_types = text.get("layer_types")
    if not _field(reader, f"{arch}.attention.sliding_window") or not isinstance(
            layer_types, list) or any(kind not in ATTENTION_KINDS for kind in layer_types):
        return None if pattern is None or isinstance(pattern, int) else list(pattern)
    want = [ATTENTION_KINDS[kind] for kind in layer_types]
    if pattern is None:
        if len(set(want)) > 1:
            problems.append(f"{arch}.attention.sliding_window_pattern is missing: llama.cpp "
                            f"would assume its own pattern for config.json's layer_types")
        return None
    if isinstance(pattern, int):  # a period, as a newer converter may write: not judged here
        return None
    got = [bool(v) for v in pattern]
    if got != want:
        problems.append(f"{arch}.attention.sliding_window_pattern is {pattern}, config.json's "
                        f"layer_types say {want} (true = sliding)")
    return got


def verify_gguf(path: Path, model_dir: Path, gguf_type: str) -> GgufVerification:
    """Every tensor of `path` against the merged weights in `model_dir` (see the module)."""
    import gguf
    from transformers import AutoTokenizer

    reader = gguf.GGUFReader(path)
    config = json.loads((model_dir / MODEL_CONFIG).read_text(encoding="utf-8"))
    text = config.get("text_config", config)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    problems: list[str] = []
    arch, metadata = _check_metadata(reader, config, gguf_type, tokenizer, problems)
    try:
        arch_enum = next(k for k, v in gguf.MODEL_ARCH_NAMES.items() if v == arch)
    except StopIteration:
        problems.append(f"architecture {arch!r} is unknown to this gguf package")
        return _result(path, gguf_type, problems, [], metadata)
    stored = {t.name: t for t in reader.tensors}
    checks: list[TensorCheck] = []
    seen: set[str] = set()
    for pair in _pairs(reader, model_dir, arch_enum, str(arch), text, len(tokenizer), problems):
        seen.add(pair.target)
        kind = pair.tensor.tensor_type.name
        check = compare(pair.target, pair.source, kind, pair.got, pair.want)
        if pair.declared != tuple(pair.want.shape):
            check = TensorCheck(pair.target, pair.source, kind, check.shape, check.max_abs_err,
                                float("inf"), False,
                                f"GGUF shape {pair.declared} != {pair.want.shape}")
        elif pair.note:
            check = TensorCheck(check.name, check.source, check.ggml_type, check.shape,
                                check.max_abs_err, check.ratio, check.passed,
                                "; ".join(d for d in (pair.note, check.detail) if d))
        checks.append(check)
    extra = sorted(set(stored) - seen)
    if extra:
        problems.append(f"{len(extra)} GGUF tensor(s) match no merged weight: "
                        f"{', '.join(extra[:5])}")
    for check in checks:
        if not check.passed:
            problems.append(f"tensor {check.name} ({check.source}, {check.ggml_type}) differs "
                            f"from the merged weight: max |err| {check.max_abs_err:.3g}"
                            + (f"; {check.detail}" if check.detail else ""))
    metadata["tensor_count"] = len(stored)
    return _result(path, gguf_type, problems, checks, metadata)


@dataclass(frozen=True)
class _Pair:
    """One GGUF tensor, dequantized into the HF layout, beside the merged weight it holds."""

    source: str  # the HF name (or a label for stacked experts)
    target: str  # the GGUF name
    tensor: Any  # gguf's ReaderTensor
    got: np.ndarray
    want: np.ndarray
    declared: tuple[int, ...]
    note: str


def _pairs(reader: Any, model_dir: Path, arch_enum: Any, arch: str, text: dict[str, Any],
           n_tokens: int, problems: list[str]) -> Iterator[_Pair]:
    """Every merged weight's GGUF tensor, dequantized, with the converter's rewrites undone
    (a missing one is a problem said in `problems`)."""
    import gguf

    names = gguf.get_tensor_name_map(arch_enum, int(text["num_hidden_layers"]))
    n_head = int(text["num_attention_heads"])
    n_kv = int(text.get("num_key_value_heads") or n_head)
    stored = {t.name: t for t in reader.tensors}
    for source, hf_name, want_of in expected_tensors(arch, _merged_tensors(model_dir)):
        target = names.get_name(hf_name, try_suffixes=(".weight", ".bias"))
        if target is not None and target not in stored and f"{target}.weight" in stored:
            target = f"{target}.weight"
        if target is None or target not in stored:
            problems.append(f"{source}: missing from the GGUF"
                            + (f" (expected as {target})" if target else ""))
            continue
        tensor = stored[target]
        got = np.asarray(gguf.quants.dequantize(tensor.data, tensor.tensor_type),
                         dtype=np.float32)
        want = want_of()
        declared = tuple(int(s) for s in reversed(list(tensor.shape)))
        note = ""
        if (target in EMBEDDINGS and want.ndim == 2 and declared[0] < want.shape[0]
                and n_tokens <= declared[0] and declared[1:] == want.shape[1:]):
            # the converter writes one row per token: rows past the tokenizer's vocabulary
            # (the embedding's padding) are dropped; the kept rows are verified
            note = f"{want.shape[0] - declared[0]} padding row(s) past the vocabulary dropped"
            want = want[: declared[0]]
        if got.size == want.size:
            got = got.reshape(want.shape)
        if arch in PERMUTED and source.endswith(("q_proj.weight", "q_proj.bias")):
            got = unpermute(got, n_head)
        elif arch in PERMUTED and source.endswith(("k_proj.weight", "k_proj.bias")):
            got = unpermute(got, n_kv)
        yield _Pair(source, target, tensor, got, want, declared, note)


def file_matrices(path: Path, model_dir: Path) -> Iterator[tuple[str, str, np.ndarray | None]]:
    """The matrices llama.cpp multiplies with, in the HF layout, one at a time (a model's worth
    of float32 is never held twice): (HF name, GGML type, the file's dequantized values) for
    every rounded (not F32) tensor of two or more dimensions; values None for one that is not
    one merged weight (experts stacked or split), which cannot be put back one to one. A
    dropped padding row stays missing: fewer rows."""
    import gguf

    reader = gguf.GGUFReader(path)
    config = json.loads((model_dir / MODEL_CONFIG).read_text(encoding="utf-8"))
    text = config.get("text_config", config)
    arch = str(_field(reader, "general.architecture"))
    arch_enum = next(k for k, v in gguf.MODEL_ARCH_NAMES.items() if v == arch)
    for pair in _pairs(reader, model_dir, arch_enum, arch, text, 0, []):
        kind = pair.tensor.tensor_type.name
        if kind == "F32" or pair.got.ndim < 2:
            continue
        apart = pair.got.shape[1:] != pair.want.shape[1:] or "{" in pair.source or (
            arch == "gpt-oss" and ".mlp.experts." in pair.source)
        yield pair.source, kind, None if apart else pair.got


Expected = tuple[str, str, Callable[[], np.ndarray]]


def expected_tensors(arch: str, merged: dict[str, Path]) -> list[Expected]:
    """(source, the HF name the converter maps, the values it writes) for every merged tensor,
    after the converter's documented rewrites: Gemma's norms + 1; experts a checkpoint stores
    one per expert stacked into `*_exps` (Qwen-MoE); gpt-oss's fused experts transposed and its
    gate_up split into gate (even rows) and up (odd rows), biases likewise, `sinks` as a weight."""
    found: list[Expected] = []
    stacks: dict[tuple[str, str], dict[int, tuple[str, Path]]] = {}
    for source, file in sorted(merged.items()):
        split = _SPLIT_EXPERT.fullmatch(source)
        if split:
            stacks.setdefault((split.group(1), split.group(3)), {})[int(split.group(2))] = (
                source, file)
            continue
        if arch == "gpt-oss" and ".mlp.experts." in source:
            found += _gpt_oss_experts(source, file)
            continue
        name = f"{source}.weight" if arch == "gpt-oss" and source.endswith(".sinks") else source
        shift = arch in NORM_PLUS_ONE and source.endswith("norm.weight")
        found.append((source, name, _loader(file, source, shift)))
    for (prefix, proj), by_expert in sorted(stacks.items()):
        parts = [by_expert[e] for e in sorted(by_expert)]
        label = f"{prefix}.{{0..{len(parts) - 1}}}.{proj}.weight"
        found.append((label, f"{prefix}.{proj}.weight", _stacked(parts)))
    return found


def _loader(file: Path, name: str, plus_one: bool = False) -> Callable[[], np.ndarray]:
    def load() -> np.ndarray:
        want = _load(file, name)
        return want + np.float32(1) if plus_one else want
    return load


def _stacked(parts: list[tuple[str, Path]]) -> Callable[[], np.ndarray]:
    return lambda: np.stack([_load(file, name) for name, file in parts])


def _gpt_oss_experts(source: str, file: Path) -> list[Expected]:
    prefix, _, param = source.rpartition(".")
    load = _loader(file, source)
    if param == "down_proj":
        return [(source, f"{prefix}.down_proj.weight",
                 lambda: np.ascontiguousarray(np.swapaxes(load(), -1, -2)))]
    if param == "down_proj_bias":
        return [(source, f"{prefix}.down_proj.bias", load)]
    if param == "gate_up_proj":
        return [(f"{source} (gate: even columns)", f"{prefix}.gate_proj.weight",
                 lambda: np.ascontiguousarray(np.swapaxes(load(), -1, -2)[:, ::2, :])),
                (f"{source} (up: odd columns)", f"{prefix}.up_proj.weight",
                 lambda: np.ascontiguousarray(np.swapaxes(load(), -1, -2)[:, 1::2, :]))]
    if param == "gate_up_proj_bias":
        return [(f"{source} (gate)", f"{prefix}.gate_proj.bias",
                 lambda: np.ascontiguousarray(load()[..., ::2])),
                (f"{source} (up)", f"{prefix}.up_proj.bias",
                 lambda: np.ascontiguousarray(load()[..., 1::2]))]
    return [(source, source, load)]


def _result(path: Path, gguf_type: str, problems: list[str], checks: list[TensorCheck],
            metadata: dict[str, Any]) -> GgufVerification:
    worst = max(checks, key=lambda c: (c.ratio, c.max_abs_err), default=None)
    if problems:
        message = problems[0] + (f" (+{len(problems) - 1} more)" if len(problems) > 1 else "")
    elif worst is None:
        message = "no tensors compared"
    elif all(c.ggml_type == "F32" and c.ratio == 0 for c in checks):
        message = f"{len(checks)} tensors bit-exact ({gguf_type})"
    else:
        message = (f"{len(checks)} tensors within bounds ({gguf_type}); worst {worst.name} "
                   f"({worst.ggml_type}): max |err| {worst.max_abs_err:.3g}, "
                   f"{worst.ratio:.2f} of its bound")
    passed = not problems and worst is not None
    return GgufVerification(str(path), gguf_type, passed, message, tuple(problems),
                            tuple(checks), worst, metadata)

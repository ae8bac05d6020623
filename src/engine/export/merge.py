"""The streaming merge: `W + scale · B @ A`, one base tensor at a time, into new safetensors files.

Planning (`analyse_adapter`, `plan_tensors`) reads only headers and configs and refuses what it
cannot merge exactly. Execution (`write_shards`) reads one tensor, adds its LoRA delta in fp32,
casts it to the export dtype and streams it to the output file, so peak memory is about the
largest tensor (plus the small adapter matrices), not the model.

PEFT names adapter weights `base_model.model.<module>.lora_A.weight`; the base stores the same
module's weight as `<module>.weight`. `modules_to_save` weights are saved under the plain
`<module>.weight` key (PEFT strips `modules_to_save.<adapter>`), and an adapter that targets an
embedding also saves the embedding's base layer (`<module>.base_layer.weight`), which PEFT loads
over the base's: both replace the base tensor here as they do there.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from dataclasses import field as dataclass_field
from pathlib import Path
from typing import Any, Literal

import torch

from graftline.engine.common.checkpoint_files import (
    ADAPTER_CONFIG,
    ADAPTER_PICKLE,
    ADAPTER_SAFETENSORS,
    MODEL_SAFETENSORS,
    MODEL_SAFETENSORS_INDEX,
    lora_scale,
    shard_name,
)
from graftline.engine.export.chain import (
    ExportRefused,
    read_adapter_config,
    weight_files,
)
from graftline.engine.export.ordered_io import OrderedIO
from graftline.engine.export.safetensors import (
    DTYPES,
    NAMES,
    OutEntry,
    StreamWriter,
    TensorInfo,
    nbytes_of,
    read_header,
    read_tensor,
)

PEFT_PREFIX = "base_model.model."
EXPORT_DTYPES: dict[str, str] = {"float32": "F32", "bfloat16": "BF16", "float16": "F16"}
_FLOAT_DTYPES = {"F64", "F32", "F16", "BF16"}
# Initialisations that change the base weights at training time (their adapters only make sense
# on a residual base), so merging into the original base would be wrong.
_PLAIN_INITS = (True, False, "gaussian", "orthogonal")
# PEFT config fields that mean "not a plain LoRA": each is refused with its reason.
_UNSUPPORTED: dict[str, str] = {
    "use_dora": "DoRA rescales each merged column by a learned magnitude over the weight norm",
    "lora_bias": "the adapter trains a bias on lora_B",
    "layer_replication": "the adapter replicates base layers",
    "trainable_token_indices": "the adapter trains individual token embeddings",
    "alora_invocation_tokens": "an activated LoRA only applies after its invocation tokens",
    "use_qalora": "QA-LoRA pools inputs in groups",
    "use_bdlora": "block-diagonal LoRA shards its matrices",
    "megatron_config": "the adapter was trained with Megatron parallel layers",
}


@dataclass(frozen=True)
class LoraDelta:
    """One targeted module: add `scale · B @ A` (transposed where the weight is stored so)."""

    base_key: str
    a_key: str
    b_key: str
    r: int
    scale: float
    # linear_t: fan_in_fan_out (Conv1D); experts: a parameter PEFT's `target_parameters` wraps
    # (ParamWrapper), 2-D or stacked experts [E, d1, d2]
    layout: Literal["linear", "linear_t", "embedding", "experts"]
    experts: int = 1
    transposed: bool = False  # experts stored [E, in, out] (the module's `is_transposed`)
    # a checkpoint that stores each expert apart (`experts.<e>.gate_proj.weight`, as Qwen3-MoE's
    # do) while transformers fuses them in memory: this tensor is expert `expert`'s rows
    # [rows[0], rows[1]) of the fused delta
    expert: int | None = None
    rows: tuple[int, int] | None = None


@dataclass(frozen=True)
class AdapterPlan:
    path: Path
    config: dict[str, Any]
    deltas: dict[str, LoraDelta]  # by the base tensor it changes
    replacements: dict[str, str]  # base tensor -> adapter tensor that replaces it
    headers: dict[str, TensorInfo]


@dataclass(frozen=True)
class ModelLayout:
    """What the base's config says about its tensors: names of the embeddings and tying."""

    model_type: str
    tied: bool
    input_embedding: str | None  # tensor name, e.g. model.embed_tokens.weight
    output_embedding: str | None  # e.g. lm_head.weight
    module_types: dict[str, str]  # module name -> class name (Linear, Embedding, Conv1D, ...)
    # module name -> its own parameters in definition order (PEFT nests one ParamWrapper per
    # targeted parameter in this order), and the modules that store experts [E, in, out]
    params: dict[str, tuple[str, ...]] = dataclass_field(default_factory=dict)
    transposed: frozenset[str] = frozenset()


@dataclass(frozen=True)
class TensorJob:
    """One output tensor: where its bytes come from and what happens to them."""

    name: str
    source: Path
    info: TensorInfo
    delta: LoraDelta | None
    dtype: str  # output safetensors dtype

    @property
    def out_bytes(self) -> int:
        return nbytes_of(self.dtype, self.info.shape)


@dataclass(frozen=True)
class OutShard:
    filename: str
    jobs: tuple[TensorJob, ...]

    @property
    def bytes(self) -> int:
        return sum(job.out_bytes for job in self.jobs)


def get_pattern_key(pattern_keys: list[str], key: str) -> str:
    """PEFT's own rule (peft.utils.other.get_pattern_key) for rank_pattern/alpha_pattern."""
    for pattern in pattern_keys:
        if re.match(rf"(.*\.)?({pattern})$", key):
            return pattern
    return key


def base_headers(base: Path) -> dict[str, tuple[Path, TensorInfo]]:
    """Every base tensor and the file holding it, in the base's own file order."""
    files = weight_files(base) or []
    found: dict[str, tuple[Path, TensorInfo]] = {}
    for name in files:
        path = base / name
        if not path.is_file():
            raise ExportRefused(f"shard {name} listed in {MODEL_SAFETENSORS_INDEX} is missing",
                                path=base, fix="restore the base model's files")
        infos, _meta = read_header(path)
        for key, info in infos.items():
            found[key] = (path, info)
    return found


def model_layout(base: Path, config: dict[str, Any]) -> ModelLayout:
    """Module types and embedding names from the architecture, built on the meta device (no
    memory, no weights). Falls back to the common names when the class is not importable."""
    text: dict[str, Any] = config["text_config"] if isinstance(config.get("text_config"), dict) \
        else {}
    tied = bool(config.get("tie_word_embeddings", text.get("tie_word_embeddings", False)))
    model_type = str(config.get("model_type", ""))
    try:
        from transformers import AutoConfig, AutoModelForCausalLM

        hf_config = AutoConfig.from_pretrained(base)
        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(hf_config)
        names = {id(module): name for name, module in model.named_modules()}
        types = {name: type(module).__name__ for name, module in model.named_modules() if name}
        inp, out = model.get_input_embeddings(), model.get_output_embeddings()
        inp_name = names.get(id(inp)) if inp is not None else None
        out_name = names.get(id(out)) if out is not None else None
        tied = bool(getattr(hf_config.get_text_config(), "tie_word_embeddings", tied))
        params = {name: tuple(n for n, _ in module.named_parameters(recurse=False))
                  for name, module in model.named_modules() if name}
        transposed = frozenset(name for name, module in model.named_modules()
                               if getattr(module, "is_transposed", False))
        return ModelLayout(model_type, tied, inp_name and f"{inp_name}.weight",
                           out_name and f"{out_name}.weight", types,
                           {k: v for k, v in params.items() if v}, transposed)
    except Exception:
        return ModelLayout(model_type, tied, "model.embed_tokens.weight", "lm_head.weight", {})


def _refuse_config(adapter: Path, config: dict[str, Any]) -> None:
    where = adapter / ADAPTER_CONFIG
    if config.get("peft_type", "LORA") != "LORA":
        raise ExportRefused(f"peft_type {config.get('peft_type')} is not LoRA; export merges "
                            "LoRA adapters only", path=where)
    for field, reason in _UNSUPPORTED.items():
        if config.get(field):
            name = "DoRA" if field == "use_dora" else field
            raise ExportRefused(
                f"{name} cannot be merged exactly by the streaming export: {reason}", path=where,
                fix=("merge in memory with PEFT (merge_and_unload) and export that model, or "
                     "train a plain LoRA adapter"))
    if config.get("init_lora_weights", True) not in _PLAIN_INITS:
        raise ExportRefused(
            f"init_lora_weights={config.get('init_lora_weights')!r} changes the base weights "
            "at initialisation, so this adapter does not apply to the original base", path=where,
            fix="convert it to a plain LoRA first (PEFT's "
                "path_initial_model_for_weight_conversion)")


def analyse_adapter(adapter: Path, base_tensors: dict[str, tuple[Path, TensorInfo]],
                    layout: ModelLayout) -> AdapterPlan:
    """Map every adapter tensor to the base tensor it changes; refuse anything inexact."""
    config_path = adapter / ADAPTER_CONFIG
    config = read_adapter_config(adapter)  # a corrupt file is refused cleanly, not a traceback
    _refuse_config(adapter, config)
    weights = adapter / ADAPTER_SAFETENSORS
    if not weights.is_file():
        other = f"{ADAPTER_PICKLE} (pickle)" if (adapter / ADAPTER_PICKLE).is_file() else \
            "no adapter weights"
        raise ExportRefused(f"{ADAPTER_SAFETENSORS} is missing ({other} found)", path=adapter,
                            fix="re-save the adapter with save_pretrained(safe_serialization=True)")
    headers, _meta = read_header(weights)

    r_default, alpha_default = int(config["r"]), float(config["lora_alpha"])
    rank_pattern: dict[str, int] = config.get("rank_pattern") or {}
    alpha_pattern: dict[str, float] = config.get("alpha_pattern") or {}
    rslora = bool(config.get("use_rslora"))
    fan_in_fan_out = bool(config.get("fan_in_fan_out"))

    pairs: dict[str, dict[str, str]] = {}
    replacements: dict[str, str] = {}
    for key in headers:
        if not key.startswith(PEFT_PREFIX):
            raise ExportRefused(f"adapter tensor {key!r} is not under {PEFT_PREFIX!r}",
                                path=weights, fix="save the adapter with PEFT's save_pretrained")
        rest = key[len(PEFT_PREFIX):]
        match = re.fullmatch(r"(.+)\.(lora_A|lora_B)\.weight|(.+)\.(lora_embedding_[AB])", rest)
        if match:
            module = match.group(1) or match.group(3)
            part = (match.group(2) or match.group(4))[-1]  # "A" or "B"
            pairs.setdefault(module, {})[part] = key
            continue
        target = rest.replace(".base_layer.", ".")
        if re.search(r"\.lora_|lora_magnitude|trainable_tokens|\.modules_to_save\.", rest):
            raise ExportRefused(f"adapter tensor {key!r} is of a kind export cannot merge "
                                "exactly", path=weights)
        replacements[target] = key

    deltas: dict[str, LoraDelta] = {}
    for module, parts in sorted(pairs.items()):
        if set(parts) != {"A", "B"}:
            raise ExportRefused(f"module {module} has lora_{next(iter(parts))} without its pair",
                                path=weights)
        wrapped = _parameter_target(module, config, layout, base_tensors, weights)
        if wrapped is not None:
            for found in _parameter_deltas(wrapped, wrapped[0] in layout.transposed, parts,
                                           headers, config, base_tensors, weights):
                deltas[found.base_key] = found
            continue
        base_key = f"{module}.weight"
        if base_key not in base_tensors and base_key != _untied_output(layout, base_tensors):
            raise ExportRefused(
                f"the adapter changes {base_key}, which the base does not store under that name",
                path=weights, fix="check that the adapter was trained on this base")
        a, b = headers[parts["A"]], headers[parts["B"]]
        embedding = "lora_embedding" in parts["A"]
        r = a.shape[0]
        expected_r = int(rank_pattern.get(get_pattern_key(list(rank_pattern), module), r_default))
        if r != expected_r:
            raise ExportRefused(f"module {module}: lora_A has rank {r} but the config says "
                                f"{expected_r}", path=weights)
        alpha = float(alpha_pattern.get(get_pattern_key(list(alpha_pattern), module),
                                        alpha_default))
        scale = lora_scale(r, alpha, rslora)
        module_type = layout.module_types.get(module, "")
        base_shape = _base_shape(base_key, base_tensors, layout)
        if embedding:
            kind: Literal["linear", "linear_t", "embedding"] = "embedding"
            delta_shape = (a.shape[1], b.shape[0])
        elif fan_in_fan_out and (module_type == "Conv1D" or
                                 (not module_type and base_shape == (a.shape[1], b.shape[0]))):
            kind, delta_shape = "linear_t", (a.shape[1], b.shape[0])
        elif module_type and module_type not in ("Linear", "Conv1D") and \
                not module_type.endswith("Linear"):
            raise ExportRefused(f"module {module} is a {module_type}; export merges LoRA on "
                                "linear and embedding layers only", path=weights)
        else:
            kind, delta_shape = "linear", (b.shape[0], a.shape[1])
        if b.shape[1] != r or delta_shape != base_shape:
            raise ExportRefused(
                f"module {module}: the adapter's delta has shape {list(delta_shape)} but the base "
                f"weight is {list(base_shape)}", path=weights,
                fix="check that the adapter was trained on this base")
        deltas[base_key] = LoraDelta(base_key, parts["A"], parts["B"], r, scale, kind)

    for target, key in replacements.items():
        if target not in base_tensors and target != _untied_output(layout, base_tensors):
            raise ExportRefused(f"the adapter saves {target}, which the base does not have",
                                path=weights, fix="check that the adapter was trained on this base")
        if headers[key].shape != _base_shape(target, base_tensors, layout):
            raise ExportRefused(
                f"the adapter's {target} has shape {list(headers[key].shape)} but the base's is "
                f"{list(_base_shape(target, base_tensors, layout))} (a resized vocabulary?)",
                path=weights, fix="export cannot resize embeddings; merge with PEFT instead")

    if layout.tied and config.get("ensure_weight_tying") and _touches_embeddings(
            layout, set(deltas) | set(replacements)):
        raise ExportRefused("ensure_weight_tying shares the adapter between tied embeddings; "
                            "export cannot reproduce that exactly", path=config_path)
    return AdapterPlan(adapter, config, deltas, replacements, headers)


def _targets(config: dict[str, Any]) -> list[str]:
    found = config.get("target_parameters") or []
    return [found] if isinstance(found, str) else list(found)


def _parameter_target(module: str, config: dict[str, Any], layout: ModelLayout,
                      base_tensors: dict[str, tuple[Path, TensorInfo]], weights: Path
                      ) -> tuple[str, str] | None:
    """(unwrapped module, base tensor) when `module` is a ParamWrapper of `target_parameters`.

    PEFT wraps each targeted parameter of a module in one ParamWrapper, nesting them in the
    module's parameter order: the last parameter's wrapper is outermost (`experts.lora_A`), the
    one before it sits under one `base_layer` (`experts.base_layer.lora_A`), and so on."""
    targets = _targets(config)
    if not targets:
        return None
    unwrapped, depth = module, 0
    while unwrapped.endswith(".base_layer"):
        unwrapped, depth = unwrapped[: -len(".base_layer")], depth + 1
    own = layout.params.get(unwrapped)
    if own is None:
        if depth or f"{module}.weight" not in base_tensors:
            raise ExportRefused(
                f"the adapter wraps parameters of {unwrapped} (target_parameters), and the "
                "base's architecture could not be built to learn their order", path=weights,
                fix="install the transformers version the base was saved with, or merge in "
                    "memory with PEFT (merge_and_unload)")
        return None
    targeted = [p for p in own if any(f"{unwrapped}.{p}" == t or
                                      f"{unwrapped}.{p}".endswith(f".{t}") for t in targets)]
    if not targeted:
        return None
    if depth >= len(targeted):
        raise ExportRefused(f"the adapter nests {depth + 1} wrappers on {unwrapped}, which has "
                            f"{len(targeted)} targeted parameter(s) ({', '.join(targeted)})",
                            path=weights, fix="check that the adapter was trained on this base")
    return unwrapped, f"{unwrapped}.{targeted[len(targeted) - 1 - depth]}"


# A fused in-memory expert parameter → the per-expert tensors a checkpoint stores it as, in the
# order transformers concatenates them (its conversion mapping: gate then up, along the rows).
SPLIT_EXPERTS: dict[str, tuple[str, ...]] = {"gate_up_proj": ("gate_proj", "up_proj"),
                                             "down_proj": ("down_proj",)}


def _parameter_deltas(wrapped: tuple[str, str], transposed: bool, parts: dict[str, str],
                      headers: dict[str, TensorInfo], config: dict[str, Any],
                      base_tensors: dict[str, tuple[Path, TensorInfo]],
                      weights: Path) -> list[LoraDelta]:
    """The deltas of one ParamWrapper on the tensors the base stores: the parameter itself, or
    (experts stored apart) each expert's split tensors."""
    unwrapped, base_key = wrapped
    if base_key in base_tensors:
        return [_parameter_delta(wrapped, transposed, parts, headers, config, base_tensors,
                                 weights)]
    param = base_key.rsplit(".", 1)[-1]
    a, b = headers[parts["A"]].shape, headers[parts["B"]].shape
    r, scale = _rank_scale(base_key, config)
    names = SPLIT_EXPERTS.get(param)
    first = names and f"{unwrapped}.0.{names[0]}.weight"
    if not names or transposed or first not in base_tensors or a[0] % r:
        raise ExportRefused(f"the adapter changes {base_key}, which the base does not store "
                            "under that name (nor as one tensor per expert)", path=weights,
                            fix="check that the adapter was trained on this base")
    experts = a[0] // r
    found: list[LoraDelta] = []
    for e in range(experts):
        start = 0
        for name in names:
            key = f"{unwrapped}.{e}.{name}.weight"
            if key not in base_tensors:
                raise ExportRefused(f"{base_key} is stored per expert, but {key} is missing",
                                    path=weights, fix="check that the adapter was trained on "
                                                      "this base")
            rows, cols = base_tensors[key][1].shape
            found.append(LoraDelta(key, parts["A"], parts["B"], r, scale, "experts", experts,
                                   False, e, (start, start + rows)))
            if cols != a[1]:
                raise ExportRefused(f"{key} has {cols} columns, the adapter's lora_A {a[1]}",
                                    path=weights)
            start += rows
        if start != b[0]:
            raise ExportRefused(f"{base_key}: expert {e}'s stored rows add up to {start}, the "
                                f"adapter's lora_B has {b[0]}", path=weights)
    return found


def _rank_scale(base_key: str, config: dict[str, Any]) -> tuple[int, float]:
    rank_pattern: dict[str, int] = config.get("rank_pattern") or {}
    alpha_pattern: dict[str, float] = config.get("alpha_pattern") or {}
    r = int(rank_pattern.get(get_pattern_key(list(rank_pattern), base_key), config["r"]))
    alpha = float(alpha_pattern.get(get_pattern_key(list(alpha_pattern), base_key),
                                    config["lora_alpha"]))
    return r, lora_scale(r, alpha, bool(config.get("use_rslora")))


def _parameter_delta(wrapped: tuple[str, str], transposed: bool, parts: dict[str, str],
                     headers: dict[str, TensorInfo], config: dict[str, Any],
                     base_tensors: dict[str, tuple[Path, TensorInfo]],
                     weights: Path) -> LoraDelta:
    """The exact delta of a ParamWrapper (peft.tuners.lora.layer.ParamWrapper.get_delta_weight).

    A stacked-experts parameter [E, d1, d2] has lora_A [r·E, in] and lora_B [out, r·E]; expert
    e's delta is B[:, :, e] @ A[e] (A viewed [E, r, in], B [out, r, E]), stored [E, out, in], or
    [E, in, out] when the module is `is_transposed`. A 2-D parameter is a plain linear delta."""
    base_key = wrapped[1]
    if base_key not in base_tensors:
        raise ExportRefused(f"the adapter changes {base_key}, which the base does not store "
                            "under that name", path=weights,
                            fix="check that the adapter was trained on this base")
    shape = base_tensors[base_key][1].shape
    a, b = headers[parts["A"]].shape, headers[parts["B"]].shape
    r, scale = _rank_scale(base_key, config)
    experts = int(shape[0]) if len(shape) == 3 else 1
    delta_shape: tuple[int, ...] = (b[0], a[1])
    if len(shape) == 3:
        delta_shape = (experts, a[1], b[0]) if transposed else (experts, b[0], a[1])
    if a[0] != r * experts or b[1] != r * experts or tuple(shape) != delta_shape:
        raise ExportRefused(
            f"{base_key}: the adapter's lora_A {list(a)} / lora_B {list(b)} (rank {r}, "
            f"{experts} expert(s)) do not make a delta of the base's shape {list(shape)}",
            path=weights, fix="check that the adapter was trained on this base")
    return LoraDelta(base_key, parts["A"], parts["B"], r, scale, "experts", experts, transposed)


def _untied_output(layout: ModelLayout, base_tensors: dict[str, Any]) -> str | None:
    """The output embedding's name when the base ties it (and so does not store it)."""
    if layout.tied and layout.output_embedding and layout.output_embedding not in base_tensors:
        return layout.output_embedding
    return None


def _base_shape(key: str, base_tensors: dict[str, tuple[Path, TensorInfo]],
                layout: ModelLayout) -> tuple[int, ...]:
    if key in base_tensors:
        return base_tensors[key][1].shape
    if key == _untied_output(layout, base_tensors) and layout.input_embedding in base_tensors:
        return base_tensors[layout.input_embedding][1].shape
    return ()


def _touches_embeddings(layout: ModelLayout, keys: set[str]) -> bool:
    return bool({layout.input_embedding, layout.output_embedding} & keys)


def must_untie(layout: ModelLayout, adapter: AdapterPlan | None) -> bool:
    """A tied base whose adapter changes one side of the tie: PeftModel applies the change to
    that side only, so the export stores both embeddings and unties them in config.json."""
    return adapter is not None and layout.tied and layout.output_embedding is not None and \
        _touches_embeddings(layout, set(adapter.deltas) | set(adapter.replacements))


def plan_tensors(base_tensors: dict[str, tuple[Path, TensorInfo]], adapter: AdapterPlan | None,
                 layout: ModelLayout, dtype: str, shard_size: int | None) -> tuple[OutShard, ...]:
    """Every output tensor, grouped into output files.

    Without `shard_size` the export mirrors the base's files (one output file per base shard);
    with it, tensors are packed in base order into files of at most `shard_size` bytes.
    """
    out_dtype = EXPORT_DTYPES[dtype]
    # The tied side that the base does not store is derived from the input embedding as PeftModel
    # sees it (including a replacement the adapter loads over it).
    derived = _untied_output(layout, base_tensors) if must_untie(layout, adapter) else None
    groups: list[list[TensorJob]] = []
    current_source: Path | None = None
    for key, (source, info) in base_tensors.items():
        jobs = [_job(key, source, info, adapter, out_dtype)]
        if derived is not None and key == layout.input_embedding:
            seen = jobs[0]
            jobs.append(_job(derived, seen.source, seen.info, adapter, out_dtype))
        if source != current_source:
            groups.append([])
            current_source = source
        groups[-1].extend(jobs)
    if shard_size is not None:
        flat = [job for group in groups for job in group]
        groups = [[]]
        size = 0
        for job in flat:
            if groups[-1] and size + job.out_bytes > shard_size:
                groups.append([])
                size = 0
            groups[-1].append(job)
            size += job.out_bytes
    if len(groups) == 1:
        return (OutShard(MODEL_SAFETENSORS, tuple(groups[0])),)
    n = len(groups)
    return tuple(OutShard(shard_name(i + 1, n), tuple(group))
                 for i, group in enumerate(groups))


def _job(key: str, source: Path, info: TensorInfo, adapter: AdapterPlan | None,
         out_dtype: str) -> TensorJob:
    if adapter is not None and key in adapter.replacements:
        source = adapter.path / ADAPTER_SAFETENSORS
        info = adapter.headers[adapter.replacements[key]]
    delta = adapter.deltas.get(key) if adapter is not None else None
    dtype = out_dtype if info.dtype in _FLOAT_DTYPES else info.dtype
    return TensorJob(key, source, info, delta, dtype)


# fp32 rows merged at a time: small enough to stay in cache between the load, the product and
# the store, so the tensor is never materialised in fp32 (which costs more than the product).
_BLOCK_ELEMENTS = 1 << 18


def merged_tensor(job: TensorJob, read: Callable[[Path, TensorInfo], torch.Tensor],
                  adapter_headers: dict[str, TensorInfo],
                  adapter_file: Path | None) -> torch.Tensor:
    """The output tensor of one job: the base tensor plus its LoRA delta, added in fp32, cast."""
    tensor = read(job.source, job.info)
    target = DTYPES[job.dtype]
    if job.delta is None:
        return tensor if tensor.dtype == target else tensor.to(target)
    assert adapter_file is not None
    delta = job.delta
    a = read(adapter_file, adapter_headers[delta.a_key]).float()
    b = read(adapter_file, adapter_headers[delta.b_key]).float()
    if delta.layout == "experts":
        return _parameter_merged(tensor, a, b, delta, target)
    # W[i, :] += s · left[i, :] @ right, row by row of the stored weight:
    if delta.layout == "linear":  # W[out,in] += s · B[out,r] @ A[r,in]
        left, right = b, a
    else:  # Conv1D stores W[in,out], an embedding W[vocab,dim]: both add s · Aᵀ @ Bᵀ
        left, right = a.t().contiguous(), b.t()
    if tensor.dtype == torch.float32:
        tensor.addmm_(left, right, alpha=delta.scale)
        return tensor if target == torch.float32 else tensor.to(target)
    out = tensor if tensor.dtype == target else torch.empty(tensor.shape, dtype=target)
    rows, cols = tensor.shape
    step = max(1, _BLOCK_ELEMENTS // max(cols, 1))
    scratch = torch.empty((min(step, rows), cols), dtype=torch.float32)
    for i in range(0, rows, step):
        j = min(i + step, rows)
        block = scratch[: j - i]
        block.copy_(tensor[i:j])
        block.addmm_(left[i:j], right, alpha=delta.scale)
        out[i:j].copy_(block)
    return out


def _parameter_merged(tensor: torch.Tensor, a: torch.Tensor, b: torch.Tensor, delta: LoraDelta,
                      target: torch.dtype) -> torch.Tensor:
    """W + scale · ΔW of a ParamWrapper, the same products PEFT forms (see _parameter_delta)."""
    merged = tensor.float()
    if delta.expert is not None and delta.rows is not None:  # one expert's stored tensor
        a_e = a.reshape(delta.experts, -1, a.shape[-1])[delta.expert]  # [r, in]
        b_e = b.reshape(b.shape[0], -1, delta.experts)[:, :, delta.expert]  # [out, r]
        start, stop = delta.rows
        merged.addmm_(b_e[start:stop], a_e, alpha=delta.scale)
        return merged.to(target)
    if delta.experts == 1 and merged.dim() == 2:
        merged.addmm_(b, a, alpha=delta.scale)
        return merged.to(target)
    a3 = a.reshape(delta.experts, -1, a.shape[-1])  # [E, r, in]
    b3 = b.reshape(b.shape[0], -1, delta.experts)  # [out, r, E]
    for e in range(delta.experts):  # one expert at a time: peak memory one expert's delta
        product = b3[:, :, e] @ a3[e]  # [out, in]
        merged[e].add_(product.t() if delta.transposed else product, alpha=delta.scale)
    return merged.to(target)


def write_shards(shards: tuple[OutShard, ...], out: Path, adapter: AdapterPlan | None,
                 on_tensor: Callable[[OutShard, TensorJob, int], None] | None = None,
                 *, fsync: bool = True) -> dict[str, str]:
    """Write every output file; returns the weight map (tensor -> file). `on_tensor` is called
    after each tensor with the bytes merged so far.

    Merging happens here; writing, kernel copies and fsyncs run behind it on one I/O thread
    (`OrderedIO`), at most a few tensors behind.
    """
    # Separate handles per thread: the merge seeks and reads while the I/O thread copies.
    reads: dict[Path, Any] = {}
    copies: dict[Path, Any] = {}

    def handle(handles: dict[Path, Any], path: Path) -> Any:
        if path not in handles:
            handles[path] = path.open("rb")
        return handles[path]

    def read(path: Path, info: TensorInfo) -> torch.Tensor:
        return read_tensor(handle(reads, path), info)

    adapter_file = adapter.path / ADAPTER_SAFETENSORS if adapter is not None else None
    adapter_headers = adapter.headers if adapter is not None else {}
    weight_map: dict[str, str] = {}
    writers: list[StreamWriter] = []
    done = 0
    try:
        with OrderedIO(max_in_flight=3) as io:
            for shard in shards:
                entries = [OutEntry(job.name, job.dtype, job.info.shape) for job in shard.jobs]
                writer = StreamWriter(out / shard.filename, entries, {"format": "pt"},
                                      fsync=fsync)
                writers.append(writer)
                for job in shard.jobs:
                    if job.delta is None and job.dtype == job.info.dtype:
                        io.submit(writer.copy_from, job.name, handle(copies, job.source),
                                  job.info)
                    else:
                        io.submit(writer.write, job.name,
                                  merged_tensor(job, read, adapter_headers, adapter_file))
                    weight_map[job.name] = shard.filename
                    done += job.out_bytes
                    if on_tensor is not None:
                        on_tensor(shard, job, done)
                io.submit(writer.close)
    except BaseException:
        for writer in writers:
            writer.abort()
        raise
    finally:
        for h in (*reads.values(), *copies.values()):
            h.close()
    return weight_map


__all__ = ["EXPORT_DTYPES", "NAMES", "AdapterPlan", "LoraDelta", "ModelLayout", "OutShard",
           "TensorJob", "analyse_adapter", "base_headers", "model_layout", "must_untie",
           "plan_tensors", "write_shards"]

"""An adapter read against its base, before any weight is touched: which base tensor each
adapter tensor changes (`analyse_adapter` → `AdapterPlan`), from safetensors headers, configs and
the base's module layout on the meta device (`model_layout`). Anything the streaming merge
(`export/merge.py`) could not reproduce exactly is refused here, with its reason and fix.

PEFT names adapter weights `base_model.model.<module>.lora_A.weight`; the base stores the same
module's weight as `<module>.weight`. `modules_to_save` weights are saved under the plain
`<module>.weight` key (PEFT strips `modules_to_save.<adapter>`), and an adapter that targets an
embedding also saves the embedding's base layer (`<module>.base_layer.weight`), which PEFT loads
over the base's: both replace the base tensor there as they do in PEFT.

Trained token rows (`lora.trainable_tokens`, PEFT's `trainable_token_indices`) are saved as
`<module>.token_adapter.trainable_tokens_delta`: the new ROWS themselves, which PEFT's merge
writes over the base's (`weight.index_copy(0, indices, rows)`, a replacement, not an addition).
On tied embeddings one set of rows serves both sides, so the tie holds.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from dataclasses import field as dataclass_field
from pathlib import Path
from typing import Any, Literal

from graftline.engine.common.checkpoint_files import (
    ADAPTER_CONFIG,
    ADAPTER_PICKLE,
    ADAPTER_SAFETENSORS,
    MODEL_SAFETENSORS_INDEX,
    lora_scale,
)
from graftline.engine.export.chain import (
    ExportRefused,
    read_adapter_config,
    weight_files,
)
from graftline.engine.export.safetensors import TensorInfo, read_header

PEFT_PREFIX = "base_model.model."

# Initialisations that change the base weights at training time (their adapters only make sense
# on a residual base), so merging into the original base would be wrong.
_PLAIN_INITS = (True, False, "gaussian", "orthogonal")
# PEFT config fields that mean "not a plain LoRA": each is refused with its reason.
_UNSUPPORTED: dict[str, str] = {
    "use_dora": "DoRA rescales each merged column by a learned magnitude over the weight norm",
    "lora_bias": "the adapter trains a bias on lora_B",
    "layer_replication": "the adapter replicates base layers",
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
class TokenRows:
    """Rows of a base tensor that the adapter replaces: row `indices[i]` := adapter row i."""

    key: str  # the adapter tensor holding the rows, [len(indices), dim]
    indices: tuple[int, ...]


@dataclass(frozen=True)
class AdapterPlan:
    path: Path
    config: dict[str, Any]
    deltas: dict[str, LoraDelta]  # by the base tensor it changes
    replacements: dict[str, str]  # base tensor -> adapter tensor that replaces it
    headers: dict[str, TensorInfo]
    token_rows: dict[str, TokenRows] = dataclass_field(default_factory=dict)  # by base tensor


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
        import torch
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


def _adapter_weights(adapter: Path) -> Path:
    """The adapter's safetensors file; a pickle or nothing is refused with the fix."""
    weights = adapter / ADAPTER_SAFETENSORS
    if not weights.is_file():
        other = f"{ADAPTER_PICKLE} (pickle)" if (adapter / ADAPTER_PICKLE).is_file() else \
            "no adapter weights"
        raise ExportRefused(f"{ADAPTER_SAFETENSORS} is missing ({other} found)", path=adapter,
                            fix="re-save the adapter with save_pretrained(safe_serialization=True)")
    return weights


def _sort_adapter_keys(headers: dict[str, TensorInfo], weights: Path
                       ) -> tuple[dict[str, dict[str, str]], dict[str, str], dict[str, str]]:
    """The adapter's tensors by what they are: LoRA pairs (module -> {"A", "B"} -> key), whole
    tensors saved in the base's place (base name -> key), trained token rows (module -> key).
    A tensor of any other kind is refused."""
    pairs: dict[str, dict[str, str]] = {}
    replacements: dict[str, str] = {}
    rows: dict[str, str] = {}  # module -> its trained token rows
    for key in headers:
        if not key.startswith(PEFT_PREFIX):
            raise ExportRefused(f"adapter tensor {key!r} is not under {PEFT_PREFIX!r}",
                                path=weights, fix="save the adapter with PEFT's save_pretrained")
        rest = key[len(PEFT_PREFIX):]
        token_match = re.fullmatch(r"(.+)\.token_adapter\.trainable_tokens_delta", rest)
        if token_match:
            rows[token_match.group(1)] = key
            continue
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
    return pairs, replacements, rows


def _module_delta(module: str, parts: dict[str, str], headers: dict[str, TensorInfo],
                  config: dict[str, Any], layout: ModelLayout,
                  base_tensors: dict[str, tuple[Path, TensorInfo]], weights: Path) -> LoraDelta:
    """The delta one LoRA pair adds to a linear or embedding module's weight, its rank, scale
    and shape checked against the config and the base."""
    base_key = f"{module}.weight"
    if base_key not in base_tensors and base_key != untied_output(layout, base_tensors):
        raise ExportRefused(
            f"the adapter changes {base_key}, which the base does not store under that name",
            path=weights, fix="check that the adapter was trained on this base")
    rank_pattern: dict[str, int] = config.get("rank_pattern") or {}
    alpha_pattern: dict[str, float] = config.get("alpha_pattern") or {}
    a, b = headers[parts["A"]], headers[parts["B"]]
    embedding = "lora_embedding" in parts["A"]
    r = a.shape[0]
    expected_r = int(rank_pattern.get(get_pattern_key(list(rank_pattern), module),
                                      int(config["r"])))
    if r != expected_r:
        raise ExportRefused(f"module {module}: lora_A has rank {r} but the config says "
                            f"{expected_r}", path=weights)
    alpha = float(alpha_pattern.get(get_pattern_key(list(alpha_pattern), module),
                                    float(config["lora_alpha"])))
    scale = lora_scale(r, alpha, bool(config.get("use_rslora")))
    module_type = layout.module_types.get(module, "")
    base_shape = _base_shape(base_key, base_tensors, layout)
    if embedding:
        kind: Literal["linear", "linear_t", "embedding"] = "embedding"
        delta_shape = (a.shape[1], b.shape[0])
    elif bool(config.get("fan_in_fan_out")) and (
            module_type == "Conv1D" or
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
    return LoraDelta(base_key, parts["A"], parts["B"], r, scale, kind)


def _check_replacements(replacements: dict[str, str], headers: dict[str, TensorInfo],
                        base_tensors: dict[str, tuple[Path, TensorInfo]], layout: ModelLayout,
                        weights: Path) -> None:
    """Every whole tensor the adapter saves has its place and shape in the base."""
    for target, key in replacements.items():
        if target not in base_tensors and target != untied_output(layout, base_tensors):
            raise ExportRefused(f"the adapter saves {target}, which the base does not have",
                                path=weights, fix="check that the adapter was trained on this base")
        if headers[key].shape != _base_shape(target, base_tensors, layout):
            raise ExportRefused(
                f"the adapter's {target} has shape {list(headers[key].shape)} but the base's is "
                f"{list(_base_shape(target, base_tensors, layout))} (a resized vocabulary?)",
                path=weights, fix="export cannot resize embeddings; merge with PEFT instead")


def analyse_adapter(adapter: Path, base_tensors: dict[str, tuple[Path, TensorInfo]],
                    layout: ModelLayout) -> AdapterPlan:
    """Map every adapter tensor to the base tensor it changes; refuse anything inexact."""
    config_path = adapter / ADAPTER_CONFIG
    config = read_adapter_config(adapter)  # a corrupt file is refused cleanly, not a traceback
    _refuse_config(adapter, config)
    weights = _adapter_weights(adapter)
    headers, _meta = read_header(weights)
    pairs, replacements, rows = _sort_adapter_keys(headers, weights)

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
        delta = _module_delta(module, parts, headers, config, layout, base_tensors, weights)
        deltas[delta.base_key] = delta
    _check_replacements(replacements, headers, base_tensors, layout, weights)

    if layout.tied and config.get("ensure_weight_tying") and _touches_embeddings(
            layout, set(deltas) | set(replacements)):
        raise ExportRefused("ensure_weight_tying shares the adapter between tied embeddings; "
                            "export cannot reproduce that exactly", path=config_path)
    token_rows = _token_rows(rows, config, headers, base_tensors, layout, weights)
    for target in token_rows:
        if target in deltas or target in replacements:
            raise ExportRefused(f"the adapter both trains token rows of {target} and changes the "
                                "whole tensor; export cannot order the two as PEFT does",
                                path=weights, fix="merge in memory with PEFT (merge_and_unload)")
    return AdapterPlan(adapter, config, deltas, replacements, headers, token_rows)


def _token_rows(rows: dict[str, str], config: dict[str, Any], headers: dict[str, TensorInfo],
                base_tensors: dict[str, tuple[Path, TensorInfo]], layout: ModelLayout,
                weights: Path) -> dict[str, TokenRows]:
    """The rows each trained-token module writes over its base tensor (by base tensor).

    `trainable_token_indices` is a list (the input embedding's rows) or one list per module name
    (a name matches the module or its last dotted parts). On a tied base PEFT ties the output
    layer to the embedding's rows: the output embedding gets the same rows (it matters when the
    base stores it, or when the export unties it for another reason)."""
    indices = config.get("trainable_token_indices")
    if not rows:
        if indices:
            raise ExportRefused("the adapter config names trainable_token_indices but the "
                                "adapter holds no token rows", path=weights,
                                fix="re-save the adapter with PEFT's save_pretrained")
        return {}
    embedding = layout.input_embedding.removesuffix(".weight") if layout.input_embedding \
        else None
    found: dict[str, TokenRows] = {}
    for module, key in sorted(rows.items()):
        if isinstance(indices, dict):
            wanted = [ids for name, ids in indices.items()
                      if module == name or module.endswith(f".{name}")]
        else:
            wanted = [indices] if indices and module == embedding else []
        if len(wanted) != 1:
            raise ExportRefused(f"the adapter trains token rows of {module}, which its config's "
                                f"trainable_token_indices ({indices}) does not name once",
                                path=weights, fix="check the adapter's adapter_config.json")
        ids = tuple(int(i) for i in wanted[0])
        target = f"{module}.weight"
        shape = _base_shape(target, base_tensors, layout)
        info = headers[key]
        if len(shape) != 2 or len(info.shape) != 2 or info.shape != (len(ids), shape[1]) or \
                not all(0 <= i < shape[0] for i in ids):
            raise ExportRefused(
                f"{module}: the adapter's token rows {list(info.shape)} at ids {list(ids)} do not "
                f"fit the base's {target} {list(shape)}", path=weights,
                fix="check that the adapter was trained on this base (a resized vocabulary "
                    "cannot be merged here)")
        found[target] = TokenRows(key, ids)
    tied = layout.output_embedding if layout.tied else None
    if tied and layout.input_embedding in found:
        if tied in found and found[tied].indices != found[layout.input_embedding].indices:
            raise ExportRefused("the adapter trains different token rows on the two sides of "
                                "tied embeddings; one merged tensor cannot hold both",
                                path=weights, fix="merge in memory with PEFT and check it, or "
                                "train the same tokens on both sides")
        found.setdefault(tied, found[layout.input_embedding])
    return found


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


def untied_output(layout: ModelLayout, base_tensors: dict[str, Any]) -> str | None:
    """The output embedding's name when the base ties it (and so does not store it)."""
    if layout.tied and layout.output_embedding and layout.output_embedding not in base_tensors:
        return layout.output_embedding
    return None


def _base_shape(key: str, base_tensors: dict[str, tuple[Path, TensorInfo]],
                layout: ModelLayout) -> tuple[int, ...]:
    if key in base_tensors:
        return base_tensors[key][1].shape
    if key == untied_output(layout, base_tensors) and layout.input_embedding in base_tensors:
        return base_tensors[layout.input_embedding][1].shape
    return ()


def _touches_embeddings(layout: ModelLayout, keys: set[str]) -> bool:
    return bool({layout.input_embedding, layout.output_embedding} & keys)


def must_untie(layout: ModelLayout, adapter: AdapterPlan | None) -> bool:
    """A tied base whose adapter changes one side of the tie: PeftModel applies the change to
    that side only, so the export stores both embeddings and unties them in config.json."""
    return adapter is not None and layout.tied and layout.output_embedding is not None and \
        _touches_embeddings(layout, set(adapter.deltas) | set(adapter.replacements))


__all__ = ["PEFT_PREFIX", "AdapterPlan", "LoraDelta", "ModelLayout", "TokenRows",
           "analyse_adapter", "base_headers", "get_pattern_key", "model_layout", "must_untie",
           "untied_output"]

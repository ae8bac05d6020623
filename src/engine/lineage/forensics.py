"""Forensics of hand-made checkpoints: what their bytes prove about where they came from.

A scan links checkpoints by what their files record (manifests, `adapter_config.json`). A model
merged by hand, or an adapter trained on an in-memory merge, records nothing true, so the scan
(`reader`) asks this module, after the walk, for links it can prove from the weights:

- `infer_merges`: a full model equal to an older one plus an adapter's delta (or a chain of
  them) is a merge of them (`merged_from`, inferred); a proven chain flags the in-memory-merge
  pitfall on each adapter after the first;
- `flag_in_memory_merges`: an adapter whose config names a base that had been merged before the
  adapter was written probably belongs on the merge (suspected, not proven);
- `flag_unsaved_chains`: several hand-made adapters on one recorded base, written one after
  another, may each sit on an in-memory merge of the ones before; nothing on disk can tell, so
  each after the first says so (unproven) with the fix and `--check-data`;
- `infer_continued`: TRL's frozen `ref/` copy, bit-identical to the adapter a stage continued
  (`continued_from`, inferred).

Only a few bytes of weights are read (one normalization tensor, one target weight, adapter
tensors), never a whole model; better unlinked than wrongly linked.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from graftline.engine.common.checkpoint_files import (
    ADAPTER_CONFIG,
    ADAPTER_SAFETENSORS,
    MODEL_CONFIG,
    MODEL_SAFETENSORS,
    MODEL_SAFETENSORS_INDEX,
    lora_scale,
)
from graftline.engine.common.safetensors_header import read_header
from graftline.engine.lineage.cached_reads import (
    cached_by_stat,
    is_number,
    read_json,
    safetensors_header,
)
from graftline.engine.lineage.model import Edge, InMemoryMerge

if TYPE_CHECKING:
    from graftline.engine.lineage.reader import Draft

__all__ = ["flag_in_memory_merges", "flag_unsaved_chains", "infer_continued", "infer_merges"]

# config.json keys that differ between a model and its merge without meaning anything.
_VOLATILE_CONFIG = {"_name_or_path", "transformers_version", "dtype", "torch_dtype", "use_cache"}
_fingerprint_cache: dict[str, tuple[int, int, str | None]] = {}


def infer_merges(drafts: dict[str, Draft], edges: list[Edge]) -> None:
    """Link a hand-made full model to what it is a merge of, only with evidence.

    A candidate pair: a full model without a manifest and an older one with the same config
    and bit-identical final-norm weights (a LoRA merge never touches norms). That alone is
    no evidence (identical copies of one base in sibling projects match too), so the link is
    made only when one target weight of the newer model equals the older one's plus the
    delta of an adapter trained on it (or of several, applied in the order they were
    written: the in-memory-merge chain). The merge then needs the base AND those adapters:
    both are protected, or neither (see docs/cleanup.md).
    """
    models = [
        d for d in drafts.values()
        if d.kind in ("base", "merged", "export") and d.path and os.path.isdir(d.path)
    ]
    orphans = [d for d in models if d.manifest is None and d.fields.get("in_roots", True)]
    if not orphans or len(models) < 2:
        return
    adapters_on: dict[str, list[Draft]] = {}
    for edge in edges:
        if edge.relation == "trained_on":
            child = drafts[edge.child]
            if child.kind in ("adapter", "trainer", "combined") and child.path:
                adapters_on.setdefault(edge.parent, []).append(child)
    shapes = {d.key: config_shape(d.path or "") for d in models}  # every model has a path
    for merged in orphans:
        shape = shapes[merged.key]
        if shape is None:
            continue
        older = [
            d for d in models
            if d is not merged and shapes[d.key] == shape and d.newest < merged.newest
        ]
        mine = fingerprint(merged.path or "")
        if mine is None:
            continue
        for base in sorted(older, key=lambda d: d.newest, reverse=True):
            if fingerprint(base.path or "") != mine:
                continue
            adapters = sorted(
                (a for a in adapters_on.get(base.key, ())
                 if a.kind != "trainer" and a.newest <= merged.newest),
                key=lambda a: a.newest)
            used = merge_evidence(base.path, merged.path, [a.path for a in adapters])
            if used is None:
                continue
            merged.kind = "merged"
            edges.append(Edge(merged.key, base.key, "merged_from", "inferred"))
            chain = [adapters[i] for i in used]
            for adapter in chain:
                edges.append(Edge(merged.key, adapter.key, "merged_from", "inferred"))
            if len(chain) > 1:
                _flag_proven_chain(base, merged, chain)
            break

def _flag_proven_chain(base: Draft, merged: Draft, chain: list[Draft]) -> None:
    """The in-memory-merge pitfall, proven: `merged` equals base + every adapter of `chain`
    applied in turn, and no single one of them, so each adapter after the first was trained
    on an in-memory merge while its config names the plain base."""
    for i, adapter in enumerate(chain[1:], start=1):
        before = " + ".join(a.name for a in chain[:i])
        finding = InMemoryMerge(
            "proven",
            f"IN-MEMORY MERGE: {ADAPTER_CONFIG} names {adapter.fields.get('base_ref')}, but "
            f"{merged.path} equals {base.name} + {' + '.join(a.name for a in chain)} exactly, "
            f"so this adapter was trained on {base.name} + {before} merged in memory; loaded "
            f"on {base.name} alone it is the wrong model.",
            "save each merge with save_pretrained and load it from disk before adding the "
            f"next adapter (or set name_or_path); export {merged.path} instead")
        adapter.warnings.append(f"{finding.message} Fix: {finding.fix}")
        adapter.fields["in_memory_merge"] = finding

def flag_in_memory_merges(drafts: dict[str, Draft], edges: list[Edge]) -> None:
    """Warn about an adapter whose config names a base that had already been merged.

    PEFT records the in-memory model's `name_or_path`, which a merge does not change, so an
    adapter trained on `merge_and_unload()`'s result names the OLD base. When a merge of
    that base was written before the adapter (and the adapter is not what went into it),
    the adapter probably belongs on the merge: both are then kept for it.
    """
    # Only hand-made merges: the engine saves a merge and reloads it before the next stage,
    # so its own merges never have this problem (and flagging them would cry wolf on every
    # later run that starts from the same base).
    merges_of: dict[str, list[Draft]] = {}
    merged_in: dict[str, set[str]] = {}
    for edge in edges:
        if edge.relation == "merged_from":
            merged_in.setdefault(edge.child, set()).add(edge.parent)
            child = drafts[edge.child]
            if child.kind == "merged" and child.manifest is None:
                merges_of.setdefault(edge.parent, []).append(child)
    if not merges_of:
        return
    for edge in list(edges):
        if edge.relation != "trained_on" or edge.source != "config":
            continue
        adapter = drafts[edge.child]
        if adapter.manifest is not None or adapter.fields.get("run_dir"):
            continue  # the engine recorded the real base; checked in _link
        candidates = [
            m for m in merges_of.get(edge.parent, ())
            if m.newest < adapter.newest and adapter.key not in merged_in.get(m.key, ())
        ]
        if not candidates:
            continue
        merge = max(candidates, key=lambda d: d.newest)
        message = (
            f"{ADAPTER_CONFIG} names {adapter.fields.get('base_ref')}, but {merge.path} (a "
            "merge of that base) was written before this adapter: if it was trained on the "
            "merge in memory, PEFT recorded the old base and it must be loaded on "
            f"{merge.path}; both are kept for it"
        )
        adapter.warnings.append(message)
        adapter.fields.setdefault("in_memory_merge", InMemoryMerge(
            "suspected", message, f"load it on {merge.path}, or point its "
            "base_model_name_or_path at that merge"))
        edges.append(Edge(adapter.key, merge.key, "trained_on", "inferred"))

def flag_unsaved_chains(drafts: dict[str, Draft], edges: list[Edge]) -> None:
    """The merge nobody saved: several hand-made adapters record one base and were written one
    after another. If each was trained on `merge_and_unload()` of the ones before it (seed
    workflow 002: a topic per adapter, nothing merged saved), every one names the plain base
    and no file on disk differs from a correctly made sibling; only data can tell
    (`export.provenance`, `--check-data`). So each adapter after the first says it cannot be
    proven, with the fix. Adapters already proven or suspected keep that finding."""
    on: dict[str, list[Draft]] = {}
    for edge in edges:
        if edge.relation != "trained_on" or edge.source != "config":
            continue
        child = drafts[edge.child]
        if child.kind != "adapter" or child.manifest is not None or not child.path \
                or child.fields.get("run_dir"):
            continue  # graftline's own adapters record the model they really trained on
        on.setdefault(edge.parent, []).append(child)
    for parent, found in on.items():
        unique = {d.key: d for d in found}.values()
        adapters = sorted(unique, key=lambda d: (d.newest, d.path or ""))
        if len(adapters) < 2:
            continue
        base = drafts[parent]
        for i, adapter in enumerate(adapters[1:], start=1):
            if adapter.fields.get("in_memory_merge") is not None:
                continue
            earlier = adapters[:i]
            before = " + ".join(a.name for a in earlier)
            message = (
                f"CANNOT BE PROVEN: {len(adapters)} adapters without graftline manifests record "
                f"{base.name} as their base and were written one after another ({before}, then "
                f"{adapter.name}). If {adapter.name} was trained on {base.name} + {before} "
                "merged in memory (merge_and_unload, nothing saved), PEFT recorded the plain "
                f"base, and loaded on {base.name} alone (as export does) it is the wrong "
                "model; its files look the same either way.")
            word = os.path.relpath(adapter.path, adapter.root) if adapter.root and \
                adapter.path else adapter.name
            fix = (f"`graftline lineage ROOT --check-data DATA.jsonl --adapter {word}` decides "
                   f"it from {adapter.name}'s data; if it was trained on the merge, export the "
                   f"chain (export {earlier[0].name}; then for each of "
                   f"{', '.join(a.name for a in [*earlier[1:], adapter])} in turn, point its "
                   "base_model_name_or_path at the export before it and export it) or retrain "
                   "it on a saved merge")
            adapter.warnings.append(f"{message} Fix: {fix}")
            adapter.fields["in_memory_merge"] = InMemoryMerge(
                "unproven", message, fix, base=base.key,
                chain=tuple(a.path for a in earlier if a.path))


def infer_continued(drafts: dict[str, Draft], edges: list[Edge]) -> None:
    """`continued_from` from TRL's frozen reference: DPO on a PeftModel saves the adapter it
    started from as `ref/`, bit-identical to that adapter, so equal tensors are proof."""
    refs = {d.key: d.fields["ref_dir"] for d in drafts.values() if d.fields.get("ref_dir")}
    if not refs:
        return
    digests: dict[str, str] = {}
    for draft in drafts.values():
        if draft.kind in ("adapter", "trainer", "combined") and draft.path:
            digest = tensor_digest(os.path.join(draft.path or "", ADAPTER_SAFETENSORS))
            if digest is not None:
                digests.setdefault(digest, draft.key)
    for key, ref_dir in refs.items():
        digest = tensor_digest(os.path.join(ref_dir, ADAPTER_SAFETENSORS))
        source = digests.get(digest) if digest else None
        if source is not None and source != key:
            edges.append(Edge(key, source, "continued_from", "inferred"))


# -- evidence ----------------------------------------------------------------------------------


def config_shape(path: str) -> tuple[tuple[str, str], ...] | None:
    data = read_json(os.path.join(path, MODEL_CONFIG))
    if not isinstance(data, dict):
        return None
    return tuple(sorted((k, json.dumps(v, sort_keys=True)) for k, v in data.items()
                        if k not in _VOLATILE_CONFIG))


def fingerprint(path: str) -> str | None:
    """The raw bytes of the final normalization weight (a few KB), read from safetensors.

    Cached by the weight file's mtime and size. None when there is no safetensors file or no
    such tensor (then no merge is inferred: better unlinked than wrongly linked).
    """
    index = read_json(os.path.join(path, MODEL_SAFETENSORS_INDEX))
    weight_map = index.get("weight_map", {}) if isinstance(index, dict) else {}
    candidates = [n for n in weight_map if _is_final_norm(n)]
    filename = weight_map[candidates[0]] if candidates else MODEL_SAFETENSORS
    file = os.path.join(path, filename)
    return cached_by_stat(_fingerprint_cache, file, lambda: _final_norm_bytes(file))


def _final_norm_bytes(file: str) -> str | None:
    result: str | None = None
    try:
        header = read_header(file)
        names = sorted(n for n in header.tensors if _is_final_norm(n))
        if names:
            start, end = header.tensors[names[0]]["data_offsets"]
            with open(file, "rb") as handle:
                handle.seek(header.data_start + start)
                result = handle.read(min(end - start, 1 << 20)).hex()
    except (OSError, ValueError, KeyError):
        result = None
    return result


_DTYPES = {"F32": "<f4", "F16": "<f2", "F64": "<f8", "BF16": "bf16"}


def _tensor(file: str, name: str) -> Any:
    """One tensor of a safetensors file as a float64 numpy array (None when unreadable)."""
    import numpy as np

    found = safetensors_header(file)
    if found is None or name not in found.tensors:
        return None
    info = found.tensors[name]
    dtype = _DTYPES.get(info.get("dtype"))
    if dtype is None:
        return None
    begin, end = info["data_offsets"]
    try:
        with open(file, "rb") as handle:
            handle.seek(found.data_start + begin)
            raw = handle.read(end - begin)
    except OSError:
        return None
    if dtype == "bf16":
        array = (np.frombuffer(raw, "<u2").astype(np.uint32) << 16).view(np.float32)
    else:
        array = np.frombuffer(raw, dtype)
    return array.astype(np.float64).reshape(info["shape"])


def tensor_digest(file: str) -> str | None:
    """A hash of a safetensors file's tensors (names, dtypes, shapes, bytes), not its header
    layout: two saves of the same adapter weights hash alike."""
    import hashlib

    found = safetensors_header(file)
    if found is None:
        return None
    digest = hashlib.sha256()
    try:
        with open(file, "rb") as handle:
            for name in sorted(found.tensors):
                info = found.tensors[name]
                begin, end = info["data_offsets"]
                handle.seek(found.data_start + begin)
                digest.update(f"{name}|{info['dtype']}|{info['shape']}|".encode())
                digest.update(handle.read(end - begin))
    except (OSError, KeyError):
        return None
    return digest.hexdigest()


def _lora_delta(adapter: str, module: str) -> Any:
    """scale · B @ A of `adapter` for the base weight `module` (e.g. `model.layers.0.…q_proj`),
    None when the adapter does not target it."""
    config = read_json(os.path.join(adapter, ADAPTER_CONFIG))
    file = os.path.join(adapter, ADAPTER_SAFETENSORS)
    found = safetensors_header(file)
    if not isinstance(config, dict) or found is None:
        return None
    suffix = f"{module}.lora_A.weight"
    names = [k for k in found.tensors if k.endswith(suffix)]
    if not names:
        return None
    a = _tensor(file, names[0])
    b = _tensor(file, names[0].replace("lora_A", "lora_B"))
    r, alpha = config.get("r"), config.get("lora_alpha")
    if a is None or b is None or not is_number(r) or not is_number(alpha) or not r:
        return None
    delta = (b @ a) * lora_scale(r, alpha, bool(config.get("use_rslora")))
    return delta.T if config.get("fan_in_fan_out") else delta


def merge_evidence(base: str | None, merged: str | None,
                    adapters: Sequence[str | None]) -> tuple[int, ...] | None:
    """Which adapters (indices into `adapters`, in order) `merged` is `base` plus: a single one,
    else all of the first k applied in turn. None when no such sum equals it (then no link)."""
    import numpy as np

    if not base or not merged or not adapters:
        return None
    files = {}
    for folder in (base, merged):
        file = os.path.join(folder, MODEL_SAFETENSORS)
        if safetensors_header(file) is None:
            return None
        files[folder] = file
    base_header = safetensors_header(files[base])
    deltas: list[tuple[str, Any]] = []
    for adapter in adapters:
        if not adapter:
            return None
        found = None
        for name in base_header.tensors if base_header is not None else ():
            if name.endswith(".weight") and ".layers." in name:
                module = name[: -len(".weight")]
                delta = _lora_delta(adapter, module)
                if delta is not None:
                    found = (name, delta)
                    break
        deltas.append(found if found else ("", None))

    def equal(name: str, total: Any) -> bool:
        w0, w1 = _tensor(files[base], name), _tensor(files[merged], name)
        if w0 is None or w1 is None or w0.shape != total.shape or not np.any(total):
            return False
        if np.array_equal(w0, w1):
            return False  # the same weight: a copy, not a merge
        tolerance = 1e-2 * float(np.max(np.abs(total))) + 1e-6
        return bool(np.max(np.abs(w0 + total - w1)) <= tolerance)

    for i, (name, delta) in enumerate(deltas):
        if delta is not None and equal(name, delta):
            return (i,)
    # The chain: every adapter's delta on one weight they all target, summed in order.
    names = {name for name, _ in deltas}
    if len(adapters) > 1 and len(names) == 1 and "" not in names:
        (name,) = names
        total = 0
        for k, (_, delta) in enumerate(deltas):
            total = total + delta
            if k >= 1 and equal(name, total):
                return tuple(range(k + 1))
    return None


def _is_final_norm(name: str) -> bool:
    return name.endswith("norm.weight") and ".layers." not in name and ".h." not in name

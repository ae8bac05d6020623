"""Which weights an export reads: the checkpoint's adapter and the full model it applies to.

A checkpoint is either an adapter directory (`adapter_config.json` + `adapter_model.safetensors`)
whose base is a full model directory (the original base, or a model merged by an earlier stage),
or a full model directory itself. The manifest (`graftline.json`) is the truth about the base;
checkpoints made by other tools are read through `adapter_config.json`'s
`base_model_name_or_path`. The lineage (every ancestor with its stage and metrics) is collected
for the model card. Nothing here writes anything.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from graftline.engine.common.checkpoint_files import (
    ADAPTER_CONFIG,
    MODEL_CONFIG,
    MODEL_SAFETENSORS,
    MODEL_SAFETENSORS_INDEX,
    folder_files,
)
from graftline.engine.common.errors import GraftlineError
from graftline.engine.lineage import manifest as manifest_io


class ExportRefused(GraftlineError, ValueError):
    """Export cannot be done exactly or safely; nothing was written."""

    def __init__(self, message: str, *, path: Path | str | None = None,
                 fix: str | None = None) -> None:
        self.path = str(path) if path is not None else None
        text = message if path is None else f"{path}: {message}"
        super().__init__(message, fix, text=text if fix is None else f"{text}\n  fix: {fix}")


@dataclass(frozen=True)
class LineageNode:
    path: str
    kind: str
    id: str | None = None
    name: str = ""
    stage: str | None = None
    stage_kind: str | None = None
    run: str | None = None
    relation: str | None = None  # how the next node (towards the checkpoint) relates to this one
    metrics: dict[str, float] = field(default_factory=dict)
    evaluation: dict[str, float] = field(default_factory=dict)
    lora: dict[str, Any] | None = None
    exists: bool = True


@dataclass(frozen=True)
class Chain:
    checkpoint: Path
    kind: Literal["adapter", "model"]
    base: Path  # the full-precision model whose weights are read
    adapter: Path | None
    manifest: manifest_io.Manifest | None
    lineage: tuple[LineageNode, ...]  # root first, the checkpoint last


def is_adapter_dir(path: Path) -> bool:
    return folder_files(path).adapter_config


def weight_files(model_dir: Path) -> list[str] | None:
    """The safetensors files of a full model directory (the index's shards, or the single
    file), or None when it has none. A damaged index is refused, not a traceback."""
    if not folder_files(model_dir).loadable_safetensors:
        return None
    index = model_dir / MODEL_SAFETENSORS_INDEX
    if not index.is_file():
        return [MODEL_SAFETENSORS]
    try:
        data = json.loads(index.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        data = None
    weight_map = data.get("weight_map") or {} if isinstance(data, dict) else None
    if not isinstance(weight_map, dict) or not all(isinstance(f, str)
                                                   for f in weight_map.values()):
        raise ExportRefused(f"{MODEL_SAFETENSORS_INDEX} is not an index of shards (a JSON "
                            "object whose weight_map names a file per tensor)", path=model_dir,
                            fix="restore the index from the model's source (save_pretrained "
                                "writes it)")
    return sorted(set(weight_map.values()))


def is_model_dir(path: Path) -> bool:
    """A full model export can read (`FolderFiles.is_safetensors_model`): config.json with
    model.safetensors or its index. Checked after `is_adapter_dir`; the index's shards are
    checked when they are read."""
    return folder_files(path).is_safetensors_model


def removed_by(path: Path) -> str | None:
    """Which cleanup removed `path`, when the cleanup journal knows."""
    from graftline.engine.lineage.cleanup import removed_by as journal_lookup

    try:
        return journal_lookup(Path(path))
    except (OSError, ValueError):  # a broken journal must not hide the real refusal
        return None


def locate(reference: str, relative_to: Path) -> Path:
    """A base reference (path, `toy:` name or cached hub id) as a local path that may not exist.

    The one resolver (`lineage.resolve`), so export finds the base that lineage and cleanup
    protect: a relative path is tried from the checkpoint's folder and each folder above it.
    """
    from graftline.engine.lineage.resolve import resolve_base

    found = resolve_base(reference, relative_to)
    if found.path is not None:
        return Path(found.path)
    return Path(found.tried[0]) if found.tried else Path(relative_to) / reference


def _adapter_base_reference(adapter: Path, manifest: manifest_io.Manifest | None) -> str | None:
    if manifest is not None and manifest.base:
        return manifest.base
    return read_adapter_config(adapter).get("base_model_name_or_path")


def read_adapter_config(adapter: Path) -> dict:
    """adapter_config.json, checked for the fields the merge reads: a clean refusal for a
    corrupt or hand-edited file instead of a traceback halfway through the export."""
    where = adapter / ADAPTER_CONFIG
    fix = f"restore {ADAPTER_CONFIG} from the checkpoint's source (peft writes it)"
    try:
        config = json.loads(where.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ExportRefused(f"unreadable {ADAPTER_CONFIG} ({exc})", path=adapter,
                            fix=fix) from None
    if not isinstance(config, dict):
        raise ExportRefused(f"{ADAPTER_CONFIG} is a JSON {type(config).__name__}, not an object",
                            path=adapter, fix=fix)
    r, alpha = config.get("r", 8), config.get("lora_alpha", 8)
    targets = config.get("target_modules")
    bad = ("r" if isinstance(r, bool) or not isinstance(r, int) or r <= 0 else
           "lora_alpha" if isinstance(alpha, bool) or not isinstance(alpha, int | float) else
           "target_modules" if targets is not None and not isinstance(targets, str) and not (
               isinstance(targets, list) and all(isinstance(t, str) for t in targets)) else
           "base_model_name_or_path" if not isinstance(
               config.get("base_model_name_or_path", ""), str | None) else None)
    if bad is not None:
        raise ExportRefused(f"{ADAPTER_CONFIG}: `{bad}` is {json.dumps(config.get(bad))}, "
                            "which no LoRA adapter has", path=adapter, fix=fix)
    return config


def _refuse_missing(base: Path, reference: str, checkpoint: Path) -> ExportRefused:
    remover = removed_by(base)
    why = f"; it was removed by {remover}" if remover else ""
    return ExportRefused(
        f"the base model this checkpoint applies to is missing: {base}{why}",
        path=checkpoint,
        fix=(f"restore {reference!r} (the lineage needs it), or export a checkpoint whose base "
             "still exists"))


def resolve_chain(checkpoint: Path) -> Chain:
    checkpoint = Path(checkpoint).expanduser().resolve()
    if not checkpoint.exists():
        raise ExportRefused("no such checkpoint directory", path=checkpoint,
                            fix="pass the path of an adapter or model directory")
    try:
        manifest = manifest_io.read(checkpoint)
    except ValueError as exc:
        raise ExportRefused(f"unreadable {manifest_io.MANIFEST} ({exc})", path=checkpoint) from exc
    if manifest is not None and manifest.status != "complete":
        raise ExportRefused(
            f"the checkpoint is {manifest.status} (its stage did not finish writing it)",
            path=checkpoint, fix="export a complete checkpoint, or resume the run first")

    if is_adapter_dir(checkpoint):
        reference = _adapter_base_reference(checkpoint, manifest)
        if not reference:
            raise ExportRefused("the adapter does not say which base it applies to",
                                path=checkpoint / ADAPTER_CONFIG,
                                fix="set base_model_name_or_path to the base model's directory")
        base = locate(reference, checkpoint)
        if not base.exists():
            raise _refuse_missing(base, reference, checkpoint)
        if is_adapter_dir(base):
            raise ExportRefused(
                f"the base {base} is itself an adapter; an adapter applies to a full model",
                path=checkpoint, fix="merge the base adapter first (a `merge` stage), then export")
        if not (base / MODEL_CONFIG).is_file():
            raise ExportRefused(f"the base {base} has no {MODEL_CONFIG}", path=checkpoint,
                                fix="point the adapter at a full model directory")
        if weight_files(base) is None:
            raise ExportRefused(
                f"the base {base} has no safetensors weights ({MODEL_SAFETENSORS} or "
                f"{MODEL_SAFETENSORS_INDEX}); it holds {folder_files(base).describe()}",
                path=checkpoint,
                fix="re-save the base with save_pretrained(safe_serialization=True)")
        kind: Literal["adapter", "model"] = "adapter"
        adapter: Path | None = checkpoint
    elif is_model_dir(checkpoint):
        base, adapter, kind = checkpoint, None, "model"
    else:
        files = folder_files(checkpoint)
        raise ExportRefused(
            f"not a checkpoint: neither {ADAPTER_CONFIG} nor {MODEL_CONFIG} with safetensors "
            f"weights; it holds {files.describe()}", path=checkpoint,
            fix="re-save the model with save_pretrained(safe_serialization=True)"
            if files.is_model else "pass an adapter or full model directory")
    return Chain(checkpoint, kind, base, adapter, manifest, lineage(checkpoint))


def _numbers(data: Any) -> dict[str, float]:
    if not isinstance(data, dict):
        return {}
    return {str(k): float(v) for k, v in data.items()
            if isinstance(v, int | float) and not isinstance(v, bool)}


def _json_numbers(path: Path) -> dict[str, float]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return {}
    flat = _numbers(data)
    if not flat and isinstance(data, dict):  # e.g. {"summary": {...}} or {"final": {...}}
        for value in data.values():
            flat.update(_numbers(value))
    return flat


def _node(path: Path, relation: str | None) -> tuple[LineageNode, list[tuple[str, Path]]]:
    """One lineage node and the (relation, path) edges to its ancestors."""
    exists = path.exists()
    try:
        found = manifest_io.read(path) if exists else None
    except ValueError:
        found = None
    edges: list[tuple[str, Path]] = []
    if found is not None:
        for parent in found.parents:
            edges.append((parent.relation, locate(parent.path, path)))
        if found.base and not any(p == locate(found.base, path) for _, p in edges):
            edges.append(("trained_on", locate(found.base, path)))
        node = LineageNode(
            path=str(path), kind=found.kind, id=found.id, name=found.name, stage=found.stage,
            stage_kind=found.stage_kind, run=found.run, relation=relation,
            metrics=dict(found.metrics) or _json_numbers(path / manifest_io.METRICS),
            evaluation=dict(found.evaluation) or _json_numbers(path / manifest_io.EVALUATION),
            lora=found.lora.model_dump() if found.lora else None, exists=True)
        return node, edges
    kind = "adapter" if exists and is_adapter_dir(path) else "base"
    lora = None
    if kind == "adapter":
        try:
            config = read_adapter_config(path)
        except ExportRefused:
            config = {}
        if config.get("base_model_name_or_path"):
            edges.append(("trained_on", locate(config["base_model_name_or_path"], path)))
        lora = {k: config.get(k) for k in ("r", "lora_alpha", "target_modules", "use_rslora")}
    node = LineageNode(path=str(path), kind=kind, relation=relation, lora=lora, exists=exists,
                       metrics=_json_numbers(path / manifest_io.METRICS) if exists else {},
                       evaluation=_json_numbers(path / manifest_io.EVALUATION) if exists else {})
    return node, edges


def lineage(checkpoint: Path, *, limit: int = 64) -> tuple[LineageNode, ...]:
    """The checkpoint's ancestors, root first (a topological order of the DAG), itself last."""
    order: list[LineageNode] = []
    seen: set[Path] = set()

    def visit(path: Path, relation: str | None, depth: int) -> None:
        if path in seen or depth > limit:
            return
        seen.add(path)
        node, edges = _node(path, relation)
        for edge_relation, parent in edges:
            visit(parent, edge_relation, depth + 1)
        order.append(node)

    visit(Path(checkpoint).resolve(), None, 0)
    return tuple(order)

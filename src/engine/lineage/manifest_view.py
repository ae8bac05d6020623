"""A read-only view of a `graftline.json` for the lineage scanner, built without pydantic.

Scanning thousands of manifests is on the console's refresh path; validating each through the
pydantic model costs more than reading it. `view` checks the fields the lineage uses by hand and
falls back to `Manifest.model_validate` for anything unusual, so the result always means what
the model means; a manifest the model rejects gives None.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, NamedTuple, get_args

from graftline.engine.lineage.manifest import Kind, Manifest, Relation, Status
from graftline.engine.lineage.model import ExportInfo, LoraInfo

_KINDS = frozenset(get_args(Kind))
_RELATIONS = frozenset(get_args(Relation))
_STATUSES = frozenset(get_args(Status))


class ParentRef(NamedTuple):
    relation: Relation  # only known relations are read (see _RELATIONS)
    path: str
    id: str | None
    foreign: bool = False  # a checkpoint made outside graftline that a stage started from


@dataclass(frozen=True, slots=True)
class ManifestView:
    id: str
    kind: str
    name: str = ""
    parents: tuple[ParentRef, ...] = ()
    base: str | None = None
    stage: str | None = None
    run: str | None = None
    lora: LoraInfo | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    evaluation: dict[str, float] = field(default_factory=dict)
    status: str = "partial"
    created: str | None = None
    export: ExportInfo | None = None  # kind export: formats, dtype, verification


def view(data: Any) -> ManifestView | None:
    """The lineage's view of parsed manifest JSON; None when the manifest model rejects it."""
    if not isinstance(data, dict):
        return None
    try:
        return _fast(data)
    except (TypeError, ValueError, KeyError, AttributeError):
        pass
    try:
        m = Manifest.model_validate(data)
    except ValueError:
        return None
    lora = None
    if m.lora is not None:
        targets = m.lora.target_modules
        lora = LoraInfo(m.lora.r, m.lora.alpha,
                        tuple(targets) if isinstance(targets, list) else targets, m.lora.dropout)
    return ManifestView(
        id=m.id, kind=m.kind, name=m.name,
        parents=tuple(ParentRef(p.relation, p.path, p.id, p.foreign) for p in m.parents),
        base=m.base, stage=m.stage, run=m.run, lora=lora, metrics=dict(m.metrics),
        evaluation=dict(m.evaluation), status=m.status, created=m.created,
        export=export_info(m.model_dump(mode="json")) if m.kind == "export" else None,
    )


def _opt_str(data: dict[str, Any], key: str) -> str | None:
    value = data.get(key)
    if value is not None and not isinstance(value, str):
        raise TypeError(key)
    return value


def _numbers(value: Any) -> dict[str, float]:
    if value is None:
        return {}
    if not isinstance(value, dict) or not all(
        isinstance(v, int | float) and not isinstance(v, bool) for v in value.values()
    ):
        raise TypeError("numbers")
    return {k: float(v) for k, v in value.items()}


def _fast(data: dict[str, Any]) -> ManifestView:
    kind, status, manifest_id = data["kind"], data.get("status", "partial"), data["id"]
    if kind not in _KINDS or status not in _STATUSES or not isinstance(manifest_id, str):
        raise ValueError("kind/status/id")
    parents = []
    for p in data.get("parents") or ():
        relation, path, pid = p["relation"], p["path"], p.get("id")
        if relation not in _RELATIONS or not isinstance(path, str):
            raise ValueError("parent")
        if pid is not None and not isinstance(pid, str):
            raise TypeError("parent id")
        parents.append(ParentRef(relation, path, pid, p.get("foreign") is True))
    lora = None
    raw = data.get("lora")
    if raw is not None:
        r, alpha = raw["r"], raw["alpha"]
        targets = raw.get("target_modules", "all-linear")
        if type(r) is not int or type(alpha) is not int:
            raise TypeError("lora")
        if not isinstance(targets, str | list):
            raise TypeError("targets")
        lora = LoraInfo(r, alpha, tuple(targets) if isinstance(targets, list) else targets,
                        float(raw.get("dropout", 0.0)))
    return ManifestView(
        id=manifest_id, kind=kind, name=_opt_str(data, "name") or "", parents=tuple(parents),
        base=_opt_str(data, "base"), stage=_opt_str(data, "stage"), run=_opt_str(data, "run"),
        lora=lora, metrics=_numbers(data.get("metrics")),
        evaluation=_numbers(data.get("evaluation")), status=status,
        created=_opt_str(data, "created"),
        export=export_info(data) if kind == "export" else None,
    )


def export_info(data: dict[str, Any]) -> ExportInfo:
    """An export's own record, read leniently: a field of an unexpected shape is left out
    (shown as unknown), never a reason to drop the export from the lineage."""
    checks = {c.get("name"): c for c in data.get("checks") or () if isinstance(c, dict)}
    # the streaming export's logit check, or the plain export stage's (a bare base, no adapter)
    logits = checks.get("export_logits") or checks.get("export_equal")
    gguf = checks.get("gguf_tensors")
    formats = data.get("formats")
    words = data.get("warnings")
    return ExportInfo(
        formats=tuple(str(f) for f in formats) if isinstance(formats, list) and formats
        else ("safetensors",),
        dtype=data.get("dtype") if isinstance(data.get("dtype"), str) else None,
        verified=None if logits is None else logits.get("status") == "pass",
        verification=str(logits.get("message") or "") if logits is not None else "",
        gguf=None if gguf is None else
        f"{'verified' if gguf.get('status') == 'pass' else 'NOT verified'}: "
        f"{gguf.get('message') or ''}".rstrip(": "),
        warnings=tuple(str(w) for w in words) if isinstance(words, list) else (),
    )

"""graftline.engine.lineage: the checkpoint DAG, read from disk, and the cleanup planned on it.

    lineage = scan([runs_dir])           # read-only walk: manifests, adapter configs, stats
    lineage.needs(key)                   # its whole base chain: what it needs to load/export
    lineage.needed_by(key)               # what would break without it
    plan_cleanup(lineage, rules)         # pure: what to delete, what is protected and why
    execute(plan, ...)                   # journaled deletion inside the roots only

Modules: model (frozen nodes and edges), reader (`scan`: the walk), forensics (hand-made
merges and TRL references proven from the bytes), cached_reads (JSON and safetensors headers
cached by mtime), views (tree and JSON), manifest (graftline.json), manifest_view, cleanup
(planner and executor), keep_select (what a keep word selects), journal (the cleanup journal
and history), resolve (the one resolver for a recorded base, used by lineage, cleanup, export
and the runner).
"""

from __future__ import annotations

from graftline.engine.common.lazy import lazy_exports

_EXPORTS = {
    "model": "model",
    "Edge": "model",
    "Lineage": "model",
    "LoraInfo": "model",
    "Node": "model",
    "Symlink": "model",
    "NEEDED_RELATIONS": "model",
    "reader": "reader",
    "scan": "reader",
    "ScanError": "reader",
    "views": "views",
    "primary_parent": "views",
    "node_json": "views",
    "to_json": "views",
    "journal": "journal",
    "removed_by": "journal",
    "read_history": "journal",
    "cleanup": "cleanup",
    "CleanupError": "cleanup",
    "CleanupPlan": "cleanup",
    "KeepRule": "cleanup",
    "parse_keep": "cleanup",
    "plan_cleanup": "cleanup",
    "execute": "cleanup",
    "format_plan": "cleanup",
    "describe": "cleanup",
    "resolve": "resolve",
    "resolve_base": "resolve",
    "manifest": "manifest",
    "Manifest": "manifest",
    "manifest_view": "manifest_view",
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)

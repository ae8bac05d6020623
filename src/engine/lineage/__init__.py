"""graftline.engine.lineage: the checkpoint DAG, read from disk, and the cleanup planned on it.

    lineage = scan([runs_dir])           # read-only walk: manifests, adapter configs, stats
    lineage.needs(key)                   # its whole base chain: what it needs to load/export
    lineage.needed_by(key)               # what would break without it
    plan_cleanup(lineage, rules)         # pure: what to delete, what is protected and why
    execute(plan, ...)                   # journaled deletion inside the roots only

Modules: model (frozen nodes and edges), reader (`scan`: the walk), forensics (hand-made
merges and TRL references proven from the bytes), cached_reads (JSON and safetensors headers
cached by mtime), checkpoint_metrics (the numbers kept with a checkpoint), views (tree and
JSON), manifest (graftline.json), manifest_view, cleanup (planner and executor), keep_select
(what a keep word selects), journal (the cleanup journal and history), resolve (the one
resolver for a recorded base, used by lineage, cleanup, export and the runner).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from graftline.engine.common.lazy import lazy_exports

if TYPE_CHECKING:  # what mypy sees through the lazy surface (lazy_exports at run time)
    from graftline.engine.lineage import cleanup as cleanup
    from graftline.engine.lineage import journal as journal
    from graftline.engine.lineage import manifest as manifest
    from graftline.engine.lineage import manifest_view as manifest_view
    from graftline.engine.lineage import model as model
    from graftline.engine.lineage import reader as reader
    from graftline.engine.lineage import resolve as resolve
    from graftline.engine.lineage import views as views
    from graftline.engine.lineage.cleanup import (
        CleanupError as CleanupError,
    )
    from graftline.engine.lineage.cleanup import (
        CleanupPlan as CleanupPlan,
    )
    from graftline.engine.lineage.cleanup import (
        CleanupResult as CleanupResult,
    )
    from graftline.engine.lineage.cleanup import (
        KeepRule as KeepRule,
    )
    from graftline.engine.lineage.cleanup import (
        describe as describe,
    )
    from graftline.engine.lineage.cleanup import (
        execute as execute,
    )
    from graftline.engine.lineage.cleanup import (
        finish_pending as finish_pending,
    )
    from graftline.engine.lineage.cleanup import (
        format_plan as format_plan,
    )
    from graftline.engine.lineage.cleanup import (
        parse_keep as parse_keep,
    )
    from graftline.engine.lineage.cleanup import (
        pending_cleanup as pending_cleanup,
    )
    from graftline.engine.lineage.cleanup import (
        plan_cleanup as plan_cleanup,
    )
    from graftline.engine.lineage.journal import (
        read_history as read_history,
    )
    from graftline.engine.lineage.journal import (
        removed_by as removed_by,
    )
    from graftline.engine.lineage.manifest import Manifest as Manifest
    from graftline.engine.lineage.manifest import read as read_manifest  # noqa: F401
    from graftline.engine.lineage.model import (
        NEEDED_RELATIONS as NEEDED_RELATIONS,
    )
    from graftline.engine.lineage.model import (
        Edge as Edge,
    )
    from graftline.engine.lineage.model import (
        Lineage as Lineage,
    )
    from graftline.engine.lineage.model import (
        LoraInfo as LoraInfo,
    )
    from graftline.engine.lineage.model import (
        Node as Node,
    )
    from graftline.engine.lineage.model import (
        Symlink as Symlink,
    )
    from graftline.engine.lineage.reader import ScanError as ScanError
    from graftline.engine.lineage.reader import scan as scan
    from graftline.engine.lineage.resolve import resolve_base as resolve_base
    from graftline.engine.lineage.views import (
        node_json as node_json,
    )
    from graftline.engine.lineage.views import (
        primary_parent as primary_parent,
    )
    from graftline.engine.lineage.views import (
        to_json as to_json,
    )


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
    "CleanupResult": "cleanup",
    "finish_pending": "cleanup",
    "pending_cleanup": "cleanup",
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
    "read_manifest": "manifest:read",
    "manifest_view": "manifest_view",
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)

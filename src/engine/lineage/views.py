"""The lineage as people read it: a tree (each node under the parent that tells its story) and
plain JSON for `graftline lineage --json`."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from graftline.engine.lineage.model import Edge, Lineage, Node

__all__ = ["node_json", "primary_parent", "to_json"]

# Which parent a node is drawn under in a tree: the one that best tells its story.
_PRIMARY = ("continued_from", "merged_from", "trained_on", "combined_from", "exported_from")


def primary_parent(lineage: Lineage, key: str) -> Edge | None:
    """The edge a tree view hangs `key` under (the others are listed as "also").

    For a merge, the adapter that went in is preferred over the base it went into.
    """
    edges = lineage.parents(key)
    if not edges:
        return None

    def rank(edge: Edge) -> tuple[int, int]:
        parent = lineage.get(edge.parent)
        full = parent is not None and parent.kind in ("base", "merged", "export", "external")
        return (_PRIMARY.index(edge.relation), 1 if full and edge.relation == "merged_from" else 0)

    return min(edges, key=rank)


def node_json(node: Node, lineage: Lineage) -> dict[str, Any]:
    data = asdict(node)
    data["metrics"] = dict(node.metrics)
    data["warnings"] = list(node.warnings)
    data["needs"] = list(lineage.needs(node.key))
    data["needed_by"] = list(lineage.needed_by(node.key))
    return data


def to_json(lineage: Lineage) -> dict[str, Any]:
    """The lineage as plain JSON-ready data (`graftline lineage --json`)."""
    return {
        "roots": list(lineage.roots),
        "nodes": [node_json(node, lineage) for node in lineage.nodes],
        "edges": [asdict(edge) for edge in lineage.edges],
        "symlinks": [asdict(link) for link in lineage.symlinks],
        "broken": [node.key for node in lineage.broken()],
        "interrupted_cleanups": list(lineage.journals),
    }

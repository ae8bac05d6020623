"""The checkpoint lineage as pure data: nodes, edges, and the questions cleanup asks of them.

Everything here is frozen and side-effect free, so the console can hold a `Lineage` between
scans and the cleanup planner (and its property tests) can build one without touching disk.

Node keys are absolute paths (real paths, since roots are resolved before scanning), or
`hub:<id>` for a hub model that is not on this machine. A base that an adapter names but that
no longer exists is a node too (kind `missing`), so "broken" is visible in the graph itself.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Literal

NodeKind = Literal[
    "base",  # a full model with no known parent
    "adapter",  # a LoRA adapter (PEFT directory)
    "merged",  # a full model made by merging an adapter into its base
    "combined",  # a weighted combination of adapters
    "export",  # a final, self-contained model written by export
    "trainer",  # a Trainer intermediate checkpoint (checkpoint-N)
    "external",  # a hub id: not on this machine, never ours to delete
    "missing",  # a path some checkpoint names that no longer exists
]
Relation = Literal["trained_on", "continued_from", "merged_from", "combined_from", "exported_from"]
EdgeSource = Literal["manifest", "config", "inferred"]

# What a kept checkpoint needs to load or export: its base (trained_on), and for a merged model
# the base and adapter it was merged from, because export rebuilds the chain on the original
# full-precision base (never on a dequantized copy). continued_from / combined_from /
# exported_from are provenance only: the child's weights already hold everything.
NEEDED_RELATIONS: frozenset[str] = frozenset({"trained_on", "merged_from"})


@dataclass(frozen=True, slots=True)
class LoraInfo:
    r: int | None
    alpha: float | None
    target_modules: tuple[str, ...] | str | None = None
    dropout: float | None = None


@dataclass(frozen=True, slots=True)
class InMemoryMerge:
    """An adapter whose config may name a base it was not trained on (a merge done in memory):
    proven from a saved merge's weights, suspected from one written before it, or unproven
    (several hand-made adapters on one base, one after another: nothing on disk can tell)."""

    certainty: Literal["proven", "suspected", "unproven"]
    message: str
    fix: str
    # unproven: the recorded base and the adapters written on it before this one, in order
    # (what `--check-data` merges to decide it)
    base: str | None = None
    chain: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class ExportInfo:
    """What an export recorded about itself (its `graftline.json`): how it was written and
    whether reloading it reproduced the model it came from."""

    formats: tuple[str, ...] = ("safetensors",)
    dtype: str | None = None
    verified: bool | None = None  # None: no verification recorded (--no-verify, or cut short)
    verification: str = ""  # the check's message, e.g. "max |logit diff| 2e-05 ≤ 0.001"
    gguf: str | None = None  # the GGUF check's message, when one was written
    warnings: tuple[str, ...] = ()  # what the export said when it was planned

    def describe(self) -> str:
        """One line: formats, dtype and the verdict."""
        if self.verified is True:
            verdict = "verified" + (f" ({self.verification})" if self.verification else "")
        elif self.verified is False:
            verdict = "NOT verified" + (f": {self.verification}" if self.verification else "")
        else:
            verdict = "no verification recorded"
        parts = ["+".join(self.formats), self.dtype or "?", verdict]
        if self.gguf:
            parts.append(f"GGUF {self.gguf}")
        return ", ".join(parts)


@dataclass(frozen=True, slots=True)
class Node:
    """One checkpoint (or a model a checkpoint refers to).

    `bytes` counts only this node's own files: a checkpoint nested inside another (a Trainer
    `checkpoint-N` under a stage directory) is its own node, so sizes add up without overlap.
    """

    key: str
    id: str
    kind: NodeKind
    name: str
    path: str | None = None  # None for hub ids
    source: str = "graftline"  # graftline | peft | transformers | trainer | hub | missing
    bytes: int = 0
    created: str | None = None
    written: float = 0.0  # newest mtime of the node's top-level files (orders hand-made nodes)
    stage: str | None = None
    run: str | None = None
    run_dir: str | None = None
    lora: LoraInfo | None = None
    metrics: Mapping[str, float] = field(default_factory=dict)
    status: str = "unknown"  # partial | complete | failed | unknown
    step: int | None = None  # Trainer checkpoints: N of checkpoint-N
    base_ref: str | None = None  # what adapter_config.json names, verbatim
    in_roots: bool = True  # False: outside every scanned root, never deleted
    running: bool = False  # belongs to a run whose engine is alive
    broken: str | None = None  # why it can no longer be loaded or exported
    warnings: tuple[str, ...] = ()
    # the in-memory-merge pitfall as data (its words are in `warnings`): proven from weights or
    # suspected from write order, with its message and fix, for export and validate to act on
    in_memory_merge: InMemoryMerge | None = None
    removed_by: str | None = None  # kind == missing: "cleanup <id> at <time>" when known
    # Made outside graftline, and these stages (`run/stage`) started from it (`from` a path):
    # never deleted by cleanup, it is not a run's to delete (docs/bring-your-own.md).
    started: tuple[str, ...] = ()
    # kind == export: its formats and verification, read from its manifest
    export: ExportInfo | None = None


@dataclass(frozen=True, slots=True)
class Edge:
    """`child` was made from `parent` by `relation`."""

    child: str
    parent: str
    relation: Relation
    source: EdgeSource = "manifest"


@dataclass(frozen=True)
class Symlink:
    """A symlink met while scanning: reported, never traversed, never deleted through."""

    path: str
    target: str
    outside: bool  # True when it resolves outside every root (or dangles)


@dataclass(frozen=True)
class Lineage:
    roots: tuple[str, ...]
    nodes: tuple[Node, ...]
    edges: tuple[Edge, ...]
    symlinks: tuple[Symlink, ...] = ()
    journals: tuple[str, ...] = ()  # unfinished cleanup journals found in the roots
    _index: Mapping[str, Node] = field(init=False, repr=False, compare=False)
    _up: Mapping[str, tuple[Edge, ...]] = field(init=False, repr=False, compare=False)
    _down: Mapping[str, tuple[Edge, ...]] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        index = {node.key: node for node in self.nodes}
        up: dict[str, list[Edge]] = {}
        down: dict[str, list[Edge]] = {}
        for edge in self.edges:
            up.setdefault(edge.child, []).append(edge)
            down.setdefault(edge.parent, []).append(edge)
        object.__setattr__(self, "_index", MappingProxyType(index))
        object.__setattr__(self, "_up", MappingProxyType({k: tuple(v) for k, v in up.items()}))
        object.__setattr__(self, "_down", MappingProxyType({k: tuple(v) for k, v in down.items()}))

    def node(self, key: str) -> Node:
        return self._index[key]

    def get(self, key: str) -> Node | None:
        return self._index.get(key)

    def __contains__(self, key: object) -> bool:
        return key in self._index

    def parents(self, key: str) -> tuple[Edge, ...]:
        """Edges from `key` up to what it was made from."""
        return self._up.get(key, ())

    def children(self, key: str) -> tuple[Edge, ...]:
        """Edges from what was made from `key`."""
        return self._down.get(key, ())

    def needs(self, key: str) -> tuple[str, ...]:
        """Every node `key` needs to load or export (its whole base chain), nearest first."""
        return tuple(_closure([key], self._up, up=True))

    def needed_by(self, key: str) -> tuple[str, ...]:
        """Every node that needs `key` (directly or through its chain)."""
        return tuple(_closure([key], self._down, up=False))

    def broken(self) -> tuple[Node, ...]:
        return tuple(node for node in self.nodes if node.broken)

    def find(self, token: str) -> tuple[str, ...]:
        """Keys of the nodes a user's word names: an id, a key/path, or a node name."""
        if token in self._index:
            return (token,)
        by_id = tuple(n.key for n in self.nodes if n.id == token)
        if by_id:
            return by_id
        return tuple(n.key for n in self.nodes if n.name == token and n.kind != "missing")


def _closure(
    start: Iterable[str], links: Mapping[str, tuple[Edge, ...]], *, up: bool
) -> list[str]:
    seen: set[str] = set(start)
    order: list[str] = []
    queue = deque(start)
    while queue:
        key = queue.popleft()
        for edge in links.get(key, ()):
            if edge.relation not in NEEDED_RELATIONS:
                continue
            other = edge.parent if up else edge.child
            if other not in seen:
                seen.add(other)
                order.append(other)
                queue.append(other)
    return order


def need_links(lineage: Lineage) -> Mapping[str, tuple[Edge, ...]]:
    """The upward edges, for callers computing closures over many starts at once."""
    return lineage._up

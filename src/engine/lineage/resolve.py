"""The one resolver for a recorded base: what `base_model_name_or_path` (or a manifest's `base`)
names, as a path on this machine, a hub id, or a base that is missing.

Scripts record bases in several ways: an absolute path, a path relative to the folder the script
ran in ("base", "../models/base"), `~/…`, graftline's `toy:` names, or a hub id. A relative path
is therefore tried against the adapter's own folder and then each folder above it, nearest first,
up to the scan root (or the filesystem root when there is none), then against each scan root and
the current folder. Only then is it a hub id (when it looks like one), else missing. So an
adapter that records "base" resolves to the same folder whether a scan starts in the tree's
folder or in its parent, and lineage, cleanup, export, the runner and the size estimates all
agree on which base an adapter needs.

Pure apart from `stat` calls (and, for hub ids, a look in the local Hugging Face cache): no
weights are read, nothing is written.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from graftline.engine.common.checkpoint_files import MODEL_CONFIG
from graftline.engine.toy.named import TOY_SCHEME

__all__ = ["Resolved", "candidates", "looks_like_hub_id", "resolve_base"]

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.\-]*(/[\w.\-]+)?$")


@dataclass(frozen=True)
class Resolved:
    """Where a recorded base reference points.

    kind: `path` (an existing directory; `path` is its real path), `hub` (a hub id not on this
    machine as a folder; `path` is its local cache folder when cached), or `missing` (`path` is
    where the nearest spelling would have been).
    """

    ref: str
    kind: Literal["path", "hub", "missing"]
    path: str | None
    tried: tuple[str, ...] = ()

    @property
    def exists(self) -> bool:
        return self.path is not None and os.path.isdir(self.path)


def looks_like_hub_id(ref: str) -> bool:
    """`org/name` or `name`, and not spelled like a path (no leading `.`, `/` or `~`)."""
    return not ref.startswith((".", "/", "~")) and bool(_HUB_ID.match(ref))


def _up_to(start: str, roots: Sequence[str]) -> list[str]:
    """`start` and each folder above it, up to the root that holds it (inclusive), nearest
    first; up to (not including) `/` when no root holds it."""
    start = os.path.abspath(start)
    stop = None
    for root in sorted(roots, key=len, reverse=True):
        if start == root or start.startswith(root.rstrip(os.sep) + os.sep):
            stop = root
            break
    folders: list[str] = []
    current = start
    while True:
        folders.append(current)
        if stop is not None and current == stop:
            break
        parent = os.path.dirname(current)
        if parent == current or (stop is None and parent == os.sep):
            break
        current = parent
    return folders


def candidates(ref: str, where: str | Path, roots: Iterable[str | Path] = (), *,
               use_cwd: bool = True) -> list[str]:
    """Every path `ref` may mean when recorded in folder `where`, in the order they are tried
    (normalised, not resolved: the caller decides what exists)."""
    expanded = os.path.expanduser(ref)
    if os.path.isabs(expanded):
        return [os.path.normpath(expanded)]
    root_list = [os.path.abspath(str(r)) for r in roots]
    bases = [*_up_to(str(where), root_list), *root_list]
    if use_cwd:
        bases.append(os.getcwd())
    out: list[str] = []
    for base in bases:
        path = os.path.normpath(os.path.join(base, expanded))
        if path not in out:
            out.append(path)
    return out


def _hub_cache_dir(name: str) -> str | None:
    """A hub id already in the local Hugging Face cache (nothing is downloaded)."""
    if name.count("/") != 1:
        return None
    try:
        from huggingface_hub import try_to_load_from_cache

        found = try_to_load_from_cache(name, MODEL_CONFIG)
    except Exception:  # no hub library, or a cache it cannot read: not cached
        return None
    return os.path.dirname(found) if isinstance(found, str) else None


def resolve_base(ref: str, where: str | Path, *, roots: Iterable[str | Path] = (),
                 use_cwd: bool = True, hub_cache: bool = True) -> Resolved:
    """Resolve `ref`, recorded by the checkpoint in folder `where` (see the module doc)."""
    if ref.startswith(TOY_SCHEME):
        # Where the toy base's build lives (toy.recipe: no torch). Reading lineage never builds
        # one: an absent build is a missing base, like any other.
        from graftline.engine.toy.recipe import base_dir, default_recipe

        path = str(base_dir(default_recipe(tied="tied=1" in ref)))
        return Resolved(ref, "path", os.path.realpath(path), (path,))
    tried = candidates(ref, where, roots, use_cwd=use_cwd)
    for path in tried:
        if os.path.isdir(path):
            return Resolved(ref, "path", os.path.realpath(path), tuple(tried))
    if looks_like_hub_id(ref):
        cached = _hub_cache_dir(ref) if hub_cache else None
        return Resolved(ref, "hub", cached, tuple(tried))
    return Resolved(ref, "missing", tried[0] if tried else None, tuple(tried))

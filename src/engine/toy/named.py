"""`toy:addition` → the built-in base's directory, the one name a pipeline file gives it.

A verified base already in the cache is found from its record alone, without importing torch or
transformers: an engine that only launches process groups (every rank loads the model itself)
then starts its first group seconds sooner. Only a base not yet in the cache imports the model
code, to copy the shipped bytes or build it.
"""

from __future__ import annotations

import sys
from pathlib import Path

from graftline.engine.toy.recipe import base_dir, default_recipe, verified

TOY_SCHEME = "toy:"


def built_toy_base(base: str, *, cache: Path | None = None) -> str:
    """`toy:addition` (optionally `toy:addition?tied=1`) names the built-in tiny model: its
    directory, built (or copied from the shipped bytes) on first use; anything else is returned
    unchanged (a local path or a hub id: `lineage.resolve_base` resolves those)."""
    if not base.startswith(TOY_SCHEME):
        return base
    recipe = default_recipe(tied="tied=1" in base)
    target = base_dir(recipe, cache)
    if verified(target, recipe) is not None:
        return str(target)
    from graftline.engine.toy.model import build_base

    return str(build_base(recipe, cache=cache, log=_to_stderr))


def _to_stderr(line: str) -> None:
    # the engine's stderr is its engine.log: a first build's attempts are seen there
    print(line, file=sys.stderr, flush=True)


__all__ = ["TOY_SCHEME", "built_toy_base"]

"""Offline toy models and data: a tiny Llama that really learns two-digit addition on CPU.

    build_base()        # the cached base, built once and self-checked (≥ 95% held-out match)
    describe_base()     # one line on it from its record, without importing torch
    resolve_base(name)  # `toy:addition` → the base's directory; anything else unchanged

Modules: recipe (ToyRecipe, Fallback, the record; no torch), model (building and asking the
model), tasks (the addition task), tokenizer, files (the example datasets), measure (seeds on this
machine: `python -m graftline.engine.toy.measure 0 1 2 3 4`).
"""

from __future__ import annotations

from graftline.engine.common.lazy import lazy_exports

_EXPORTS = {
    "recipe": "recipe",
    "BaseRecord": "recipe",
    "Fallback": "recipe",
    "ToyBaseTooWeak": "recipe",
    "ToyRecipe": "recipe",
    "default_recipe": "recipe",
    "describe_base": "recipe",
    "read_record": "recipe",
    "model": "model",
    "accuracy": "model",
    "build_base": "model",
    "resolve_base": "model",
    "tasks": "tasks",
    "tokenizer": "tokenizer",
    "files": "files",
    "measure": "measure",
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)

"""Offline toy models and data: a tiny Llama that really learns two-digit addition on CPU.

    build_base()        # the cached base: the shipped bytes copied in, or built and self-checked
    describe_base()     # one line on it from its record, without importing torch
    resolve_base(name)  # `toy:addition` → the base's directory; anything else unchanged

Modules: recipe (ToyRecipe, Fallback, the record; no torch), model (building and asking the
model), shipped (the bases that ship as package data, bases/<key>/, and how they are rebuilt),
pinned_math (the CPU math path for graftline's own training), tasks (the addition task),
tokenizer, files (the example datasets), measure (seeds on this machine:
`python -m graftline.engine.toy.measure 0 1 2 3 4`).
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
    "pinned_math": "pinned_math",
    "pin_math": "pinned_math",
    "shipped": "shipped",
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)

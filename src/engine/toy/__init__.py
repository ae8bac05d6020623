"""Offline toy models and data: a tiny Llama that really learns two-digit addition on CPU.

    build_base()        # the cached base: the shipped bytes copied in, or built and self-checked
    describe_base()     # one line on it from its record, without importing torch
    built_toy_base(name)  # `toy:addition` → the base's directory; anything else unchanged

Modules: recipe (ToyRecipe, Fallback, the record; no torch), named (`toy:addition` → its
directory; no torch once the base is cached), model (building and asking the
model), shipped (the bases that ship as package data, bases/<key>/, and how they are rebuilt),
pinned_math (the CPU math path for graftline's own training), tasks (the addition task),
tokenizer, files (the example datasets), measure (seeds on this machine:
`python -m graftline.engine.toy.measure 0 1 2 3 4`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from graftline.engine.common.lazy import lazy_exports

if TYPE_CHECKING:  # what mypy sees through the lazy surface (lazy_exports at run time)
    from graftline.engine.toy import files as files
    from graftline.engine.toy import measure as measure
    from graftline.engine.toy import model as model
    from graftline.engine.toy import named as named
    from graftline.engine.toy import pinned_math as pinned_math
    from graftline.engine.toy import recipe as recipe
    from graftline.engine.toy import shipped as shipped
    from graftline.engine.toy import tasks as tasks
    from graftline.engine.toy import tokenizer as tokenizer
    from graftline.engine.toy.files import write_jsonl as write_jsonl
    from graftline.engine.toy.model import accuracy as accuracy
    from graftline.engine.toy.model import build_base as build_base
    from graftline.engine.toy.named import built_toy_base as built_toy_base
    from graftline.engine.toy.pinned_math import pin_math as pin_math
    from graftline.engine.toy.recipe import BaseRecord as BaseRecord
    from graftline.engine.toy.recipe import Fallback as Fallback
    from graftline.engine.toy.recipe import ToyBaseTooWeak as ToyBaseTooWeak
    from graftline.engine.toy.recipe import ToyRecipe as ToyRecipe
    from graftline.engine.toy.recipe import default_recipe as default_recipe
    from graftline.engine.toy.recipe import describe_base as describe_base
    from graftline.engine.toy.recipe import read_record as read_record
    from graftline.engine.toy.tasks import eval_rows as eval_rows
    from graftline.engine.toy.tasks import grpo_rows as grpo_rows
    from graftline.engine.toy.tasks import preference_rows as preference_rows
    from graftline.engine.toy.tasks import sft_rows as sft_rows


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
    "named": "named",
    "accuracy": "model",
    "build_base": "model",
    "built_toy_base": "named",
    "tasks": "tasks",
    "tokenizer": "tokenizer",
    "files": "files",
    "measure": "measure",
    "pinned_math": "pinned_math",
    "pin_math": "pinned_math",
    "shipped": "shipped",
    # the starter's toy data (`graftline init`)
    "sft_rows": "tasks",
    "preference_rows": "tasks",
    "grpo_rows": "tasks",
    "eval_rows": "tasks",
    "write_jsonl": "files",
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)

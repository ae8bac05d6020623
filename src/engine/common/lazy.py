"""Lazy public surfaces: a package names its public API in `__all__` without importing it.

`graftline --help` and the console's first frame must not pay for torch, transformers or peft;
a subpackage's `__init__` maps each public name to the submodule that defines it, and the
submodule is imported on first attribute access (PEP 562).

A surface may name a submodule's function under a name that says what it is where the module's
name no longer does (`atomic_write_text` for `atomic.write_text`): its entry is
`"module:attribute"`.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

__all__ = ["lazy_exports"]


def lazy_exports(package: str, exports: dict[str, str]
                 ) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """`(__getattr__, __dir__)` for `package`, whose `exports` maps a public name to the
    submodule (relative to the package) that defines it, or to `"submodule:attribute"` when the
    public name is not the attribute's own. A name that equals its submodule's name is the
    submodule itself."""

    def __getattr__(name: str) -> Any:
        entry = exports.get(name)
        if entry is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        module, _, attribute = entry.partition(":")
        imported = importlib.import_module(f"{package}.{module}")
        return imported if module == name else getattr(imported, attribute or name)

    def __dir__() -> list[str]:
        return sorted(exports)

    return __getattr__, __dir__

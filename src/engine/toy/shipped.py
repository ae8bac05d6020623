"""The toy bases that ship with graftline: the same bytes on every machine.

A build of the toy recipe takes another floating-point path on each CPU family and can land on
either side of a loss plateau (docs/reproducibility.md), so the base the suite and the demo stand
on is not built where they run: the project's recipe was built once, with the math pinned
(pinned_math.py), and its files ship as package data under `bases/<recipe key>/`, with a
`toy_base.json` record that holds the sha256 of every file. `build_base` installs that copy into
the cache instead of training; a copy whose bytes differ from the record is refused. Any other
recipe (another `GRAFTLINE_TOY_SEED`, a test's short recipe) is built as before.

    python -m graftline.engine.toy.shipped     # rebuild the shipped bases (maintainers only)
"""

from __future__ import annotations

import shutil
import sys
import tempfile
from dataclasses import replace
from pathlib import Path

from graftline.engine.common.errors import GraftlineError
from graftline.engine.common.shipped_files import changed_files, copy_out, install_checked
from graftline.engine.toy.recipe import (
    RECORD,
    SHIPPED_ROOT,
    TIED_TEST_RECIPE,
    BaseRecord,
    ToyRecipe,
    read_record,
)


class ShippedBaseDamaged(GraftlineError):
    """The shipped toy base's files differ from the sha256 its record holds."""


def shipped_recipes() -> list[ToyRecipe]:
    """What ships: `toy:addition` at its default seed, and the export tests' tied base."""
    return [ToyRecipe(), TIED_TEST_RECIPE]


def shipped_dir(recipe: ToyRecipe, root: Path = SHIPPED_ROOT) -> Path | None:
    """The shipped copy of `recipe`'s base, or None when that recipe does not ship."""
    directory = root / recipe.key
    return directory if (directory / RECORD).is_file() else None


def checked_record(directory: Path) -> BaseRecord:
    """The record of a shipped base whose every file matches it; raises ShippedBaseDamaged."""
    record = read_record(directory)
    if record is None or record.origin != "shipped" or not record.files:
        raise ShippedBaseDamaged(f"{directory / RECORD} is missing or holds no file digests",
                                 "reinstall graftline (the shipped toy base is package data)")
    changed = changed_files(directory, record.files)
    if changed:
        raise ShippedBaseDamaged(
            f"the shipped toy base {directory} differs from its record: "
            f"{', '.join(changed)} (sha256 not as recorded)",
            "reinstall graftline, or set GRAFTLINE_TOY_SEED=0 to build the toy base on this "
            "machine instead")
    return record


def install(source: Path, target: Path) -> Path:
    """Copy a checked shipped base to `target` (inside the cache), checked again there."""
    return install_checked(source, target, checked_record)


def ship(recipe: ToyRecipe, root: Path = SHIPPED_ROOT) -> Path:
    """Build `recipe` with the math pinned and write it under `root` with file digests."""
    from graftline.engine.toy.pinned_math import built_with, pin_math

    pins = pin_math()
    import torch

    from graftline.engine.toy.model import build_base

    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as cache:
        built = build_base(recipe, cache=Path(cache), log=print, shipped=None)
        record = read_record(built)
        assert record is not None
        out = root / recipe.key
        files = copy_out(built, out, RECORD)
        shipped = replace(record, origin="shipped", built_with=built_with(pins), files=files)
        (out / RECORD).write_text(shipped.to_json() + "\n")
    return out


def main() -> int:
    keep = {recipe.key for recipe in shipped_recipes()}
    for recipe in shipped_recipes():
        out = ship(recipe)
        print(f"shipped {out}: {checked_record(out).summary()}")
    for stale in SHIPPED_ROOT.iterdir():  # bases of recipes that no longer ship
        if stale.is_dir() and stale.name not in keep:
            shutil.rmtree(stale)
    return 0


if __name__ == "__main__":
    sys.exit(main())

__all__ = ["SHIPPED_ROOT", "ShippedBaseDamaged", "checked_record", "install", "ship",
           "shipped_dir", "shipped_recipes"]

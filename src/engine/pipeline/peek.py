"""A dataset's columns from its first row or its schema, for the validator: never the whole file.

`validate` must answer in the first second for a 5 GB JSONL or parquet file, so this reads one
JSON line, a parquet footer, a CSV header, or a saved dataset's `dataset_info.json`, and imports
neither `datasets` nor torch (the `datasets` library alone costs seconds to import). Only a saved
directory without `dataset_info.json` falls back to the loader in `pipeline.datasets`.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path

from graftline.engine.common.errors import GraftlineError

# Each kind accepts any one of these column sets (TRL's standard and conversational formats).
REQUIRED_COLUMNS: dict[str, tuple[tuple[str, ...], ...]] = {
    "sft": (("prompt", "completion"), ("messages",), ("text",)),
    # preference with an implicit prompt: chosen/rejected share it (TRL's extract_prompt)
    "dpo": (("prompt", "chosen", "rejected"), ("chosen", "rejected")),
    "grpo": (("prompt",),),
    "eval": (("prompt", "completion"), ("messages",), ("text",)),
    "generate": (("prompt",),),
}
_FIRST_LINE_LIMIT = 64 * 1024 * 1024  # a first "row" longer than this is not a JSONL dataset


class PeekError(GraftlineError):
    """The dataset cannot be read far enough to know its columns."""

    fix_in_text = True


def columns(path: Path) -> list[str]:
    """The column names of a JSONL, parquet, CSV file or a `save_to_disk` directory."""
    path = Path(path)
    if path.is_dir():
        return _saved(path)
    suffix = path.suffix.lower()
    try:
        if suffix in (".jsonl", ".json", ".ndjson"):
            return _jsonl(path)
        if suffix in (".parquet", ".pq"):
            import pyarrow.parquet as pq

            return list(pq.read_schema(path).names)
        if suffix == ".csv":
            with path.open(encoding="utf-8", newline="") as handle:
                return next(csv.reader(handle), [])
    except PeekError:
        raise
    except (ValueError, OSError) as exc:
        raise PeekError(f"cannot read: {exc}", "check the file's format") from None
    raise PeekError(f"unknown data format '{suffix or '(no suffix)'}'",
                    "use .jsonl, .parquet, .csv or a directory written by save_to_disk")


def _jsonl(path: Path) -> list[str]:
    with path.open("rb") as handle:
        while True:
            line = handle.readline(_FIRST_LINE_LIMIT)
            if not line:
                raise PeekError("the file is empty", "add rows, one JSON object a line")
            if len(line) >= _FIRST_LINE_LIMIT and not line.endswith(b"\n"):
                raise PeekError("the first line is longer than 64 MiB",
                                "write one JSON object per line (JSON Lines)")
            if line.strip():
                break
    row = json.loads(line)
    if not isinstance(row, dict):
        raise PeekError("the first line is not a JSON object", "write one JSON object per line")
    return list(row)


def _saved(path: Path) -> list[str]:
    split = path
    listing = path / "dataset_dict.json"
    if listing.is_file():
        splits = json.loads(listing.read_text())["splits"]
        split = path / ("train" if "train" in splits else splits[0])
    info = split / "dataset_info.json"
    if info.is_file():
        return list(json.loads(info.read_text()).get("features", {}))
    if not any((split / name).is_file() for name in ("state.json", "dataset_dict.json")):
        raise PeekError(f"{path} is a plain directory, not a dataset saved with "
                        "`save_to_disk` (it has no dataset_info.json, state.json or "
                        "dataset_dict.json)",
                        "point it at a .jsonl, .parquet or .csv file, a glob of them (e.g. "
                        f"\"{path.name}/*.jsonl\"), or a folder written by "
                        "`Dataset.save_to_disk`")
    from graftline.engine.common.errors import GraftlineError
    from graftline.engine.pipeline.datasets import columns_of

    try:
        return columns_of(path)
    except GraftlineError as exc:
        raise PeekError(exc.message, exc.fix) from None


@dataclass(frozen=True)
class Missing:
    """What a dataset lacks for a stage kind: the closest accepted column set and its gaps."""

    kind: str
    wanted: tuple[str, ...]
    missing: tuple[str, ...]
    options: tuple[tuple[str, ...], ...]

    def __str__(self) -> str:
        # an option inside a larger one (dpo's implicit prompt) is said in words, not listed
        shown = [o for o in self.options if not any(set(o) < set(p) for p in self.options)]
        options = ", or ".join("+".join(option) for option in shown)
        implicit = " (`prompt` may be left implicit)" if len(shown) < len(self.options) else ""
        return (f"missing: {', '.join(self.missing)} (a {self.kind} stage needs columns "
                f"{options}{implicit})")


def missing_columns(kind: str, have: list[str]) -> Missing | None:
    """None when `have` fits the stage kind; else the accepted set it comes closest to."""
    options = REQUIRED_COLUMNS.get(kind)
    if options is None:
        return None
    present = set(have)
    if any(set(option) <= present for option in options):
        return None
    # the closest option: most of its columns present, then the fewest missing
    best = max(options, key=lambda o: (len(set(o) & present), -len(o)))
    gaps = tuple(c for c in best if c not in present)
    return Missing(kind, best, gaps, options)

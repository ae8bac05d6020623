"""Loading a stage's data: JSONL, parquet, CSV, or a `save_to_disk` directory.

`columns_of` is cheap (the first JSON line, the parquet schema, the saved features) so the
validator can check every stage's data in the first second; `load_rows` is what a stage trains on.
A `data = "@stage"` reference means the output of a generate stage; the runner turns it into
`<run_dir>/stages/<stage>/data.jsonl` with `resolve_data` before anything is loaded.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import datasets

from graftline.engine.common.layout import RunLayout
from graftline.engine.pipeline.problems import FixableError

GENERATED = "data.jsonl"

# Each kind accepts any one of these column sets (TRL's standard and conversational formats).
REQUIRED_COLUMNS: dict[str, tuple[tuple[str, ...], ...]] = {
    "sft": (("prompt", "completion"), ("messages",), ("text",)),
    "dpo": (("prompt", "chosen", "rejected"),),
    "grpo": (("prompt",),),
    "eval": (("prompt", "completion"), ("messages",), ("text",)),
    "generate": (("prompt",),),
}


class DatasetError(FixableError):
    """Raised with the fix a user needs; see FixableError."""


def resolve_data(ref: str, base_dir: Path, run_dir: Path | None = None) -> Path:
    """`@stage` → that generate stage's output in the run; anything else relative to `base_dir`."""
    if ref.startswith("@"):
        if run_dir is None:
            raise DatasetError(f"'{ref}' names a generate stage's output, which exists only in "
                               "a run",
                               "run the pipeline, or point `data` at a file")
        return RunLayout(Path(run_dir)).stage(ref[1:]) / GENERATED
    path = Path(ref).expanduser()
    return path if path.is_absolute() else (Path(base_dir) / path).resolve()


def _format_of(path: Path) -> str:
    if path.is_dir():
        return "saved"
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".json", ".ndjson"):
        return "jsonl"
    if suffix in (".parquet", ".pq"):
        return "parquet"
    if suffix == ".csv":
        return "csv"
    raise DatasetError(f"{path}: unknown data format '{suffix or '(no suffix)'}'",
                       "use .jsonl, .parquet, .csv or a directory written by save_to_disk")


def _saved_dir(path: Path) -> Path:
    # A DatasetDict directory holds one directory per split; train on `train` (or the only one).
    if (path / "dataset_dict.json").is_file():
        splits = json.loads((path / "dataset_dict.json").read_text())["splits"]
        split = "train" if "train" in splits else splits[0]
        return path / split
    return path


def columns_of(path: Path) -> list[str]:
    path = Path(path)
    if not path.exists():
        raise DatasetError(f"{path}: no such file or directory",
                           "check the path (relative paths are relative to the pipeline file)")
    fmt = _format_of(path)
    try:
        if fmt == "jsonl":
            with path.open(encoding="utf-8") as handle:
                for line in handle:
                    if line.strip():
                        row = json.loads(line)
                        if not isinstance(row, dict):
                            raise DatasetError(f"{path}: the first line is not a JSON object",
                                               "write one JSON object per line")
                        return list(row)
            raise DatasetError(f"{path}: the file is empty", "add rows, one JSON object a line")
        if fmt == "parquet":
            import pyarrow.parquet as pq

            return list(pq.read_schema(path).names)
        if fmt == "csv":
            with path.open(encoding="utf-8", newline="") as handle:
                return next(csv.reader(handle), [])
        info = _saved_dir(path) / "dataset_info.json"
        if info.is_file():
            return list(json.loads(info.read_text()).get("features", {}))
        return list(datasets.load_from_disk(str(_saved_dir(path))).column_names)
    except DatasetError:
        raise
    except (ValueError, OSError) as exc:
        raise DatasetError(f"{path}: cannot read: {exc}", "check the file's format") from None


def missing_columns(kind: str, columns: list[str]) -> str | None:
    """None when `columns` fit the stage kind, else what is needed (for the validator's message)."""
    options = REQUIRED_COLUMNS.get(kind)
    if options is None:
        return None
    have = set(columns)
    if any(set(option) <= have for option in options):
        return None
    wanted = ", or ".join("+".join(option) for option in options)
    return f"a {kind} stage needs columns {wanted}; the data has: {', '.join(columns) or 'none'}"


def load_rows(path: Path) -> datasets.Dataset:
    path = Path(path)
    columns_of(path)  # the same clear errors as the validator gives
    fmt = _format_of(path)
    if fmt == "jsonl":
        # from_list keeps nested chat messages intact and writes no cache files
        with path.open(encoding="utf-8") as handle:
            rows = [json.loads(line) for line in handle if line.strip()]
        return datasets.Dataset.from_list(rows)
    if fmt == "parquet":
        return datasets.Dataset.from_parquet(str(path))
    if fmt == "csv":
        return datasets.Dataset.from_csv(str(path))
    loaded = datasets.load_from_disk(str(_saved_dir(path)))
    return loaded


def write_jsonl(path: Path, rows: list[dict]) -> None:
    from graftline.engine.common import atomic

    atomic.write_text(Path(path), "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))

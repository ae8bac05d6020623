"""Loading a stage's data: JSONL, parquet, CSV, or a `save_to_disk` directory.

`columns_of` is cheap (the first JSON line, the parquet schema, the saved features) so the
validator can check every stage's data in the first second; `load_rows` is what a stage trains on.
A `data = "@stage"` reference means the output of a generate stage; the runner turns it into
`<run_dir>/stages/<stage>/data.jsonl` with `resolve_data` before anything is loaded.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from graftline.engine.common.errors import GraftlineError
from graftline.engine.common.layout import RunLayout
from graftline.engine.pipeline.data_formats import rename_row, renamed
from graftline.engine.pipeline.data_sources import GENERATED
from graftline.engine.pipeline.peek import REQUIRED_COLUMNS

if TYPE_CHECKING:
    import datasets


class DatasetError(GraftlineError):
    """Raised with the fix a user needs, which its text carries."""

    fix_in_text = True


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


def format_of(path: Path) -> str:
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


def saved_dir(path: Path) -> Path:
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
    fmt = format_of(path)
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
        info = saved_dir(path) / "dataset_info.json"
        if info.is_file():
            return list(json.loads(info.read_text()).get("features", {}))
        import datasets

        return list(datasets.load_from_disk(str(saved_dir(path))).column_names)
    except DatasetError:
        raise
    except (ValueError, OSError) as exc:
        raise DatasetError(f"{path}: cannot read: {exc}", "check the file's format") from None


def load_rows(path: Path) -> datasets.Dataset:
    # the library is imported where rows are loaded, never by `validate` (which must stay light)
    import datasets

    path = Path(path)
    columns_of(path)  # the same clear errors as the validator gives
    fmt = format_of(path)
    if fmt == "jsonl":
        # from_list keeps nested chat messages intact and writes no cache files
        rows = []
        with path.open(encoding="utf-8") as handle:
            for number, line in enumerate(handle, start=1):
                if not line.strip():
                    continue
                try:
                    rows.append(json.loads(line))
                except ValueError as exc:
                    raise DatasetError(f"{path}:{number}: not valid JSON ({exc})",
                                       "fix or delete this line: one JSON object per line"
                                       ) from None
        return datasets.Dataset.from_list(rows)
    if fmt == "parquet":
        return datasets.Dataset.from_parquet(str(path))
    if fmt == "csv":
        # CSV has no types: keep every cell text, as written (pandas made a numeric answer or
        # prompt an int64, which the trainers then choked on mid-run)
        with path.open(encoding="utf-8", newline="") as handle:
            return datasets.Dataset.from_list(list(csv.DictReader(handle)))
    loaded = datasets.load_from_disk(str(saved_dir(path)))
    return loaded


def write_jsonl(path: Path, rows: list[dict]) -> None:
    from graftline.engine.common import atomic

    atomic.write_text(Path(path), "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))


# ------------------------------------------------------------------ row checks before the GPU

# Columns a trainer reads as text (or, conversational, as a list of messages).
TEXT_COLUMNS = ("prompt", "completion", "chosen", "rejected", "text")
MAX_ROW_PROBLEMS = 5
PARQUET_SAMPLE = 512
# validate reads at most this much of a JSONL file (all of a smaller one): its 1 s budget
FULL_SCAN_BYTES = 16 << 20
SAMPLE_WINDOWS = 14


@dataclass(frozen=True)
class RowProblem:
    """A bad row: `row` is the 1-based line of a JSONL file or the row number elsewhere."""
    message: str
    fix: str
    row: int | None = None
    file: Path | None = None
    whole_file: bool = False  # about the file, not one row: skipping rows cannot help

    @property
    def where(self) -> str:
        place = str(self.file) if self.file is not None else ""
        return f"{place}:{self.row}" if self.row is not None else place


def _text_like(value: object) -> bool:
    if isinstance(value, str):
        return True
    return isinstance(value, list) and all(isinstance(m, dict) for m in value)


def value_problem(column: str, value: object) -> tuple[str, str] | None:
    if value is None:
        return (f"`{column}` is null", f"give every row a `{column}` value")
    if isinstance(value, bool) or not _text_like(value):
        shown = json.dumps(value)[:40]
        return (f"`{column}` is {type(value).__name__} {shown}, not text",
                f'write it as a string ("{value}")' if isinstance(value, int | float)
                else f"make `{column}` a string (or a list of chat messages)")
    return None


def column_options(kind: str, columns: set[str]) -> tuple[str, ...] | None:
    """The column set (of the kind's options) that the data uses."""
    for option in REQUIRED_COLUMNS.get(kind, ()):
        if set(option) <= columns:
            return option
    return None


def parse_line(raw: bytes) -> tuple[dict[str, Any] | None, tuple[str, str] | None]:
    """One JSONL line: (row, None), (None, (message, fix)) for a line that is not a row, or
    (None, None) for a blank line. Validate's check and the stage's loader both read lines here,
    so they refuse the same lines with the same words."""
    try:
        line = raw.decode("utf-8")
    except UnicodeDecodeError:
        return None, ("not UTF-8 text", "save the file as UTF-8")
    if not line.strip():
        return None, None
    try:
        row = json.loads(line)
    except json.JSONDecodeError as exc:
        return None, (f"not valid JSON ({exc.msg} at column {exc.colno})",
                      "fix or delete this line: one JSON object per line")
    if not isinstance(row, dict):
        return None, (f"a JSON {type(row).__name__}, not an object",
                      "write one JSON object per line")
    return row, None


def row_problem(row: Mapping[str, Any], needed: Sequence[str]) -> tuple[str, str] | None:
    """What is wrong with one (renamed) row for a stage that reads the columns `needed`: an
    absent column, or a value a trainer cannot take as text."""
    absent = [c for c in needed if c not in row]
    if absent:
        return (f"no {', '.join(f'`{c}`' for c in absent)} (the rows have "
                f"{', '.join(needed)})", "give every row the same columns")
    for column in needed:
        if column in TEXT_COLUMNS and (bad := value_problem(column, row[column])):
            return bad
    return None


def check_rows(path: Path, kind: str, columns: Mapping[str, str] | None = None
               ) -> list[RowProblem]:
    """Problems a trainer would hit mid-run, found now with file and row. JSONL is read in full
    up to FULL_SCAN_BYTES and sampled beyond (syntax, required columns, their types); parquet is
    checked by schema plus a bounded sample; CSV is text by nature (load_rows keeps it text).
    `columns` is the stage's mapping (graftline's name → the data's column)."""
    path = Path(path)
    fmt = format_of(path)
    if fmt == "jsonl":
        return _check_jsonl(path, kind, columns or {})
    if fmt == "parquet":
        return _check_parquet(path, kind, columns or {})
    return []


def _jsonl_lines(path: Path) -> Iterator[tuple[int | None, int, bytes]]:
    """(line number or None, byte offset, line) for the lines `validate` checks.

    A file up to FULL_SCAN_BYTES is read whole (every line, numbered). A larger one would break
    validate's one-second promise, so it is sampled: its head, its tail and SAMPLE_WINDOWS
    windows spread across it, FULL_SCAN_BYTES in all; sampled lines carry their byte offset
    (a line number would need the whole file read). `load_rows` still parses every line, with
    its line number, before anything trains.
    """
    size = path.stat().st_size
    with path.open("rb") as handle:
        if size <= FULL_SCAN_BYTES:
            offset = 0
            for number, line in enumerate(handle, start=1):
                yield number, offset, line
                offset += len(line)
            return
        window = FULL_SCAN_BYTES // (SAMPLE_WINDOWS + 2)
        head = handle.read(window)
        lines = head.split(b"\n")[:-1]  # the last piece may be cut: not judged
        offset = 0
        for number, line in enumerate(lines, start=1):
            yield number, offset, line + b"\n"
            offset += len(line) + 1
        starts = [size * (i + 1) // (SAMPLE_WINDOWS + 1) for i in range(SAMPLE_WINDOWS)]
        for start in [*starts, max(0, size - window)]:
            handle.seek(start)
            chunk = handle.read(window)
            pieces = chunk.split(b"\n")
            # the first piece began before the window and the last may end after it
            at = start + len(pieces[0]) + 1
            for line in pieces[1:-1]:
                yield None, at, line + b"\n"
                at += len(line) + 1


def _check_jsonl(path: Path, kind: str, columns: Mapping[str, str]) -> list[RowProblem]:
    problems: list[RowProblem] = []
    needed: tuple[str, ...] | None = None
    rows = empty = 0
    completion_column = {"sft": "completion", "eval": "completion"}.get(kind)

    def add(message: str, fix: str, number: int | None, offset: int) -> None:
        where = "" if number is not None else f" (at byte {offset:,}; a sample of a large file)"
        problems.append(RowProblem(message + where, fix, number, path))

    for number, offset, raw in _jsonl_lines(path):
        if len(problems) >= MAX_ROW_PROBLEMS:
            break
        parsed, bad = parse_line(raw)
        if bad is not None:
            add(bad[0], bad[1], number, offset)
            continue
        if parsed is None:
            continue
        row = rename_row(parsed, columns)
        rows += 1
        if needed is None:
            needed = column_options(kind, set(row)) or ()
        if (bad := row_problem(row, needed)) is not None:
            add(bad[0], bad[1], number, offset)
            continue
        if completion_column in row and isinstance(row[completion_column], str) \
                and not row[completion_column].strip():
            empty += 1
    if rows and completion_column and needed and completion_column in needed and empty == rows:
        problems.append(RowProblem(f"every `{completion_column}` is empty ({rows} rows): the "
                                   "model would learn to say nothing",
                                   "check how the file was written", None, path, True))
    return problems


def _check_parquet(path: Path, kind: str, columns: Mapping[str, str]) -> list[RowProblem]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    problems: list[RowProblem] = []
    handle = pq.ParquetFile(path)
    schema = handle.schema_arrow
    source = dict(zip(renamed(schema.names, columns), schema.names, strict=True))
    needed = column_options(kind, set(source)) or ()
    for column in needed:
        if column not in TEXT_COLUMNS:
            continue
        kind_of = schema.field(source[column]).type
        if not (pa.types.is_string(kind_of) or pa.types.is_large_string(kind_of)
                or pa.types.is_list(kind_of) or pa.types.is_large_list(kind_of)):
            problems.append(RowProblem(
                f"column `{column}` is {kind_of}, not text",
                f"cast it to string before saving (df['{column}'] = df['{column}'].astype(str))",
                file=path, whole_file=True))
    if problems or "completion" not in needed or kind not in ("sft", "eval"):
        return problems
    # a bounded sample: the first rows and the last row group
    groups = sorted({0, handle.num_row_groups - 1}) if handle.num_row_groups else []
    start = 0
    seen = empty = 0
    for index in range(handle.num_row_groups):
        size = handle.metadata.row_group(index).num_rows
        if index in groups:
            values = handle.read_row_group(index, columns=[source["completion"]]).column(0)
            for offset, value in enumerate(values.to_pylist()[:PARQUET_SAMPLE]):
                seen += 1
                if value is None:
                    problems.append(RowProblem("`completion` is null",
                                               "give every row a completion", start + offset + 1,
                                               path))
                    return problems
                empty += isinstance(value, str) and not value.strip()
        start += size
    if seen and empty == seen:
        problems.append(RowProblem(f"every sampled `completion` is empty ({seen} rows)",
                                   "check how the file was written", file=path,
                                   whole_file=True))
    return problems


def sample_rows(path: Path, count: int = 4) -> list[dict]:
    """The first `count` rows of a file, read cheaply (what validate calls rewards on)."""
    path = Path(path)
    fmt = format_of(path)
    rows: list[dict] = []
    if fmt == "jsonl":
        with path.open(encoding="utf-8") as handle:
            for line in handle:
                if len(rows) >= count:
                    break
                if line.strip():
                    row = json.loads(line)
                    if isinstance(row, dict):
                        rows.append(row)
        return rows
    if fmt == "csv":
        with path.open(encoding="utf-8", newline="") as handle:
            reader = csv.DictReader(handle)
            return [row for _, row in zip(range(count), reader, strict=False)]
    if fmt == "parquet":
        import pyarrow.parquet as pq

        handle = pq.ParquetFile(path)
        batch = next(handle.iter_batches(batch_size=count), None)
        return batch.to_pylist() if batch is not None else []
    import datasets

    loaded = datasets.load_from_disk(str(saved_dir(path)))
    return [dict(loaded[i]) for i in range(min(count, len(loaded)))]

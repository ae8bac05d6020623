"""The rows a stage trains on: every source of its `data`, mapped, checked row by row, in TRL form.

This is the one loader of a training or eval stage's data (docs/datasets.md). It reads each
source with file and line, renames mapped columns, and checks every row for the columns the
stage kind needs and their types. A bad row (malformed JSON, a missing field, a number where
text belongs) either refuses the stage before training, naming file:line for the first few,
or, with `on_bad_rows = "skip"`, is left out and counted in `Loaded.skipped` for the stage to
report. Nothing here trains or imports torch; `datasets` is imported to build the result.
"""

from __future__ import annotations

import csv
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from graftline.engine.pipeline.data_formats import mapping_problem, rename_row
from graftline.engine.pipeline.data_sources import describe, resolve_sources
from graftline.engine.pipeline.datasets import (
    DatasetError,
    RowProblem,
    column_options,
    format_of,
    parse_line,
    row_problem,
    saved_dir,
)
from graftline.engine.pipeline.peek import missing_columns

if TYPE_CHECKING:
    import datasets

SHOWN = 5  # bad rows named in a refusal
Convert = Callable[[list[dict[str, Any]]], list[dict[str, Any]]]


@dataclass(frozen=True)
class Loaded:
    """A stage's rows and what was left out of them."""

    rows: datasets.Dataset
    total: int  # rows read, bad ones included
    sources: tuple[Path, ...]
    skipped: tuple[RowProblem, ...] = field(default=())

    def skipped_message(self, label: str) -> str:
        first = self.skipped[0]
        return (f"skipped {len(self.skipped)} bad row(s) of {self.total} in {label} "
                f"(on_bad_rows = \"skip\"); first: {first.where}: {first.message}")


def _raw(path: Path) -> Iterator[tuple[int, dict[str, Any] | None, RowProblem | None]]:
    """(line or row number, row, problem) for every row of one source, nothing dropped."""
    fmt = format_of(path)
    if fmt == "jsonl":
        with path.open("rb") as handle:
            for number, raw in enumerate(handle, start=1):
                parsed, bad = parse_line(raw)
                if bad is not None:
                    yield number, None, RowProblem(bad[0], bad[1], number, path)
                elif parsed is not None:
                    yield number, parsed, None
        return
    if fmt == "csv":
        # CSV has no types: every cell stays text, as written
        with path.open(encoding="utf-8", newline="") as handle:
            reader = csv.DictReader(handle)
            for row in reader:
                if None in row:  # DictReader files extra cells under None
                    yield reader.line_num, None, RowProblem(
                        f"{len(row[None])} more cell(s) than the header has",
                        "quote cells that hold commas, or fix the header", reader.line_num, path)
                    continue
                yield reader.line_num, dict(row), None
        return
    if fmt == "parquet":
        import pyarrow.parquet as pq

        for number, row in enumerate(pq.read_table(path).to_pylist(), start=1):
            yield number, row, None
        return
    import datasets

    for number, row in enumerate(datasets.load_from_disk(str(saved_dir(path))), start=1):
        yield number, dict(row), None


def read_rows(path: Path) -> tuple[list[dict[str, Any]], list[RowProblem]]:
    """Every readable row of one source, and the lines that are not rows (malformed JSON…)."""
    rows: list[dict[str, Any]] = []
    bad: list[RowProblem] = []
    try:
        for _number, row, problem in _raw(Path(path)):
            if problem is not None:
                bad.append(problem)
            elif row is not None:
                rows.append(row)
    except (ValueError, OSError) as exc:
        raise DatasetError(f"{path}: cannot read: {exc}", "check the file's format") from None
    return rows, bad


def load_stage_rows(ref: str | Sequence[str], kind: str, *, base_dir: Path,
                    run_dir: Path | None = None, split: str | None = None,
                    subset: str | None = None, columns: Mapping[str, str] | None = None,
                    on_bad_rows: Literal["refuse", "skip"] = "refuse",
                    convert: Convert | None = None) -> Loaded:
    """Every row of `ref` for a stage of `kind`; raises DatasetError before anything trains.
    `convert` turns the checked rows into the trainer's form (the stage passes TRL's)."""
    import datasets

    from graftline.engine.pipeline.data_sources import DataSourceError

    columns = dict(columns or {})
    label = describe(ref)
    try:
        sources = resolve_sources(ref, base_dir, run_dir, split=split, subset=subset)
    except DataSourceError as exc:
        raise DatasetError(exc.message, exc.fix) from None
    good: list[tuple[Path, int, dict[str, Any]]] = []
    bad: list[RowProblem] = []
    for path in sources:
        mapped = False
        try:
            for number, row, problem in _raw(path):
                if problem is not None:
                    bad.append(problem)
                    continue
                assert row is not None
                if not mapped:  # the mapping is checked against each source's real columns
                    error = mapping_problem(columns, row, f"{path}:{number}")
                    if error is not None:
                        raise DatasetError(error.message, error.fix)
                    mapped = True
                good.append((path, number, rename_row(row, columns)))
        except (ValueError, OSError) as exc:
            raise DatasetError(f"{path}: cannot read: {exc}", "check the file's format") from None
    needed = next((o for _, _, r in good if (o := column_options(kind, set(r))) is not None), None)
    if needed is None:
        have = list(good[0][2]) if good else []
        missing = missing_columns(kind, have)
        if not good:
            raise DatasetError(f"{label}: no readable rows"
                               + (f" ({bad[0].where}: {bad[0].message})" if bad else ""),
                               bad[0].fix if bad else "add rows, one JSON object a line")
        raise DatasetError(f"{label}: {missing}",
                           f"the data has: {', '.join(have)}; map its columns with "
                           "`columns = { prompt = \"...\", ... }` or point `data` elsewhere")
    kept: list[dict[str, Any]] = []
    for path, number, row in good:
        wrong = row_problem(row, needed)
        if wrong is None:
            kept.append(row)
        else:
            bad.append(RowProblem(wrong[0], wrong[1], number, path))
    total = len(kept) + len(bad)
    if bad and on_bad_rows != "skip":
        shown = "; ".join(f"{p.where}: {p.message}" for p in bad[:SHOWN])
        more = f" and {len(bad) - SHOWN} more" if len(bad) > SHOWN else ""
        raise DatasetError(f"{len(bad)} bad row(s) in {label}: {shown}{more}",
                           f"{bad[0].fix}; or set on_bad_rows = \"skip\" to train on the rest")
    if not kept:
        raise DatasetError(f"{label}: every row is bad ({bad[0].where}: {bad[0].message})",
                           bad[0].fix)
    rows = convert(kept) if convert is not None else kept
    try:
        dataset = datasets.Dataset.from_list(rows)
    except (ValueError, TypeError) as exc:  # pyarrow's ArrowInvalid is a ValueError
        raise DatasetError(f"{label}: the rows do not share one shape ({exc})",
                           "give every row the same columns and types (all text, or all chat "
                           "message lists)") from None
    return Loaded(dataset, total, tuple(sources), tuple(bad))


def load_for_stage(stage: Any, fieldname: str, kind: str, *, base_dir: Path,
                   run_dir: Path | None = None, convert: Convert | None = None) -> Loaded:
    """`load_stage_rows` with a stage's own options (`split` or `eval_split`, `subset`,
    `columns`, `on_bad_rows`); a stage model without them reads plain files."""
    split = getattr(stage, "eval_split" if fieldname == "eval_data" else "split", None)
    return load_stage_rows(getattr(stage, fieldname), kind, base_dir=base_dir, run_dir=run_dir,
                           split=split, subset=getattr(stage, "subset", None),
                           columns=getattr(stage, "columns", None) or {},
                           on_bad_rows=getattr(stage, "on_bad_rows", "refuse"), convert=convert)

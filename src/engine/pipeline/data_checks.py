"""validate's checks of one `data` field (docs/datasets.md), before anything trains.

Every source the field names must exist (a glob must match, `hf:` must be in the local cache
with the asked split and subset), the `columns` mapping must name columns the data has, the
mapped columns must fit the stage kind, and rows a trainer would choke on are reported with
file and line: as errors, or as warnings when the stage says `on_bad_rows = "skip"` (the stage
then trains on the rest and reports the count). Plain files are read cheaply (pipeline/peek);
only an `hf:` source imports the `datasets` library, to map its split's files.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from graftline.engine.pipeline.data_formats import mapping_problem, renamed, target_typo
from graftline.engine.pipeline.data_sources import (
    HF_PREFIX,
    DataSourceError,
    as_list,
    resolve_sources,
)
from graftline.engine.pipeline.problems import Problem, Where, moved


def data_field_problems(base_dir: Path, stage: Any, fieldname: str, value: str | Sequence[str],
                        kind: str, at: Where) -> Iterator[Problem]:
    from graftline.engine.pipeline.datasets import DatasetError, check_rows
    from graftline.engine.pipeline.peek import PeekError, columns, missing_columns

    entries = [e for e in as_list(value) if not e.startswith("@")]  # made in the run
    if not entries:
        return
    split_field = "eval_split" if fieldname == "eval_data" else "split"
    split = getattr(stage, split_field, None)
    if not any(e.startswith(HF_PREFIX) for e in entries):
        for name in (split_field, "subset") if fieldname == "data" else (split_field,):
            if getattr(stage, name, None) is not None:
                yield Problem(f"`{name}` is set but `{fieldname}` names no hf: dataset; it is "
                              "ignored", **moved(at, field=name), severity="warning",
                              fix=f"remove `{name}`, or point `{fieldname}` at hf:org/name")
    mapping: dict[str, str] = getattr(stage, "columns", None) or {}
    skip = getattr(stage, "on_bad_rows", "refuse") == "skip"
    typo = target_typo(mapping)
    if typo is not None:
        yield Problem(f"`columns.{typo[0]}`: no stage reads a column '{typo[0]}' (did you mean "
                      f"'{typo[1]}'?)", **moved(at, field="columns"),
                      fix=f"write columns.{typo[1]} = \"{mapping[typo[0]]}\"")
    try:
        paths = resolve_sources(entries, base_dir, split=split,
                                subset=getattr(stage, "subset", None))
    except DataSourceError as exc:
        yield Problem(exc.message, **at, fix=exc.fix)
        return
    for path in paths:
        try:
            have = columns(path)
        except PeekError as exc:
            yield Problem(f"cannot read dataset {path}: {exc.message}", **at, fix=exc.fix)
            continue
        wrong = mapping_problem(mapping, have, str(path))
        if wrong is not None:
            yield Problem(wrong.message, **moved(at, field="columns"), fix=wrong.fix)
            continue
        names = renamed(have, mapping)
        missing = missing_columns(kind, names)
        if missing:
            yield Problem(
                f"{path.name}: {missing}",
                **at,
                fix=f"add {' and '.join(repr(c) for c in missing.missing)} to every row "
                    f"(the file has: {', '.join(have) or 'no columns'}), map them with "
                    f"`columns = {{ {missing.missing[0]} = \"...\" }}`, or point `{fieldname}` "
                    "at the right file",
            )
            continue
        # rows a trainer would choke on mid-run (issue 23): file:row and a fix
        try:
            found = check_rows(path, kind, mapping)
        except (DatasetError, OSError, ValueError) as exc:
            yield Problem(f"cannot read dataset {path}: {exc}", **at, fix="check the file's format")
            continue
        for row in found:
            where = f"{path}:{row.row}" if row.row else str(path)
            if skip and not row.whole_file:
                yield Problem(f"{where}: {row.message} (skipped: on_bad_rows = \"skip\")", **at,
                              fix=row.fix, severity="warning")
            else:
                yield Problem(f"{where}: {row.message}", **at,
                              fix=row.fix + ("" if row.whole_file else
                                             "; or set on_bad_rows = \"skip\" to train on the "
                                             "other rows"))

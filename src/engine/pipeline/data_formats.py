"""TRL's dataset formats and the `columns = {…}` mapping.

A stage reads TRL's formats as they are: standard (`text`; `prompt`/`completion`;
`prompt`/`chosen`/`rejected`) and conversational (`messages`; `prompt`/`completion` as message
lists; preference pairs). A preference pair with an implicit prompt (only `chosen`/`rejected`,
the prompt being their shared beginning) is split by the stage with TRL's own
`maybe_extract_prompt` (stages/stage_data.py: this layer never imports trl).

`columns = { prompt = "question", completion = "answer" }` says which of the data's columns is
graftline's `prompt` and `completion`: the data's `question` is read as `prompt`. The mapping is
checked against the columns the data really has, with a "did you mean".
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Mapping
from typing import Any

from graftline.engine.common.errors import GraftlineError
from graftline.engine.pipeline.problems import did_you_mean

# The names TRL's formats give columns (and the built-in rewards' `answer`): a mapping's target
# close to one of these but not equal is a typo, not a new column.
KNOWN_TARGETS = ("prompt", "completion", "chosen", "rejected", "text", "messages", "answer")


class ColumnMappingError(GraftlineError):
    """`columns` names a column the data does not have."""

    fix_in_text = True


def mapping_problem(columns: Mapping[str, str], have: Iterable[str], where: str
                    ) -> ColumnMappingError | None:
    """The first source column of `columns` that the data lacks, as an error naming the ones
    it has; None when every mapped column exists."""
    present = list(have)
    for target, source in columns.items():
        if source not in present:
            hint = did_you_mean(source, present) if present else "it has no columns"
            return ColumnMappingError(
                f"{where}: `columns.{target} = \"{source}\"`, but the data has no column "
                f"'{source}' ({hint}; it has: {', '.join(present) or 'nothing'})",
                f"set columns.{target} to one of the data's columns")
    return None


def target_typo(columns: Mapping[str, str]) -> tuple[str, str] | None:
    """(target, the known name it is close to) for a mapping target that looks misspelt."""
    for target in columns:
        if target in KNOWN_TARGETS:
            continue
        close = difflib.get_close_matches(target, KNOWN_TARGETS, n=1, cutoff=0.75)
        if close:
            return target, close[0]
    return None


def renamed(names: Iterable[str], columns: Mapping[str, str]) -> list[str]:
    """Column names as the stage will see them after the mapping."""
    back = {source: target for target, source in columns.items()}
    return [back.get(name, name) for name in names]


def rename_row(row: dict[str, Any], columns: Mapping[str, str]) -> dict[str, Any]:
    """One row with the mapped columns under graftline's names; a column the mapping replaces
    (the data's own `prompt` when `prompt = "question"`) gives way to the mapped one."""
    if not columns:
        return row
    back = {source: target for target, source in columns.items()}
    out: dict[str, Any] = {}
    for name, value in row.items():
        if name in columns and name not in back:
            continue  # shadowed by the mapped column
        out[back.get(name, name)] = value
    return out

"""A pydantic validation error as the pipeline file's `Problem`s: file, line, stage, field, and
the fix ("did you mean", or the table the key belongs in: `train`, `lora`, `trl = { … }`).

`file.py` reads the TOML and knows where each table and key is (`Block`); this module turns
what pydantic refused into words at those lines.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel
from pydantic_core import ErrorDetails

from graftline.engine.pipeline import spec
from graftline.engine.pipeline.problems import Problem, Where, did_you_mean, fix_for, suggest_key

if TYPE_CHECKING:
    from graftline.engine.pipeline.file import Block

__all__ = ["model_keys", "translate_errors"]


def model_keys(model: type[BaseModel]) -> list[str]:
    """The keys a table of `model` accepts, as written in the file (aliases: `from`)."""
    return [f.alias or name for name, f in model.model_fields.items()]


def _model_at(kind: str | None, loc: tuple[Any, ...]) -> type[BaseModel] | None:
    if loc and loc[0] == "train":
        return spec.Train
    if loc and loc[0] == "lora":
        return spec.Lora
    return spec.STAGE_MODELS.get(kind or "")


def _neighbours(owner: type[BaseModel] | None, kind: str | None) -> tuple[str, dict]:
    """The table a key was found in ("train", "lora", "" for a stage, "pipeline") and the keys of
    the tables next to it, so a key written in the wrong one is pointed at the right one."""
    stage_model = spec.STAGE_MODELS.get(kind or "")
    stage_keys = model_keys(stage_model) if stage_model else []
    trains = kind in spec.TRAINING_KINDS or kind is None
    train_lora = {"train": model_keys(spec.Train), "lora": model_keys(spec.Lora)} if trains else {}
    trl = _trl_neighbour(kind)
    if owner is spec.Train:
        return "train", {"lora": model_keys(spec.Lora), **({"": stage_keys} if stage_keys else {}),
                         **trl}
    if owner is spec.Lora:
        return "lora", {"train": model_keys(spec.Train), **({"": stage_keys} if stage_keys else {})}
    if owner is spec.Header:
        return "pipeline", {}
    if owner is spec.Defaults:
        return "defaults", {"train": model_keys(spec.Train), "lora": model_keys(spec.Lora)}
    return "", {**train_lora, "pipeline": model_keys(spec.Header), **trl}


def _trl_neighbour(kind: str | None) -> dict[str, list[str]]:
    """A training stage's TRL config fields that `trl = { … }` passes on, so a TRL field written
    as a stage or train key is pointed there (read only on this error path)."""
    from graftline.engine.pipeline import trl_knobs

    if kind not in trl_knobs.CONFIG_CLASSES:
        return {}
    try:
        fields = trl_knobs.config_fields(kind)
    except Exception:  # TRL not installed or unreadable: no pointer, the other fixes stand
        return {}
    return {"trl = { … }": sorted(fields - trl_knobs.OWNED.keys())}


def translate_errors(
    errors: Iterable[ErrorDetails],
    *,
    file: str,
    block: Block,
    stage: str | None,
    kind: str | None,
    model: type[BaseModel] | None = None,
    prefix: str = "",
    skip_keys: frozenset[str] = frozenset(),
) -> Iterator[Problem]:
    for err in errors:
        loc = tuple(err["loc"])
        # the discriminated union puts the kind first in the location; it is not a field
        if loc and loc[0] == kind and kind in spec.STAGE_MODELS:
            loc = loc[1:]
        if loc and str(loc[0]) in skip_keys:
            continue
        field_name = ".".join(str(p) for p in loc if not isinstance(p, int))
        field_name = field_name.replace("from_", "from")
        top = str(loc[0]) if loc else None
        line = block.line_of(top)
        where = Where(file=file, line=line, stage=stage, field=prefix + field_name or None)
        kind_of_error = err["type"]
        if kind_of_error == "extra_forbidden":
            owner = _model_at(kind, loc) if len(loc) > 1 else (model or _model_at(kind, loc))
            if len(loc) > 1 and model is spec.Defaults:
                owner = _model_at(None, loc)
            choices = [c for c in (model_keys(owner) if owner else []) if c != "kind"]
            word = str(loc[-1])
            table, elsewhere = _neighbours(owner, kind)
            yield Problem(
                f"unknown key '{word}'",
                **where,
                fix=suggest_key(word, choices, table, elsewhere),
            )
        elif kind_of_error == "missing":
            yield Problem(
                f"missing required field '{loc[-1]}'",
                **where,
                fix=f"add `{loc[-1]} = …` to this table",
            )
        elif kind_of_error == "union_tag_invalid":
            given = err["ctx"]["tag"]
            yield Problem(
                f"unknown stage kind '{given}'",
                file=file,
                line=block.line_of("kind"),
                stage=stage,
                field="kind",
                fix=did_you_mean(str(given), list(spec.STAGE_MODELS)),
            )
        elif kind_of_error == "union_tag_not_found":
            yield Problem(
                "the stage has no kind",
                file=file,
                line=block.header,
                stage=stage,
                field="kind",
                fix=f"add kind = one of {', '.join(spec.STAGE_MODELS)}",
            )
        else:
            given = err.get("input")
            yield Problem(f"{err['msg']} (got {given!r})", **where,
                          fix=fix_for(kind_of_error, err.get("ctx"), field_name, given))

"""Reading a pipeline file: TOML syntax, `[[foreach]]` expansion, `[defaults]`, and line numbers.

Every problem is collected, not just the first, so a typo in stage 6 and a bad key in stage 2 are
reported together, in the first second, each with its line.

A `[[foreach]]` block writes a repeated group of stages once:

    [[foreach]]
    as = "topic"
    values = ["algebra", "geometry"]
      [[foreach.stage]]
      name = "sft_{topic}"
      kind = "sft"
      data = "data/{topic}.jsonl"

Values may also be tables (`values = [{topic = "a", r = 8}]`), whose keys are the placeholders.
Placeholders are substituted in every string; the expanded stages take the block's place in file
order, and `graftline plan` shows them expanded.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel, TypeAdapter, ValidationError

from graftline.engine.pipeline import spec
from graftline.engine.pipeline.problems import PipelineError, Problem, did_you_mean

HEADER_BLOCK = "[pipeline]"  # the key of the header's Block; no stage name can contain brackets
CLEANUP_BLOCK = "[cleanup]"
TOP_LEVEL = ("pipeline", "defaults", "stage", "foreach", "cleanup")
_Model = TypeVar("_Model", bound=BaseModel)
FOREACH_KEYS = ("as", "values", "stage")
_STAGE_ADAPTER: TypeAdapter = TypeAdapter(spec.Stage)
_HEADER = re.compile(r"^\s*\[\[?\s*([A-Za-z0-9_.\-]+)\s*\]\]?")
_KEY = re.compile(r"^\s*([A-Za-z0-9_\-]+)\s*=")


@dataclass(frozen=True)
class Block:
    """Where a table starts and ends in the file, and the line of each key in it."""

    header: int
    keys: dict[str, int] = field(default_factory=dict)

    def line_of(self, key: str | None) -> int:
        return self.keys.get(key or "", self.header)


@dataclass(frozen=True)
class PipelineFile:
    path: Path
    text: str = field(repr=False)
    pipeline: spec.Pipeline
    warnings: tuple[Problem, ...] = ()
    origins: dict[str, str] = field(default_factory=dict)  # expanded stage → foreach template
    blocks: dict[str, Block] = field(default_factory=dict)  # stage name → where it is written

    def line(self, stage: str | None, key: str | None = None) -> int | None:
        block = self.blocks.get(stage or "")
        return block.line_of(key) if block else None

    @property
    def directory(self) -> Path:
        return self.path.parent

    def resolve(self, relative: str) -> Path:
        """Paths in a pipeline file are relative to the file, as a user reading it expects."""
        candidate = Path(relative).expanduser()
        return candidate if candidate.is_absolute() else (self.directory / candidate).resolve()


def _scan_blocks(text: str) -> dict[str, list[Block]]:
    """Header line and key lines of every table, grouped by the table's dotted name."""
    blocks: dict[str, list[Block]] = {}
    current: tuple[str, dict[str, int]] | None = None
    for number, line in enumerate(text.splitlines(), start=1):
        header = _HEADER.match(line)
        if header:
            name = header.group(1)
            keys: dict[str, int] = {}
            if name.endswith((".train", ".lora")) and current is not None:
                # a sub-table belongs to the stage above it: point its keys at their own lines
                sub = name.rsplit(".", 1)[1]
                current[1].setdefault(sub, number)
                current = (current[0], current[1])
                continue
            blocks.setdefault(name, []).append(Block(number, keys))
            current = (name, keys)
            continue
        key = _KEY.match(line)
        if key and current is not None:
            current[1].setdefault(key.group(1), number)
    return blocks


def _table(model: type[_Model], raw: Any, name: str, block: Block, file: str,
           problems: list[Problem]) -> _Model | None:
    """A top-level table as its model; None, with its problems added, when it does not fit."""
    try:
        return model.model_validate(raw)
    except ValidationError as exc:
        problems += _translate(exc, file=file, block=block, stage=None, kind=None, model=model,
                               prefix=f"{name}.")
        return None


def _fields(model: type[BaseModel]) -> list[str]:
    return [f.alias or name for name, f in model.model_fields.items()]


def _model_at(kind: str | None, loc: tuple[Any, ...]) -> type[BaseModel] | None:
    if loc and loc[0] == "train":
        return spec.Train
    if loc and loc[0] == "lora":
        return spec.Lora
    return spec.STAGE_MODELS.get(kind or "")


def _translate(
    exc: ValidationError,
    *,
    file: str,
    block: Block,
    stage: str | None,
    kind: str | None,
    model: type[BaseModel] | None = None,
    prefix: str = "",
) -> Iterator[Problem]:
    for err in exc.errors():
        loc = tuple(err["loc"])
        # the discriminated union puts the kind first in the location; it is not a field
        if loc and loc[0] == kind and kind in spec.STAGE_MODELS:
            loc = loc[1:]
        field_name = ".".join(str(p) for p in loc if not isinstance(p, int))
        field_name = field_name.replace("from_", "from")
        top = str(loc[0]) if loc else None
        line = block.line_of(top)
        where = dict(file=file, line=line, stage=stage, field=prefix + field_name or None)
        kind_of_error = err["type"]
        if kind_of_error == "extra_forbidden":
            owner = model or _model_at(kind, loc)
            choices = _fields(owner) if owner else []
            word = str(loc[-1])
            yield Problem(
                f"unknown key '{word}'",
                **where,
                fix=did_you_mean(word, [c for c in choices if c != "kind"]),
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
                fix=did_you_mean(given, list(spec.STAGE_MODELS)),
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
            yield Problem(f"{err['msg']} (got {err.get('input')!r})", **where)


def _merge(defaults: dict[str, Any], given: dict[str, Any]) -> dict[str, Any]:
    return {**defaults, **given}


def _substitute(value: Any, variables: dict[str, Any]) -> Any:
    if isinstance(value, str):
        out = value
        for key, val in variables.items():
            out = out.replace("{" + key + "}", str(val))
        return out
    if isinstance(value, list):
        return [_substitute(v, variables) for v in value]
    if isinstance(value, dict):
        return {k: _substitute(v, variables) for k, v in value.items()}
    return value


def _expand_foreach(
    raw: dict[str, Any], blocks: dict[str, list[Block]], file: str, problems: list[Problem]
) -> tuple[list[tuple[dict, Block, str | None]], dict]:
    """The stage tables in file order with their blocks, foreach groups expanded in place."""
    stage_blocks = iter(blocks.get("stage", []))
    foreach_blocks = iter(blocks.get("foreach", []))
    template_blocks = iter(blocks.get("foreach.stage", []))
    plain = iter(raw.get("stage", []) if isinstance(raw.get("stage"), list) else [])
    groups = iter(raw.get("foreach", []) if isinstance(raw.get("foreach"), list) else [])
    order = sorted(
        [(b.header, "stage") for b in blocks.get("stage", [])]
        + [(b.header, "foreach") for b in blocks.get("foreach", [])]
    )
    stages: list[tuple[dict, Block, str | None]] = []
    origins: dict[str, str] = {}
    for _line, what in order:
        if what == "stage":
            table = next(plain, None)
            if table is not None:
                stages.append((table, next(stage_blocks), None))
            continue
        group, gblock = next(groups, None), next(foreach_blocks)
        if not isinstance(group, dict):
            continue
        for key in group:
            if key not in FOREACH_KEYS:
                problems.append(
                    Problem(
                        f"unknown key '{key}' in [[foreach]]",
                        file,
                        gblock.line_of(key),
                        field=key,
                        fix=did_you_mean(key, list(FOREACH_KEYS)),
                    )
                )
        values = group.get("values")
        templates = group.get("stage", [])
        tblocks = [next(template_blocks, gblock) for _ in templates]
        if not isinstance(values, list) or not values:
            problems.append(
                Problem(
                    "[[foreach]] needs a non-empty list `values`",
                    file,
                    gblock.line_of("values"),
                    field="values",
                    fix='values = ["topic_a", "topic_b"]',
                )
            )
            continue
        if not templates:
            problems.append(
                Problem(
                    "[[foreach]] has no [[foreach.stage]] tables",
                    file,
                    gblock.header,
                    fix="add [[foreach.stage]] tables under it",
                )
            )
            continue
        var = group.get("as", "item")
        for value in values:
            variables = dict(value) if isinstance(value, dict) else {var: value}
            for template, tblock in zip(templates, tblocks, strict=True):
                table = _substitute(template, variables)
                stages.append((table, tblock, str(template.get("name"))))
                origins[str(table.get("name"))] = str(template.get("name"))
    return stages, origins


def parse(text: str, path: Path | str = "<pipeline>") -> PipelineFile:
    """Parse and validate the file's structure. Raises PipelineError with every problem found."""
    file = str(path)
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        match = re.search(r"line (\d+)", str(exc))
        raise PipelineError(
            [
                Problem(
                    f"TOML syntax error: {exc}",
                    file,
                    int(match.group(1)) if match else None,
                    fix="check quotes, brackets and `key = value` on that line",
                )
            ]
        ) from None
    blocks = _scan_blocks(text)
    problems: list[Problem] = []
    for key in raw:
        if key not in TOP_LEVEL:
            line = next((b.header for b in blocks.get(key, [])), None)
            problems.append(
                Problem(
                    f"unknown top-level table '{key}'",
                    file,
                    line,
                    fix=did_you_mean(key, list(TOP_LEVEL)),
                )
            )

    header_block = (blocks.get("pipeline") or [Block(1)])[0]
    header = None
    if "pipeline" not in raw:
        problems.append(
            Problem(
                "missing [pipeline] table",
                file,
                1,
                fix='add [pipeline] with name = "…" and base = "…"',
            )
        )
    else:
        header = _table(spec.Header, raw["pipeline"], "pipeline", header_block, file, problems)

    raw_defaults = raw.get("defaults", {}) if isinstance(raw.get("defaults", {}), dict) else {}
    defaults_block = (blocks.get("defaults") or [Block(1)])[0]
    defaults = spec.Defaults()
    try:
        defaults = spec.Defaults.model_validate(raw_defaults)
    except ValidationError as exc:
        for err in exc.errors():
            loc = tuple(err["loc"])
            owner = {"train": spec.Train, "lora": spec.Lora}.get(str(loc[0])) if loc else None
            sub = ValidationError.from_exception_data(exc.title, [err])
            problems += _translate(
                sub,
                file=file,
                block=defaults_block,
                stage=None,
                kind=None,
                model=owner or spec.Defaults,
                prefix="defaults.",
            )

    cleanup_block = (blocks.get("cleanup") or [Block(1)])[0]
    cleanup = None
    if "cleanup" in raw:
        cleanup = _table(spec.Cleanup, raw["cleanup"], "cleanup", cleanup_block, file, problems)

    tables, origins = _expand_foreach(raw, blocks, file, problems)
    if not tables and not problems:
        problems.append(
            Problem(
                "the pipeline has no stages", file, None, fix="add at least one [[stage]] table"
            )
        )
    stages = []
    seen: dict[str, int] = {}
    for index, (table, block, _template) in enumerate(tables, start=1):
        if not isinstance(table, dict):
            continue
        name = str(table.get("name", f"#{index}"))
        kind = table.get("kind")
        merged = dict(table)
        if kind in spec.TRAINING_KINDS:
            merged["train"] = _merge(raw_defaults.get("train", {}), table.get("train", {}))
            if "lora" in table:
                merged["lora"] = _merge(raw_defaults.get("lora", {}), table["lora"])
        try:
            stage = _STAGE_ADAPTER.validate_python(merged)
        except ValidationError as exc:
            problems += _translate(exc, file=file, block=block, stage=name, kind=kind)
            continue
        if stage.name in seen:
            problems.append(
                Problem(
                    f"stage name '{stage.name}' is used twice (first at line {seen[stage.name]})",
                    file,
                    block.line_of("name"),
                    stage=stage.name,
                    field="name",
                    fix="give each stage its own name",
                )
            )
        seen.setdefault(stage.name, block.line_of("name"))
        stages.append((stage, block))

    if problems:
        raise PipelineError(problems)
    assert header is not None
    pipeline = spec.Pipeline(
        pipeline=header, defaults=defaults, stage=[s for s, _ in stages], cleanup=cleanup
    )
    return PipelineFile(
        Path(path),
        text,
        pipeline,
        origins=origins,
        blocks={
            HEADER_BLOCK: header_block,
            CLEANUP_BLOCK: cleanup_block,
            **{s.name: b for s, b in stages},
        },
    )


def load(path: Path | str) -> PipelineFile:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise PipelineError(
            [
                Problem(
                    "no such pipeline file",
                    str(path),
                    fix="check the path; examples/ has pipelines to start from",
                )
            ]
        ) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise PipelineError([Problem(f"cannot read the file: {exc}", str(path))]) from None
    return parse(text, path)

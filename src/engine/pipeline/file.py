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

import difflib
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel, TypeAdapter, ValidationError

from graftline.engine.pipeline import spec
from graftline.engine.pipeline.field_problems import model_keys, translate_errors
from graftline.engine.pipeline.problems import (
    PipelineError,
    Problem,
    did_you_mean,
    suggest_key,
)

HEADER_BLOCK = "[pipeline]"  # the key of the header's Block; no stage name can contain brackets
CLEANUP_BLOCK = "[cleanup]"
DEFAULTS_BLOCK = "[defaults]"
TOP_LEVEL = ("pipeline", "defaults", "stage", "foreach", "cleanup")
_Model = TypeVar("_Model", bound=BaseModel)
FOREACH_KEYS = ("as", "values", "stage")
_STAGE_ADAPTER: TypeAdapter[spec.AnyStage] = TypeAdapter(spec.Stage)
# `[[stage]]`, `[ pipeline ]`, `[["stage"]]`, `[[foreach . "stage"]]`: TOML allows quoted and
# spaced keys in headers, and a header the scanner missed would shift every stage's lines
_HEADER = re.compile(r"""^\s*\[\[?\s*((?:[A-Za-z0-9_\-]+|"[^"\n]*"|'[^'\n]*')"""
                     r"""(?:\s*\.\s*(?:[A-Za-z0-9_\-]+|"[^"\n]*"|'[^'\n]*'))*)\s*\]\]?""")
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
    prefix = ""  # `trl.` inside a [stage.trl] sub-table
    for number, line in enumerate(text.splitlines(), start=1):
        header = _HEADER.match(line)
        if header:
            name = ".".join(part.strip().strip("\"'") for part in header.group(1).split("."))
            keys: dict[str, int] = {}
            if name.endswith((".train", ".lora", ".trl")) and current is not None:
                # a sub-table belongs to the stage above it: point its keys at their own lines
                sub = name.rsplit(".", 1)[1]
                current[1].setdefault(sub, number)
                current = (current[0], current[1])
                # TRL's field names overlap the stage's (beta, max_length): the escape hatch's
                # keys are recorded as `trl.<key>` so they never take a stage key's line
                prefix = "trl." if sub == "trl" else ""
                continue
            blocks.setdefault(name, []).append(Block(number, keys))
            current = (name, keys)
            prefix = ""
            continue
        key = _KEY.match(line)
        if key and current is not None:
            current[1].setdefault(prefix + key.group(1), number)
            if not prefix and key.group(1) == "trl":
                for inner in _inline_keys(line):  # `trl = { a = 1 }`: trl.a is on this line
                    current[1].setdefault(f"trl.{inner}", number)
    return blocks


def _inline_keys(line: str) -> list[str]:
    """The keys of an inline table written on `line` (TOML keeps one on a single line)."""
    try:
        value = next(iter(tomllib.loads(line).values()), None)
    except tomllib.TOMLDecodeError:
        return []
    return list(value) if isinstance(value, dict) else []


def _table(model: type[_Model], raw: Any, name: str, block: Block, file: str,
           problems: list[Problem]) -> _Model | None:
    """A top-level table as its model; None, with its problems added, when it does not fit."""
    try:
        return model.model_validate(raw)
    except ValidationError as exc:
        problems += translate_errors(exc.errors(), file=file, block=block, stage=None,
                                     kind=None, model=model, prefix=f"{name}.")
        return None


def _read_defaults(raw: dict[str, Any], blocks: dict[str, list[Block]], file: str,
                   problems: list[Problem]) -> tuple[dict[str, Any], spec.Defaults]:
    """[defaults] validated once, its problems reported once at their own lines; what is merged
    into the stages is only what passed (a typo there is not re-reported for every stage)."""
    block = (blocks.get("defaults") or [Block(1)])[0]
    given = raw.get("defaults", {})
    if not isinstance(given, dict):
        problems.append(Problem("[defaults] must be a table", file, block.header,
                                field="defaults", fix="write [defaults] with train = { … } "
                                                      "and lora = { … }"))
        return {}, spec.Defaults()
    try:
        return given, spec.Defaults.model_validate(given)
    except ValidationError as exc:
        bad: set[tuple[str, ...]] = set()
        for err in exc.errors():
            loc = tuple(str(p) for p in err["loc"])
            bad.add(loc[:2])
            tables: dict[str, type[BaseModel]] = {"train": spec.Train, "lora": spec.Lora}
            owner = tables.get(loc[0]) if len(loc) > 1 else None
            problems.extend(translate_errors([err], file=file, block=block, stage=None,
                                             kind=None, model=owner or spec.Defaults,
                                             prefix="defaults."))
        clean: dict[str, Any] = {}
        for table in ("train", "lora", "trl"):
            values = given.get(table)
            if isinstance(values, dict) and (table,) not in bad:
                clean[table] = {k: v for k, v in values.items() if (table, k) not in bad}
        try:
            return clean, spec.Defaults.model_validate(clean)
        except ValidationError:
            return {}, spec.Defaults()


def _kind_typo(table: dict[str, Any]) -> str | None:
    """A key that is `kind` misspelt (`kidn`, `type`, `stage_kind`)."""
    for key in table:
        if key == "kind":
            continue
        if key in ("type", "stage_kind", "stage_type", "trainer") or \
                difflib.get_close_matches(key, ["kind"], n=1, cutoff=0.5):
            return key
    return None


def _validate_stage(table: dict[str, Any], raw_defaults: dict[str, Any], block: Block,
                    name: str, file: str, problems: list[Problem]) -> spec.AnyStage | None:
    """One stage as its model, or None with every problem it has: a missing or unknown kind does
    not hide the stage's other typos (the rest is checked against the kind it most likely is)."""
    kind = table.get("kind")
    guess: str | None = kind if kind in spec.STAGE_MODELS else None
    skip: frozenset[str] = frozenset()
    if kind is None:
        typo = _kind_typo(table)
        value = table.get(typo) if typo else None
        if typo is not None:
            skip = frozenset({typo})
            if isinstance(value, str) and value in spec.STAGE_MODELS:
                guess = value
        problems.append(Problem(
            "the stage has no kind", file, block.line_of(typo) if typo else block.header,
            stage=name, field="kind",
            fix=(f"did you mean 'kind'? ({typo} = {value!r} is not a key)" if typo else
                 f"add kind = one of {', '.join(spec.STAGE_MODELS)}")))
    elif kind not in spec.STAGE_MODELS:
        close = difflib.get_close_matches(str(kind), list(spec.STAGE_MODELS), n=1, cutoff=0.6)
        guess = close[0] if close else None
        problems.append(Problem(f"unknown stage kind '{kind}'", file, block.line_of("kind"),
                                stage=name, field="kind",
                                fix=did_you_mean(str(kind), list(spec.STAGE_MODELS))))
    merged = {k: v for k, v in table.items() if k not in skip}
    if guess in spec.TRAINING_KINDS:
        merged["train"] = _merge(raw_defaults.get("train", {}), table.get("train", {}))
        if raw_defaults.get("trl") or "trl" in table:
            merged["trl"] = _merge(raw_defaults.get("trl", {}), table.get("trl", {}))
        if "lora" in table:
            merged["lora"] = _merge(raw_defaults.get("lora", {}), table["lora"])
    if guess is None:
        known = set().union(*(model_keys(m) for m in spec.STAGE_MODELS.values()))
        for key in table:
            if key not in known and key not in skip and key != "kind":
                problems.append(Problem(
                    f"unknown key '{key}'", file, block.line_of(key), stage=name, field=key,
                    fix=suggest_key(key, sorted(known - {"kind"}), "",
                                    {"train": model_keys(spec.Train),
                                     "lora": model_keys(spec.Lora)})))
        return None
    merged["kind"] = guess
    try:
        stage = _STAGE_ADAPTER.validate_python(merged)
    except ValidationError as exc:
        problems.extend(translate_errors(exc.errors(), file=file, block=block, stage=name,
                                         kind=guess, skip_keys=skip))
        return None
    return stage if guess == kind else None


def _key_line(text: str, key: str) -> int | None:
    pattern = re.compile(rf"^\s*{re.escape(key)}\s*=")
    for number, line in enumerate(text.splitlines(), start=1):
        if pattern.match(line):
            return number
    return None


def _check_shapes(raw: dict[str, Any], blocks: dict[str, list[Block]], text: str, file: str,
                  problems: list[Problem]) -> bool:
    """TOML shapes that parse but do not mean what the writer thinks: `[stage]` or `[foreach]`
    with one bracket, stages written inline (`stage = [{…}]`), `train = 5`. False when the stage
    tables cannot be placed in the file (nothing further is checked on them then)."""
    ok = True
    for name in ("stage", "foreach"):
        value = raw.get(name)
        header = next((b.header for b in blocks.get(name, [])), None)
        if isinstance(value, dict):
            problems.append(Problem(
                f"[{name}] is written with single brackets: TOML reads it as one table, not a "
                f"list of {name}s", file, header, field=name,
                fix=f"write [[{name}]] (two brackets) above each {name}"))
            ok = False
        elif isinstance(value, list) and len(value) != len(blocks.get(name, [])):
            problems.append(Problem(
                f"{name}s written inline (`{name} = [{{ … }}]`) cannot be given line numbers or "
                f"checked one by one", file, header or _key_line(text, name), field=name,
                fix=f"write each {name} as its own [[{name}]] table"))
            ok = False
        elif value is not None and not isinstance(value, list):
            problems.append(Problem(
                f"`{name}` must be a list of tables (got {value!r})", file,
                _key_line(text, name), field=name, fix=f"write each {name} as a [[{name}]] table"))
            ok = False
    return ok


def _merge(defaults: Any, given: Any) -> Any:
    """A stage's table over [defaults]'; a value that is not a table is left for the model to
    report (`train = 5`), never merged into a traceback."""
    if not isinstance(given, dict):
        return given
    return {**(defaults if isinstance(defaults, dict) else {}), **given}


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


def _read_toml(text: str, file: str) -> dict[str, Any]:
    """The file as TOML; PipelineError at the syntax error's line (nothing else can be read)."""
    try:
        return tomllib.loads(text)
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


def _validate_stages(tables: list[tuple[Any, Block, Any]], raw_defaults: dict[str, Any],
                     file: str, problems: list[Problem]) -> list[tuple[spec.AnyStage, Block]]:
    """Each expanded stage table as its model (with `[defaults]` merged), in file order; a
    table that does not validate, or a name used twice, adds its problems instead."""
    stages = []
    seen: dict[str, int] = {}
    for index, (table, block, _template) in enumerate(tables, start=1):
        if not isinstance(table, dict):
            problems.append(Problem("a stage must be a table", file, block.header,
                                    fix="write each stage as a [[stage]] table of `key = value`"))
            continue
        name = str(table.get("name", f"#{index}"))
        stage = _validate_stage(table, raw_defaults, block, name, file, problems)
        if stage is None:
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
    return stages


def parse(text: str, path: Path | str = "<pipeline>") -> PipelineFile:
    """Parse and validate the file's structure. Raises PipelineError with every problem found."""
    file = str(path)
    raw = _read_toml(text, file)
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

    raw_defaults, defaults = _read_defaults(raw, blocks, file, problems)

    cleanup_block = (blocks.get("cleanup") or [Block(1)])[0]
    cleanup = None
    if "cleanup" in raw:
        cleanup = _table(spec.Cleanup, raw["cleanup"], "cleanup", cleanup_block, file, problems)

    shapes_ok = _check_shapes(raw, blocks, text, file, problems)
    tables, origins = _expand_foreach(raw, blocks, file, problems) if shapes_ok else ([], {})
    if not tables and not problems:
        problems.append(
            Problem(
                "the pipeline has no stages", file, None, fix="add at least one [[stage]] table"
            )
        )
    stages = _validate_stages(tables, raw_defaults, file, problems)

    # file order: a reader fixes from the top; problems without a line (the whole file) first
    problems.sort(key=lambda p: p.line or 0)
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
            DEFAULTS_BLOCK: (blocks.get("defaults") or [Block(1)])[0],
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

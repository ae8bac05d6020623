"""The TRL knobs a training stage may set (docs/trackers.md), checked before anything trains.

`train` carries the common ones (optim, precision, max_grad_norm, packing, neftune_noise_alpha,
lr_scheduler_kwargs, max_prompt_length, use_liger_kernel); `trl = { … }` passes any other field
of the stage's TRL config (SFTConfig, DPOConfig, GRPOConfig).

`validate` runs in the console, which never imports torch or trl (tests/test_validate_light.py):
the config classes' field names are read from the installed sources with `ast` (a dataclass's
fields are its annotated class attributes, inherited in MRO order). Where a source cannot be
read that way the class is imported and asked with `dataclasses.fields` — slower, never wrong.
"""

from __future__ import annotations

import ast
import difflib
import functools
import importlib.util
import re
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from graftline.engine.pipeline import spec
from graftline.engine.pipeline.problems import Problem

if TYPE_CHECKING:
    from graftline.engine.pipeline.file import PipelineFile

# stage kind → (TRL module, config class)
CONFIG_CLASSES: dict[str, tuple[str, str]] = {
    "sft": ("trl.trainer.sft_config", "SFTConfig"),
    "dpo": ("trl.trainer.dpo_config", "DPOConfig"),
    "grpo": ("trl.trainer.grpo_config", "GRPOConfig"),
}
# Where a base class imported from a package's lazy __init__ really lives.
_KNOWN_HOMES = {"TrainingArguments": "transformers.training_args"}

# TRL config fields graftline sets itself → the graftline field to write instead. A `trl` key
# here would silently fight the engine (its output directory, the step counting the checks
# rely on, the trackers' grouping), so it is refused with the right field named.
OWNED: dict[str, str] = {
    "output_dir": "nothing: graftline writes each stage under the run directory",
    "learning_rate": "train.lr (and train.lr_multiplier)",
    "per_device_train_batch_size": "train.batch_size",
    "per_device_eval_batch_size": "train.batch_size",
    "gradient_accumulation_steps": "train.grad_accum",
    "warmup_steps": "train.warmup",
    "lr_scheduler_type": "train.scheduler",
    "lr_scheduler_kwargs": "train.lr_scheduler_kwargs",
    "weight_decay": "train.weight_decay",
    "logging_steps": "train.logging_steps",
    "eval_steps": "train.eval_steps",
    "logging_first_step": "nothing: the checks read the first step's log",
    "gradient_checkpointing": "train.gradient_checkpointing",
    "max_steps": "train.max_steps",
    "num_train_epochs": "train.epochs",
    "save_strategy": "train.save_steps",
    "save_steps": "train.save_steps",
    "save_total_limit": "[cleanup] keep",
    "max_length": "train.max_length",
    "max_prompt_length": "train.max_prompt_length",
    "bf16": "train.precision",
    "fp16": "train.precision",
    "use_cpu": "[pipeline] backend (the backend picks the device)",
    "optim": "train.optim",
    "max_grad_norm": "train.max_grad_norm",
    "packing": "train.packing",
    "neftune_noise_alpha": "train.neftune_noise_alpha",
    "use_liger_kernel": "train.use_liger_kernel",
    "report_to": "[pipeline] report_to",
    "run_name": "nothing: trackers group a run under its run id",
    "seed": "[pipeline] seed",
    "data_seed": "[pipeline] seed",
    "disable_tqdm": "nothing: progress reaches the console through the event log",
    "remove_unused_columns": "nothing: each stage keeps the columns it needs",
    "resume_from_checkpoint": "graftline resume",
    "assistant_only_loss": "the stage's assistant_only_loss",
    "loss_type": "the stage's loss",
    "beta": "the stage's beta",
    "precompute_ref_log_probs": "the stage's precompute_ref",
    "num_generations": "the stage's num_generations",
    "max_completion_length": "the stage's max_completion_length",
    "temperature": "the stage's temperature",
    "reward_weights": "the stage's reward_weights",
}

# CPU flags of bf16 arithmetic units (x86 AVX-512/AMX, Arm's BF16 extension)
_BF16_FLAGS = frozenset({"avx512_bf16", "amx_bf16", "bf16"})


class FieldsUnreadable(Exception):
    """The sources could not be read with `ast`; the caller imports the class instead."""


def _module_file(module: str) -> Path:
    """A module's source file, found without importing it (or its package)."""
    top, *rest = module.split(".")
    found = importlib.util.find_spec(top)
    if found is None or not found.submodule_search_locations:
        raise FieldsUnreadable(f"{top} is not installed")
    base = Path(next(iter(found.submodule_search_locations)))
    path = base.joinpath(*rest)
    for candidate in (path.with_suffix(".py"), path / "__init__.py"):
        if candidate.is_file():
            return candidate
    raise FieldsUnreadable(f"no source for {module}")


@functools.cache
def _tree(module: str) -> ast.Module:
    return ast.parse(_module_file(module).read_text(encoding="utf-8"))


def _class(module: str, name: str) -> ast.ClassDef:
    for node in _tree(module).body:
        if isinstance(node, ast.ClassDef) and node.name == name:
            return node
    raise FieldsUnreadable(f"no class {name} in {module}")


def _imported_from(module: str, name: str) -> str:
    """The module a class name used in `module` comes from."""
    if name in _KNOWN_HOMES:
        return _KNOWN_HOMES[name]
    for node in _tree(module).body:
        if isinstance(node, ast.ImportFrom) and any(a.name == name for a in node.names):
            if node.level:
                package = module.rsplit(".", node.level)[0]
                return f"{package}.{node.module}" if node.module else package
            return str(node.module)
    raise FieldsUnreadable(f"cannot tell where {name} comes from in {module}")


def _is_init_false(value: ast.expr | None) -> bool:
    return isinstance(value, ast.Call) and any(
        k.arg == "init" and isinstance(k.value, ast.Constant) and k.value.value is False
        for k in value.keywords)


def _ast_fields(module: str, name: str) -> dict[str, str]:
    """A config class's init fields and their annotations as written (e.g. "int | None")."""
    node = _class(module, name)
    fields: dict[str, str] = {}
    for base in node.bases:
        if not isinstance(base, ast.Name):
            raise FieldsUnreadable(f"{name}'s base is not a plain name")
        fields |= _ast_fields(_imported_from(module, base.id), base.id)
    for item in node.body:
        if (isinstance(item, ast.AnnAssign) and isinstance(item.target, ast.Name)
                and "ClassVar" not in ast.unparse(item.annotation)):
            if _is_init_false(item.value):
                fields.pop(item.target.id, None)
            else:
                fields[item.target.id] = ast.unparse(item.annotation)
    return fields


def imported_fields(kind: str) -> dict[str, str]:
    """The heavy way: import the config class and ask the dataclass (what the AST reading is
    tested against)."""
    import dataclasses
    import importlib

    module, name = CONFIG_CLASSES[kind]
    cls = getattr(importlib.import_module(module), name)
    return {f.name: _written(f.type) for f in dataclasses.fields(cls) if f.init}


def _written(annotation: object) -> str:
    """An imported annotation as the source writes it: `int`, not "<class 'int'>";
    `SchedulerType | str`, not "transformers.trainer_utils.SchedulerType | str"."""
    text = annotation.__name__ if isinstance(annotation, type) else str(annotation)
    return re.sub(r"\b(?:\w+\.)+(\w+)", r"\1", text)


@functools.cache
def config_annotations(kind: str) -> dict[str, str]:
    """Every field the stage kind's TRL config accepts as a keyword, with its annotation."""
    module, name = CONFIG_CLASSES[kind]
    try:
        return _ast_fields(module, name)
    except (FieldsUnreadable, OSError, SyntaxError, ValueError):
        return imported_fields(kind)


def config_fields(kind: str) -> frozenset[str]:
    """Every field the stage kind's TRL config accepts as a keyword."""
    return frozenset(config_annotations(kind))


# What a TOML value can be, by the annotation parts that take it (`float` takes an integer too).
_TAKES = {"bool": {"bool"}, "int": {"int"}, "float": {"float", "int"}, "str": {"str"},
          "list": {"list"}, "dict": {"dict"}, "None": set(), "Literal[False]": {"bool"},
          "Literal[True]": {"bool"}}
_SAY = {"bool": "true or false, without quotes", "int": "a whole number, without quotes",
        "float": "a number, without quotes", "str": "a quoted string", "list": "a list [ … ]",
        "dict": "a table { … }"}


def kinds_taken(annotation: str) -> set[str] | None:
    """The TOML value kinds an annotation such as "int | None" or "dict[str, Any] | str" takes;
    None when a part is not plain (an enum, Optional[…], a class): then no judgement."""
    taken: set[str] = set()
    for part in (p.strip() for p in annotation.split("|")):
        base = part.split("[", 1)[0] if part.startswith(("list[", "dict[")) else part
        if base not in _TAKES:
            return None
        taken |= _TAKES[base]
    return taken


def _kind_of(value: object) -> str:
    if isinstance(value, bool):
        return "bool"
    return {int: "int", float: "float", str: "str", list: "list", dict: "dict"}.get(
        type(value), type(value).__name__)


def value_kind_problem(kind: str, key: str, value: object) -> tuple[str, str] | None:
    """(what is wrong, the fix) when `value` cannot be what the config's field `key` is
    annotated to take (a string for a bool, a number for a string); None when it can, or when
    the annotation is not one this reading judges."""
    annotation = config_annotations(kind).get(key)
    taken = kinds_taken(annotation) if annotation is not None else None
    got = _kind_of(value)
    if taken is None or got in taken:
        return None
    wanted = [k for k in ("bool", "int", "float", "str", "list", "dict") if k in taken]
    shown = repr(value) if len(repr(value)) <= 40 else repr(value)[:37] + "..."
    return (f"is {annotation}, not the {got} {shown}",
            f"write {' or '.join(_SAY[k] for k in wanted if k != 'int' or 'float' not in wanted)}")


@functools.cache
def optimizer_names() -> frozenset[str]:
    """The values of transformers' OptimizerNames (what `optim` accepts)."""
    module = "transformers.training_args"
    try:
        node = _class(module, "OptimizerNames")
    except (FieldsUnreadable, OSError, SyntaxError):
        from transformers.training_args import OptimizerNames

        return frozenset(str(o.value) for o in OptimizerNames)
    return frozenset(item.value.value for item in node.body
                     if isinstance(item, ast.Assign) and isinstance(item.value, ast.Constant)
                     and isinstance(item.value.value, str))


def trl_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("trl")
    except PackageNotFoundError:
        return "?"


def cpu_has_bf16(cpuinfo: Path = Path("/proc/cpuinfo")) -> bool | None:
    """Whether the CPU has bf16 units; None when the system does not say (not Linux)."""
    try:
        text = cpuinfo.read_text(errors="replace")
    except OSError:
        return None
    for line in text.splitlines():
        if (line.lower().startswith(("flags", "features"))
                and _BF16_FLAGS & set(line.split(":", 1)[-1].split())):
            return True
    return False


def _line(pf: PipelineFile, stage: str, *keys: str) -> int | None:
    block = pf.blocks.get(stage)
    if block is None:
        return None
    for key in keys:
        if key in block.keys:
            return block.keys[key]
    return block.header


def _trl_line(pf: PipelineFile, stage: str, key: str) -> tuple[int | None, str]:
    """The line of a stage's `trl.<key>`, and " (from [defaults])" when the stage does not write
    it itself: [defaults]' trl applies to every training stage, and a key one kind's config
    lacks is reported for each stage of that kind at the [defaults] line."""
    from graftline.engine.pipeline.file import DEFAULTS_BLOCK

    block = pf.blocks.get(stage)
    own = block is not None and f"trl.{key}" in block.keys  # a sub-table's or inline key
    if own or key not in pf.pipeline.defaults.trl:
        return _line(pf, stage, f"trl.{key}", "trl"), ""
    return _line(pf, DEFAULTS_BLOCK, f"trl.{key}", "trl"), " (from [defaults])"


def _suggest(key: str, allowed: list[str], owned: dict[str, str] | None = None,
             otherwise: str = "see the TRL config's documentation for its fields") -> str:
    owned = owned or {}
    close = difflib.get_close_matches(key, [*allowed, *owned], n=3, cutoff=0.6)
    if close and close[0] in owned:  # a typo of a field graftline sets: name graftline's
        return f"did you mean '{close[0]}'? graftline sets it: use {owned[close[0]]}"
    if close:
        return f"did you mean {' or '.join(repr(c) for c in close)}?"
    return otherwise


def _has_cuda() -> bool:
    from graftline.engine.pipeline.scaleout import visible_gpus

    return visible_gpus() > 0


def stage_problems(pf: PipelineFile, stage: spec.TrainingStage, *, cuda: bool) -> Iterator[Problem]:
    kind = str(getattr(stage, "kind", ""))
    if kind not in CONFIG_CLASSES:
        return
    file, name, train = str(pf.path), stage.name, stage.train
    config = CONFIG_CLASSES[kind][1]

    def problem(message: str, field: str, line: int | None, fix: str) -> Problem:
        return Problem(message, file, line, name, field, fix)

    if stage.trl:
        fields = config_fields(kind)
        for key in stage.trl:
            line, source = _trl_line(pf, name, key)
            if key in OWNED:
                yield problem(f"trl.{key}{source} is set by graftline", f"trl.{key}", line,
                              f"use {OWNED[key]} instead")
            elif key in fields and (wrong := value_kind_problem(kind, key, stage.trl[key])):
                yield problem(f"trl.{key}{source}: {config}.{key} {wrong[0]}", f"trl.{key}",
                              line, wrong[1])
            elif key not in fields:
                allowed = sorted(fields - OWNED.keys())
                yield problem(f"trl.{key}{source}: TRL {trl_version()}'s {config} has no field "
                              f"'{key}'", f"trl.{key}", line,
                              _suggest(key, allowed, OWNED) + (
                                  f"; or set it in the {kind} stages' own `trl` instead of "
                                  "[defaults]" if source else ""))
    if train.packing and kind != "sft":
        yield problem(f"packing is for SFT only ({kind} stages do not pack)", "train.packing",
                      _line(pf, name, "packing", "train"),
                      "set packing in the SFT stages' own train tables, not here or in "
                      "[defaults]")
    if train.max_prompt_length is not None and "max_prompt_length" not in config_fields(kind):
        yield problem(f"TRL {trl_version()}'s {config} has no max_prompt_length (TRL 1.x "
                      "truncates prompt and completion together)", "train.max_prompt_length",
                      _line(pf, name, "max_prompt_length", "train"),
                      "remove it and bound the whole sequence with train.max_length"
                      + (" (trl = { truncation_mode = … } picks the side)" if kind == "dpo"
                         else ""))
    if train.use_liger_kernel and importlib.util.find_spec("liger_kernel") is None:
        yield problem("use_liger_kernel needs the liger-kernel package, which is not installed",
                      "train.use_liger_kernel", _line(pf, name, "use_liger_kernel", "train"),
                      "pip install liger-kernel (it needs a CUDA GPU), or remove use_liger_kernel")
    if train.optim is not None:
        names = optimizer_names()
        if train.optim not in names:
            yield problem(f"unknown optim '{train.optim}'", "train.optim",
                          _line(pf, name, "optim", "train"),
                          _suggest(train.optim, sorted(names),
                                   otherwise="see transformers' OptimizerNames for the names"))
    if train.precision == "bf16" and not cuda and cpu_has_bf16() is False:
        yield problem("precision = bf16 on a CPU without bf16 units (no avx512_bf16/amx_bf16): "
                      "slower than fp32 and it changes results", "train.precision",
                      _line(pf, name, "precision", "train"),
                      'use precision = "auto" (or "fp32") on this machine')
    if train.precision == "fp16" and not cuda:
        yield problem("precision = fp16 needs a CUDA GPU; none is visible", "train.precision",
                      _line(pf, name, "precision", "train"),
                      'use precision = "auto" (or "fp32") on this machine')


def problems(pf: PipelineFile) -> list[Problem]:
    """Every knob problem of every training stage. Reads TRL's sources only for stages that use
    `trl = { … }`, max_prompt_length or optim; asks NVML only when a precision is forced."""
    stages = [s for s in pf.pipeline.stage if isinstance(s, spec.TrainingStage)]
    forced = any(s.train.precision in ("bf16", "fp16") for s in stages)
    cuda = _has_cuda() if forced else False
    return [p for s in stages for p in stage_problems(pf, s, cuda=cuda)]

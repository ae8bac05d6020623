"""Problems found in a pipeline file: each names the file, line, stage and field, and a fix."""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from typing import Literal, TypedDict

from graftline.engine.common.errors import GraftlineError


class Where(TypedDict):
    """Where a problem sits, for `Problem(message, **where, fix=...)`."""

    file: str
    line: int | None
    stage: str | None
    field: str | None


def moved(at: Where, *, field: str | None, line: int | None = None) -> Where:
    """`at` pointing at another field (and, when given, another line) of the same stage."""
    return Where(file=at["file"], line=at["line"] if line is None else line, stage=at["stage"],
                 field=field)


class InStage(TypedDict):
    """A stage's file and name, for problems that give their own line and field."""

    file: str
    stage: str | None


@dataclass(frozen=True)
class Problem:
    message: str
    file: str
    line: int | None = None
    stage: str | None = None
    field: str | None = None
    fix: str | None = None
    severity: Literal["error", "warning"] = "error"
    # A stable name for problems that code reacts to (e.g. "disk_forecast"); never parse `message`.
    code: str | None = None

    @property
    def where(self) -> str:
        place = self.file + (f":{self.line}" if self.line else "")
        parts = [place]
        if self.stage:
            parts.append(f"stage '{self.stage}'")
        if self.field:
            parts.append(f"field '{self.field}'")
        return ", ".join(parts)

    def __str__(self) -> str:
        text = f"{self.where}: {self.severity}: {self.message}"
        return text + (f"\n    fix: {self.fix}" if self.fix else "")


class PipelineError(GraftlineError):
    """A pipeline file cannot be used. Carries every problem found, not just the first."""

    def __init__(self, problems: list[Problem]) -> None:
        self.problems = problems
        text = "\n".join(str(p) for p in problems)
        super().__init__(text, "each problem above names its own fix", text=text)

    @property
    def errors(self) -> list[Problem]:
        return [p for p in self.problems if p.severity == "error"]


def did_you_mean(word: str, choices: list[str]) -> str:
    close = difflib.get_close_matches(word, choices, n=1, cutoff=0.6)
    return f"did you mean '{close[0]}'?" if close else f"expected one of: {', '.join(choices)}"


# Names users bring from TRL / transformers' TrainingArguments, PEFT's LoraConfig, Axolotl and
# LLaMA-Factory, mapped to graftline's key and the table it lives in ("" = the stage itself,
# "pipeline" = the [pipeline] table).
FOREIGN_NAMES: dict[str, tuple[str, str]] = {
    "learning_rate": ("lr", "train"),
    "num_train_epochs": ("epochs", "train"),
    "num_epochs": ("epochs", "train"),
    "per_device_train_batch_size": ("batch_size", "train"),
    "train_batch_size": ("batch_size", "train"),
    "micro_batch_size": ("batch_size", "train"),
    "gradient_accumulation_steps": ("grad_accum", "train"),
    "gradient_accumulation": ("grad_accum", "train"),
    "warmup_steps": ("warmup", "train"),
    "warmup_ratio": ("warmup", "train"),
    "max_seq_length": ("max_length", "train"),
    "max_seq_len": ("max_length", "train"),
    "sequence_len": ("max_length", "train"),
    "cutoff_len": ("max_length", "train"),
    "lr_scheduler_type": ("scheduler", "train"),
    "lr_scheduler": ("scheduler", "train"),
    "save_total_limit": ("save_steps", "train"),
    "lora_r": ("r", "lora"),
    "lora_rank": ("r", "lora"),
    "rank": ("r", "lora"),
    "lora_alpha": ("alpha", "lora"),
    "lora_dropout": ("dropout", "lora"),
    "lora_target_modules": ("target_modules", "lora"),
    "lora_target": ("target_modules", "lora"),
    "loss_type": ("loss", ""),
    "pref_loss": ("loss", ""),
    "pref_beta": ("beta", ""),
    "dpo_beta": ("beta", ""),
    "reward_funcs": ("reward", ""),
    "reward_func": ("reward", ""),
    "dataset": ("data", ""),
    "datasets": ("data", ""),
    "train_dataset": ("data", ""),
    "dataset_path": ("data", ""),
    "eval_dataset": ("eval_data", ""),
    "model_name_or_path": ("base", "pipeline"),
    "base_model": ("base", "pipeline"),
    "model": ("base", "pipeline"),
    "output_dir": ("runs_dir", "pipeline"),
}
_TABLE_WORDS = {"train": "train = { … }", "lora": "lora = { … }", "": "the stage",
                "pipeline": "[pipeline]"}
_NOTES = {"warmup_ratio": " (graftline counts warmup in steps)",
          "save_total_limit": " (graftline keeps checkpoints by `[cleanup] keep`)"}


def suggest_key(word: str, choices: list[str], table: str,
                elsewhere: dict[str, list[str]] | None = None) -> str:
    """The fix for an unknown key `word` in `table` ("train", "lora", "" for a stage, "pipeline",
    "defaults"...): a name from another tool mapped to ours, a key that belongs in another table,
    or the closest spelling."""
    elsewhere = elsewhere or {}
    if word in ("stage", "foreach", "defaults", "cleanup", "pipeline") and table != "":
        return (f"TOML puts every key below a [header] into that table, so `{word} = …` here "
                f"is read as part of it: write [[{word}]] tables (or [{word}]) instead")
    foreign = FOREIGN_NAMES.get(word)
    if foreign is not None:
        target, home = foreign
        note = _NOTES.get(word, "")
        if target in choices and (home == table or not home or home not in elsewhere):
            return f"did you mean '{target}'? ('{word}' is another tool's name for it){note}"
        if home in elsewhere:
            return (f"did you mean '{target}' in {_TABLE_WORDS.get(home, home)}? "
                    f"('{word}' is another tool's name for it){note}")
    for home, keys in elsewhere.items():
        if word in keys:
            return f"'{word}' belongs in {_TABLE_WORDS.get(home, home)}"
    close = difflib.get_close_matches(word, choices, n=1, cutoff=0.6)
    if close:
        return f"did you mean '{close[0]}'?"
    for home, keys in elsewhere.items():
        near = difflib.get_close_matches(word, keys, n=1, cutoff=0.75)
        if near:
            return f"did you mean '{near[0]}' in {_TABLE_WORDS.get(home, home)}?"
    return f"expected one of: {', '.join(choices)}"


def fix_for(error_type: str, ctx: dict | None, field: str, given: object) -> str:
    """A fix line for a pydantic type or range error, in the words of the pipeline file."""
    ctx = ctx or {}
    key = field.rsplit(".", 1)[-1] if field else "the value"
    if error_type in ("greater_than", "greater_than_equal", "less_than", "less_than_equal"):
        sign = {"greater_than": ">", "greater_than_equal": "≥", "less_than": "<",
                "less_than_equal": "≤"}[error_type]
        bound = next(iter(v for k, v in ctx.items() if k in ("gt", "ge", "lt", "le")), "")
        return f"use a {key} {sign} {bound}"
    if error_type in ("int_type", "int_parsing", "int_from_float"):
        return f"write a whole number without quotes, e.g. `{key} = 100`"
    if error_type in ("float_type", "float_parsing"):
        return f"write a number without quotes, e.g. `{key} = 2e-4`"
    if error_type in ("bool_type", "bool_parsing"):
        return f"write `{key} = true` or `{key} = false` (no quotes)"
    if error_type in ("string_type",):
        return f'put the value in quotes: `{key} = "…"`'
    if error_type == "literal_error":
        expected = str(ctx.get("expected", ""))
        options = [o.strip().strip("'\"") for o in expected.replace(" or ", ", ").split(",")]
        options = [o for o in options if o]
        if isinstance(given, str) and options:
            close = difflib.get_close_matches(given, options, n=1, cutoff=0.6)
            if close:
                return f"did you mean '{close[0]}'? ({key} is one of: {', '.join(options)})"
        return f"{key} is one of: {', '.join(options) or expected}"
    if error_type == "string_pattern_mismatch":
        return "use letters, digits, `_`, `.` and `-`, starting with a letter"
    if error_type in ("string_too_short",):
        return f"{key} must not be empty"
    if error_type in ("too_short",):
        return f"give at least {ctx.get('min_length', 1)} item(s): `{key} = [\"…\"]`"
    if error_type in ("list_type", "tuple_type"):
        return f'write a list: `{key} = ["…"]`'
    if error_type in ("model_type", "dict_type", "model_attributes_type"):
        example = {"train": "max_steps = 100, lr = 2e-4", "lora": "r = 16, alpha = 32"}
        return f"write a table: `{key} = {{ {example.get(key, 'key = value')} }}`"
    if error_type in ("union_tag_invalid", "union_tag_not_found"):
        return "set `kind` to a stage kind"
    return f"change `{key}` to a valid value"

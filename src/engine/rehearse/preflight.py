"""What a rehearsal checks before a stage runs, on the real data, template and reward functions.

These are the faults that otherwise surface hours in, as a library traceback far from their
cause: rows whose required field is empty, a chat template that drops the assistant's turn (or
has no `{% generation %}` markers when only the assistant's tokens should be trained on), and a
reward function that raises on some outputs a model can produce. Each is reported as a
`Finding` for the stage that would meet it, with what was seen, the cause and the fix.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from graftline.engine.pipeline.peek import REQUIRED_COLUMNS

# What a random twin (or a real model early in GRPO) may answer: the reward must score them all.
PROBE_COMPLETIONS = ("", " ", "0", "hello", "12 + 7 = ?", "{\"tool\": null}", "x" * 200)
PROBE_ROWS = 3


@dataclass(frozen=True)
class Finding:
    stage: str
    field: str
    message: str
    cause: str = ""
    fix: str = ""


def required_columns(kind: str, columns: Iterable[str]) -> tuple[str, ...]:
    have = set(columns)
    for option in REQUIRED_COLUMNS.get(kind, ()):
        if set(option) <= have:
            return option
    return ()


def _empty(value: Any) -> bool:
    if value is None:
        return True
    if isinstance(value, str):
        return not value.strip()
    if isinstance(value, list | dict):
        return len(value) == 0
    return False


def empty_fields(rows: Sequence[dict[str, Any]], columns: Sequence[str]
                 ) -> dict[str, list[int]]:
    """Column → the 1-based row numbers where that required column is missing or empty."""
    found: dict[str, list[int]] = {}
    for number, row in enumerate(rows, start=1):
        for column in columns:
            if _empty(row.get(column)):
                found.setdefault(column, []).append(number)
    return found


def data_finding(stage: str, field: str, path: str, kind: str,
                 rows: Sequence[dict[str, Any]]) -> Finding | None:
    columns = required_columns(kind, rows[0].keys() if rows else ())
    empty = empty_fields(rows, columns)
    if not empty:
        return None
    parts = []
    for column, numbers in empty.items():
        shown = ", ".join(str(n) for n in numbers[:5]) + (" …" if len(numbers) > 5 else "")
        parts.append(f"`{column}` is empty or null in {len(numbers)} of {len(rows)} rows "
                     f"(rows {shown})")
    return Finding(stage, field, f"{path}: " + "; ".join(parts),
                   cause=f"a {kind} stage needs every row to have {', '.join(columns)}",
                   fix="fill in or drop those rows (a row's number is its line in a JSONL file)")


# ---------------------------------------------------------------- chat template

def _conversation(kind: str, row: dict[str, Any]) -> tuple[list[dict], str | None] | None:
    """(messages, the assistant reply that must appear) for a conversational row, else None."""
    prompt = row.get("prompt")
    if isinstance(row.get("messages"), list):
        messages = row["messages"]
    elif isinstance(prompt, list):
        answer = row.get("completion") if kind in ("sft", "eval") else row.get("chosen")
        messages = prompt + (answer if isinstance(answer, list) else [])
    else:
        return None
    replies = [m.get("content") for m in messages
               if isinstance(m, dict) and m.get("role") == "assistant"]
    reply = replies[-1] if replies and isinstance(replies[-1], str) and replies[-1].strip() \
        else None
    return messages, reply


def template_finding(stage: str, field: str, kind: str, tokenizer: Any,
                     rows: Sequence[dict[str, Any]], *, assistant_only_loss: bool = False
                     ) -> Finding | None:
    """Render the data's first conversational row with the model's chat template."""
    for number, row in enumerate(rows, start=1):
        found = _conversation(kind, row)
        if found is None:
            continue
        messages, reply = found
        if not getattr(tokenizer, "chat_template", None):
            return Finding(stage, field, "the data is conversational but the tokenizer has no "
                           "chat template", cause="the base's tokenizer_config.json has no "
                           "chat_template", fix="use a chat model's tokenizer, or give the data "
                           "as plain text / prompt-completion strings")
        generation_prompt = reply is None  # prompts only (GRPO, generate): the model answers
        try:
            text = tokenizer.apply_chat_template(messages, tokenize=False,
                                                 add_generation_prompt=generation_prompt)
        except Exception as exc:  # the template itself is broken: report it whole
            return Finding(stage, field, f"the chat template fails on row {number}: "
                           f"{type(exc).__name__}: {exc}", cause="a Jinja error in the "
                           "tokenizer's chat_template", fix="fix the chat_template in the base's "
                           "tokenizer_config.json (or chat_template.jinja)")
        if reply is not None and reply.strip() not in text:
            return Finding(stage, field, f"the chat template drops the assistant turn: row "
                           f"{number} rendered without its reply {reply.strip()[:40]!r}",
                           cause="the template writes no assistant messages, so training would "
                                 "see prompts with nothing to learn",
                           fix="fix the assistant branch of the chat_template in the base's "
                               "tokenizer_config.json (or chat_template.jinja)")
        if reply is not None and assistant_only_loss:
            try:
                enc = tokenizer.apply_chat_template(messages, tokenize=True, return_dict=True,
                                                    return_assistant_tokens_mask=True)
                masked = sum(enc.get("assistant_masks") or [])
            except Exception:
                masked = 0
            if not masked:
                return Finding(stage, "assistant_only_loss", "assistant_only_loss = true but the "
                               "chat template marks no assistant tokens",
                               cause="the template has no {% generation %} … {% endgeneration %} "
                                     "around the assistant's reply, so every token is masked",
                               fix="add {% generation %} markers to the template, or set "
                                   "assistant_only_loss = false")
        return None
    return None


# ---------------------------------------------------------------- reward functions

def _batch(rows: Sequence[dict[str, Any]], texts: Sequence[str], tokenizer: Any
           ) -> dict[str, Any]:
    pairs = [(row, text) for row in rows for text in texts]
    columns = {key for row, _ in pairs for key in row if key not in ("prompt", "completion")}
    prompts = [row.get("prompt") for row, _ in pairs]
    completions = [[{"role": "assistant", "content": text}] if isinstance(row.get("prompt"), list)
                   else text for row, text in pairs]
    ids = [list(tokenizer(text, add_special_tokens=False)["input_ids"]) for _, text in pairs]
    extra = {key: [row.get(key) for row, _ in pairs] for key in columns}
    return {"prompts": prompts, "completions": completions, "completion_ids": ids, **extra}


def _call(fn: Callable[..., Any], batch: dict[str, Any]) -> Any:
    from transformers import TrainerState

    return fn(batch["prompts"], batch["completions"], completion_ids=batch["completion_ids"],
              trainer_state=TrainerState(),
              **{k: v for k, v in batch.items()
                 if k not in ("prompts", "completions", "completion_ids")})


def reward_finding(stage: str, name: str, fn: Callable[..., Any], tokenizer: Any,
                   rows: Sequence[dict[str, Any]]) -> Finding | None:
    """Call the real reward function on outputs a model may produce; it must score them all."""
    rows = list(rows[:PROBE_ROWS])
    if not rows:
        return None
    texts = list(PROBE_COMPLETIONS)
    answer = rows[0].get("answer")
    if isinstance(answer, str | int | float):
        texts.append(str(answer))
    batch = _batch(rows, texts, tokenizer)
    try:
        scores = _call(fn, batch)
    except Exception as exc:
        bad = _first_failing(fn, rows, texts, tokenizer)
        shown = f" on the completion {bad!r}" if bad is not None else ""
        return Finding(stage, "reward", f"reward '{name}' raised {type(exc).__name__}: {exc}"
                       f"{shown}", cause="the function does not handle every output a model "
                       "can produce (early in training, and on a twin, outputs are arbitrary)",
                       fix=f"make '{name}' return 0.0 (or None) for outputs it cannot score "
                           "instead of raising")
    size = len(batch["prompts"])
    if not isinstance(scores, list | tuple) or len(scores) != size:
        got = f"{len(scores)} values" if isinstance(scores, list | tuple) else type(scores).__name__
        return Finding(stage, "reward", f"reward '{name}' returned {got} for {size} completions",
                       fix="return one float (or None) per completion, as a list")
    wrong = [s for s in scores if s is not None and not isinstance(s, int | float)]
    if wrong:
        return Finding(stage, "reward", f"reward '{name}' returned a {type(wrong[0]).__name__} "
                       f"({wrong[0]!r}), not a number", fix="return floats (or None)")
    return None


def _first_failing(fn: Callable[..., Any], rows: Sequence[dict[str, Any]], texts: list[str],
                   tokenizer: Any) -> str | None:
    for row in rows:
        for text in texts:
            try:
                _call(fn, _batch([row], [text], tokenizer))
            except Exception:
                return text
    return None

"""Eval: held-out loss on the completions, exact-match accuracy, and whether the model ends its
turn after a right answer, into evaluation.json."""

from __future__ import annotations

from typing import Any

import torch

from graftline.engine.pipeline import spec
from graftline.engine.pipeline.rewards import completion_text
from graftline.engine.stages import checks
from graftline.engine.stages.context import StageContext, StageOutcome
from graftline.engine.stages.generate import complete, prompt_text
from graftline.engine.stages.loading import load_checkpoint_model
from graftline.engine.stages.stage_data import stage_rows

BATCH = 64


def _pair(tokenizer: Any, row: dict[str, Any]) -> tuple[str, str]:
    """(prompt text, full text) of a row in any of the accepted formats."""
    if "messages" in row:
        messages = row["messages"]
        prompt = tokenizer.apply_chat_template(messages[:-1], tokenize=False,
                                               add_generation_prompt=True)
        return prompt, tokenizer.apply_chat_template(messages, tokenize=False)
    if "text" in row:
        return "", row["text"]
    prompt, completion = row["prompt"], row["completion"]
    if isinstance(prompt, list):
        return (prompt_text(tokenizer, prompt),
                tokenizer.apply_chat_template(prompt + completion, tokenize=False))
    return str(prompt), str(prompt) + str(completion)


@torch.no_grad()
def completion_loss(model: Any, tokenizer: Any, rows: list[dict[str, Any]]) -> float:
    """Mean token cross-entropy over the completion tokens only (the whole text for `text`)."""
    model.eval()
    total, count = 0.0, 0
    chat = bool(getattr(tokenizer, "chat_template", None))
    for i in range(0, len(rows), BATCH):
        ids_list, labels_list = [], []
        for row in rows[i:i + BATCH]:
            prompt, full = _pair(tokenizer, row)
            p_ids = tokenizer(prompt, add_special_tokens=not chat)["input_ids"] if prompt else []
            f_ids = tokenizer(full, add_special_tokens=not chat)["input_ids"]
            labels = [-100] * len(p_ids) + f_ids[len(p_ids):]
            ids_list.append(f_ids)
            labels_list.append(labels)
        width = max(len(x) for x in ids_list)
        pad = tokenizer.pad_token_id
        ids = torch.tensor([x + [pad] * (width - len(x)) for x in ids_list])
        labels = torch.tensor([x + [-100] * (width - len(x)) for x in labels_list])
        mask = (torch.arange(width)[None, :] < torch.tensor([len(x) for x in ids_list])[:, None])
        logits = model(input_ids=ids.to(model.device), attention_mask=mask.to(model.device)).logits
        shift = logits[:, :-1].float().cpu()
        target = labels[:, 1:]
        loss = torch.nn.functional.cross_entropy(shift.reshape(-1, shift.shape[-1]),
                                                 target.reshape(-1), ignore_index=-100,
                                                 reduction="sum")
        total += float(loss)
        count += int((target != -100).sum())
    return total / max(1, count)


@torch.no_grad()
def end_of_turn_probability(model: Any, tokenizer: Any, rows: list[dict[str, Any]],
                            answers: list[str | None], *,
                            targets: tuple[list[list[int]], list[int]] | None = None
                            ) -> float | None:
    """The mean probability of the chat template's end-of-turn token right after each row's
    expected answer, teacher-forced. A model that answers right but does not stop (its base never
    learned the template's end token, whose `lm_head` row no LoRA on the linear layers trains)
    shows it here, where greedy exact match does not. None without chat rows to measure.
    `targets`: `end_of_turn_targets` of these rows, when the caller measures them more than once
    (a training stage, before and after)."""
    model.eval()
    prefixes, ends = targets if targets is not None else end_of_turn_targets(tokenizer, rows,
                                                                              answers)
    if not prefixes:
        return None
    total = 0.0
    for i in range(0, len(prefixes), BATCH):
        chunk, wanted = prefixes[i:i + BATCH], ends[i:i + BATCH]
        width = max(len(x) for x in chunk)
        ids = torch.tensor([x + [tokenizer.pad_token_id or 0] * (width - len(x)) for x in chunk])
        lengths = torch.tensor([len(x) for x in chunk])
        mask = torch.arange(width)[None, :] < lengths[:, None]
        logits = model(input_ids=ids.to(model.device),
                       attention_mask=mask.to(model.device)).logits.float().cpu()
        last = logits[torch.arange(len(chunk)), lengths - 1].softmax(-1)
        total += float(last[torch.arange(len(chunk)), torch.tensor(wanted)].sum())
    return total / len(prefixes)


def end_of_turn_targets(tokenizer: Any, rows: list[dict[str, Any]], answers: list[str | None]
                        ) -> tuple[list[list[int]], list[int]]:
    """(prompt + answer token ids, the token the chat template writes right after the answer)
    for each chat row with an answer whose tokens do not merge across the turn's end."""
    prefixes: list[list[int]] = []
    ends: list[int] = []
    for row, answer in zip(rows, answers, strict=True):
        prompt = row.get("prompt")
        if not isinstance(prompt, list) or answer is None:
            continue
        head = tokenizer(prompt_text(tokenizer, prompt) + answer,
                         add_special_tokens=False)["input_ids"]
        full = tokenizer(tokenizer.apply_chat_template(
            [*prompt, {"role": "assistant", "content": answer}], tokenize=False),
            add_special_tokens=False)["input_ids"]
        if len(full) > len(head) and full[:len(head)] == head:  # else the tokens merged across
            prefixes.append(head)
            ends.append(full[len(head)])
    return prefixes, ends


def expected_answer(row: dict[str, Any], *, preferred: bool = False) -> str | None:
    """The answer a row expects: its `answer`, else its completion; with `preferred`, a
    preference row's `chosen` too."""
    if "answer" in row:
        return str(row["answer"]).strip()
    if "completion" in row:
        return completion_text(row["completion"]).strip()
    if preferred and "chosen" in row:
        return completion_text(row["chosen"]).strip()
    return None


def answered_rows(rows: Any, limit: int) -> tuple[list[dict[str, Any]], list[str | None]]:
    """Up to `limit` chat rows of a stage's data that carry an expected answer (prompt +
    completion, prompt + answer, a preference row's chosen, or a conversation ending in the
    assistant's turn), as (rows with a `prompt` conversation, answers)."""
    picked: list[dict[str, Any]] = []
    answers: list[str | None] = []
    for row in rows:
        messages = row.get("messages")
        if isinstance(messages, list) and messages and messages[-1].get("role") == "assistant":
            row = {"prompt": messages[:-1], "completion": [messages[-1]]}
        answer = expected_answer(row, preferred=True)
        if isinstance(row.get("prompt"), list) and answer:
            picked.append(row)
            answers.append(answer)
            if len(picked) >= limit:
                break
    return picked, answers


def run(ctx: StageContext) -> StageOutcome:
    stage = ctx.spec_as(spec.EvalStage)
    model, tokenizer, _ = load_checkpoint_model(ctx, ctx.step.parent)
    log = checks.CheckLog(ctx.name, ctx.sink)
    rows = stage_rows(ctx, stage, "data", "eval", log).to_list()
    if stage.limit:
        rows = rows[:stage.limit]
    evaluation: dict[str, float] = {"rows": float(len(rows))}
    if "loss" in stage.metrics:
        evaluation["loss"] = completion_loss(model, tokenizer, rows)
    answers = [expected_answer(r) for r in rows]
    if "exact_match" in stage.metrics and "prompt" in rows[0] and all(
            a is not None for a in answers):
        longest = max(len(tokenizer(a, add_special_tokens=False)["input_ids"]) for a in answers)
        got = complete(model, tokenizer, [r["prompt"] for r in rows],
                       max_new_tokens=longest + 2)
        evaluation["exact_match"] = sum(g == a for g, a in zip(got, answers, strict=True)) \
            / max(1, len(rows))
    if "end_of_turn" in stage.metrics:
        ended = end_of_turn_probability(model, tokenizer, rows, answers)
        if ended is not None:
            evaluation["end_of_turn"] = ended
    outcome = StageOutcome(kind=None, evaluation=evaluation, checks=log)
    return outcome

"""The probes a stage asks its model, and their answers as `samples` events (with the data's own
answer when the probe is one of its prompts)."""

from __future__ import annotations

from typing import Any

from graftline.engine.common.event_types import Samples
from graftline.engine.common.sink import emit_record
from graftline.engine.stages.context import StageContext


def probe_prompts(ctx: StageContext, rows: Any = None, count: int = 4,
                  at_least: bool = False) -> list[str]:
    """The pipeline's probes, or the first prompts of the stage's own data. With `at_least`,
    the pipeline's probes topped up from the data to `count` (a collapse is judged on enough)."""
    if ctx.probes and not (at_least and len(ctx.probes) < count):
        return list(ctx.probes)
    found: list[str] = list(ctx.probes)
    if rows is not None and "prompt" in rows.column_names:
        for prompt in rows.select(range(min(count * 2, len(rows))))["prompt"]:
            if len(found) >= count:
                break
            if isinstance(prompt, list):
                users = [m.get("content", "") for m in prompt if m.get("role") == "user"]
                text = users[-1] if users else ""
            else:
                text = str(prompt)
            if text and text not in found:
                found.append(text)
    return [p for p in found if p] or ["Hello", "1+1"]


SAMPLE_PROBES = 8  # probes kept per sample event (the summary keeps the same)


SAMPLE_CHARS = 160  # characters kept per answer


def emit_samples(ctx: StageContext, when: str, probes: list[str], said: list[Any],
                 step: int | None = None, expected: dict[str, str] | None = None) -> None:
    """What the model answers to the probes (greedy, bounded), as a `samples` event: `when`
    start, eval (during training) or end of the stage, `step` the stage's step (sent on the
    run's global axis), `samples` [{prompt, answer, expected?}]: `expected`, the data's own
    answer to that prompt, when the data has one."""
    # the pipeline's own probes when it names them: the collapse check tops them up with rows
    # of the data, which are not what the user chose to read
    shown = min(SAMPLE_PROBES, len(ctx.probes) or len(probes))
    rows = []
    for p, g in zip(probes[:shown], said, strict=False):
        row = {"prompt": str(p)[:SAMPLE_CHARS], "answer": str(getattr(g, "text", g))[:SAMPLE_CHARS]}
        if expected and expected.get(str(p)):
            row["expected"] = expected[str(p)][:SAMPLE_CHARS]
        rows.append(row)
    emit_record(ctx.sink, ctx.name, Samples(
        when=when, kind=ctx.kind, samples=rows, global_step=ctx.global_step_offset + (step or 0)))


def _answer_text(value: Any) -> str:
    """A completion or chosen answer as text: a conversation's assistant turns, or the text."""
    if isinstance(value, list):
        return "".join(str(m.get("content", "")) for m in value
                       if isinstance(m, dict) and m.get("role") == "assistant")
    return "" if value is None else str(value)


def expected_answers(rows: Any, probes: list[str], scan: int = 256) -> dict[str, str]:
    """The data's own answer to each probe that is one of its prompts (`completion`, else
    `chosen`), from the first `scan` rows; {} when the data has none (GRPO prompts, text)."""
    if rows is None or "prompt" not in rows.column_names:
        return {}
    column = next((c for c in ("completion", "chosen") if c in rows.column_names), None)
    if column is None:
        return {}
    wanted, found = set(probes), {}
    head = rows.select(range(min(scan, len(rows))))
    for prompt, answer in zip(head["prompt"], head[column], strict=True):
        if isinstance(prompt, list):
            users = [m.get("content", "") for m in prompt if m.get("role") == "user"]
            text = str(users[-1]) if users else ""
        else:
            text = str(prompt)
        if text in wanted and text not in found and (said := _answer_text(answer)):
            found[text] = said
    return found

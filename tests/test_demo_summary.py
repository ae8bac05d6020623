"""The demo's last lines say what the chain learned, in numbers, and judge it against ≥ 90%."""

from __future__ import annotations

from graftline.console.commands.demo import summary_lines
from graftline.engine.run.events import Event


def _finished(seq: int, stage: str, kind: str, metrics: dict | None = None,
              evaluation: dict | None = None, status: str = "complete") -> Event:
    return Event(seq, 0.0, "stage_finished", stage,
                 {"kind": kind, "status": status, "metrics": metrics or {},
                  "evaluation": evaluation or {}})


def test_a_chain_that_learned_says_so_in_numbers() -> None:
    lines = summary_lines([
        _finished(1, "sft", "sft", evaluation={"exact_match": 0.56}),
        _finished(2, "grpo", "grpo", metrics={"reward_start": 0.5, "reward_end": 0.71}),
        _finished(3, "eval", "eval", evaluation={"exact_match": 0.953, "end_of_turn": 0.987}),
    ])
    assert lines == [
        "  sft: held-out chat exact match 56.0%",
        "  grpo: reward 0.500 → 0.710 (rising)",
        "  eval: held-out chat exact match 95.3%",
        "  eval: P(end of turn) right after a right answer 0.99 (a model that stops: near 1)",
        "the demo learned: final exact match 95.3% (goal ≥ 90%), GRPO reward rose",
    ]


def test_a_weak_chain_is_called_weak() -> None:
    lines = summary_lines([
        _finished(1, "grpo", "grpo", metrics={"reward_start": 0.02, "reward_end": 0.0}),
        _finished(2, "eval", "eval", evaluation={"exact_match": 0.096}),
        _finished(3, "x", "sft", evaluation={"exact_match": 1.0}, status="failed"),
    ])
    assert "NOT rising" in lines[0]
    assert lines[-1].startswith("the demo did NOT learn as it should: final exact match 9.6%")
    assert summary_lines([]) == []

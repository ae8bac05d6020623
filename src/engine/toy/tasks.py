"""The toy task: two-digit addition. Pure functions, deterministic from a seed.

A fixed random tenth of all pairs is held out from every training set, so the eval set measures
generalisation, not recall. (A structured hold-out such as "b ends in 0" would hide a whole digit
position from training and make the task unlearnable for those pairs.)
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass


@dataclass(frozen=True)
class Sum:
    a: int
    b: int

    @property
    def question(self) -> str:
        return f"{self.a}+{self.b}"

    @property
    def answer(self) -> str:
        return str(self.a + self.b)

    @property
    def held_out(self) -> bool:
        return (self.a, self.b) in _HELD_OUT


def _held_out_pairs() -> frozenset[tuple[int, int]]:
    pairs = [(a, b) for a in range(10, 100) for b in range(10, 100)]
    return frozenset(random.Random(1234).sample(pairs, len(pairs) // 10))


_HELD_OUT = _held_out_pairs()


def carries(s: Sum) -> bool:
    return s.a % 10 + s.b % 10 >= 10


def topic_of(s: Sum) -> str:
    """Two "topics" for the per-topic workflow: small and large first operands."""
    return "low" if s.a < 55 else "high"


# The 8,100 sums, built once: a training set or a check asks for them hundreds of times in a
# process, and each caller gets its own list (a copy, 30 µs) to filter or shuffle.
_ALL = tuple(Sum(a, b) for a in range(10, 100) for b in range(10, 100))
_TRAIN = tuple(s for s in _ALL if not s.held_out)
_EVAL = tuple(s for s in _ALL if s.held_out)


def all_sums() -> list[Sum]:
    return list(_ALL)


def train_sums() -> list[Sum]:
    return list(_TRAIN)


def eval_sums() -> list[Sum]:
    return list(_EVAL)


def sample(pool: list[Sum], n: int, seed: int) -> list[Sum]:
    rng = random.Random(seed)
    return [rng.choice(pool) for _ in range(n)]


def wrong_answer(s: Sum, rng: random.Random) -> str:
    """A plausible wrong answer: off by one in a digit, or a carry forgotten."""
    right = s.a + s.b
    candidates = {right + d for d in (-10, -1, 1, 10)} | {
        (s.a % 10 + s.b % 10) % 10 + 10 * (s.a // 10 + s.b // 10)
    }
    candidates.discard(right)
    return str(rng.choice(sorted(c for c in candidates if c >= 0)))


def user(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


def assistant(text: str) -> list[dict[str, str]]:
    return [{"role": "assistant", "content": text}]


def sft_rows(n: int, seed: int, pool: list[Sum] | None = None) -> Iterator[dict]:
    for s in sample(pool or train_sums(), n, seed):
        yield {"prompt": user(s.question), "completion": assistant(s.answer)}


def preference_rows(
    n: int, seed: int, wrong: dict[str, str] | None = None, pool: list[Sum] | None = None
) -> Iterator[dict]:
    """Chosen is right, rejected is wrong. `wrong` maps a question to the model's own wrong answer,
    which makes the sharpest pairs; otherwise a plausible mistake is made up."""
    rng = random.Random(seed + 1)
    for s in sample(pool or train_sums(), n, seed):
        rejected = (wrong or {}).get(s.question) or wrong_answer(s, rng)
        yield {
            "prompt": user(s.question),
            "chosen": assistant(s.answer),
            "rejected": assistant(rejected),
        }


def grpo_rows(n: int, seed: int) -> Iterator[dict]:
    for s in sample(train_sums(), n, seed):
        yield {"prompt": user(s.question), "answer": s.answer}


def eval_rows() -> Iterator[dict]:
    for s in eval_sums():
        yield {"prompt": user(s.question), "completion": assistant(s.answer), "answer": s.answer}


def prompt_rows(n: int, seed: int) -> Iterator[dict]:
    """Prompts for a generate stage: questions without answers."""
    for s in sample(train_sums(), n, seed):
        yield {"prompt": user(s.question), "answer": s.answer}

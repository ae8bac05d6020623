"""The toy base's recipe, where it is cached, and the record of its self-check. No torch here:
the console reads the record (`describe_base`) without paying for torch.

A build measures the base's held-out plain exact match and records it in `toy_base.json` beside
the weights. A cached base without that record (one built before the self-check existed, or a
build that stopped half-way) is never handed out unverified.
"""

from __future__ import annotations

import hashlib
import json
import os
import string
from dataclasses import asdict, dataclass, field
from pathlib import Path

from graftline.engine.common.checkpoint_files import MODEL_CONFIG
from graftline.engine.common.errors import GraftlineError
from graftline.engine.common.shipped_files import changed_files

# The vocabulary, as plain data: a planner sizes the toy base without importing tokenizers.
PAD, BOS, EOS, UNK = "<pad>", "<s>", "</s>", "<unk>"
USER, ASSISTANT, END = "<|user|>", "<|assistant|>", "<|end|>"
SPECIAL_TOKENS = [PAD, BOS, EOS, UNK, USER, ASSISTANT, END]
CHARACTERS = string.digits + string.ascii_letters + " +-=*/?.,:;!'\"()[]{}<>_#@%&\n"

RECORD = "toy_base.json"
# the bases that ship as package data, one folder per recipe key (toy/shipped.py)
SHIPPED_ROOT = Path(__file__).resolve().with_name("bases")
SEED_ENV = "GRAFTLINE_TOY_SEED"  # choose the first seed tried, e.g. one known to plateau


@dataclass(frozen=True)
class ToyRecipe:
    hidden_size: int = 96
    layers: int = 3
    heads: int = 4
    intermediate_size: int = 256
    tie_word_embeddings: bool = False
    steps: int = 800
    batch_size: int = 128
    lr: float = 3e-3
    warmup: int = 50
    seed: int = 0
    # the held-out plain exact match a build must reach before it is handed out (0 = no check:
    # export tests compare logits, not answers, and use a short recipe)
    min_accuracy: float = 0.95
    version: int = 4  # bump when the build changes in a way the fields do not show

    @property
    def key(self) -> str:
        blob = json.dumps(asdict(self), sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:12]


@dataclass(frozen=True)
class Fallback:
    """What a build does when an attempt falls short, in order and deterministically: the same
    seed trained `extra_steps` more (a warm restart), then the next seed from scratch, up to
    `seeds` seeds. At the default recipe that is at most 4.5 × 800 steps (≈ 4–5 min on 2 cores).
    """

    seeds: int = 3
    extra_steps: int | None = None  # None: half the recipe's steps
    steps: int | None = None  # steps of a fresh attempt on a later seed; None: the recipe's

    def plan(self, recipe: ToyRecipe) -> list[Attempt]:
        extra = recipe.steps // 2 if self.extra_steps is None else self.extra_steps
        attempts: list[Attempt] = []
        for n in range(self.seeds):
            steps = recipe.steps if n == 0 or self.steps is None else self.steps
            attempts.append(Attempt(recipe.seed + n, steps, continues=False))
            if extra > 0:
                attempts.append(Attempt(recipe.seed + n, extra, continues=True))
        return attempts


@dataclass(frozen=True)
class Attempt:
    seed: int
    steps: int  # steps trained in this attempt (a continuation adds them to the previous one)
    continues: bool  # True: keep training the previous attempt's model


@dataclass(frozen=True)
class AttemptResult:
    seed: int
    steps: int  # total steps the model has seen
    continued: bool
    accuracy: float
    loss: float  # mean of the last 20 steps' losses
    seconds: float


@dataclass(frozen=True)
class BaseRecord:
    """What `toy_base.json` holds: the accuracy reached and how."""

    key: str
    accuracy: float  # held-out plain exact match of the base handed out
    threshold: float
    seed: int  # the seed of the model handed out
    steps: int  # the total steps it trained
    attempts: tuple[AttemptResult, ...] = field(default_factory=tuple)
    # "built" on this machine, or "shipped": the bytes that came with graftline (toy/shipped.py)
    origin: str = "built"
    # sha256 of every file of a shipped base, by name: a copy that differs is refused
    files: dict[str, str] = field(default_factory=dict)
    # where a shipped base was built: torch, the CPU path (ATen capability) and the math pins
    built_with: dict[str, str] = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)

    @classmethod
    def from_json(cls, text: str) -> BaseRecord:
        raw = json.loads(text)
        attempts = tuple(AttemptResult(**a) for a in raw.pop("attempts", []))
        return cls(**raw, attempts=attempts)

    def summary(self) -> str:
        tries = len(self.attempts)
        how = {0: "measured when reused", 1: "first try"}.get(tries, f"{tries} attempts")
        origin = "shipped with graftline, " if self.origin == "shipped" else ""
        return (f"held-out plain exact match {self.accuracy:.1%} ({origin}seed {self.seed}, "
                f"{self.steps} steps, {how}; needs ≥ {self.threshold:.0%})")


class ToyBaseTooWeak(GraftlineError):
    """Every attempt of the plan fell short of the recipe's threshold; nothing was cached."""


def cache_root() -> Path:
    return Path(os.environ.get("GRAFTLINE_CACHE", Path.home() / ".cache" / "graftline"))


# The tied-embeddings base the export tests use: they compare logits, not answers, so a short
# pre-training with no threshold is enough (it ships too: the suite builds nothing).
TIED_TEST_RECIPE = ToyRecipe(tie_word_embeddings=True, steps=150, min_accuracy=0.0)


def default_recipe(*, tied: bool = False) -> ToyRecipe:
    """The recipe `toy:addition` names; GRAFTLINE_TOY_SEED picks its seed (a different key)."""
    raw = os.environ.get(SEED_ENV, "").strip()
    if raw and not raw.isdigit():
        raise GraftlineError(f"{SEED_ENV}={raw!r} is not a whole number",
                             f"unset {SEED_ENV} or set it to a seed such as 0")
    seed = int(raw) if raw else ToyRecipe.seed
    return ToyRecipe(tie_word_embeddings=tied, seed=seed)


def base_dir(recipe: ToyRecipe, cache: Path | None = None) -> Path:
    return (cache or cache_root()) / "toy-base" / recipe.key


def read_record(directory: Path) -> BaseRecord | None:
    """The self-check record of a built base, or None when there is none (or it is unreadable)."""
    try:
        return BaseRecord.from_json((Path(directory) / RECORD).read_text())
    except (OSError, ValueError, TypeError, KeyError):
        return None


def verified(directory: Path, recipe: ToyRecipe) -> BaseRecord | None:
    """The record of a cached base that may be handed out for `recipe`, else None."""
    if not (Path(directory) / MODEL_CONFIG).is_file():
        return None
    record = read_record(directory)
    if record is None or record.key != recipe.key or record.accuracy < recipe.min_accuracy:
        return None
    if record.files and changed_files(directory, record.files):
        return None  # a shipped base's copy that is no longer the shipped bytes
    return record


def describe_base(recipe: ToyRecipe | None = None, cache: Path | None = None) -> str:
    """One line on the cached toy base for `recipe` (default: `toy:addition`'s), for the demo
    and pytest's header."""
    recipe = recipe or default_recipe()
    directory = base_dir(recipe, cache)
    record = verified(directory, recipe)
    if record is None:
        shipped = read_record(SHIPPED_ROOT / recipe.key)
        if shipped is not None:
            return (f"toy base {recipe.key}: {shipped.summary()}; copied into the cache on "
                    "first use")
        return f"toy base {recipe.key}: not built yet (the first run builds and checks it)"
    return f"toy base {recipe.key}: {record.summary()}"


__all__ = ["RECORD", "SEED_ENV", "SHIPPED_ROOT", "TIED_TEST_RECIPE", "Attempt", "AttemptResult",
           "BaseRecord", "Fallback", "ToyBaseTooWeak", "ToyRecipe", "base_dir", "cache_root",
           "default_recipe", "describe_base", "read_record",
           "verified"]

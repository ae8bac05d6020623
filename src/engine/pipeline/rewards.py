"""Reward functions for GRPO: built-ins by name, or any `module:function` on the import path.

A reward function has TRL's signature: `fn(prompts, completions, **kwargs) -> list[float]`, where
kwargs carry `completion_ids`, `trainer_state` and every dataset column (so `answer` reaches
`exact_match`). Completions are strings, or message lists for conversational data.
"""

from __future__ import annotations

import importlib
import inspect
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from graftline.engine.pipeline.problems import FixableError


class RewardError(FixableError):
    """Raised with the fix a user needs; see FixableError."""


def completion_text(completion: Any) -> str:
    """The text of a completion in either of TRL's formats."""
    if isinstance(completion, str):
        return completion
    if isinstance(completion, list):
        return "".join(m.get("content", "") for m in completion if isinstance(m, dict))
    if isinstance(completion, dict):
        return str(completion.get("content", ""))
    return str(completion)


def exact_match(prompts: list, completions: list, answer: list[str] | None = None,
                **kwargs: Any) -> list[float]:
    """1.0 when the completion, stripped, equals the row's `answer` column."""
    if answer is None:
        raise RewardError("exact_match needs an `answer` column in the data",
                          "add an `answer` column, or use another reward function")
    return [float(completion_text(c).strip() == str(a).strip())
            for c, a in zip(completions, answer, strict=True)]


def contains_answer(prompts: list, completions: list, answer: list[str] | None = None,
                    **kwargs: Any) -> list[float]:
    """1.0 when the row's `answer` appears anywhere in the completion."""
    if answer is None:
        raise RewardError("contains_answer needs an `answer` column in the data",
                          "add an `answer` column, or use another reward function")
    return [float(str(a).strip() in completion_text(c)) for c, a in zip(completions, answer,
                                                                          strict=True)]


def non_empty(prompts: list, completions: list, **kwargs: Any) -> list[float]:
    """1.0 for any non-blank completion: a floor against collapse to empty output."""
    return [float(bool(completion_text(c).strip())) for c in completions]


BUILTINS: dict[str, Callable[..., list[float]]] = {
    "exact_match": exact_match,
    "contains_answer": contains_answer,
    "non_empty": non_empty,
}


def _check_signature(fn: Callable, name: str) -> None:
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return  # builtins without a signature: trust them
    kinds = {p.kind for p in params.values()}
    names = list(params)
    has_var_kw = inspect.Parameter.VAR_KEYWORD in kinds
    positional = [p for p in params.values()
                  if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    takes_two = len(positional) >= 2 or inspect.Parameter.VAR_POSITIONAL in kinds
    if not (has_var_kw and takes_two):
        raise RewardError(
            f"reward '{name}' has signature ({', '.join(names)}); TRL calls it with "
            "prompts, completions and keyword columns",
            f"define it as `def {getattr(fn, '__name__', 'reward')}(prompts, completions, "
            "**kwargs) -> list[float]`")


def resolve_reward(name: str, search_path: Path | None = None) -> Callable[..., list[float]]:
    """A built-in by name, or `module:function` imported (with `search_path` on sys.path)."""
    if name in BUILTINS:
        return BUILTINS[name]
    if ":" not in name:
        raise RewardError(f"unknown reward '{name}'",
                          f"use one of {', '.join(BUILTINS)} or 'module:function'")
    module_name, _, attr = name.partition(":")
    added = False
    if search_path is not None and str(search_path) not in sys.path:
        sys.path.insert(0, str(search_path))
        added = True
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:  # any import-time failure is the user's module's, reported whole
        raise RewardError(f"cannot import '{module_name}' for reward '{name}': {exc}",
                          f"put {module_name.replace('.', '/')}.py next to the pipeline file or "
                          "on PYTHONPATH") from None
    finally:
        if added:
            sys.path.remove(str(search_path))
    fn = getattr(module, attr, None)
    if fn is None or not callable(fn):
        raise RewardError(f"'{module_name}' has no function '{attr}'",
                          f"check the name after ':' in '{name}'")
    _check_signature(fn, name)
    return fn


def named(fn: Callable[..., list[float]], name: str) -> Callable[..., list[float]]:
    """TRL logs `rewards/<__name__>/mean`; give imported functions their pipeline-file name."""
    if getattr(fn, "__name__", None) == name:
        return fn

    def reward(*args: Any, **kwargs: Any) -> list[float]:
        return fn(*args, **kwargs)

    reward.__name__ = name.replace(":", ".")
    return reward

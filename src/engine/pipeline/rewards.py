"""Reward functions for GRPO: built-ins by name, or any `module:function` on the import path.

A reward function has TRL's signature: `fn(prompts, completions, **kwargs) -> list[float]`, where
kwargs carry `completion_ids`, `trainer_state` and every dataset column (so `answer` reaches
`exact_match`). Completions are strings, or message lists for conversational data.
"""

from __future__ import annotations

import contextlib
import difflib
import importlib
import inspect
import io
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from graftline.engine.common.errors import GraftlineError


class RewardError(GraftlineError):
    """Raised with the fix a user needs, which its text carries."""

    fix_in_text = True


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


def answer_similarity(prompts: list, completions: list, answer: list[str] | None = None,
                      **kwargs: Any) -> list[float]:
    """Partial credit from 0 to 1: how closely the completion, stripped, matches the row's
    `answer` (difflib's ratio of matching characters; 1.0 is an exact match). GRPO learns from
    the spread of rewards within a group: where right answers are rare at the start, exact_match
    gives groups of zeros that teach nothing, and a graded reward still points the way."""
    if answer is None:
        raise RewardError("answer_similarity needs an `answer` column in the data",
                          "add an `answer` column, or use another reward function")
    return [difflib.SequenceMatcher(None, completion_text(c).strip(), str(a).strip()).ratio()
            for c, a in zip(completions, answer, strict=True)]


def non_empty(prompts: list, completions: list, **kwargs: Any) -> list[float]:
    """1.0 for any non-blank completion: a floor against collapse to empty output."""
    return [float(bool(completion_text(c).strip())) for c in completions]


BUILTINS: dict[str, Callable[..., list[float]]] = {
    "exact_match": exact_match,
    "contains_answer": contains_answer,
    "answer_similarity": answer_similarity,
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
    said = io.StringIO()
    try:
        # a module that parses sys.argv at import prints its usage and calls sys.exit: caught,
        # with what it printed, instead of ending validate (or the engine)
        with contextlib.redirect_stdout(said), contextlib.redirect_stderr(said):
            module = importlib.import_module(module_name)
    except SystemExit as exc:
        printed = said.getvalue().strip().splitlines()
        raise RewardError(
            f"importing '{module_name}' for reward '{name}' called sys.exit({exc.code})"
            + (f": {printed[-1][:200]}" if printed else ""),
            "move the module's script code (argparse, sys.exit) under "
            "`if __name__ == \"__main__\":`") from None
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


TRIAL_TIMEOUT_S = 20.0
ANSWER_COLUMNS = ("answer", "solution", "completion")


def answer_problem(name: str, columns: list[str]) -> str | None:
    """A built-in that reads `answer` on data without that column: found before the run."""
    if name in ("exact_match", "contains_answer", "answer_similarity") and "answer" not in columns:
        return (f"reward '{name}' compares with an `answer` column; the data has "
                f"{', '.join(columns) or 'no columns'}")
    return None


def trial_call(fn: Callable[..., list[float]], name: str, rows: list[dict],
               timeout_s: float = TRIAL_TIMEOUT_S) -> RewardError | None:
    """Call a reward on a few real rows, as TRL would (prompts, completions, every column as a
    keyword), with the row's answer standing in for a completion, in the row's format: a
    conversational prompt (a list of messages) gets `[{"role": "assistant", "content": …}]`
    completions, as TRL passes them, a plain prompt plain strings. A reward that raises, hangs
    or returns anything but one number (or None) per completion is an error now, not at step 1
    of the GRPO stage. It runs in a daemon thread so a reward that never returns cannot hang
    validate."""
    if not rows:
        return None
    prompts = [r.get("prompt", "") for r in rows]
    answers = [str(next((r[c] for c in ANSWER_COLUMNS if c in r), "")) for r in rows]
    completions: list[Any] = [
        [{"role": "assistant", "content": a}] if isinstance(p, list) else a
        for p, a in zip(prompts, answers, strict=True)]
    columns = {k: [r.get(k) for r in rows] for k in rows[0] if k != "prompt"}
    outcome: dict[str, Any] = {}

    def call() -> None:
        try:
            outcome["value"] = fn(prompts, completions, completion_ids=[[] for _ in rows],
                                  trainer_state=None, **columns)
        except BaseException as exc:  # the user's code: every failure reported, SystemExit too
            outcome["error"] = exc

    worker = threading.Thread(target=call, daemon=True, name=f"reward-trial-{name}")
    worker.start()
    worker.join(timeout_s)
    fix = "call it yourself on a few rows of the data: fn(prompts, completions, **columns)"
    if worker.is_alive():
        return RewardError(f"reward '{name}' did not return within {timeout_s:.0f}s on "
                           f"{len(rows)} rows", fix)
    if "error" in outcome:
        exc = outcome["error"]
        if isinstance(exc, RewardError):
            return exc
        return RewardError(f"reward '{name}' raised {type(exc).__name__}: {exc} on the first "
                           f"{len(rows)} rows of the data", fix)
    value = outcome.get("value")
    if not isinstance(value, list | tuple) or len(value) != len(rows):
        shown = repr(value)[:60]
        return RewardError(f"reward '{name}' returned {shown}; TRL needs a list of "
                           f"{len(rows)} numbers, one per completion",
                           "return [float(...) for each completion]")
    bad = [v for v in value if v is not None and (isinstance(v, bool)
                                                  or not isinstance(v, int | float))]
    if bad:
        return RewardError(f"reward '{name}' returned {type(bad[0]).__name__} "
                           f"{repr(bad[0])[:40]} among its rewards; each must be a number "
                           "(or None)", "return float(...) for each completion")
    return None


def reward_data_problems(pf: Any, stage: Any, resolved: dict[str, Callable[..., list[float]]]
                         ) -> list[Any]:
    """Validate's reward checks that need the data: an `answer` column for the built-ins that
    read it, and one trial call of every reward on a few real rows."""
    from graftline.engine.pipeline.data_formats import rename_row, renamed
    from graftline.engine.pipeline.data_sources import (
        DataSourceError,
        is_generated,
        resolve_sources,
    )
    from graftline.engine.pipeline.datasets import DatasetError, columns_of, sample_rows
    from graftline.engine.pipeline.problems import Problem

    if is_generated(stage.data):
        return []  # a generate stage's output: it exists only in the run
    mapping = stage.columns
    try:  # the first source, under the stage's column names (docs/datasets.md)
        path = resolve_sources(stage.data, pf.directory, split=stage.split,
                               subset=stage.subset)[0]
        columns = renamed(columns_of(path), mapping)
        rows = [rename_row(row, mapping) for row in sample_rows(path)]
    except (DatasetError, DataSourceError, OSError, ValueError):
        return []  # the data checks report the file itself
    at = dict(file=str(pf.path), line=pf.line(stage.name, "reward"), stage=stage.name,
              field="reward")
    problems = []
    for name, fn in resolved.items():
        missing = answer_problem(name, columns)
        if missing:
            problems.append(Problem(f"{missing} ({path})", **at,
                                    fix="add an `answer` column, or use a reward that does not "
                                        "need one (non_empty, or your own module:function)"))
            continue
        failed = trial_call(fn, name, rows)
        if failed is not None:
            problems.append(Problem(f"{failed.message} ({path})", **at, fix=failed.fix))
    return problems

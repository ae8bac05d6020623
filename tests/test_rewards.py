"""Reward functions by name and by `module:function`, with clear errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from graftline.engine.pipeline.rewards import (
    RewardError,
    answer_problem,
    answer_similarity,
    exact_match,
    named,
    resolve_reward,
    trial_call,
)


def test_exact_match_on_both_completion_formats() -> None:
    conv = [[{"role": "assistant", "content": "46"}], [{"role": "assistant", "content": "47"}]]
    assert exact_match(["a", "b"], conv, answer=["46", "46"]) == [1.0, 0.0]
    assert exact_match(["a"], [" 46 "], answer=["46"]) == [1.0]
    assert resolve_reward("exact_match") is exact_match


def test_answer_similarity_gives_partial_credit_ordered_by_closeness() -> None:
    """The graded reward: exact is 1, one digit off is between, nothing alike is 0; on both
    completion formats, with the same `answer` column requirement as exact_match."""
    conv = [[{"role": "assistant", "content": c}] for c in ("146", "147", "14", "xyz")]
    exact, one_off, short, unlike = answer_similarity(["q"] * 4, conv, answer=["146"] * 4)
    assert exact == 1.0 and unlike == 0.0
    assert 0.0 < one_off < 1.0 and 0.0 < short < 1.0
    assert answer_similarity(["q"], [" 146 "], answer=["146"]) == [1.0]
    assert resolve_reward("answer_similarity") is answer_similarity
    with pytest.raises(RewardError) as caught:
        answer_similarity(["q"], ["1"])
    assert "answer" in caught.value.message and caught.value.fix
    assert answer_problem("answer_similarity", ["prompt"]) is not None


def test_module_function_import_from_the_pipeline_directory(tmp_path: Path) -> None:
    (tmp_path / "my_rewards_mod.py").write_text(
        "def short(prompts, completions, **kwargs):\n"
        "    return [1.0 / (1 + len(str(c))) for c in completions]\n"
        "def bad(completions):\n    return []\n")
    fn = resolve_reward("my_rewards_mod:short", search_path=tmp_path)
    assert fn(["p"], ["abc"]) == [0.25]
    assert named(fn, "my_rewards_mod:short").__name__ == "my_rewards_mod.short"
    with pytest.raises(RewardError) as wrong:
        resolve_reward("my_rewards_mod:bad", search_path=tmp_path)
    assert "prompts, completions" in wrong.value.message and "**kwargs" in wrong.value.fix
    with pytest.raises(RewardError, match="no function"):
        resolve_reward("my_rewards_mod:nothing", search_path=tmp_path)


def test_unknown_and_unimportable_rewards() -> None:
    with pytest.raises(RewardError) as unknown:
        resolve_reward("exact_mach")
    assert "exact_match" in unknown.value.fix
    with pytest.raises(RewardError, match="cannot import"):
        resolve_reward("no_such_module_xyz:f")


def _as_number(prompts, completions, answer, **kwargs):  # type: ignore[no-untyped-def]
    # a conversational reward, as users write them for TRL: completions are message lists
    return [float(int(c[0]["content"]) == int(a)) for c, a in zip(completions, answer, strict=True)]


def test_the_trial_call_passes_completions_in_the_data_format() -> None:
    """A conversational prompt gets message-list completions, as TRL passes them, so a reward
    written for that format is not refused by validate; on plain prompts the same reward fails
    the trial, as it would fail at step 1."""
    chat = [{"prompt": [{"role": "user", "content": "2+3"}], "answer": "5"},
            {"prompt": [{"role": "user", "content": "4+4"}], "answer": "8"}]
    assert trial_call(_as_number, "as_number", chat) is None
    plain = [{"prompt": "2+3=", "answer": "5"}]
    failed = trial_call(_as_number, "as_number", plain)
    assert failed is not None and "raised TypeError" in failed.message

"""Every example pipeline validates and plans offline; the plans say what the workflows' authors
needed to know (the IPO reference, the expanded per-topic loop, the storage forecast)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from graftline.console.cli import app

REPO = Path(__file__).resolve().parent.parent
EXAMPLES = sorted((REPO / "examples").glob("*.toml"))
FULL = sorted((REPO / "examples" / "full").glob("*.toml"))
WORKFLOWS = (
    "coding_tui",
    "character_sequential",
    "character_paper",
    "per_topic",
    "curriculum",
    "bootstrap",
)


def _plan(path: Path, env: dict[str, str] | None = None, *, exit_code: int = 0) -> dict:
    result = CliRunner().invoke(app, ["plan", str(path), "--json"], env=env)
    assert result.exit_code == exit_code, result.output
    return json.loads(result.output)


def test_every_workflow_has_a_scaled_and_a_full_size_file() -> None:
    assert {p.stem for p in EXAMPLES} >= {*WORKFLOWS, "demo"}
    assert {p.stem for p in FULL} == set(WORKFLOWS)
    readme = (REPO / "README.md").read_text()
    for name in WORKFLOWS:
        assert f"examples/{name}.toml" in readme


@pytest.mark.parametrize("path", EXAMPLES + FULL, ids=lambda p: str(p.relative_to(REPO)))
def test_example_validates_without_errors(path: Path) -> None:
    result = CliRunner().invoke(app, ["validate", str(path)])
    assert result.exit_code == 0, result.output
    assert "Traceback" not in result.output


def test_coding_tui_plan_names_the_ipo_reference_and_the_merged_base() -> None:
    plan = {s["name"]: s for s in _plan(REPO / "examples" / "coding_tui.toml")["steps"]}
    assert plan["agent_sft"]["action"] == "new"
    assert plan["agent_sft"]["starts_from"] == "the merged model from 'merged_tools'"
    assert plan["ipo"]["reference"].startswith(
        "the 'agent_sft' adapter as it is when 'ipo' starts (frozen copy, log-probs precomputed"
    )
    assert plan["grpo"]["action"] == "continue"


def test_full_coding_tui_keeps_the_original_ranks() -> None:
    plan = {s["name"]: s for s in _plan(REPO / "examples" / "full" / "coding_tui.toml")["steps"]}
    assert plan["tool_sft"]["lora"]["r"] == 64
    assert plan["agent_sft"]["lora"]["r"] == 128


def test_per_topic_loop_is_expanded_in_the_plan() -> None:
    steps = _plan(REPO / "examples" / "per_topic.toml")["steps"]
    assert [s["name"] for s in steps] == [
        f"{stage}_{topic}"
        for topic in ("low", "high")
        for stage in ("sft", "eval_sft", "dpo", "eval_dpo", "merged")
    ]
    by_name = {s["name"]: s for s in steps}
    # the second topic starts a new adapter on the first topic's merged model: never stacked
    assert by_name["sft_high"]["action"] == "new"
    assert by_name["sft_high"]["starts_from"] == "the merged model from 'merged_low'"
    assert by_name["dpo_high"]["origin"] == "dpo_{topic}"


def test_character_modes_state_the_method_and_lr() -> None:
    seq = {s["name"]: s for s in _plan(REPO / "examples" / "character_sequential.toml")["steps"]}
    assert seq["sft"]["action"] == "continue"
    assert seq["sft"]["lr"] == pytest.approx(2e-3 * 0.25)
    paper = {s["name"]: s for s in _plan(REPO / "examples" / "character_paper.toml")["steps"]}
    assert paper["sft"]["starts_from"] == "the base model"
    assert paper["combined"]["lora"]["r"] == 16  # cat: the ranks add up


def test_bootstrap_plan_separates_adapters_from_merged_models() -> None:
    plan = _plan(REPO / "examples" / "bootstrap.toml")
    assert plan["merged_bytes"] > 0
    assert plan["total_bytes"] > plan["merged_bytes"]
    result = CliRunner().invoke(
        app, ["plan", str(REPO / "examples" / "bootstrap.toml")], env={"COLUMNS": "200"}
    )
    assert "merged models" in result.output and "adapters and data" in result.output


def test_full_size_sizes_come_from_a_cached_config(tmp_path: Path) -> None:
    """With gpt-oss-20b's config.json in the HF cache (no weights), the plan knows the sizes;
    without it, it says they are unknown. Nothing is downloaded either way."""
    full = REPO / "examples" / "full" / "coding_tui.toml"
    unknown = _plan(full, env={"HF_HUB_CACHE": str(tmp_path / "empty")})
    assert unknown["total_bytes"] is None

    snapshot = tmp_path / "hub" / "models--openai--gpt-oss-20b" / "snapshots" / "abc"
    snapshot.mkdir(parents=True)
    shutil.copy(
        REPO / "tests" / "fixtures" / "configs" / "gpt-oss-20b" / "config.json",
        snapshot / "config.json",
    )
    # two bf16 copies of a 21B model (merge + export) may not fit this disk: then the plan
    # says so as an error, which is the point of the forecast
    fits = CliRunner().invoke(
        app, ["plan", str(full), "--json"], env={"HF_HUB_CACHE": str(tmp_path / "hub")}
    )
    known = json.loads(fits.output)
    too_big = known["total_bytes"] > known["free_bytes"]
    assert fits.exit_code == (1 if too_big else 0)
    assert too_big == any("free on the runs volume" in p["message"] for p in known["problems"])
    steps = {s["name"]: s for s in known["steps"]}
    # a merged gpt-oss-20b in bf16 is tens of GB; an r=64 attention-only adapter is MBs
    assert 10e9 < steps["merged_tools"]["bytes"] < 80e9
    assert 1e6 < steps["tool_sft"]["bytes"] < 2e9


def test_distributed_example_plans_a_launch_for_each_training_stage() -> None:
    plan = {s["name"]: s for s in _plan(REPO / "examples" / "distributed.toml")["steps"]}
    for name in ("sft", "ipo"):  # [defaults] processes = 2 reaches every training stage
        assert "--nproc_per_node 2" in plan[name]["launch"]
        assert f"dist/{name}/request.json" in plan[name]["launch"]
    assert plan["export"]["launch"] is None  # export runs in the engine

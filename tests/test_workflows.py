"""The five field workflows, each run end to end on the tiny model from its example file.

Each test copies the example next to the toy data in a temporary directory, runs it with the real
runner, then checks what the workflow's authors needed: the lineage, the checks, and the
workflow's own promise (a protected merged base, an exact combination, one adapter at a time,
loss continuity, generated data).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
from data_support import copy_example_data

from graftline.engine.common.sink import ListSink
from graftline.engine.lineage import manifest as mf
from graftline.engine.pipeline.file import PipelineFile, load
from graftline.engine.run.runner import RunResult, run_pipeline

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parent.parent


def _copy_example(name: str, tmp_path: Path, edit: dict[str, str] | None = None, *,
                  steps: float = 1.0) -> PipelineFile:
    """The example beside the toy data, with `edit` applied and every stage's `max_steps` scaled
    by `steps`: the workflow's shape and promises at a fraction of its training (the toy base
    already adds; what these tests check is lineage, checks and mechanics, not learning)."""
    text = (REPO / "examples" / f"{name}.toml").read_text().replace('"../runs', '"runs')
    for old, new in (edit or {}).items():
        assert old in text, old
        text = text.replace(old, new)
    text = re.sub(r"max_steps = (\d+)",
                  lambda m: f"max_steps = {max(4, round(int(m.group(1)) * steps))}", text)
    path = tmp_path / f"{name}.toml"
    path.write_text(text)
    pf = load(path)
    copy_example_data(pf, tmp_path)
    return pf


def _run(pf: PipelineFile, tmp_path: Path, *,
         judge_quality: bool = False) -> tuple[RunResult, ListSink, Path]:
    """The run, its quality checks reporting only unless `judge_quality`: at a fraction of its
    steps an example's DPO can collapse one base that passes the self-check and not another
    (seed 2's: 5 of 8 probes empty after 10 steps at 2e-3, only the 1 empty before it after 40),
    and what these tests check is the rest. Every other check still gates; the collapse gate
    has its own tests."""
    sink = ListSink()
    run_dir = tmp_path / "runs" / pf.pipeline.pipeline.name
    result = run_pipeline(pf, run_dir, sink, judge_quality=judge_quality)
    return result, sink, run_dir


def _manifest(run_dir: Path, stage: str) -> mf.Manifest:
    found = mf.read(run_dir / "stages" / stage)
    assert found is not None, f"no manifest for {stage}"
    return found


def _checks(run_dir: Path, stage: str) -> dict[str, str]:
    return {c.name: c.status for c in _manifest(run_dir, stage).checks}


def _finished(result: RunResult, sink: ListSink) -> None:
    errors = [d for d in sink.of_type("error")]
    assert result.status == "finished", (result.message, errors)


def test_coding_tui_cleanup_protects_the_merged_base_and_export_still_works(tmp_path: Path) -> None:
    from graftline.engine.export.writer import plan_export, run_export
    from graftline.engine.lineage import scan
    from graftline.engine.lineage.cleanup import execute, parse_keep, plan_cleanup

    pf = _copy_example("coding_tui", tmp_path, steps=1 / 3)
    result, sink, run_dir = _run(pf, tmp_path)
    _finished(result, sink)
    stages = run_dir / "stages"
    agent = _manifest(run_dir, "agent_sft")
    assert Path(agent.base).resolve() == (stages / "merged_tools").resolve()
    config = json.loads((stages / "grpo" / "adapter_config.json").read_text())
    assert Path(config["base_model_name_or_path"]).resolve() == (stages / "merged_tools").resolve()
    ipo = _manifest(run_dir, "ipo")
    assert any(
        p.relation == "continued_from" and Path(p.path).name == "agent_sft" for p in ipo.parents
    )
    assert _checks(run_dir, "ipo")["reference_start"] == "pass"
    assert not (stages / "ipo" / "ref").exists() and not (stages / "grpo" / "ref").exists()

    # a disk cleanup that keeps only the latest adapter
    lineage = scan([run_dir])
    the_plan = plan_cleanup(lineage, [parse_keep(str(stages / "grpo"))])
    deleted = {Path(lineage.node(k).path).name for k in the_plan.delete}
    protected = {Path(lineage.node(k).path).name for k in the_plan.protected}
    assert "merged_tools" in protected and "merged_tools" not in deleted
    assert {"agent_sft", "ipo"} <= deleted
    execute(the_plan, lineage)
    assert (stages / "merged_tools" / "config.json").is_file()
    assert not (stages / "agent_sft").exists()

    exported = run_export(plan_export(stages / "grpo", tmp_path / "after_cleanup", dtype="float32"))
    assert exported.ok, exported.problems
    assert exported.verification["max_abs_diff"] <= 1e-4


def test_character_sequential_continues_dpo_with_a_quarter_of_the_lr(tmp_path: Path) -> None:
    pf = _copy_example("character_sequential", tmp_path, steps=1 / 4)
    result, sink, run_dir = _run(pf, tmp_path)
    _finished(result, sink)
    dpo_steps = pf.pipeline.by_name("dpo").train.max_steps
    sft = _manifest(run_dir, "sft")
    assert any(p.relation == "continued_from" and Path(p.path).name == "dpo" for p in sft.parents)
    lrs = [
        m["learning_rate"]
        for m in sink.of_type("metrics")
        if "learning_rate" in m and m.get("global_step", 0) > dpo_steps
    ]
    assert lrs and max(lrs) <= 2e-3 * 0.25 + 1e-12
    assert _checks(run_dir, "sft")["lora_config_kept"] == "pass"
    evaluation = json.loads((run_dir / "stages" / "eval" / mf.EVALUATION).read_text())
    assert 0.0 <= evaluation["exact_match"] <= 1.0


def test_character_paper_combines_exactly_one_and_a_quarter(tmp_path: Path) -> None:
    from safetensors.torch import load_file

    pf = _copy_example("character_paper", tmp_path, steps=1 / 4)
    result, sink, run_dir = _run(pf, tmp_path)
    _finished(result, sink)
    stages = run_dir / "stages"
    combined = _manifest(run_dir, "combined")
    assert combined.kind == "combined"
    assert {Path(p.path).name for p in combined.parents} == {"dpo", "sft"}

    def delta(folder: Path, module: str) -> torch.Tensor:
        weights = load_file(folder / "adapter_model.safetensors")
        config = json.loads((folder / "adapter_config.json").read_text())
        a = next(v for k, v in weights.items() if module in k and "lora_A" in k)
        b = next(v for k, v in weights.items() if module in k and "lora_B" in k)
        return (b.double() @ a.double()) * (config["lora_alpha"] / config["r"])

    module = "layers.0.self_attn.q_proj"
    expected = delta(stages / "dpo", module) + 0.25 * delta(stages / "sft", module)
    got = delta(stages / "combined", module)
    assert torch.allclose(got, expected, atol=1e-6), (got - expected).abs().max()
    evaluation = json.loads((stages / "eval" / mf.EVALUATION).read_text())
    assert "exact_match" in evaluation


def test_per_topic_loop_keeps_one_adapter_at_a_time(tmp_path: Path) -> None:
    pf = _copy_example("per_topic", tmp_path, steps=1 / 3)
    result, sink, run_dir = _run(pf, tmp_path)
    _finished(result, sink)
    for topic in ("low", "high"):
        for stage in (f"sft_{topic}", f"dpo_{topic}"):
            assert _checks(run_dir, stage)["single_adapter"] == "pass"
        evaluation = json.loads(
            (run_dir / "stages" / f"eval_dpo_{topic}" / mf.EVALUATION).read_text()
        )
        assert "exact_match" in evaluation
    high = _manifest(run_dir, "sft_high")
    assert Path(high.base).name == "merged_low"


def test_per_topic_collapse_stops_the_run_at_that_topic(tmp_path: Path) -> None:
    """A planted data bug: the first topic's preference data prefers the empty answer. DPO learns
    to stop at once; the generation check stops the run at that topic's DPO and says so, and no
    later stage runs."""
    calm = "train = { max_steps = 20, lr = 1e-3, batch_size = 16 }"
    wild = "train = { max_steps = 40, lr = 5e-3, batch_size = 16, warmup = 0 }"
    pf = _copy_example(
        "per_topic",
        tmp_path,
        {calm: wild, "data/topics/{topic}_prefs.jsonl": "data/planted/{topic}_prefs.jsonl"},
    )
    planted = tmp_path / "data" / "planted"
    planted.mkdir()
    for topic in ("low", "high"):
        rows = [
            json.loads(line)
            for line in (tmp_path / "data" / "topics" / f"{topic}_prefs.jsonl")
            .read_text()
            .splitlines()
        ]
        if topic == "low":
            rows = [{**r, "chosen": [{"role": "assistant", "content": ""}]} for r in rows]
        (planted / f"{topic}_prefs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    result, _sink, run_dir = _run(pf, tmp_path, judge_quality=True)
    assert result.status == "failed"
    assert result.failed_stage == "dpo_low"
    assert "collapse" in result.message.lower()
    assert not (run_dir / "stages" / "sft_high").exists()
    failed = mf.read(run_dir / "stages" / "dpo_low")
    assert failed is None or failed.status != "complete"


def test_curriculum_checks_continuity_at_every_boundary(tmp_path: Path) -> None:
    pf = _copy_example("curriculum", tmp_path, steps=1 / 3)
    result, sink, run_dir = _run(pf, tmp_path)
    _finished(result, sink)
    for stage in ("easy", "carry", "all"):
        checks = _checks(run_dir, stage)
        assert checks["trainable_fraction"] == "pass"
        assert checks["base_unchanged"] == "pass"
    for stage in ("carry", "all"):
        assert _checks(run_dir, stage)["loss_continuity"] in ("pass", "warn")
    lrs = {s: _manifest(run_dir, s).metrics for s in ("easy", "carry", "all")}
    assert all("loss" in m or "train_loss" in m for m in lrs.values())


def test_bootstrap_generates_the_next_stages_data(tmp_path: Path) -> None:
    # half the example's steps: its generate stages still keep ~360 correct answers of 400 on
    # both CPU paths (pinned AVX2 and plain); the test needs one
    pf = _copy_example("bootstrap", tmp_path, steps=0.5)
    result, sink, run_dir = _run(pf, tmp_path)
    _finished(result, sink)
    stages = run_dir / "stages"
    for gen in ("gen1", "gen2"):
        rows = [json.loads(line) for line in (stages / gen / "data.jsonl").read_text().splitlines()]
        assert rows and all(r["completion"][0]["content"] == r["answer"] for r in rows)
    for stage in ("seed_sft", "round1", "round2"):
        assert (stages / stage / mf.METRICS).is_file()
        assert (stages / stage / mf.EVALUATION).is_file()
        assert _manifest(run_dir, stage).status == "complete"
    assert Path(_manifest(run_dir, "round2").base).name == "merged2"

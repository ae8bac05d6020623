"""Rehearsals end to end: real stages for a few steps on a twin; planted faults caught at the
right stage with a clear message. Copies of the examples live in tmp_path; nothing else is
touched (each rehearsal's scratch directory is made there and removed)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from graftline.engine.rehearse.rehearsal import FAILED, NOT_RUN, PASSED, CleanupPolicy, rehearse

REPO = Path(__file__).resolve().parent.parent
EXAMPLES = REPO / "examples"
CONFIGS = Path(__file__).parent / "fixtures" / "configs"
STEPS = 2
GRAFTLINE = str(Path(sys.executable).parent / "graftline")


def _copy_examples(tmp_path: Path) -> Path:
    folder = tmp_path / "examples"
    shutil.copytree(EXAMPLES, folder, ignore=shutil.ignore_patterns("full", "__pycache__"))
    return folder


def _edit(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text, old
    path.write_text(text.replace(old, new, 1))


def _trimmed_demo(folder: Path) -> Path:
    """The demo's sft → merge → sft (new rank) → export: every adapter-flow step, quickly."""
    text = (folder / "demo.toml").read_text()
    head, *stages = re.split(r"(?m)^\[\[stage\]\]\n", text)
    keep = [s for s in stages if re.search(r'name = "(sft|merged|sft_r16)"', s)]
    export = '\nname = "export"\nkind = "export"\nfrom = "sft_r16"\nout = "../runs/exports/t"\n'
    path = folder / "trimmed.toml"
    path.write_text(head + "".join("[[stage]]\n" + s for s in keep) + "[[stage]]" + export)
    return path


def _status(report, name: str) -> str:  # type: ignore[no-untyped-def]
    return next(s for s in report.stages if s.name == name).status


def _stage(report, name: str):  # type: ignore[no-untyped-def]
    return next(s for s in report.stages if s.name == name)


def test_rank_change_on_continue_is_the_first_failure(tmp_path: Path) -> None:
    folder = _copy_examples(tmp_path)
    _edit(folder / "demo.toml", "adapter = \"continue\"         # same adapter",
          "adapter = \"continue\"\nlora = { r = 32, alpha = 64 }  #")
    report = rehearse(folder / "demo.toml", steps=STEPS, scratch_parent=tmp_path / "s")
    assert not report.ok
    ipo = _stage(report, "ipo")
    assert ipo.status == FAILED
    assert "rank 16 → 32" in ipo.error and "merge" in ipo.fix
    assert _status(report, "sft") == NOT_RUN  # a static error: nothing is spent on it


def test_chat_template_that_drops_the_assistant_turn(tmp_path: Path, toy_base: Path) -> None:
    base = tmp_path / "chat-base"
    base.mkdir()
    for item in toy_base.iterdir():
        if item.suffix != ".safetensors":  # a base's config and tokenizer, as a user has them
            shutil.copy(item, base / item.name)
    template = (base / "chat_template.jinja").read_text()
    broken = re.sub(r"\{% elif message\['role'\] == 'assistant' %\}.*?\{% endgeneration %\}",
                    "", template)
    assert broken != template
    (base / "chat_template.jinja").write_text(broken)
    folder = _copy_examples(tmp_path)
    _edit(folder / "demo.toml", 'base = "toy:addition"', f'base = "{base}"')
    report = rehearse(folder / "demo.toml", steps=STEPS, scratch_parent=tmp_path / "s")
    sft = _stage(report, "sft")
    assert sft.status == FAILED
    assert "chat template drops the assistant turn" in sft.error
    assert "chat_template" in sft.fix
    assert "llama twin" in report.twin and "base tokenizer" in report.twin
    assert not (tmp_path / "s").exists() or not any((tmp_path / "s").iterdir())  # removed


@pytest.mark.slow
def test_preference_rows_without_rejected(tmp_path: Path) -> None:
    """A null `rejected` is the validator's to catch (with file and line, nothing trains); an
    empty message list is text-shaped to a validator, so the rehearsal, which trains on the rows,
    catches that one."""
    folder = _copy_examples(tmp_path)
    prefs = folder / "data" / "prefs.jsonl"
    original = [json.loads(line) for line in prefs.read_text().splitlines() if line.strip()]

    rows = [dict(r) for r in original]
    rows[2]["rejected"] = None
    prefs.write_text("".join(json.dumps(r) + "\n" for r in rows))
    report = rehearse(folder / "demo.toml", steps=STEPS, scratch_parent=tmp_path / "s")
    # nothing trained: the stage with the problem failed, every other one did not run
    assert {s.name: s.status for s in report.stages if s.status != NOT_RUN} == {"ipo": FAILED}
    assert any("prefs.jsonl:3" in p.message and "`rejected` is null" in p.message
               for p in report.problems), report.problems

    rows = [dict(r) for r in original]
    rows[6]["rejected"] = []
    prefs.write_text("".join(json.dumps(r) + "\n" for r in rows))
    report = rehearse(folder / "demo.toml", steps=STEPS, scratch_parent=tmp_path / "s2")
    assert [_status(report, n) for n in ("sft", "merged", "sft_r16")] == [PASSED] * 3
    ipo = _stage(report, "ipo")
    assert ipo.status == FAILED
    assert "`rejected` is empty or null in 1 of" in ipo.error and "rows 7" in ipo.error
    assert _status(report, "grpo") == NOT_RUN


@pytest.mark.slow
def test_reward_function_that_raises_on_some_outputs(tmp_path: Path) -> None:
    folder = _copy_examples(tmp_path)
    (folder / "strict_rewards.py").write_text(
        "def as_number(prompts, completions, answer, **kwargs):\n"
        "    # breaks on any output that is not a number\n"
        "    return [float(int(c[0]['content']) == int(a)) for c, a in zip(completions, answer)]\n")
    _edit(folder / "demo.toml", 'reward = ["exact_match"]',
          'reward = ["strict_rewards:as_number"]')
    report = rehearse(folder / "demo.toml", steps=STEPS, scratch_parent=tmp_path / "s")
    grpo = _stage(report, "grpo")
    assert grpo.status == FAILED
    assert "reward 'strict_rewards:as_number' raised ValueError" in grpo.error
    assert "on the completion ''" in grpo.error
    assert "instead of raising" in grpo.fix
    assert _status(report, "ipo") == PASSED


@pytest.mark.slow
def test_cleanup_that_deletes_the_base_the_export_needs(tmp_path: Path) -> None:
    folder = _copy_examples(tmp_path)
    path = _trimmed_demo(folder)
    policy = CleanupPolicy(keep=("sft",), after=("sft_r16",))
    report = rehearse(path, steps=STEPS, scratch_parent=tmp_path / "s", cleanup=policy)
    assert [_status(report, n) for n in ("sft", "merged", "sft_r16")] == [PASSED] * 3
    export = _stage(report, "export")
    assert export.status == FAILED
    assert "the cleanup after 'sft_r16' (keep sft) deletes" in export.error
    assert "stages/merged (the base model 'sft_r16' applies to)" in export.error
    assert "'merged'" in export.fix


def test_the_same_policy_in_the_file_is_safe_because_the_engine_runs_it(tmp_path: Path) -> None:
    """In [cleanup] the engine runs that policy between stages knowing what is still to come:
    the merged base survives for the export, and the rehearsal passes."""
    folder = _copy_examples(tmp_path)
    path = _trimmed_demo(folder)
    path.write_text(path.read_text() + '\n[cleanup]\nkeep = ["sft"]\nafter = ["sft_r16"]\n')
    seen: list[str] = []
    report = rehearse(path, steps=STEPS, scratch_parent=tmp_path / "s",
                      on_event=lambda kind, stage, data: seen.append(str(data.get("message"))))
    assert report.ok, [(s.name, s.error) for s in report.failures]
    (cleanup,) = [m for m in seen if m.startswith("cleanup after 'sft_r16'")]
    assert "kept for later stages: stages/sft_r16: 'export' reads it" in cleanup


@pytest.mark.slow
def test_cli_rehearses_with_a_cleanup_keeping_the_latest(tmp_path: Path) -> None:
    """A cleanup that keeps only the latest checkpoint after every stage protects the merged
    base, and the export succeeds after it (workflow 1's requirement), through the real CLI."""
    folder = _copy_examples(tmp_path)
    path = _trimmed_demo(folder)
    env = {**os.environ, "TMPDIR": str(tmp_path)}
    result = subprocess.run(
        [GRAFTLINE, "rehearse", str(path), "--steps", "2",
         "--cleanup-keep", "final"], capture_output=True, text=True, env=env, cwd=tmp_path,
        timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "rehearsal passed" in result.stdout
    assert "cleanup after sft_r16: keep final" in result.stdout
    # graftline's own progress only: no library bars or kernel warnings in the CLI's output
    for noise in ("Loading weights", "Tokenizing", "it/s]", "kernels-community"):
        assert noise not in result.stdout + result.stderr, noise
    assert not any((folder.parent / "runs" / ".rehearsals").iterdir())  # scratch removed


def test_cli_exits_non_zero_on_a_failure(tmp_path: Path) -> None:
    folder = _copy_examples(tmp_path)
    _edit(folder / "demo.toml", 'data = "data/prefs.jsonl"', 'data = "data/nope.jsonl"')
    result = subprocess.run(
        [GRAFTLINE, "rehearse", str(folder / "demo.toml")],
        capture_output=True, text=True, timeout=300)
    assert result.returncode == 1
    assert "dataset not found" in result.stdout and "ipo" in result.stdout


@pytest.mark.slow
def test_demo_rehearses_cleanly(tmp_path: Path) -> None:
    report = rehearse(EXAMPLES / "demo.toml", steps=STEPS, scratch_parent=tmp_path)
    assert report.ok, [(s.name, s.error) for s in report.failures]
    assert [s.status for s in report.stages] == [PASSED] * len(report.stages)
    assert not any(tmp_path.iterdir())  # the scratch directory is gone


@pytest.mark.slow
def test_full_size_gpt_oss_pipeline_rehearses_on_a_moe_twin(tmp_path: Path) -> None:
    folder = _copy_examples(tmp_path)
    _edit(folder / "coding_tui.toml", 'base = "toy:addition"',
          f'base = "{CONFIGS / "gpt-oss-20b"}"')
    report = rehearse(folder / "coding_tui.toml", steps=STEPS, scratch_parent=tmp_path / "s",
                      keep=True)
    assert [s.status for s in report.stages] == [PASSED] * len(report.stages), \
        [(s.name, s.error) for s in report.failures]
    # 20B weights: the real run's disk forecast may not fit here; it is reported, not rehearsed
    assert all(p.field == "pipeline.runs_dir" for p in report.problems)
    assert "gpt_oss twin" in report.twin and "4 experts" in report.twin
    exported = Path(report.scratch) / "exports" / "export" / "config.json"
    config = json.loads(exported.read_text())
    assert config["model_type"] == "gpt_oss" and config["num_local_experts"] == 4

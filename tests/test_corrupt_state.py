"""Corrupt run state read cleanly: a truncated event log reconciled with state.json and the
manifests; `graftline export` of an adapter with a broken adapter_config.json refused without a
traceback."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
from stage_helpers import one_thread, pipeline, write_data  # noqa: F401

from graftline.engine.run import state as runstate
from graftline.engine.run.client import read_fold
from graftline.engine.run.events import EventWriter
from graftline.engine.run.reconcile import reconcile
from graftline.engine.run.runner import run_pipeline

ONE_SFT = """
[[stage]]
name = "a"
kind = "sft"
data = "sft.jsonl"
lora = { r = 4 }
train = { max_steps = 2, batch_size = 8 }
"""

GRAFTLINE = [sys.executable, "-c", "from graftline.console.cli import main; main()"]


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory: pytest.TempPathFactory, toy_base: Path) -> Path:
    root = write_data(tmp_path_factory.mktemp("corrupt"))
    run_dir = root / "runs" / "r"
    run_dir.mkdir(parents=True)
    with EventWriter(run_dir) as writer:
        assert run_pipeline(pipeline(root, ONE_SFT), run_dir, writer).status == "finished"
    # what the daemon writes at the end of a run
    runstate.write(run_dir, runstate.RunState("r", "t", status="finished", heartbeat=time.time(),
                                              message="1 stages done"))
    return run_dir


def _truncate_before(run_dir: Path, kind: str, torn: bool = False) -> None:
    events = run_dir / "events.jsonl"
    lines = events.read_text().splitlines(keepends=True)
    cut = next(i for i, line in enumerate(lines) if json.loads(line)["type"] == kind)
    tail = lines[cut][: len(lines[cut]) // 2] if torn else ""
    events.write_text("".join(lines[:cut]) + tail)


def test_a_whole_log_agrees(finished_run: Path) -> None:
    view = reconcile(finished_run)
    assert view.consistent and view.status == "finished" and view.stages == {"a": "complete"}


@pytest.mark.parametrize("torn", [False, True])
def test_a_truncated_log_is_reconciled_with_state_and_manifests(tmp_path: Path,
                                                               finished_run: Path,
                                                               torn: bool) -> None:
    import shutil

    run_dir = tmp_path / "r"
    shutil.copytree(finished_run, run_dir, symlinks=True)
    _truncate_before(run_dir, "stage_finished", torn=torn)
    fold = read_fold(run_dir)
    # what the log alone says: the stage still running, no end of the run
    assert fold.stages["a"].status == "running" and fold.status == "running"
    view = reconcile(run_dir, fold)
    assert view.status == "finished" and not view.live and view.log_status == "running"
    assert view.stages == {"a": "complete"}
    assert view.torn_tail is torn
    text = " | ".join(view.missing)
    assert "state.json says finished" in text and "stage 'a' is complete on disk" in text
    assert ("incomplete" in text) is torn


@pytest.mark.parametrize("config", ['{"base_model_name_or_path": ', '["x"]',
                                    '{"base_model_name_or_path": "BASE", "r": "x"}',
                                    '{"base_model_name_or_path": "BASE", "target_modules": 5}'])
def test_export_of_an_adapter_with_a_broken_config_is_refused_cleanly(
        tmp_path: Path, finished_run: Path, toy_base: Path, config: str) -> None:
    import shutil

    adapter = tmp_path / "adapter"
    shutil.copytree(finished_run / "stages/a", adapter)
    (adapter / "graftline.json").unlink()  # read as another tool's adapter: the config is all
    (adapter / "adapter_config.json").write_text(config.replace("BASE", str(toy_base)))
    done = subprocess.run([*GRAFTLINE, "export", str(adapter), "--out", str(tmp_path / "out")],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr + done.stdout
    assert "export refused" in done.stderr and "adapter_config.json" in done.stderr
    assert "fix:" in done.stderr
    assert not (tmp_path / "out").exists()

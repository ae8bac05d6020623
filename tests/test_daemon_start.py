"""The engine refuses to run a run directory it must not touch (no training here)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from graftline.engine.pipeline.file import parse
from graftline.engine.run import daemon
from graftline.engine.run import state as runstate
from graftline.engine.run.launch import PIPELINE_COPY, create_run

PIPELINE = """
[pipeline]
name = "guard"
base = "toy:addition"
[[stage]]
name = "one"
kind = "sft"
data = "d.jsonl"
"""


def _engine(run_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "graftline.engine.run.daemon", str(run_dir), *args],
        capture_output=True, text=True, timeout=120,
    )


def test_a_second_engine_on_a_locked_run_exits_busy(tmp_path: Path) -> None:
    run_dir = create_run(parse(PIPELINE, tmp_path / "p.toml"), tmp_path / "runs")
    held = daemon._lock(run_dir)
    assert held is not None
    try:
        result = _engine(run_dir)
    finally:
        os.close(held)
    assert result.returncode == daemon.EXIT_BUSY
    assert "already running" in result.stderr
    assert not (run_dir / "events.jsonl").exists()


def test_an_edited_pipeline_copy_is_refused_and_the_run_reads_failed(tmp_path: Path) -> None:
    run_dir = create_run(parse(PIPELINE, tmp_path / "p.toml"), tmp_path / "runs")
    (run_dir / PIPELINE_COPY).write_text(PIPELINE.replace("one", "uno"))
    result = _engine(run_dir)
    assert result.returncode == daemon.EXIT_BAD_RUN
    state = runstate.read(run_dir)
    assert state.status == "failed" and "no longer matches its hash" in state.message

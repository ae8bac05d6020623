"""`graftline run / ls / logs / stop / resume` on real run directories (no engine training here;
tests/test_daemon.py runs real engines)."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

from typer.testing import CliRunner

from graftline.console.cli import app
from graftline.engine.pipeline.file import parse
from graftline.engine.run import state as runstate
from graftline.engine.run.events import EventWriter
from graftline.engine.run.launch import PIPELINE_COPY, RUN_META, create_run
from graftline.engine.run.state import RunState

runner = CliRunner()

PIPELINE = """
[pipeline]
name = "cli"
base = "toy:addition"
[[stage]]
name = "one"
kind = "sft"
data = "d.jsonl"
train = { max_steps = 5 }
"""


def _dead_pid() -> tuple[int, float]:
    import psutil

    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    created = psutil.Process(proc.pid).create_time()
    proc.wait()
    return proc.pid, created


def _run(tmp_path: Path, runs: Path) -> Path:
    pf = parse(PIPELINE, tmp_path / "p.toml")
    return create_run(pf, runs)


def test_bad_pipeline_is_refused_with_its_line_and_nothing_is_created(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text(PIPELINE.replace("max_steps = 5", "max_stepz = 5"))
    runs = tmp_path / "runs"
    result = runner.invoke(app, ["run", str(bad), "--detach", "--runs-dir", str(runs)])
    assert result.exit_code == 1
    assert "bad.toml:" in result.output and "max_stepz" in result.output
    assert not runs.exists()


def test_run_directory_holds_the_pipeline_copy_and_its_hash(tmp_path: Path) -> None:
    run_dir = _run(tmp_path, tmp_path / "runs")
    assert run_dir.name.startswith("cli-")
    assert (run_dir / PIPELINE_COPY).read_text() == PIPELINE
    meta = json.loads((run_dir / RUN_META).read_text())
    digest = (run_dir / "pipeline.sha256").read_text().split()[0]
    assert meta["sha256"] == digest and meta["source"] == str((tmp_path / "p.toml").resolve())
    assert runstate.read(run_dir).status == "starting"
    # a second run in the same second gets its own directory
    assert _run(tmp_path, tmp_path / "runs") != run_dir


def test_ls_shows_a_dead_engine_as_crashed_and_resume_refuses_live_or_finished(
        tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    dead = _run(tmp_path, runs)
    pid, started = _dead_pid()
    runstate.write(dead, RunState(dead.name, "cli", status="running", pid=pid, pid_started=started,
                                  started=time.time() - 100, heartbeat=time.time(), stage="one"))
    live = _run(tmp_path, runs)
    me, my_start = runstate.this_process()
    runstate.write(live, RunState(live.name, "cli", status="running", pid=me, pid_started=my_start,
                                  started=time.time(), heartbeat=time.time(), stage="one",
                                  global_step=3, total_steps=12))
    result = runner.invoke(app, ["ls", "--runs-dir", str(runs)])
    assert result.exit_code == 0, result.output
    lines = {line.split()[0]: line.split() for line in result.output.splitlines()[1:]}
    assert lines[dead.name][1] == "crashed"
    assert lines[live.name][1:4] == ["running", "one", "25%"]

    refused = runner.invoke(app, ["resume", live.name, "--runs-dir", str(runs), "--detach"])
    assert refused.exit_code == 1 and "running" in refused.output
    runstate.write(live, RunState(live.name, "cli", status="finished", pid=me))
    refused = runner.invoke(app, ["resume", live.name, "--runs-dir", str(runs), "--detach"])
    assert refused.exit_code == 1 and "already finished" in refused.output
    stop = runner.invoke(app, ["stop", dead.name, "--runs-dir", str(runs)])
    assert stop.exit_code == 0 and "not running (crashed)" in stop.output


def test_logs_prints_plain_lines_when_piped_and_json_on_request(tmp_path: Path) -> None:
    run_dir = _run(tmp_path, tmp_path / "runs")
    with EventWriter(run_dir) as writer:
        writer.emit("run_started", None, run=run_dir.name, stages=[{"name": "one"}])
        writer.emit("stage_started", "one", kind="sft", index=0, max_steps=5, action="new")
        writer.emit("metrics", "one", step=1, global_step=1, max_steps=5, loss=1.25)
        writer.emit("telemetry", "one", gpus=None, gpu=None, gpu_reason="no GPU", rss=1 << 20)
        writer.emit("warning", "one", message="disk is tight", fix="free some")
    result = runner.invoke(app, ["logs", str(run_dir)])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert len(lines) == 4  # telemetry only with --telemetry
    assert " metrics one step 1/5 (global 1) loss=1.25" in lines[2]
    assert "disk is tight (fix: free some)" in lines[3]
    raw = runner.invoke(app, ["logs", str(run_dir), "--json", "--telemetry"])
    assert [json.loads(line)["seq"] for line in raw.output.splitlines()] == [1, 2, 3, 4, 5]

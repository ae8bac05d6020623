"""The background engine as real processes: detached from the launching session, killed with
SIGKILL mid-stage and resumed, paused and stopped over its socket."""

from __future__ import annotations

import itertools
import json
import os
import shlex
import signal
import stat
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from graftline.engine.lineage import manifest
from graftline.engine.run import client, control
from graftline.engine.run import state as runstate
from graftline.engine.run.events import EVENTS, read_raw
from graftline.engine.run.stack_imports import KEPT_OUT
from graftline.engine.toy.tasks import sft_rows

pytestmark = pytest.mark.slow

GRAFTLINE = [sys.executable, "-c", "from graftline.console.cli import main; main()"]
STEPS = 60  # long enough that pause/stop land inside a stage even at ~30 steps/s
SAVE = 4
PIPELINE = f"""
[pipeline]
name = "bg"
base = "toy:addition"
runs_dir = "runs"

[defaults]
train = {{ batch_size = 8, max_length = 32, logging_steps = 1 }}

[[stage]]
name = "one"
kind = "sft"
data = "sft.jsonl"
lora = {{ r = 4 }}
train = {{ max_steps = {STEPS}, lr = 3e-3, save_steps = {SAVE} }}

[[stage]]
name = "two"
kind = "sft"
adapter = "continue"
data = "sft.jsonl"
train = {{ max_steps = {STEPS}, lr = 1e-3, save_steps = {SAVE} }}
"""


@pytest.fixture()
def pipeline(tmp_path: Path, toy_base: Path) -> Path:
    with (tmp_path / "sft.jsonl").open("w") as handle:
        for row in sft_rows(128, 0):
            handle.write(json.dumps(row) + "\n")
    (tmp_path / "p.toml").write_text(PIPELINE)
    return tmp_path / "p.toml"


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*GRAFTLINE, *args], cwd=cwd, capture_output=True, text=True,
                          timeout=300, stdin=subprocess.DEVNULL)


def _rows(run_dir: Path) -> list[dict]:
    return read_raw(run_dir / EVENTS)[0]


def _wait(run_dir: Path, what: str, until: Callable[[list[dict]], bool],
          timeout: float = 400) -> list[dict]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        rows = _rows(run_dir)
        if until(rows):
            return rows
        info = client.read_state(run_dir)
        if not info.live and info.status != "unknown":
            # the engine writes its final state first, then its last events: let them land
            settle = time.monotonic() + 5
            while time.monotonic() < settle:
                rows = _rows(run_dir)
                if until(rows):
                    return rows
                time.sleep(0.1)
            log = (run_dir / "engine.log").read_text()[-3000:]
            raise AssertionError(f"engine {info.status} before {what}\n{log}")
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def _global_steps(rows: list[dict], stage: str | None = None) -> list[int]:
    return [r["data"]["global_step"] for r in rows
            if r["type"] == "metrics" and (stage is None or r["stage"] == stage)]


def _finished(rows: list[dict]) -> bool:
    return any(r["type"] == "run_finished" for r in rows[-3:])


def _kill(run_dir: Path) -> None:
    state = runstate.read(run_dir)
    os.kill(state.pid, signal.SIGKILL)
    deadline = time.monotonic() + 30
    while runstate.process_alive(state.pid, state.pid_started):
        assert time.monotonic() < deadline
        time.sleep(0.05)


def _wait_exit(run_dir: Path) -> None:
    state = runstate.read(run_dir)
    deadline = time.monotonic() + 60
    while runstate.process_alive(state.pid, state.pid_started):
        assert time.monotonic() < deadline, "the engine did not exit"
        time.sleep(0.1)


def _assert_manifests_truthful(run_dir: Path) -> None:
    """Every manifest parses; one says complete only for a stage that finished complete."""
    finished = {r["stage"] for r in _rows(run_dir)
                if r["type"] == "stage_finished" and r["data"]["status"] == "complete"}
    for path in (run_dir / "stages").glob("*/" + manifest.MANIFEST):
        found = manifest.read(path.parent)
        assert found is not None
        if found.status == "complete":
            assert found.stage in finished, f"{path} is complete but its stage never finished"


def test_engine_survives_sighup_of_the_session_that_started_it(pipeline: Path) -> None:
    # A throwaway session stands in for the SSH login: `graftline run --detach`, then it lingers
    # like a shell would, and the whole session gets SIGHUP (the terminal closing). No rehearsal:
    # a rehearsing engine's survival of the same is test_console_tmux_launch's.
    session = subprocess.Popen(
        ["bash", "-c",
         f"{shlex.join(GRAFTLINE)} run p.toml --detach --no-rehearse && exec sleep 600"],
        cwd=pipeline.parent, start_new_session=True, stdout=subprocess.PIPE, text=True,
        stdin=subprocess.DEVNULL)
    runs = pipeline.parent / "runs"
    deadline = time.monotonic() + 120
    while client.latest_run(runs) is None or client.read_state(client.latest_run(runs)).pid is None:
        assert time.monotonic() < deadline, "the run never started"
        time.sleep(0.1)
    run_dir = client.latest_run(runs)
    _wait(run_dir, "the first step", lambda rows: bool(_global_steps(rows)))
    os.killpg(session.pid, signal.SIGHUP)
    assert session.wait(timeout=30) != 0  # the session is gone…
    assert "started run" in session.stdout.read()

    rows = _wait(run_dir, "the end", _finished)  # …the engine is not
    assert rows[-1]["data"]["status"] == "finished", rows[-1]
    # the toy run loads nothing through bitsandbytes: the engine never imported it
    assert f"graftline: {KEPT_OUT}" in (run_dir / "engine.log").read_text()
    # the state is final by the time run_finished is in the log
    assert client.read_state(run_dir).status == "finished"
    for stage in ("one", "two"):
        found = manifest.read(run_dir / "stages" / stage)
        assert found is not None and found.status == "complete" and found.bytes > 0
    steps = _global_steps(rows)
    assert steps == list(range(1, 2 * STEPS + 1))
    assert rows[0]["type"] == "run_started"
    telemetry = [r["data"] for r in rows if r["type"] == "telemetry"]
    assert telemetry and all(t["rss"] > 0 and t["disk_free"] > 0 for t in telemetry)
    assert all(t["gpus"] or t["gpu_reason"] for t in telemetry)  # a GPU, or why there is none
    _wait_exit(run_dir)
    assert not (run_dir / control.SOCKET).exists()


def test_kill_resume_pause_stop_keep_one_curve_and_truthful_manifests(pipeline: Path) -> None:
    cwd = pipeline.parent
    started = _cli("run", "p.toml", "--detach", "--no-rehearse", cwd=cwd)
    assert started.returncode == 0, started.stderr
    run_dir = client.latest_run(cwd / "runs")

    # 1. SIGKILL mid-stage one, after its first Trainer checkpoint
    _wait(run_dir, "stage one past a checkpoint",
          lambda rows: any(s > SAVE + 1 for s in _global_steps(rows, "one")))
    sock = run_dir / control.SOCKET
    assert stat.S_IMODE(sock.stat().st_mode) == 0o600 and stat.S_ISSOCK(sock.stat().st_mode)
    _kill(run_dir)
    killed_at = max(_global_steps(_rows(run_dir)))
    listing = _cli("ls", "--runs-dir", "runs", cwd=cwd)
    assert f"{run_dir.name}  crashed" in listing.stdout, listing.stdout
    _assert_manifests_truthful(run_dir)
    assert manifest.read(run_dir / "stages" / "one").status != "complete"

    # 2. resume; pause and un-pause over the socket; SIGKILL again, inside stage two
    resumed = _cli("resume", run_dir.name, "--runs-dir", "runs", "--detach", cwd=cwd)
    assert resumed.returncode == 0, resumed.stderr
    before = len(_rows(run_dir))
    rows = _wait(run_dir, "the resumed curve", lambda rows: len(_global_steps(rows[before:])) > 0)
    first_after = _global_steps(rows[before:])[0]
    # lost at most one save interval (killed right after a save, it starts at the next step)
    assert killed_at - SAVE < first_after <= killed_at + 1
    _wait(run_dir, "stage two", lambda rows: len(_global_steps(rows, "two")) >= 2)
    assert client.send_command(run_dir, "pause")["status"] == "paused"
    assert client.read_state(run_dir).status == "paused"
    # The step in flight may still log (the trainer holds at its next step end, at most one
    # metrics row later); after that no step starts while paused. Unpaused, this engine logs
    # dozens of steps in the 2 s watched here.
    paused_at = len(_global_steps(_rows(run_dir)))
    time.sleep(2)
    assert len(_global_steps(_rows(run_dir))) <= paused_at + 1
    unpaused = _cli("resume", run_dir.name, "--runs-dir", "runs", cwd=cwd)
    assert "un-paused: running" in unpaused.stdout, unpaused.stdout + unpaused.stderr
    _wait(run_dir, "steps after un-pausing",
          lambda rows: len(_global_steps(rows)) > paused_at)
    _kill(run_dir)
    _assert_manifests_truthful(run_dir)
    assert manifest.read(run_dir / "stages" / "one").status == "complete"

    # 3. resume again, then a graceful stop: a Trainer checkpoint at the stop step, stage two
    #    not complete, status stopped
    before = len(_rows(run_dir))
    _cli("resume", run_dir.name, "--runs-dir", "runs", "--detach", cwd=cwd)
    _wait(run_dir, "the second resume", lambda rows: len(_global_steps(rows[before:])) > 0)
    # paused first, so the stop cannot race the stage's end however fast the engine is
    assert client.send_command(run_dir, "pause")["status"] == "paused"
    stopped = _cli("stop", run_dir.name, "--runs-dir", "runs", cwd=cwd)
    assert stopped.returncode == 0 and "stopped" in stopped.stdout, stopped.stdout
    rows = _rows(run_dir)
    assert rows[-1]["type"] == "run_finished" and rows[-1]["data"]["status"] == "stopped"
    assert client.read_state(run_dir).status == "stopped"
    # the stop step is the last one this engine logged (the killed engine may have got further)
    stopped_at = max(_global_steps(rows[before:], "two")) - STEPS
    assert (run_dir / "stages" / "two" / "trainer" / f"checkpoint-{stopped_at}").is_dir()
    _assert_manifests_truthful(run_dir)

    # 4. resume to the end
    before = len(_rows(run_dir))
    _cli("resume", run_dir.name, "--runs-dir", "runs", "--detach", cwd=cwd)
    rows = _wait(run_dir, "the end", lambda rows: _finished(rows[before:]))
    assert [r["data"]["status"] for r in rows[before:] if r["type"] == "run_finished"] == [
        "finished"]
    _assert_manifests_truthful(run_dir)
    for stage in ("one", "two"):
        assert manifest.read(run_dir / "stages" / stage).status == "complete"
    steps = _global_steps(rows)
    assert set(steps) == set(range(1, 2 * STEPS + 1)) and steps[-1] == 2 * STEPS
    # one log: sequence numbers run on across the four engines, each resume says so
    assert [r["seq"] for r in rows] == list(range(1, len(rows) + 1))
    starts = [r["data"]["resumed"] for r in rows if r["type"] == "run_started"]
    assert starts == [False, True, True, True]
    assert runstate.read(run_dir).resumes == 3
    # the curve never jumps ahead: each step follows the previous one or repeats lost ones
    for previous, step in itertools.pairwise(steps):
        assert step == previous + 1 or step <= previous

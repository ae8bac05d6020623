"""`graftline run FILE -d` is detached from the first second: it validates in the foreground,
starts the engine and returns; the engine rehearses as the run's first phase.

A real shell in its own session (as an SSH login) runs the real command; a real SIGHUP goes to
that session's process group as soon as the command returns. The pipeline's reward function is
the gate that proves the order without a clock: called from the launching session (validation's
trial call) it scores at once; called from anywhere else (the engine's rehearsal, its GRPO stage)
it waits until the test creates `gate`, which the test does only after the command has returned
and the SIGHUP was sent. A rehearsal that ran before the command returned could not have passed.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from console_support import screen_text, wait_for
from gated_run import RAISE, REWARD, WAIT, wait_ended, write_gated_run
from typer.testing import CliRunner

from graftline.console.app import GraftlineApp
from graftline.console.cli import app
from graftline.console.screens.dashboard import DashboardScreen
from graftline.console.widgets.pipeline_table import PipelineTable
from graftline.engine.run import client


def _pipeline(tmp_path: Path, body: str, mode: str) -> Path:
    return write_gated_run(tmp_path, name="detached", body=body, mode=mode)


def _events(run_dir: Path) -> list[dict]:
    path = run_dir / client.EVENTS
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _stop(run_dir: Path) -> None:
    if client.read_state(run_dir).live:
        with contextlib.suppress(Exception):
            client.send_command(run_dir, "stop")


def test_run_detach_returns_before_the_rehearsal_and_a_sighup_cannot_stop_it(
        tmp_path: Path, toy_base: Path) -> None:
    pipeline = _pipeline(tmp_path, WAIT, "waits")
    # an SSH login: a shell leading its own session, which stays after the command returns
    shell = subprocess.Popen(
        ["bash", "-c", f"echo $$ > launcher.sid; {sys.executable} -m graftline run "
                       f"{pipeline} -d > out.txt 2>&1; echo $? > rc; exec sleep 600"],
        cwd=tmp_path, start_new_session=True, stdin=subprocess.DEVNULL)
    run_dir: Path | None = None
    try:
        deadline = time.monotonic() + 300
        while not (tmp_path / "rc").exists():  # the command has returned
            assert shell.poll() is None and time.monotonic() < deadline, \
                (tmp_path / "out.txt").read_text()
            time.sleep(0.1)
        # the terminal goes away the moment the command returns: SIGHUP to the whole group
        os.killpg(shell.pid, signal.SIGHUP)
        assert shell.wait(timeout=60) == -signal.SIGHUP
        out = (tmp_path / "out.txt").read_text()
        assert (tmp_path / "rc").read_text().strip() == "0", out
        assert "started run detached-" in out and "--kind rehearsal" in out
        assert not (tmp_path / "gate").exists()
        (run_dir,) = (tmp_path / "runs").glob("detached-*")
        (tmp_path / "gate").touch()  # only now can the engine's rehearsal score anything

        info = wait_ended(run_dir)
        assert info.status == "finished", (run_dir / "engine.log").read_text()[-3000:]
        events = _events(run_dir)
        kinds = [(e["type"], e["data"].get("phase")) for e in events]
        rehearsed = [e for e in events if e["type"] == "rehearsal"
                     and e["data"].get("phase") == "finished"]
        assert len(rehearsed) == 1 and rehearsed[0]["data"]["ok"] is True
        assert [s["name"] for s in rehearsed[0]["data"]["stages"]] == ["rl"]
        # run_started, the rehearsal from start to its pass, then the stage, in that order
        order = [kinds.index(("run_started", None)), kinds.index(("rehearsal", "started")),
                 kinds.index(("rehearsal", "finished")), kinds.index(("stage_started", None)),
                 kinds.index(("run_finished", None))]
        assert order == sorted(order)
        # the reward was called (and waited) only outside the launching session: the engine's
        launcher = int((tmp_path / "launcher.sid").read_text())
        callers = {int(p.name.split("-")[-1]) for p in tmp_path.glob("called-in-*")}
        assert callers and launcher not in callers
        report = json.loads((run_dir / "rehearsal.json").read_text())
        assert report["ok"] is True
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(shell.pid, signal.SIGKILL)
        if run_dir is not None:
            _stop(run_dir)


@pytest.mark.asyncio
async def test_a_failed_rehearsal_ends_the_run_before_stage_one_with_the_report_and_the_fix(
        tmp_path: Path, toy_base: Path) -> None:
    pipeline = _pipeline(tmp_path, RAISE, "raises")
    (tmp_path / "launcher.sid").write_text(str(os.getsid(0)))  # validation here scores
    result = CliRunner().invoke(app, ["run", str(pipeline), "-d"])
    assert result.exit_code == 0, result.output
    (run_dir,) = (tmp_path / "runs").glob("detached-*")
    try:
        info = wait_ended(run_dir)
    finally:
        _stop(run_dir)
    assert info.status == "failed"
    assert "rehearsal failed at stage 'rl'" in (info.message or "")
    events = _events(run_dir)
    assert not [e for e in events if e["type"] == "stage_started"]
    error = next(e for e in events if e["type"] == "error")
    assert "raised ValueError" in error["data"]["message"]
    fix = error["data"]["fix"]
    assert "fn(prompts, completions, **columns)" in fix and "--no-rehearse" in fix

    logs = CliRunner().invoke(app, ["logs", run_dir.name, "--kind", "rehearsal"])
    assert logs.exit_code == 0, logs.output
    assert "rehearsal failed" in logs.output and "rl (grpo): failed" in logs.output
    assert "fix: call it yourself on a few rows" in logs.output

    # the dashboard: a rehearsal row above the stages, failed, with its reason; the log its fix
    console = GraftlineApp(run_dir, run_dir.parent)
    async with console.run_test(size=(120, 40)) as pilot:
        await wait_for(pilot, lambda: isinstance(console.screen, DashboardScreen)
                       and console.screen.loaded, what="the dashboard")
        table = console.screen.query_one(PipelineTable)
        rows = [[str(c) for c in table.get_row_at(i)] for i in range(table.row_count)]
        assert rows[0][0] == "rehearsal" and "failed" in rows[0][2]
        assert "failed at stage rl" in rows[0][4]
        assert rows[1][0] == "rl" and "pending" in rows[1][2]
        text = screen_text(console)
        assert "rehearsal" in text and "call it yourself" in text


def test_no_rehearse_starts_stage_one_without_a_rehearsal(tmp_path: Path,
                                                          toy_base: Path) -> None:
    pipeline = _pipeline(tmp_path, RAISE, "raises")
    (tmp_path / "launcher.sid").write_text("0")  # a rehearsal would fail; none runs
    (tmp_path / "gate_reward.py").write_text(REWARD.format(body="pass", mode="scores"))
    result = CliRunner().invoke(app, ["run", str(pipeline), "-d", "--no-rehearse"])
    assert result.exit_code == 0, result.output
    assert "--kind rehearsal" not in result.output
    (run_dir,) = (tmp_path / "runs").glob("detached-*")
    try:
        info = wait_ended(run_dir)
    finally:
        _stop(run_dir)
    assert info.status == "finished", (run_dir / "engine.log").read_text()[-3000:]
    events = _events(run_dir)
    assert not [e for e in events if e["type"] == "rehearsal"]
    # the file names no probes: the first stage's first prompts are asked, start and end
    first = [json.loads(line)["prompt"][-1]["content"]
             for line in (tmp_path / "grpo.jsonl").read_text().splitlines()[:4]]
    asked = [[r["prompt"] for r in e["data"]["samples"]] for e in events
             if e["type"] == "samples"]
    assert asked == [first, first]
    planned = CliRunner().invoke(app, ["plan", str(pipeline)])
    assert "probes: none named; the first 4 prompts of grpo.jsonl" in planned.output

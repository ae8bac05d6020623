"""A cleanup never touches a live run, in any of its live states, decided by the one liveness
rule: real state files naming a real (sleeping) process, and the engine lock held by a real
child process."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
from lineage_helpers import files_under, make_adapter
from typer.testing import CliRunner

from graftline.console.cli import app
from graftline.engine import lineage
from graftline.engine.lineage import cleanup

LIVE_STATES = ("starting", "running", "paused", "stopping")


@pytest.fixture()
def tree(tmp_path: Path, toy_base: Path) -> tuple[Path, Path]:
    """runs/ with one run (a stage adapter and a Trainer checkpoint) and one adapter to keep."""
    root = tmp_path / "runs"
    run = root / "r1"
    make_adapter(run / "stages" / "sft", toy_base, seed=1)
    make_adapter(run / "stages" / "sft" / "trainer" / "checkpoint-2", toy_base, seed=2)
    (run / "stages" / "sft" / "trainer" / "checkpoint-2" / "trainer_state.json").write_text(
        json.dumps({"global_step": 2, "log_history": [{"loss": 1.0, "step": 2}]}))
    make_adapter(root / "keep-me", toy_base, seed=3)
    return root, run


def _write_state(run: Path, status: str, pid: int | None) -> None:
    state = {"status": status, "pid": pid, "host": socket.gethostname(),
             "heartbeat": time.time(), "stage": "sft"}
    if pid is not None:
        state["pid_started"] = psutil.Process(pid).create_time()
    (run / "state.json").write_text(json.dumps(state))


def _cleanup_refuses(root: Path, run: Path) -> None:
    before = files_under(run)
    lin = lineage.scan([root])
    plan = cleanup.plan_cleanup(lin, [cleanup.parse_keep("keep-me")])
    assert not plan.delete, plan.delete
    assert {Path(k).name for k in plan.refused} == {"sft", "checkpoint-2"}
    out = CliRunner().invoke(app, ["cleanup", str(root), "--keep", "keep-me", "--yes"])
    assert out.exit_code == 0, out.output
    assert "is running" in " ".join(out.output.split())
    assert files_under(run) == before


@pytest.mark.parametrize("status", LIVE_STATES)
def test_a_live_run_in_each_state_is_untouchable(tree: tuple[Path, Path], status: str) -> None:
    root, run = tree
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        _write_state(run, status, sleeper.pid)
        _cleanup_refuses(root, run)
    finally:
        sleeper.kill()
        sleeper.wait()
    # The same files, once the process is gone, are a crashed run's: they may go.
    lin = lineage.scan([root])
    plan = cleanup.plan_cleanup(lin, [cleanup.parse_keep("keep-me")])
    assert not plan.refused and {Path(k).name for k in plan.delete} == {"sft", "checkpoint-2"}


def test_a_starting_run_without_a_pid_yet_is_untouchable(tree: tuple[Path, Path]) -> None:
    root, run = tree
    _write_state(run, "starting", None)  # the launcher wrote it; the engine is not up yet
    _cleanup_refuses(root, run)


_LOCKER = """
import fcntl, os, sys, time
fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT, 0o600)
fcntl.flock(fd, fcntl.LOCK_EX)
print("locked", flush=True)
time.sleep(120)
"""


def test_a_run_whose_engine_holds_the_lock_is_untouchable(tree: tuple[Path, Path]) -> None:
    """Whatever state.json says (here a final status), the lock held by a live engine wins."""
    root, run = tree
    _write_state(run, "finished", None)
    locker = subprocess.Popen([sys.executable, "-c", _LOCKER, str(run / "engine.lock")],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert locker.stdout is not None and locker.stdout.readline().strip() == "locked"
        _cleanup_refuses(root, run)
    finally:
        locker.kill()
        locker.wait()

"""A stage on two processes (torchrun, DDP over gloo on CPU) inside runs started by the real
engine: rank 0 alone reports, the adapter equals a one-process run of the same global batch,
pause/stop reach every rank, and kill -9 of rank 1 ends the group and resumes."""

from __future__ import annotations

import asyncio
import itertools
import json
import math
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from graftline.engine.common.sink import ListSink
from graftline.engine.lineage import manifest as mf
from graftline.engine.pipeline import file as pipeline_file
from graftline.engine.run import client, launch
from graftline.engine.run import state as runstate
from graftline.engine.run.events import EVENTS, read_raw
from graftline.engine.run.runner import run_pipeline
from graftline.engine.run.stack_imports import KEPT_OUT
from graftline.engine.toy.tasks import grpo_rows, preference_rows, sft_rows

# each test starts its own ranks on free ports: any worker may take any of them
pytestmark = [pytest.mark.slow, pytest.mark.spread]
# Same global batch, same data order: two ranks × 4 rows against one process × 8 rows. DDP
# averages the ranks' gradients in another order than one process sums them; measured on this
# machine the adapters differ by 2e-6 with weights up to 0.1.
TOLERANCE = 1e-4
RANK_MODULE = "graftline.engine.run.rank_main"


def _pipeline(root: Path, *, processes: int, batch: int, steps: int, save: int | None = None,
              name: str = "p.toml") -> Path:
    save_line = f", save_steps = {save}" if save else ""
    text = f"""
[pipeline]
name = "dist"
base = "toy:addition"
runs_dir = "runs"
probes = ["12+34", "50+27"]

[[stage]]
name = "sft"
kind = "sft"
data = "sft.jsonl"
lora = {{ r = 4 }}
processes = {processes}
train = {{ max_steps = {steps}, batch_size = {batch}, lr = 3e-3, max_length = 32{save_line} }}
"""
    path = root / name
    path.write_text(text)
    return path


@pytest.fixture()
def root(tmp_path: Path, toy_base: Path) -> Path:
    with (tmp_path / "sft.jsonl").open("w") as handle:
        for row in sft_rows(400, 1):
            handle.write(json.dumps(row) + "\n")
    return tmp_path


@pytest.fixture()
def engines() -> Iterator[list[Path]]:
    """Runs whose engine the test started: an engine a failed assertion left running (paused,
    say) is killed at the end, and its ranks die with it (their parent-death signal)."""
    started: list[Path] = []
    yield started
    for run_dir in started:
        found = runstate.read(run_dir)
        if found is None or not found.pid:
            continue
        try:
            mine = str(run_dir).encode() in Path(f"/proc/{found.pid}/cmdline").read_bytes()
        except OSError:
            continue
        if mine:
            os.kill(found.pid, signal.SIGKILL)


def _rows(run_dir: Path) -> list[dict]:
    return read_raw(run_dir / EVENTS)[0]


def _wait(run_dir: Path, what: str, until: Callable[[list[dict]], bool],
          timeout: float = 600) -> list[dict]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        rows = _rows(run_dir)
        if until(rows):
            return rows
        time.sleep(0.2)
    log = (run_dir / launch.ENGINE_LOG).read_text()[-3000:]
    raise AssertionError(f"timed out waiting for {what}\n{log}")


def _finished(rows: list[dict]) -> str | None:
    ends = [r["data"]["status"] for r in rows if r["type"] == "run_finished"]
    return ends[-1] if ends else None


def _ranks(run_dir: Path) -> dict[int, int]:
    """rank → pid of this run's live rank processes (read from /proc: real processes)."""
    found: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmd = (entry / "cmdline").read_bytes().split(b"\0")
            env = (entry / "environ").read_bytes().split(b"\0")
            status = (entry / "status").read_text()
        except OSError:
            continue
        if "State:\tZ" in status:
            continue
        if RANK_MODULE.encode() in cmd and any(str(run_dir).encode() in c for c in cmd):
            rank = next((int(e[5:]) for e in env if e.startswith(b"RANK=")), None)
            if rank is not None:
                found[rank] = int(entry.name)
    return found


def _no_ranks_left(run_dir: Path, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while _ranks(run_dir):
        assert time.monotonic() < deadline, f"ranks still alive: {_ranks(run_dir)}"
        time.sleep(0.2)


def _steps(rows: list[dict], since: int = 0) -> list[int]:
    return [r["data"]["step"] for r in rows[since:] if r["type"] == "metrics"]


def _console_shows(run_dir: Path, *wanted: str) -> str:
    """The console (Textual Pilot, the real app attached to the run) once its screen holds every
    `wanted` text; the screen's text."""
    from console_support import screen_text

    from graftline.console.app import GraftlineApp

    async def look() -> str:
        app = GraftlineApp(run_dir, run_dir.parent)
        async with app.run_test(size=(160, 45)) as pilot:
            deadline = time.monotonic() + 60
            while not all(w in (text := screen_text(app)) for w in wanted):
                assert time.monotonic() < deadline, f"the console never showed {wanted}:\n{text}"
                await pilot.pause(0.1)
            return text

    return asyncio.run(look())


# A step here takes some 50 ms: enough of them that a stop, or a kill of the engine, sent two
# steps after a resume (client, engine poll, control.json, the group's broadcast) lands well
# before the last one.
STEPS = 80


def test_pause_stop_and_kill_of_rank_1_reach_the_group_and_resume(
        root: Path, monkeypatch: pytest.MonkeyPatch, engines: list[Path]) -> None:
    """One run, three launches of its 2-process group: pause holds every rank (the console,
    attached, shows the group with both ranks alive) and resume wakes them; kill -9 of rank 1
    ends the group (the console marks rank 1 dead); `graftline resume` continues from the last
    Trainer checkpoint; stop ends every rank; kill -9 of the engine ends every rank."""
    monkeypatch.setenv("GRAFTLINE_TELEMETRY_EVERY", "0.5")  # the rank heartbeat, for the console
    run_dir = launch.start_run(_pipeline(root, processes=2, batch=2, steps=STEPS, save=2))
    engines.append(run_dir)
    _wait(run_dir, "a trainer checkpoint", lambda rows: any(
        r["type"] == "checkpoint_saved" and r["data"]["kind"] == "trainer" for r in rows))

    # pause: every rank holds (both alive, no step advances), then wakes
    client.send_command(run_dir, "pause")
    _wait(run_dir, "the pause", lambda rows: any(
        r["type"] == "info" and r["data"].get("message") == "paused" for r in rows))
    since = time.monotonic()
    pids = _ranks(run_dir)
    assert set(pids) == {0, 1}
    # the console on the live run: the stage's world size, both ranks alive with their pids
    _console_shows(run_dir, "PAUSED", "2 ranks ●●", "sft ×2", f"rank 0 pid {pids[0]}",
                   f"rank 1 pid {pids[1]}")
    # the pause reaches the ranks at the next step end (a step takes well under a second
    # here); from then on a running rank would log
    time.sleep(max(0.0, 3.0 - (time.monotonic() - since)))
    held = max(_steps(_rows(run_dir)))
    time.sleep(3.0)
    assert max(_steps(_rows(run_dir))) == held
    assert _ranks(run_dir) == pids
    client.send_command(run_dir, "resume")
    _wait(run_dir, "a step after the pause", lambda rows: max(_steps(rows)) > held)

    # kill -9 of rank 1: the launcher ends rank 0, the engine reports the stage failed and names
    # the rank from the launcher's own report
    os.kill(_ranks(run_dir)[1], signal.SIGKILL)
    rows = _wait(run_dir, "the run's end", _finished)
    assert _finished(rows) == "failed"
    error = [r["data"] for r in rows if r["type"] == "error"][-1]
    assert "2-process group ended" in error["message"] and "graftline resume" in error["fix"]
    assert "rank 1 failed first (killed by SIGKILL)" in error["message"]
    assert error["failed_rank"] == 1 and error["failed_exitcode"] == -signal.SIGKILL
    _no_ranks_left(run_dir)
    found = mf.read(run_dir / "stages" / "sft")
    assert found is not None and found.status != "complete"
    # the console on the failed run: rank 1 dead, rank 0 ended with its group
    _console_shows(run_dir, "FAILED", "2 ranks ○✗ rank 1 died", "sft ×2")

    # resume: the stage continues from its last Trainer checkpoint; then stop it
    seen = len(rows)
    launch.resume_run(run_dir)
    rows = _wait(run_dir, "steps after the resume", lambda r: len(_steps(r, seen)) >= 2)
    started = [r["data"] for r in rows[seen:] if r["type"] == "stage_started"][-1]
    assert started["resumed_from"] and "checkpoint-" in started["resumed_from"]
    assert started["world_size"] == 2 and started["processes"] == 2
    assert _steps(rows, seen)[0] > int(started["resumed_from"].rsplit("-", 1)[1])
    client.send_command(run_dir, "stop")
    rows = _wait(run_dir, "the stop", lambda r: _finished(r[seen:]) is not None)
    assert _finished(rows[seen:]) == "stopped"
    _no_ranks_left(run_dir)

    # kill -9 of the engine: its launcher (parent-death signal) ends the ranks; the run is crashed
    seen = len(rows)
    launch.resume_run(run_dir)
    rows = _wait(run_dir, "steps after the second resume", lambda r: len(_steps(r, seen)) >= 2)
    engine = runstate.read(run_dir)
    assert engine is not None and engine.pid
    assert set(_ranks(run_dir)) == {0, 1}  # mid-stage: the kill, not the end, must end them
    os.kill(engine.pid, signal.SIGKILL)
    _no_ranks_left(run_dir)
    crashed = runstate.read(run_dir)
    assert crashed is not None and runstate.effective_status(crashed) == "crashed"
    assert _finished(_rows(run_dir)[seen:]) is None

    # a resume after that kill continuing to the end is the engine's one resume rule, tested
    # above (after rank 1's death) and to completion in test_resume_final.py's two-process stage


CHAIN = """
[pipeline]
name = "chain"
base = "toy:addition"
runs_dir = "runs"
probes = ["12+34", "50+27"]

[defaults]
processes = PROCESSES

[defaults.train]
batch_size = BATCH
max_length = 32

[[stage]]
name = "sft"
kind = "sft"
data = "sft.jsonl"
lora = { r = 4 }
train = { max_steps = 6, lr = 3e-3 }

[[stage]]
name = "dpo"
kind = "dpo"
data = "pref.jsonl"
train = { max_steps = 8, lr = 1e-3 }
GRPO
"""
GRPO_STAGE = """
[[stage]]
name = "grpo"
kind = "grpo"
data = "grpo.jsonl"
reward = ["answer_similarity"]
num_generations = 4
max_completion_length = 4
temperature = 3.0  # every group spreads on any base (tests/test_resume_final.py says why)
train = { max_steps = 10, lr = 5e-3, batch_size = 8 }
"""


def _chain(root: Path, name: str, *, processes: int, batch: int, grpo: bool) -> Path:
    text = (CHAIN.replace("PROCESSES", str(processes)).replace("BATCH", str(batch))
            .replace("GRPO", GRPO_STAGE if grpo else ""))
    path = root / name
    path.write_text(text)
    return path


def _stage_metric(rows: list[dict], stage: str, key: str) -> list[float]:
    return [r["data"][key] for r in rows
            if r["type"] == "metrics" and r["stage"] == stage and key in r["data"]]


def test_sft_dpo_grpo_chain_on_two_processes(root: Path) -> None:
    """sft → dpo (continuing the SFT adapter, precomputed reference) → grpo, every stage on two
    processes in a run started by the real engine. SFT and DPO equal one process of the same
    global batch; GRPO cannot: each rank samples its own completions with its own generator, so the
    group's completions are not the ones a single process would draw (asserted: it ran on the
    group, and the reward rose)."""
    write = lambda name, rows: (root / name).write_text(  # noqa: E731
        "".join(json.dumps(r) + "\n" for r in rows))
    # the rows the steps reach (DPO: 8 × 4; GRPO: 10 × 8 completions, 4 a prompt), with room:
    # DPO's precomputed reference scores every row before step 1, in both runs below
    write("pref.jsonl", preference_rows(48, 3))
    write("grpo.jsonl", grpo_rows(48, 4))
    run_dir = launch.start_run(_chain(root, "chain.toml", processes=2, batch=4, grpo=True))
    rows = _wait(run_dir, "the run's end", _finished, timeout=1200)
    log = (run_dir / launch.ENGINE_LOG).read_text()
    assert _finished(rows) == "finished", log[-3000:]
    # nothing in the run loads bitsandbytes: the engine and every stage's rank 0 kept it out
    # (run/stack_imports.py), and the stages trained without it
    assert log.count(f"graftline: {KEPT_OUT}") == 1
    assert log.count(f"graftline: rank 0: {KEPT_OUT}") == 3
    for stage in ("sft", "dpo", "grpo"):
        launched = [r for r in rows if r["stage"] == stage and r["type"] == "info"
                    and "launch" in r["data"]]
        assert len(launched) == 1 and launched[0]["data"]["world_size"] == 2, stage
        assert "torch.distributed.run" in launched[0]["data"]["launch"], stage
        steps = [r["data"]["step"] for r in rows if r["type"] == "metrics" and r["stage"] == stage]
        assert steps == sorted(set(steps)) and len(steps) == {"sft": 6, "dpo": 8, "grpo": 10}[stage]
        found = mf.read(run_dir / "stages" / stage)
        assert found is not None and found.status == "complete", stage
        assert all(c.status != "fail" for c in found.checks), (stage, found.checks)
    # rank 0 alone reports: every step once, every check once, one adapter checkpoint
    sft = [r for r in rows if r["stage"] == "sft" and r["type"] != "telemetry"]
    assert _steps(sft) == [1, 2, 3, 4, 5, 6]
    for row in sft:  # the stage's events; the engine's own notes need none
        assert row["data"].get("world_size") == 2 or row["type"] == "info", row
    names = [r["data"]["name"] for r in sft if r["type"] == "check_result"]
    assert names.count("generation_sanity") == 1 and names.count("adapter_base") == 1
    assert all(r["data"]["status"] == "pass" for r in sft if r["type"] == "check_result")
    assert [r["data"]["kind"] for r in sft if r["type"] == "checkpoint_saved"] == ["adapter"]
    sft_loss = _stage_metric(rows, "sft", "loss")
    assert sum(sft_loss[-3:]) / 3 < sft_loss[0]
    dpo = mf.read(run_dir / "stages" / "dpo")
    assert dpo is not None and dpo.parents[0].relation == "continued_from"
    # per-rank heartbeat in telemetry: both ranks alive, their own pids and memory
    beats = [r["data"] for r in rows if r["type"] == "telemetry" and r["data"].get("ranks")]
    assert any(b["ranks_alive"] == 2 for b in beats), beats[-3:]
    both = next(b["ranks"] for b in beats if b["ranks_alive"] == 2)
    assert [r["rank"] for r in both] == [0, 1] and all(r["rss"] > 0 for r in both)
    assert len({r["pid"] for r in both}) == 2
    # by mechanics, which hold on any base (eight steps of batch 4 are too few for a loss to fall
    # for sure; the one-process comparison below checks the numbers): DPO starts at ln 2, its
    # policy being its reference; GRPO's graded reward spreads within groups (non-zero
    # advantages); and each stage moved the adapter it continued
    dpo_loss = _stage_metric(rows, "dpo", "loss")
    assert dpo_loss[0] == pytest.approx(math.log(2), abs=1e-3), dpo_loss
    assert any(std > 0 for std in _stage_metric(rows, "grpo", "reward_std")), rows[-5:]
    weights = [load_file(run_dir / "stages" / s / "adapter_model.safetensors")
               for s in ("sft", "dpo", "grpo")]
    for before, after in itertools.pairwise(weights):
        assert before.keys() == after.keys()
        assert any(not before[k].equal(after[k]) for k in before)
    _no_ranks_left(run_dir)

    # sft → dpo in one process with the same global batch, in this test, on this machine: the
    # group's losses and adapters are the single process's, stage by stage
    torch.set_num_threads(1)
    sink = ListSink()
    one = pipeline_file.load(_chain(root, "one.toml", processes=1, batch=8, grpo=False))
    assert run_pipeline(one, root / "runs" / "alone", sink).status == "finished"
    assert not any("world_size" in m for m in sink.of_type("metrics"))
    for stage, losses in (("sft", sft_loss), ("dpo", dpo_loss)):
        one_loss = [d["loss"] for t, at, d in sink.events if t == "metrics" and at == stage]
        assert max(abs(a - b) for a, b in zip(losses, one_loss, strict=True)) < 1e-3, stage
        two = load_file(str(run_dir / "stages" / stage / "adapter_model.safetensors"))
        alone = load_file(str(root / "runs" / "alone" / "stages" / stage /
                              "adapter_model.safetensors"))
        assert two.keys() == alone.keys()
        assert max((two[k] - alone[k]).abs().max().item() for k in two) < TOLERANCE, stage


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _checkpoint_steps(run_dir: Path) -> list[int]:
    found = run_dir / "stages" / "sft" / "trainer"
    return sorted(int(p.name.split("-")[1]) for p in found.glob("checkpoint-*")
                  if (p / "trainer_state.json").is_file()) if found.is_dir() else []


def test_two_machines_on_loopback_resume_after_a_kill(root: Path, engines: list[Path]) -> None:
    """Two engines, as two hosts would run them (machine 0: `graftline run FILE`; machine 1:
    `graftline run FILE --machine-rank 1`), one process each, meeting over loopback. Each host
    keeps its own Trainer checkpoints; kill -9 of machine 1's rank ends both groups; each host
    resumes its own run (machine 1 by a plain `graftline resume RUN`: the run remembers its machine
    rank) and the stage completes. Machine 0 reports the stage and writes its one adapter;
    machine 1 lends its rank and reports its side complete."""
    text = _pipeline(root, processes=1, batch=4, steps=8, save=2).read_text().replace(
        "processes = 1", f"processes = 1\nnum_machines = 2\nmain_process_ip = \"127.0.0.1\"\n"
        f"main_process_port = {_free_port()}")
    path = root / "hosts.toml"
    path.write_text(text)
    host0 = launch.start_run(path)
    engines.append(host0)
    # machine 1 through the CLI, as a second host would start it
    cli = Path(sys.executable).with_name("graftline")
    started = subprocess.run([str(cli), "run", str(path), "--machine-rank", "1", "--detach",
                              "--no-rehearse"], capture_output=True, text=True, timeout=120)
    assert started.returncode == 0, started.stderr
    host1 = Path(started.stdout.split(" in ", 1)[1].splitlines()[0].strip())
    engines.append(host1)
    assert host0 != host1 and host0.parent == host1.parent

    # both hosts hold a Trainer checkpoint (machine 1's written by its local rank 0); then kill
    # -9 machine 1's rank: both groups end, both runs fail with the resume fix
    _wait(host0, "checkpoints on both hosts",
          lambda rows: bool(set(_checkpoint_steps(host0)) & set(_checkpoint_steps(host1))))
    os.kill(_ranks(host1)[1], signal.SIGKILL)
    rows0 = _wait(host0, "machine 0's end", _finished)
    rows1 = _wait(host1, "machine 1's end", _finished)
    assert _finished(rows0) == _finished(rows1) == "failed"
    # machine 1's launcher names its killed rank; machine 0's rank 0 reports its lost peer, and
    # its launcher is ended rather than left in torch elastic's 300 s exit barrier
    error = [r["data"] for r in rows1 if r["type"] == "error"][-1]
    assert error["failed_rank"] == 1 and "graftline resume" in error["fix"]
    error = [r["data"] for r in rows0 if r["type"] == "error"][-1]
    assert "waited for the other machines' launchers" in error["message"], error
    assert "graftline resume" in error["fix"]
    _no_ranks_left(host0)
    _no_ranks_left(host1)

    # machine 1 resumed as machine 0 is refused (its run holds machine 1's side)
    refused = subprocess.run([str(cli), "resume", str(host1), "--machine-rank", "0", "--detach"],
                             capture_output=True, text=True, timeout=120)
    assert refused.returncode == 1 and "ran on this host as machine 1" in refused.stderr
    assert "fix:" in refused.stderr and _finished(_rows(host1)) == "failed"
    # each host resumes its own run; machine 1 with no flag: the run remembers
    seen0, seen1 = len(rows0), len(rows1)
    launch.resume_run(host0)
    resumed = subprocess.run([str(cli), "resume", str(host1), "--detach"], capture_output=True,
                             text=True, timeout=120)
    assert resumed.returncode == 0, resumed.stderr
    rows0 = _wait(host0, "machine 0's end", lambda r: _finished(r[seen0:]) is not None)
    rows1 = _wait(host1, "machine 1's end", lambda r: _finished(r[seen1:]) is not None)
    assert _finished(rows0[seen0:]) == "finished", (host0 / launch.ENGINE_LOG).read_text()[-3000:]
    assert _finished(rows1[seen1:]) == "finished", (host1 / launch.ENGINE_LOG).read_text()[-3000:]
    for rows, seen in ((rows0, seen0), (rows1, seen1)):
        again = [r["data"] for r in rows[seen:] if r["type"] == "stage_started"]
        assert len(again) == 1 and "checkpoint-" in (again[0]["resumed_from"] or ""), again
    launched = [r["data"] for r in rows0 + rows1 if r["type"] == "info" and "launch" in r["data"]]
    assert sorted(d["machine_rank"] for d in launched) == [0, 0, 1, 1]
    assert all(d["world_size"] == 2 and "--nnodes" in d["launch"] for d in launched)
    # machine 0 reports the steps after its checkpoint once each, up to the last, and saves the
    # one adapter; machine 1 reports no step and no checkpoint
    # the group resumes from the newest checkpoint both hosts hold, which may be older than
    # machine 0's own newest (the kill can land between the two hosts' saves): a warning says so
    agreed = [r["data"]["resumed_from"] for r in rows0[seen0:]
              if r["type"] == "warning" and "resumed_from" in r["data"]]
    resumed = agreed[-1] if agreed else _steps_started(rows0, seen0)
    start = int(str(resumed).rsplit("-", 1)[1]) if resumed else 0
    assert _steps(rows0, seen0) == list(range(start + 1, 9))
    assert _steps(rows1) == []
    saved = [r["data"]["kind"] for r in rows0 if r["type"] == "checkpoint_saved"]
    assert saved.count("adapter") == 1
    assert not [r for r in rows1 if r["type"] == "checkpoint_saved"]
    lent = [r["data"] for r in rows1[seen1:] if r["type"] == "stage_finished"]
    assert len(lent) == 1 and lent[0]["status"] == "complete" and lent[0]["machine_rank"] == 1
    found = mf.read(host0 / "stages" / "sft")
    assert found is not None and found.status == "complete"
    assert (host0 / "stages" / "sft" / "adapter_model.safetensors").is_file()
    assert not (host1 / "stages" / "sft" / "adapter_model.safetensors").exists()
    _no_ranks_left(host0)
    _no_ranks_left(host1)


def _steps_started(rows: list[dict], since: int) -> str:
    return next(r["data"]["resumed_from"] for r in rows[since:] if r["type"] == "stage_started")


if sys.platform != "linux":  # /proc and the parent-death signal
    pytestmark = [*pytestmark, pytest.mark.skip(reason="Linux only")]

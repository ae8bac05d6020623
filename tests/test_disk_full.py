"""A disk that fills up mid-stage pauses the run; it finishes once the space is back.

A real engine (`python -m graftline.engine.run.daemon`) trains the toy base with its run
directory on a 4 MiB tmpfs. The test fills the tmpfs with a ballast file at a chosen moment
(real ENOSPC, no fault hook), sees the engine pause with a message, deletes the ballast and
waits for the run to finish. Needs root to mount; skipped otherwise.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from graftline.engine.pipeline.file import load
from graftline.engine.run import state as runstate
from graftline.engine.run.events import read_raw
from graftline.engine.run.launch import create_run
from graftline.engine.run.runner import checkpoint_problem, trainer_checkpoints

PIPELINE = """
[pipeline]
name = "diskfull"
base = "toy:addition"
seed = 0

[defaults]
train = { batch_size = 8, max_length = 32, logging_steps = 1 }
lora = { dropout = 0.0 }

[[stage]]
name = "sft"
kind = "sft"
data = "sft.jsonl"
lora = { r = 4 }
train = { max_steps = MAX, save_steps = SAVE, lr = 3e-3 }
"""


@pytest.fixture
def tiny_fs(tmp_path: Path) -> Iterator[Path]:
    mount = tmp_path / "tmpfs"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mount)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs (needs root): {done.stderr.strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def _start(tmp_path: Path, runs: Path, max_steps: int, save_steps: int,
           env: dict[str, str] | None = None, text: str = PIPELINE
           ) -> tuple[Path, subprocess.Popen[bytes], Path]:
    from graftline.engine.toy import tasks

    (tmp_path / "sft.jsonl").write_text(
        "".join(json.dumps(r) + "\n" for r in tasks.sft_rows(200, 1)))
    path = tmp_path / "p.toml"
    path.write_text(text.replace("MAX", str(max_steps)).replace("SAVE", str(save_steps)))
    run_dir = create_run(load(path), runs)
    log = tmp_path / "engine.log"  # off the tmpfs: the test reads what the engine says
    env = dict(env or os.environ, GRAFTLINE_DISK_POLL="0.3", OMP_NUM_THREADS="1",
               HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    with log.open("wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "graftline.engine.run.daemon",
                                 str(run_dir)], stdout=out, stderr=subprocess.STDOUT, env=env)
    return run_dir, proc, log


def _wait(condition, proc: subprocess.Popen[bytes], log: Path, timeout: float = 240) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if proc.poll() is not None:
            pytest.fail(f"the engine exited ({proc.returncode}):\n{log.read_text()[-3000:]}")
        if time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"timed out:\n{log.read_text()[-3000:]}")
        time.sleep(0.05)


def _fill(mount: Path, leave: int = 0) -> Path:
    """Write a ballast file until the tmpfs is full (or only `leave` bytes are free)."""
    ballast = mount / "ballast"
    chunk = b"\0" * 4096
    with ballast.open("wb", buffering=0) as handle:
        try:
            while os.statvfs(mount).f_bavail * os.statvfs(mount).f_frsize > leave:
                handle.write(chunk)
        except OSError:
            pass
    return ballast


def _rows(run_dir: Path) -> list[dict]:
    return read_raw(run_dir / "events.jsonl")[0]


def _types(run_dir: Path, kind: str) -> list[dict]:
    return [r for r in _rows(run_dir) if r["type"] == kind]


def _assert_finished_whole(run_dir: Path, proc: subprocess.Popen[bytes], log: Path) -> None:
    assert proc.wait(timeout=300) == 0, log.read_text()[-3000:]
    raw = (run_dir / "events.jsonl").read_bytes()
    assert raw.endswith(b"\n")
    lines = raw.splitlines()
    assert all(json.loads(line)["type"] for line in lines), "a torn or foreign line"
    seqs = [json.loads(line)["seq"] for line in lines]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)
    state = runstate.read(run_dir)
    assert state is not None and state.status == "finished", state
    for checkpoint in trainer_checkpoints(run_dir / "stages" / "sft"):
        assert checkpoint_problem(checkpoint) is None, checkpoint


@pytest.mark.slow
def test_event_log_enospc_pauses_and_the_run_finishes_after_space_returns(
        tmp_path: Path, tiny_fs: Path, toy_base: Path) -> None:
    run_dir, proc, log = _start(tmp_path, tiny_fs / "runs", max_steps=40, save_steps=20)
    _wait(lambda: len(_types(run_dir, "metrics")) >= 2, proc, log)
    ballast = _fill(tiny_fs)
    _wait(lambda: "paused: disk full while writing events.jsonl" in log.read_text(), proc, log)
    paused_at = len(_types(run_dir, "metrics"))
    time.sleep(2)  # paused: the trainer waits at the step end, the engine stays alive
    assert proc.poll() is None
    assert (run_dir / "events.jsonl").read_bytes().endswith(b"\n")
    ballast.unlink()
    _assert_finished_whole(run_dir, proc, log)
    warning = next(r for r in _types(run_dir, "warning") if r["data"].get("disk_full"))
    assert "events.jsonl" in warning["data"]["message"] and warning["data"]["fix"]
    assert any("disk space is back" in r["data"].get("message", "")
               for r in _types(run_dir, "info"))
    steps = [r["data"]["step"] for r in _types(run_dir, "metrics")]
    assert steps[-1] == 40 and len(steps) > paused_at
    assert _types(run_dir, "run_finished")[-1]["data"]["status"] == "finished"


def _fill_before_checkpoint_40(run_dir: Path, mount: Path, proc: subprocess.Popen[bytes],
                               log: Path) -> tuple[Path, int]:
    """Once checkpoint-20 is whole, fill the tmpfs so that the events of the next steps fit and
    checkpoint-40 does not; wait for the engine's pause. (ballast, checkpoint-20's bytes)"""
    _wait(lambda: any(r["data"].get("kind") == "trainer"
                      for r in _types(run_dir, "checkpoint_saved")), proc, log)
    first = run_dir / "stages" / "sft" / "trainer" / "checkpoint-20"
    size = sum(f.stat().st_size for f in first.rglob("*") if f.is_file())
    ballast = _fill(mount, leave=size // 3)
    _wait(lambda: "paused: disk full while writing checkpoint-40" in log.read_text(), proc, log)
    return ballast, size


@pytest.mark.slow
def test_checkpoint_enospc_leaves_nothing_partial_and_the_save_is_retried(
        tmp_path: Path, tiny_fs: Path, toy_base: Path) -> None:
    run_dir, proc, log = _start(tmp_path, tiny_fs / "runs", max_steps=60, save_steps=20)
    trainer = run_dir / "stages" / "sft" / "trainer"
    ballast, size = _fill_before_checkpoint_40(run_dir, tiny_fs, proc, log)
    # the half-written checkpoint is gone, nothing else claims step 40
    assert not (trainer / "checkpoint-40").exists()
    assert [r for r in _types(run_dir, "checkpoint_saved") if r["data"]["id"] == "sft@40"] == []
    assert proc.poll() is None
    ballast.unlink()
    _assert_finished_whole(run_dir, proc, log)
    saved = [r["data"]["id"] for r in _types(run_dir, "checkpoint_saved")
             if r["data"].get("kind") == "trainer"]
    assert saved == ["sft@20", "sft@40", "sft@60"]  # step 40's save was retried, once
    warning = next(r for r in _types(run_dir, "warning") if r["data"].get("disk_full"))
    assert warning["data"]["what"] == "checkpoint-40"
    assert warning["data"]["need_bytes"] >= size


def test_runs_dir_option_gets_the_disk_check_of_its_own_volume(
        tmp_path: Path, tiny_fs: Path, toy_base: Path) -> None:
    """`graftline run --runs-dir DIR` validates the forecast against DIR's volume (it used to
    check the file's runs_dir and start on a full disk)."""
    from graftline.engine.pipeline.validate import DISK_FORECAST
    from graftline.engine.run.launch import LaunchError, start_run

    (tmp_path / "sft.jsonl").write_text("".join(
        json.dumps({"prompt": f"{i}+1=", "completion": str(i + 1)}) + "\n" for i in range(20)))
    path = tmp_path / "p.toml"
    path.write_text(PIPELINE.replace("MAX", "20").replace("SAVE", "10"))
    _fill(tiny_fs)
    with pytest.raises(LaunchError) as raised:
        start_run(path, tiny_fs / "runs")
    assert any(p.code == DISK_FORECAST for p in raised.value.problems), raised.value.problems
    assert not (tiny_fs / "runs").exists()


# In the engine: once the Trainer's final checkpoint is saved, say so in a file and wait for
# the test's word before going on to the stage's adapter save (the disk fills in between).
HOLD_AFTER_THE_LAST_CHECKPOINT = """
import os
if os.environ.get("GL_TEST_HOLD_AT"):
    import time
    from pathlib import Path

    from graftline.engine.run import events

    emit = events.EventWriter.emit

    def held(self, type, stage=None, **data):
        written = emit(self, type, stage, **data)
        if (type == "checkpoint_saved" and data.get("kind") == "trainer"
                and Path(str(data["path"])).name == os.environ["GL_TEST_HOLD_AT"]):
            Path(os.environ["GL_TEST_HELD"]).write_text("")
            while not Path(os.environ["GL_TEST_GO"]).exists():
                time.sleep(0.05)
        return written

    events.EventWriter.emit = held
"""


@pytest.mark.slow
def test_adapter_save_enospc_is_retried_in_place(tmp_path: Path, tiny_fs: Path,
                                                 toy_base: Path) -> None:
    """The disk fills between the Trainer's final checkpoint and the stage's own adapter save:
    the save waits for space with the trained model in memory and is done again; nothing is
    trained again, and the adapter is whole."""
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(HOLD_AFTER_THE_LAST_CHECKPOINT)
    held, go = tmp_path / "held", tmp_path / "go"
    env = dict(os.environ, GL_TEST_HOLD_AT="checkpoint-20", GL_TEST_HELD=str(held),
               GL_TEST_GO=str(go), PYTHONPATH=os.pathsep.join(
                   p for p in (str(hook), os.environ.get("PYTHONPATH")) if p))
    run_dir, proc, log = _start(tmp_path, tiny_fs / "runs", max_steps=20, save_steps=20,
                                env=env)
    stage = run_dir / "stages" / "sft"
    _wait(held.exists, proc, log)
    # room for the checks' events, not for the adapter (r = 4: about 90 kB)
    ballast = _fill(tiny_fs, leave=32 << 10)
    go.write_text("")
    _wait(lambda: "paused: disk full while writing the stage's adapter" in log.read_text(),
          proc, log)
    assert proc.poll() is None
    ballast.unlink()
    _assert_finished_whole(run_dir, proc, log)
    steps = [r["data"]["step"] for r in _types(run_dir, "metrics") if "loss" in r["data"]]
    assert steps == sorted(set(steps)) and steps[-1] == 20, steps  # trained once
    # not the runner's fallback (the stage again from its final checkpoint, which says so)
    assert [r for r in _types(run_dir, "info") if "steps_trained" in r["data"]] == []
    warning = next(r for r in _types(run_dir, "warning") if r["data"].get("disk_full"))
    assert warning["data"]["what"] == "the stage's adapter"
    from safetensors.torch import load_file

    assert load_file(str(stage / "adapter_model.safetensors"))  # whole, not torn


@pytest.mark.slow
def test_a_two_process_stage_on_a_full_disk_is_launched_again_once_space_is_back(
        tmp_path: Path, tiny_fs: Path, toy_base: Path) -> None:
    """Rank 0's checkpoint save meets a full disk: a rank cannot wait there while its peer waits
    in a collective, so the group's launch ends and the engine waits for space (the run paused,
    as for one process), then launches the group again from the last whole checkpoint."""
    pipeline = PIPELINE.replace('kind = "sft"\n', 'kind = "sft"\nprocesses = 2\n')
    run_dir, proc, log = _start(tmp_path, tiny_fs / "runs", max_steps=60, save_steps=20,
                                text=pipeline)
    ballast, _ = _fill_before_checkpoint_40(run_dir, tiny_fs, proc, log)
    assert proc.poll() is None
    ballast.unlink()
    _assert_finished_whole(run_dir, proc, log)
    saved = [r["data"]["id"] for r in _types(run_dir, "checkpoint_saved")
             if r["data"].get("kind") == "trainer"]
    assert saved == ["sft@20", "sft@40", "sft@60"]
    assert _types(run_dir, "error") == []
    assert [r["data"]["status"] for r in _types(run_dir, "stage_finished")] == ["complete"]
    launches = [r for r in _types(run_dir, "info") if r["data"].get("launch")]
    assert len(launches) == 2 and all(r["data"]["world_size"] == 2 for r in launches)
    steps = [r["data"]["step"] for r in _types(run_dir, "metrics") if "loss" in r["data"]]
    assert steps[-1] == 60 and set(steps) == set(range(1, 61))


def test_the_engines_group_bookkeeping_waits_out_a_full_disk(tiny_fs: Path) -> None:
    """While a group runs, the engine writes two small files beside rank 0's events: the offset
    it has relayed and the ranks' control flags. On a full disk both are refused without raising
    (the engine died there once, when rank 0's checkpoint had just filled the disk: the engine
    must pause instead), the last written state stands, and both land once the space is back."""
    from graftline.engine.run import group_io

    work = tiny_fs / "group"
    work.mkdir()
    events, control = work / group_io.EVENTS, work / group_io.CONTROL
    events.write_text('{"type": "metrics", "stage": "sft", "data": {"step": 1}}\n')
    tail = group_io.EventTail(events)
    tail.mark()
    assert group_io.write_control(control, stop=False, paused=False, save_seq=0)

    ballast = _fill(tiny_fs)
    assert [row["data"]["step"] for row in tail.read()] == [1]
    tail.mark()  # refused, and no exception
    assert not group_io.write_control(control, stop=False, paused=True, save_seq=1)
    # the mark still says offset 0: a kill now would relay step 1 again, never lose it
    assert [row["data"]["step"] for row in group_io.EventTail.leftover(events)] == [1]
    assert group_io.read_control(control) == (False, False, 0)
    assert sorted(p.name for p in work.iterdir()) == sorted([events.name, control.name,
                                                             group_io.RELAYED])

    ballast.unlink()
    tail.mark()
    assert group_io.EventTail.leftover(events) == []
    assert group_io.write_control(control, stop=False, paused=True, save_seq=1)
    assert group_io.read_control(control) == (False, True, 1)

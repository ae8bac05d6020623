"""`[pipeline] report_to`: trackers through transformers' own integrations, one run = one curve.

The TensorBoard test trains two real stages on the toy model (SFT, then SFT continuing its
adapter) and reads the event files back with tensorboard's own EventAccumulator. The validate
tests run the real check against this environment's real packages: a tracker that is not
installed here is the missing-package case.
"""

from __future__ import annotations

import signal
import struct
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from stage_helpers import one_thread, pipeline, write_data  # noqa: F401

from graftline.engine.common.sink import ListSink
from graftline.engine.pipeline import trackers
from graftline.engine.pipeline.file import parse
from graftline.engine.pipeline.validate import validate

TWO_STAGES = """
[[stage]]
name = "sft1"
kind = "sft"
data = "sft.jsonl"
lora = { r = 8 }
train = { max_steps = 6, batch_size = 8, lr = 3e-3 }

[[stage]]
name = "sft2"
kind = "sft"
from = "sft1"
adapter = "continue"
data = "sft2.jsonl"
train = { max_steps = 5, batch_size = 8, lr = 1e-3 }
"""


def _with_trackers(text: str, names: list[str]) -> str:
    quoted = ", ".join(f'"{n}"' for n in names)
    line = f'base = "toy:addition"\nreport_to = [{quoted}]\n'
    return text.replace('base = "toy:addition"\n', line)


def _pipeline_file(tmp_path: Path, names: list[str], stages: str = TWO_STAGES):
    from stage_helpers import HEADER

    path = tmp_path / "p.toml"
    text = _with_trackers(HEADER, names) + stages
    path.write_text(text)
    return parse(text, path)


@pytest.mark.usefixtures("one_thread")
def test_tensorboard_two_stages_read_back_as_one_curve(tmp_path: Path, toy_base: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("tensorboard", reason="the dev extra installs tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from graftline.engine.run.runner import run_pipeline

    monkeypatch.delenv("TENSORBOARD_LOGGING_DIR", raising=False)
    root = write_data(tmp_path)
    pf = _pipeline_file(root, ["tensorboard"])
    assert [p for p in validate(pf) if p.severity == "error"] == []
    sink = ListSink()
    run_dir = root / "runs" / "r"
    result = run_pipeline(pf, run_dir, sink)
    assert result.status == "finished", result.message

    logs = run_dir / "tensorboard"
    assert len(list(logs.glob("events.out.tfevents.*"))) == 2  # one writer per stage, one folder
    acc = EventAccumulator(str(logs), size_guidance={"scalars": 0})
    acc.Reload()
    assert "train/loss" in acc.Tags()["scalars"]
    steps = [e.step for e in acc.Scalars("train/loss")]
    losses = [e.value for e in acc.Scalars("train/loss")]

    # graftline's own events say where each stage's steps sit in the run
    metrics = [d for d in sink.of_type("metrics") if "loss" in d]
    expected = [d["global_step"] for d in metrics]
    first_stage = [d["step"] for d in metrics if d["global_step"] == d["step"]]
    assert max(first_stage) == 6 and expected[-1] == 11  # 6 steps of sft1, then 5 of sft2
    assert steps == expected  # the tracker's x axis is the run's global step
    assert steps == sorted(set(steps)), "steps must be one increasing sequence, no restart"
    assert steps == list(range(1, 12))  # logging_steps = 1: no gap at the stage boundary
    # the values are the trainer's own losses, stage by stage
    assert losses == pytest.approx([d["loss"] for d in metrics], rel=1e-6)


ONE_STAGE = """
[[stage]]
name = "sft"
kind = "sft"
data = "sft.jsonl"
lora = { r = 8 }
train = { max_steps = 7, batch_size = 8, lr = 3e-3, save_steps = 3 }
"""

# The engine, killed -9 by itself once the stage has logged step 5: checkpoint-3 is its last,
# and TensorBoard already holds the steps after it.
CRASH_AT_STEP_5 = """
import os
import signal
import sys
from pathlib import Path

import torch

torch.set_num_threads(1)
from graftline.engine.pipeline.file import load
from graftline.engine.run.events import EventWriter
from graftline.engine.run.runner import run_pipeline


class Crash(EventWriter):
    def emit(self, type, stage=None, **data):
        written = super().emit(type, stage, **data)
        if type == "metrics" and data.get("step") == 5:
            os.kill(os.getpid(), signal.SIGKILL)
        return written


run_dir = Path(sys.argv[2])
run_dir.mkdir(parents=True)
with Crash(run_dir) as writer:
    pf = load(sys.argv[1])
    # as the engine does, before the stack's first import (run/stack_imports.py)
    from graftline.engine.run.stack_imports import keep_out_what_the_run_does_not_load
    keep_out_what_the_run_does_not_load(pf)
    run_pipeline(pf, run_dir, writer)
"""


@pytest.mark.usefixtures("one_thread")
def test_tensorboard_after_a_crash_and_resume_keeps_one_curve(
        tmp_path: Path, toy_base: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The steps trained again after a resume replace the crashed attempt's in TensorBoard's
    reader (the resumed writer's purge_step), instead of a second, overlapping line."""
    pytest.importorskip("tensorboard", reason="the dev extra installs tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from graftline.engine.run.events import EventWriter, read_events
    from graftline.engine.run.runner import run_pipeline

    monkeypatch.delenv("TENSORBOARD_LOGGING_DIR", raising=False)
    root = write_data(tmp_path)
    pf = _pipeline_file(root, ["tensorboard"], ONE_STAGE)
    run_dir = root / "runs" / "r"
    crashed = subprocess.run([sys.executable, "-c", CRASH_AT_STEP_5, str(pf.path), str(run_dir)],
                             capture_output=True, timeout=600)
    assert crashed.returncode == -signal.SIGKILL, crashed.stderr.decode()[-2000:]

    def scalars() -> list[tuple[int, float]]:
        acc = EventAccumulator(str(run_dir / "tensorboard"), size_guidance={"scalars": 0})
        acc.Reload()
        return [(e.step, e.value) for e in acc.Scalars("train/loss")]

    logged = scalars()
    assert [step for step, _ in logged][:4] == [1, 2, 3, 4]  # past checkpoint-3: trained again
    # TensorBoard reads a run's event files in name order, and a name starts with its writer's
    # start in whole seconds: the resumed writer must start in a later second than the crashed
    # one, as a resumed engine (a new process, seconds later) always does. Resumed in this
    # process at once, it can start in the same second, and then the pids order them.
    crashed_file = next((run_dir / "tensorboard").glob("events.out.tfevents.*"))
    while time.time() < int(crashed_file.name.split(".")[3]) + 1:
        time.sleep(0.05)

    with EventWriter(run_dir) as writer:
        result = run_pipeline(pf, run_dir, writer, resume=True)
    assert result.status == "finished", result.message
    events, _ = read_events(run_dir / "events.jsonl")
    started = [i for i, e in enumerate(events) if e.type == "run_started"][-1]
    resumed = [(e.data["global_step"], e.data["loss"]) for e in events[started:]
               if e.type == "metrics" and "loss" in e.data]
    assert [step for step, _ in resumed] == [4, 5, 6, 7]

    after = scalars()
    assert len(list((run_dir / "tensorboard").glob("events.out.tfevents.*"))) == 2
    assert [step for step, _ in after] == list(range(1, 8)), after  # one curve, no repeats
    assert after[:3] == logged[:3]  # the crashed attempt's steps before its checkpoint stay
    assert [value for _, value in after[3:]] == pytest.approx([loss for _, loss in resumed],
                                                              rel=1e-6)


def test_without_report_to_no_tracker_writes(tmp_path: Path, toy_base: Path) -> None:
    """The default stays as it was: nothing reports anywhere."""
    root = write_data(tmp_path)
    pf = _pipeline_file(root, [])
    assert pf.pipeline.pipeline.report_to == []
    assert not [p for p in validate(pf) if "report_to" in (p.field or "")]


@pytest.mark.parametrize("name", sorted(trackers.TRACKERS))
def test_missing_package_is_a_validate_error_naming_pip(tmp_path: Path, name: str) -> None:
    tracker = trackers.TRACKERS[name]
    if trackers.installed(tracker):
        pytest.skip(f"{tracker.package} is installed here: the missing case cannot be seen")
    root = write_data(tmp_path)
    pf = _pipeline_file(root, [name], TWO_STAGES)
    found = [p for p in validate(pf) if "package" in p.message]
    assert len(found) == 1, found
    assert found[0].field == "pipeline.report_to"
    assert found[0].line == 5  # the report_to line of the header
    assert f"pip install {tracker.package}" in (found[0].fix or "")


def test_tensorboard_installed_passes(tmp_path: Path) -> None:
    if not trackers.installed(trackers.TRACKERS["tensorboard"]):
        pytest.skip("tensorboard is not installed (the dev extra installs it)")
    root = write_data(tmp_path)
    pf = _pipeline_file(root, ["tensorboard"])
    assert not [p for p in validate(pf) if p.field == "pipeline.report_to"]


@pytest.mark.parametrize(("env", "netrc", "refused"), [
    ({}, "", True),
    ({"WANDB_MODE": "offline"}, "", False),
    ({"WANDB_MODE": "disabled"}, "", False),
    ({"WANDB_API_KEY": "x" * 40}, "", False),
    ({}, "machine api.wandb.ai\n  login user\n  password " + "x" * 40 + "\n", False),
    ({"WANDB_MODE": "online"}, "", True),
])
def test_wandb_credentials(tmp_path: Path, env: dict, netrc: str, refused: bool) -> None:
    home = tmp_path / "home"
    home.mkdir()
    if netrc:
        (home / ".netrc").write_text(netrc)
    root = write_data(tmp_path / "w")
    pf = _pipeline_file(root, ["wandb"])
    found = [p for p in trackers.problems(pf, env=env, home=home) if "account" in p.message]
    assert bool(found) is refused, found
    if refused:
        assert "WANDB_MODE=offline" in (found[0].fix or "")
        assert "WANDB_API_KEY" in (found[0].fix or "")


def test_unknown_tracker_is_refused_by_the_file(tmp_path: Path) -> None:
    from graftline.engine.pipeline.problems import PipelineError

    root = write_data(tmp_path)
    with pytest.raises(PipelineError) as caught:
        _pipeline_file(root, ["tensorbord"])
    (problem,) = caught.value.problems
    assert problem.line == 5 and "report_to" in (problem.field or "")


def test_a_rehearsal_reports_to_no_tracker(tmp_path: Path) -> None:
    """`graftline rehearse` runs the stages on a twin: that is not an experiment to log."""
    from graftline.engine.rehearse.rehearsal import derive

    root = write_data(tmp_path)
    pf = _pipeline_file(root, ["tensorboard", "wandb"])
    derived = derive(pf, base="toy:addition", scratch=tmp_path / "scratch", cuda=False)
    assert derived.pipeline.pipeline.report_to == []
    assert any("report_to" in note for note in derived.notes)


@pytest.mark.usefixtures("one_thread")
def test_mlflow_local_store_steps_continue_across_stages(tmp_path: Path, toy_base: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """Only where mlflow is installed (not in the dev extra: heavy). transformers ends the MLflow
    run after each stage: one MLflow run per stage, all named after the run, whose `loss` steps
    continue one another."""
    mlflow = pytest.importorskip("mlflow", reason="mlflow is not installed (heavy; not in dev)")
    from graftline.engine.run.runner import run_pipeline

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", "graftline-test")
    root = write_data(tmp_path / "w")
    pf = _pipeline_file(root, ["mlflow"])
    result = run_pipeline(pf, root / "runs" / "r", ListSink())
    assert result.status == "finished", result.message
    client = mlflow.tracking.MlflowClient(uri)
    experiment = client.get_experiment_by_name("graftline-test")
    runs = client.search_runs([experiment.experiment_id])
    assert {run.info.run_name for run in runs} == {"r"}
    steps = sorted(m.step for run in runs
                   for m in client.get_metric_history(run.info.run_id, "loss"))
    assert steps == list(range(1, 12))



@pytest.mark.usefixtures("one_thread")
def test_wandb_offline_one_run_whose_steps_continue_across_stages(
        tmp_path: Path, toy_base: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Only where wandb is installed (not in the dev extra: TRL's trainers import it whenever it
    is present). Offline mode writes the run to disk; the two stages are one wandb run, and its
    summary's global step is the run's last (11), not the second stage's own (5)."""
    pytest.importorskip("wandb", reason="wandb is not installed (not in dev: TRL imports it)")
    from graftline.engine.run.runner import run_pipeline

    monkeypatch.delenv("WANDB_DISABLED", raising=False)
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "wandb-home"))
    monkeypatch.setenv("WANDB_SILENT", "true")
    (tmp_path / "wandb-home").mkdir()
    root = write_data(tmp_path / "w")
    pf = _pipeline_file(root, ["wandb"])
    assert [p for p in validate(pf) if p.severity == "error"] == []
    result = run_pipeline(pf, root / "runs" / "r", ListSink())
    assert result.status == "finished", result.message
    import wandb

    assert wandb.run is not None  # the engine's process ends it at exit; a test must itself
    wandb.finish()
    runs = sorted((tmp_path / "wandb-home" / "wandb").glob("offline-run-*"))
    assert len(runs) == 1, runs  # one run for the whole pipeline
    records = _wandb_records(next(runs[0].glob("run-*.wandb")))
    names = [r.run.display_name for r in records if r.WhichOneof("record_type") == "run"]
    assert names == ["r"]  # named after the run
    steps = [int(item["train/global_step"]) for item in _history(records) if "train/loss" in item]
    assert steps == list(range(1, 12))  # 6 + 5 steps, one curve


def _wandb_records(path: Path) -> list[Any]:
    """The protobuf records of an offline `.wandb` file: wandb's header, then LevelDB's log
    format (32 KiB blocks of chunks, each with a 7-byte header: crc, length, type)."""
    from wandb.proto import wandb_internal_pb2

    data, block, pos = path.read_bytes(), 32768, 7
    records, chunks = [], []
    while pos + 7 <= len(data):
        left = block - pos % block
        length, kind = struct.unpack("<HB", data[pos + 4:pos + 7]) if left >= 7 else (0, 0)
        if left < 7 or (kind == 0 and length == 0):  # a block's zero padding
            pos += left
            continue
        chunks.append(data[pos + 7:pos + 7 + length])
        pos += 7 + length
        if kind in (1, 4):  # FULL or LAST: a whole record
            record = wandb_internal_pb2.Record()
            record.ParseFromString(b"".join(chunks))
            records.append(record)
            chunks = []
    return records


def _history(records: list[Any]) -> list[dict[str, str]]:
    return [{item.key or "/".join(item.nested_key): item.value_json
             for item in r.history.item}
            for r in records if r.WhichOneof("record_type") == "history"]


@pytest.mark.usefixtures("one_thread")
def test_trackio_local_store_one_run_whose_steps_continue_across_stages(
        tmp_path: Path, toy_base: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Only where trackio is installed (not in dev: heavy). Its local store, read back with its
    own SQLiteStorage: the stages resume one run named after the run, in the pipeline's
    project, whose loss rows carry global steps 1…11 (trackio's own step counts rows)."""
    pytest.importorskip("trackio", reason="trackio is not installed (heavy; not in dev)")
    from graftline.engine.run.runner import run_pipeline

    store = tmp_path / "trackio"
    import trackio.sqlite_storage
    import trackio.utils

    # trackio reads TRACKIO_DIR once, at import, into module constants
    for module in (trackio.utils, trackio.sqlite_storage):
        monkeypatch.setattr(module, "TRACKIO_DIR", store)
    from trackio.sqlite_storage import SQLiteStorage

    root = write_data(tmp_path / "w")
    pf = _pipeline_file(root, ["trackio"])
    assert [p for p in validate(pf) if p.severity == "error"] == []
    result = run_pipeline(pf, root / "runs" / "r", ListSink())
    assert result.status == "finished", result.message
    assert SQLiteStorage.get_runs(pf.pipeline.pipeline.name) == ["r"]
    logs = SQLiteStorage.get_logs(pf.pipeline.pipeline.name, "r")
    steps = [row["train/global_step"] for row in logs if "train/loss" in row]
    assert steps == list(range(1, 12)), logs
    assert store.is_dir()

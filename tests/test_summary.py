"""The summary beside events.jsonl: equal to a rebuild from the log after a kill -9, rebuilt with a
notice when truncated, corrupt or stale, bounded in size, and attach shows every event once."""

from __future__ import annotations

import json
import math
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy

from graftline.console.follower import Follower
from graftline.engine.run import summary as S
from graftline.engine.run import summary_file as SF
from graftline.engine.run.events import EVENTS, EventWriter, read_events

# A real engine-like writer: three stages, metrics every step (a spike now and then), telemetry,
# checks and checkpoints, saving its summary often so a kill lands between and during saves.
WRITER = """
import math, sys, time
from pathlib import Path

import numpy
from graftline.engine.run.events import EventWriter
w = EventWriter(Path(sys.argv[1]), save_every=float(sys.argv[2]))
stages = [("sft", "sft"), ("merged", "merge"), ("dpo", "dpo")]
w.emit("run_started", None, run="r", stages=[{"name": n, "kind": k, "max_steps": 10**6}
                                             for n, k in stages])
print("ready", flush=True)
step = 0
for name, kind in stages * 100:
    w.emit("stage_started", name, kind=kind, index=0, max_steps=10**6, global_step_offset=step)
    for i in range(1, 3001):
        step += 1
        w.emit("metrics", name, step=i, global_step=step, max_steps=10**6,
               loss=math.exp(-step / 5000) + (3.0 if step % 997 == 0 else 0.0),
               learning_rate=1e-4, grad_norm=math.nan if step % 1231 == 0 else 1.0,
               steps_per_s=4.0, eta_s=1.0)
        if i % 500 == 0:
            w.emit("telemetry", name, gpus=None, gpu=None, gpu_reason="no GPU", rss=step)
            w.emit("checkpoint_saved", name, path=f"stages/{name}/trainer/checkpoint-{i}",
                   kind="trainer", id=str(step), bytes=step)
    w.emit("check_result", name, name="loss_continuity", status="pass", message=str(step))
    w.emit("stage_finished", name, kind=kind, status="complete", seconds=1.0,
           metrics={"loss": 0.5})
"""


def _text(summary: S.Summary) -> str:
    return json.dumps(summary.to_dict(), sort_keys=True, default=str)


def test_summary_equals_a_rebuild_after_kill_9_at_a_random_moment(tmp_path: Path) -> None:
    seed = random.randrange(1 << 30)
    delay = random.Random(seed).uniform(0.3, 2.5)
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(tmp_path), "0.05"],
                            stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
        time.sleep(delay)
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    log = tmp_path / EVENTS
    on_disk = SF.load(tmp_path)  # atomically replaced: never half a file
    assert SF.verify(on_disk, log) is None, f"seed {seed}"
    assert on_disk.offset <= log.stat().st_size
    # What the dead engine saved is exactly what the log up to its offset says.
    replay, _ = SF.rebuild(log, upto=on_disk.offset)
    assert _text(on_disk) == _text(replay), f"seed {seed}, delay {delay:.2f}s"
    # Opening it (summary + the log's tail) equals a rebuild of the whole log.
    opened = SF.open_summary(tmp_path, write_back=False)
    whole, _ = SF.rebuild(log)
    assert not opened.rebuilt and opened.summary.offset == whole.offset
    assert _text(opened.summary) == _text(whole), f"seed {seed}"
    # and a resumed writer continues the sequence from the summary, not from a full read
    events, _ = read_events(log)
    with EventWriter(tmp_path) as writer:
        assert writer.emit("run_finished", None, status="stopped").seq == events[-1].seq + 1
    assert SF.open_summary(tmp_path, write_back=False).summary.state.status == "stopped"


def _small_run(run_dir: Path, steps: int = 300) -> None:
    with EventWriter(run_dir) as writer:
        writer.emit("run_started", None, run="r", stages=[{"name": "a", "kind": "sft"}])
        writer.emit("stage_started", "a", kind="sft", index=0, max_steps=steps,
                    global_step_offset=0)
        for step in range(1, steps + 1):
            writer.emit("metrics", "a", step=step, global_step=step, loss=1.0 / step)
        writer.emit("warning", "a", message="disk is tight")
        writer.emit("stage_finished", "a", kind="sft", status="complete", seconds=2.0)


def test_truncated_corrupt_or_stale_summary_is_rebuilt_with_a_notice(tmp_path: Path) -> None:
    _small_run(tmp_path)
    path = tmp_path / S.SUMMARY
    good = path.read_bytes()
    whole, _ = SF.rebuild(tmp_path / EVENTS)
    cases = {
        "truncated": good[: len(good) // 2],
        "corrupt": b"\x00\xff not json",
        "foreign": json.dumps({"version": 99}).encode(),
        "stale": json.dumps({**json.loads(good), "tail_crc": 12345}).encode(),
        "too long": json.dumps({**json.loads(good), "offset": 10**9}).encode(),
    }
    for name, content in cases.items():
        path.write_bytes(content)
        opened = SF.open_summary(tmp_path)
        assert opened.rebuilt, name
        assert opened.notices and "rebuilt from events.jsonl" in opened.notices[0], name
        assert _text(opened.summary) == _text(whole), name
        # written back: the next reader trusts it
        again = SF.open_summary(tmp_path)
        assert not again.rebuilt and not again.notices, name
    path.unlink()
    missing = SF.open_summary(tmp_path, write_back=False)  # an older run: rebuilt, quietly
    assert missing.rebuilt and missing.reason == "none yet" and not missing.notices
    assert _text(missing.summary) == _text(whole)
    assert not path.exists()


def test_a_torn_last_line_is_skipped_with_a_notice(tmp_path: Path) -> None:
    _small_run(tmp_path, steps=5)
    with (tmp_path / EVENTS).open("a") as handle:
        handle.write('{"seq": 99, "time": 1.0, "type": "metr')
    opened = SF.open_summary(tmp_path, write_back=False)
    assert not opened.rebuilt
    assert any("incomplete line" in notice for notice in opened.notices)
    assert opened.summary.last_seq == 9


def test_attach_on_a_log_longer_than_its_summary_shows_every_event_once(tmp_path: Path) -> None:
    _small_run(tmp_path, steps=200)
    covered = SF.load(tmp_path).offset
    # An engine without a summary (or one killed before its next save) appends more.
    with EventWriter(tmp_path, summary=False) as writer:
        writer.emit("run_started", None, run="r", resumed=True,
                    stages=[{"name": "a", "kind": "sft"}, {"name": "b", "kind": "sft"}])
        writer.emit("stage_started", "b", kind="sft", index=1, max_steps=100,
                    global_step_offset=200)
        for step in range(1, 101):
            writer.emit("metrics", "b", step=step, global_step=200 + step, loss=0.5 / step)
        writer.emit("check_result", "b", name="adapter", status="warn", message="look")
    assert SF.load(tmp_path).offset == covered < (tmp_path / EVENTS).stat().st_size

    follower = Follower(tmp_path, lambda: None)
    follower.attach()
    assert follower.notices == [] and follower.model.events_seen < 300
    follower.step()
    events, _ = read_events(tmp_path / EVENTS)
    model = follower.model
    assert model.events_seen == len(events) and model.last_seq == events[-1].seq
    assert follower.summary is not None
    assert follower.summary.series["loss"].points == 300  # every metric event, once
    assert follower.summary.counts == SF.rebuild(tmp_path / EVENTS)[0].counts
    assert _text(follower.summary) == _text(SF.rebuild(tmp_path / EVENTS)[0])
    texts = [line.text for line in model.log]
    assert len(texts) == len(set(texts)), texts  # no line twice
    assert sum("disk is tight" in t for t in texts) == 1
    assert [s.name for s in model.stages] == ["a", "b"]
    assert model.stages[1].checks[0].status == "warn"
    steps = list(model.series["loss"].steps)
    assert steps == sorted(steps) and steps[-1] == 300.0 and len(steps) == 300
    assert not follower.step()  # nothing new: nothing folded twice
    assert model.events_seen == len(events)


def test_size_stays_bounded_and_spikes_survive(tmp_path: Path) -> None:
    summary = S.Summary()
    keys = [f"rewards/f{i}/mean" for i in range(60)]
    spike_at = 123_457
    for step in range(1, 200_001):
        data = {"step": step, "global_step": step, "loss": 1.0 + (50.0 if step == spike_at
                                                                   else 0.0)}
        if step % 25 == 0:
            data.update((key, math.sin(step)) for key in keys)
        summary.add({"seq": step, "time": float(step), "type": "metrics", "stage": "grpo",
                     "data": data})
        if step % 1000 == 0:
            summary.add({"seq": step, "time": float(step), "type": "warning", "stage": "grpo",
                         "data": {"message": "x" * 5000}})
    size = len(summary.to_json())
    assert size <= S.SUMMARY_BYTES_MAX, size
    steps, low, high, last = summary.points("loss")
    assert high.max() == 51.0 and low.min() == 1.0  # the one spike is in the whole-run level
    assert len(steps) <= S.TOP_CAP
    for level in range(1, 4):  # and in every zoom level that still covers it
        xs, _lo, hi, _last = summary.points("loss", level)
        if xs.size and xs[0] <= spike_at:
            assert hi.max() == 51.0
    # finest level: the last steps one by one
    xs, _lo, _hi, last = summary.points("loss", 99)
    assert xs[-1] == 200_000 and last[-1] == 1.0
    # more series than the summary keeps, long log rows: still bounded
    many = S.Summary()
    for step in range(1, 1001):
        many.add({"seq": step, "time": float(step), "type": "metrics", "stage": "grpo",
                  "data": {"global_step": step * 1000, **{f"k{i}": 1.0 for i in range(1200)}}})
        many.add({"seq": step, "time": float(step), "type": "warning", "stage": "grpo",
                  "data": {"message": "y" * 5000, "fix": "z" * 5000}})
    size = len(many.to_json())
    assert size <= S.SUMMARY_BYTES_MAX, size
    assert len(many.series) == S.SERIES_MAX and many.dropped_points == 200 * 1000


def test_a_failed_write_leaves_no_torn_line_and_the_queue_flushes_in_order(
        tmp_path: Path) -> None:
    # A real write failure: the file-size limit (EFBIG) cuts a write short like a full disk does.
    script = """
import resource, signal, sys
from pathlib import Path

import numpy
from graftline.engine.run.events import EventWriter
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
errors = []
w = EventWriter(Path(sys.argv[1]), on_error=lambda exc, ev: errors.append((exc.errno, ev.seq)),
                pending_max=5)
w.emit("run_started", None, run="r", stages=[])
size = (Path(sys.argv[1]) / "events.jsonl").stat().st_size
soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
resource.setrlimit(resource.RLIMIT_FSIZE, (size + 40, hard))  # the next line fits only half
for step in range(1, 9):
    w.emit("metrics", "a", step=step, global_step=step, loss=1.0 / step)
w.emit("stage_finished", "a", kind="sft", status="complete", seconds=1.0)
assert w.pending == 5 and w.dropped == 4, (w.pending, w.dropped)
assert (Path(sys.argv[1]) / "events.jsonl").stat().st_size == size  # the half line cut off
resource.setrlimit(resource.RLIMIT_FSIZE, (hard, hard))
w.emit("run_finished", None, status="finished")
assert w.pending == 0 and w.write_error is None
w.close()
print(len(errors), errors[0][0])
"""
    result = subprocess.run([sys.executable, "-c", script, str(tmp_path)], capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    import errno

    count, code = result.stdout.split()
    assert int(count) == 9 and int(code) == errno.EFBIG  # each queued event reported
    lines = (tmp_path / EVENTS).read_bytes().split(b"\n")
    assert lines[-1] == b""  # ends on a newline
    rows = [json.loads(line) for line in lines[:-1]]  # every line whole JSON
    seqs = [row["seq"] for row in rows]
    assert seqs == sorted(seqs)
    kinds = [row["type"] for row in rows]
    # the durable stage_finished survived the full queue; the oldest metrics were dropped
    assert "stage_finished" in kinds and kinds[-2:] == ["warning", "run_finished"]
    assert "4 events were dropped" in rows[-2]["data"]["message"]
    assert [row["data"]["step"] for row in rows if row["type"] == "metrics"] == [5, 6, 7, 8]
    assert SF.open_summary(tmp_path, write_back=False).rebuilt is False


def test_the_view_model_from_a_summary_matches_the_view_model_from_every_event(
        tmp_path: Path) -> None:
    sys.path.insert(0, str(Path(__file__).parent / "fixtures"))
    from synthetic_run import write_synthetic_run

    from graftline.console.run_view import RunModel, fold

    run = write_synthetic_run(tmp_path / "r", steps_per_stage=20)
    events, _ = read_events(run / EVENTS)
    whole = fold(events)
    loaded = RunModel()
    loaded.load_summary(SF.rebuild(run / EVENTS)[0])

    def stages(model: RunModel) -> list[tuple]:
        return [(s.name, s.kind, s.index, s.status, s.step, s.max_steps, s.global_step_offset,
                 s.latest, s.summary, s.evaluation, [(c.name, c.status) for c in s.checks],
                 s.action, s.reference) for s in model.stages]

    assert stages(loaded) == stages(whole)
    assert loaded.boundaries == whole.boundaries and loaded.status == whole.status
    assert (loaded.run, loaded.backend, loaded.current) == (whole.run, whole.backend,
                                                           whole.current)
    assert [(line.level, line.text) for line in loaded.log] == \
        [(line.level, line.text) for line in whole.log][-len(loaded.log):]
    assert loaded.telemetry == whole.telemetry and loaded.throughput == whole.throughput
    assert loaded.events_seen == whole.events_seen and loaded.last_seq == whole.last_seq
    assert loaded.elapsed() == whole.elapsed() and loaded.chart_metrics() == whole.chart_metrics()
    for key, series in whole.series.items():  # short run: every step its own bucket
        assert list(loaded.series[key].steps) == list(series.steps), key
        assert list(loaded.series[key].values) == [float(numpy.float32(v))
                                                   for v in series.values], key

"""The event log: offsets, torn lines, corrupt lines, concurrent readers, a resumed writer."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from pathlib import Path

from graftline.engine.run.client import History, load_history
from graftline.engine.run.events import EVENTS, EventWriter, follow, read_events, read_raw

WRITER = """
import sys, time
from pathlib import Path
from graftline.engine.run.events import EventWriter
with EventWriter(Path(sys.argv[1])) as w:
    for i in range(int(sys.argv[2])):
        w.emit("metrics", "sft", step=i + 1, global_step=i + 1, loss=1.0 / (i + 1))
        if i % 50 == 0:
            time.sleep(0.01)
    w.emit("run_finished", None, status="finished", message="")
"""


def test_reader_continues_from_offset_and_waits_for_a_torn_line(tmp_path: Path) -> None:
    with EventWriter(tmp_path) as writer:
        writer.emit("run_started", None, run="r", stages=[])
        writer.emit("metrics", "a", step=1, global_step=1, loss=2.0)
    events, offset = read_events(tmp_path / EVENTS)
    assert [e.seq for e in events] == [1, 2]

    # A writer caught mid-line: the reader must neither fail nor consume the partial line.
    line = json.dumps({"seq": 3, "time": 0.0, "type": "metrics", "stage": "a",
                       "data": {"step": 2, "loss": 1.5}})
    with (tmp_path / EVENTS).open("a") as handle:
        handle.write(line[:20])
    more, offset2 = read_events(tmp_path / EVENTS, offset)
    assert more == [] and offset2 == offset
    with (tmp_path / EVENTS).open("a") as handle:
        handle.write(line[20:] + "\n")
    more, _ = read_events(tmp_path / EVENTS, offset2)
    assert [(e.seq, e.data["loss"]) for e in more] == [(3, 1.5)]


def test_a_crash_leftover_line_is_skipped_and_the_next_engine_continues_the_sequence(
        tmp_path: Path) -> None:
    with EventWriter(tmp_path) as writer:
        for step in range(1, 4):
            writer.emit("metrics", "a", step=step, global_step=step, loss=1.0)
    with (tmp_path / EVENTS).open("a") as handle:
        handle.write('{"seq": 4, "time": 1.0, "type": "metr')  # killed mid-write
    with EventWriter(tmp_path) as writer:  # the resumed engine
        writer.emit("metrics", "a", step=4, global_step=4, loss=0.5)
        writer.emit("run_finished", None, status="finished")
    events, _ = read_events(tmp_path / EVENTS)
    assert [e.seq for e in events] == [1, 2, 3, 4, 5]
    assert events[3].data["loss"] == 0.5
    # the fast whole-file path and the line-by-line fallback agree
    text = (tmp_path / EVENTS).read_bytes().splitlines()
    rows = [json.loads(line) for line in text if line.endswith(b"}")]
    assert read_raw(tmp_path / EVENTS)[0] == rows
    history = load_history(tmp_path)
    assert history.series("loss") == ([1, 2, 3, 4], [1.0, 1.0, 1.0, 0.5])
    assert history.finished == {"status": "finished"}


def test_two_readers_following_a_live_writer_see_identical_sequences(tmp_path: Path) -> None:
    count = 2000
    (tmp_path / EVENTS).touch()
    seen: list[list[tuple[int, str, float | None]]] = [[], []]
    stop = threading.Event()

    def reader(into: list[tuple[int, str, float | None]]) -> None:
        for batch in follow(tmp_path / EVENTS, poll=0.005, stop=stop):
            into.extend((e.seq, e.type, e.data.get("loss")) for e in batch)
            if any(e.type == "run_finished" for e in batch):
                return

    threads = [threading.Thread(target=reader, args=(seen[i],)) for i in range(2)]
    for thread in threads:
        thread.start()
    subprocess.run([sys.executable, "-c", WRITER, str(tmp_path), str(count)], check=True,
                   timeout=120)
    for thread in threads:
        thread.join(timeout=30)
    stop.set()
    assert len(seen[0]) == count + 1
    assert seen[0] == seen[1]
    assert [s for s, _, _ in seen[0]] == list(range(1, count + 2))


def test_history_folds_stages_checkpoints_and_follows_incrementally(tmp_path: Path) -> None:
    with EventWriter(tmp_path) as writer:
        writer.emit("run_started", None, run="r", stages=[
            {"name": "a", "kind": "sft", "max_steps": 2}, {"name": "b", "kind": "sft"}])
        writer.emit("stage_started", "a", kind="sft", index=0, max_steps=2, global_step_offset=0)
        writer.emit("metrics", "a", step=1, global_step=1, loss=2.0)
        writer.emit("telemetry", "a", gpus=None, gpu=None, gpu_reason="no GPU", rss=1)
    history = load_history(tmp_path)
    assert history.stages["a"].status == "running" and history.stages["b"].status == "pending"
    assert history.gpu_reason == "no GPU"
    with EventWriter(tmp_path) as writer:
        writer.emit("metrics", "a", step=2, global_step=2, loss=1.0)
        writer.emit("checkpoint_saved", "a", path="stages/a", kind="adapter", id="x", bytes=10)
        writer.emit("stage_finished", "a", kind="sft", status="complete", seconds=1.0, metrics={})
    load_history(tmp_path, history)
    assert history.series("loss") == ([1, 2], [2.0, 1.0])
    assert history.stages["a"].status == "complete"
    assert [c["data"]["id"] for c in history.checkpoints] == ["x"]
    assert history.boundaries == [(0, "a")]
    assert isinstance(History(), History)

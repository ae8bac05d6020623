"""The event log: offsets, torn lines, corrupt lines, concurrent readers, a resumed writer."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from pathlib import Path

from graftline.engine.run.client import read_fold
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
    assert [(r["data"]["global_step"], r["data"]["loss"]) for r in rows
            if r["type"] == "metrics"] == [(1, 1.0), (2, 1.0), (3, 1.0), (4, 0.5)]
    fold = read_fold(tmp_path)
    assert fold.status == "finished" and fold.message is None
    assert fold.stages["a"].step == 4 and fold.stages["a"].latest["loss"] == 0.5


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


def test_the_fold_has_stages_checkpoints_and_follows_incrementally(tmp_path: Path) -> None:
    from graftline.engine.run.summary import Summary

    with EventWriter(tmp_path) as writer:
        writer.emit("run_started", None, run="r", stages=[
            {"name": "a", "kind": "sft", "max_steps": 2}, {"name": "b", "kind": "sft"}])
        writer.emit("stage_started", "a", kind="sft", index=0, max_steps=2, global_step_offset=0)
        writer.emit("metrics", "a", step=1, global_step=1, loss=2.0)
        writer.emit("telemetry", "a", gpus=None, gpu=None, gpu_reason="no GPU", rss=1)
    rows, offset = read_raw(tmp_path / EVENTS)
    followed = Summary()  # a reader that folds the log as it grows
    followed.extend(rows)
    fold = followed.state
    assert fold.stages["a"].status == "running" and fold.stages["b"].status == "pending"
    assert fold.gpu_reason == "no GPU" and fold.stages["a"].latest == {"loss": 2.0}
    with EventWriter(tmp_path) as writer:
        writer.emit("metrics", "a", step=2, global_step=2, loss=1.0)
        writer.emit("checkpoint_saved", "a", path="stages/a", kind="adapter", id="x", bytes=10)
        writer.emit("stage_finished", "a", kind="sft", status="complete", seconds=1.0, metrics={})
    rows, offset = read_raw(tmp_path / EVENTS, offset)
    followed.extend(rows)
    steps, _low, _high, last = followed.points("loss")
    assert list(zip(steps.tolist(), last.tolist(), strict=True)) == [(1, 2.0), (2, 1.0)]
    assert fold.stages["a"].status == "complete" and fold.stages["a"].step == 2
    assert [c["id"] for c in fold.stages["a"].checkpoints] == ["x"]
    assert fold.stages["a"].global_step_offset == 0 and fold.current == "a"
    # the whole log folded at once (through the engine's summary) says the same
    assert read_fold(tmp_path).to_dict() == fold.to_dict()


def test_iter_rows_streams_in_bounded_chunks_and_reports_a_torn_tail(tmp_path: Path) -> None:
    from graftline.engine.run.events import iter_rows, torn_tail

    with EventWriter(tmp_path, summary=False) as writer:
        for step in range(1, 2001):
            writer.emit("metrics", "a", step=step, global_step=step, loss=1.0 / step)
    with (tmp_path / EVENTS).open("a") as handle:
        handle.write('{"seq": 2001, "time": 1.0, "ty')
    batches = list(iter_rows(tmp_path / EVENTS, 0, chunk=4096))
    assert len(batches) > 10  # many small reads, never the whole file
    seqs = [row["seq"] for rows, _end, _line in batches for row in rows]
    assert seqs == list(range(1, 2001))
    end = batches[-1][1]
    assert json.loads(batches[-1][2])["seq"] == 2000
    assert torn_tail(tmp_path / EVENTS, end) == len('{"seq": 2001, "time": 1.0, "ty')
    # from a middle offset, up to a bound: exactly the lines in between
    middle = batches[3][1]
    upto = batches[6][1]
    between = [row["seq"] for rows, _e, _l in iter_rows(tmp_path / EVENTS, middle, upto=upto,
                                                          chunk=1000) for row in rows]
    assert between == [row["seq"] for rows, _e, _l in batches[4:7] for row in rows]


def test_logs_filters_by_stage_kind_and_since_and_notes_a_torn_line(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from graftline.console.cli import app

    with EventWriter(tmp_path) as writer:
        writer.emit("run_started", None, run="r", stages=[{"name": "a"}, {"name": "b"}])
        for name in ("a", "b"):
            writer.emit("stage_started", name, kind="sft", index=0, max_steps=3)
            for step in range(1, 4):
                writer.emit("metrics", name, step=step, global_step=step, loss=1.0)
            writer.emit("warning", name, message=f"warn {name}")
    rows = [json.loads(line) for line in (tmp_path / EVENTS).read_text().splitlines()]
    # make the first half old: the log is in time order, --since bisects on it
    old = [dict(row, time=row["time"] - 7200) if row["seq"] <= 6 else row for row in rows]
    (tmp_path / EVENTS).write_text("".join(json.dumps(row) + "\n" for row in old))
    runner = CliRunner()

    def seqs(*args: str) -> list[int]:
        result = runner.invoke(app, ["logs", str(tmp_path), "--json", *args])
        assert result.exit_code == 0, result.output
        return [json.loads(line)["seq"] for line in result.output.splitlines()
                if line.startswith("{")]

    assert seqs("--stage", "b") == [7, 8, 9, 10, 11]
    assert seqs("--kind", "warning") == [6, 11]
    assert seqs("--kind", "warning", "--stage", "a") == [6]
    assert seqs("--stage", "-") == [1]
    assert seqs("--since", "1h") == [7, 8, 9, 10, 11]
    bad = runner.invoke(app, ["logs", str(tmp_path), "--kind", "metric"])
    assert bad.exit_code != 0 and "unknown event kind 'metric'" in bad.output
    bad = runner.invoke(app, ["logs", str(tmp_path), "--since", "yesterday"])
    assert bad.exit_code != 0 and "--since" in bad.output
    with (tmp_path / EVENTS).open("a") as handle:
        handle.write('{"seq": 12, "ti')
    torn = runner.invoke(app, ["logs", str(tmp_path)])
    assert torn.exit_code == 0 and "incomplete line (15 bytes): skipped" in torn.output


def test_since_bisects_a_long_log_to_the_right_place(tmp_path: Path) -> None:
    from graftline.console.commands.logs import seek_time

    path = tmp_path / EVENTS
    path.write_text("".join(json.dumps({"seq": i, "time": 1000.0 + i, "type": "metrics",
                                        "stage": "a", "data": {"loss": 1.0, "pad": "x" * 200}})
                            + "\n" for i in range(1, 20001)))
    offset = seek_time(path, 1000.0 + 15000)
    assert 0 < offset < path.stat().st_size
    events, _ = read_events(path, offset)
    assert events[0].time < 1000.0 + 15000  # nothing at or after `since` is skipped
    assert events[0].seq > 14000  # and most of what is older is

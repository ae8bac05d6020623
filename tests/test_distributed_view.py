"""What the console says about a distributed stage's ranks (ranks.rank_liveness and the
header's text), the launcher's failure report the engine reads the dead rank from (a real
torchrun), and which machine a multi-node run resumes as. Fast: no training here; the full path
(a real engine, a real kill, the real console under Pilot) is in test_distributed.py."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from graftline.console.ranks import local_ranks, rank_liveness
from graftline.console.run_view import RunModel, fold
from graftline.console.widgets.run_header import rank_text
from graftline.engine.run import Event, Summary, group_io


def _rows(*ranks: tuple[int, bool], world: int = 2, processes: int | None = 2,
          machine: int = 0, failed: int | None = None) -> list[dict]:
    """An event log in the engine's schema: a distributed stage, one telemetry sample with the
    given ranks of this host, and (with `failed`) the engine's error naming the dead rank."""
    rows: list[dict] = [
        {"type": "run_started", "stage": None,
         "data": {"run": "r", "stages": [{"name": "sft", "kind": "sft", "max_steps": 8}]}},
        {"type": "stage_started", "stage": "sft",
         "data": {"kind": "sft", "max_steps": 8, "world_size": world, "processes": processes,
                  "machine_rank": machine}},
    ]
    if ranks:
        rows.append({"type": "telemetry", "stage": "sft", "data": {
            "ranks": [{"rank": r, "local_rank": r % (processes or 1), "pid": 100 + r,
                       "alive": alive, "rss": 1 << 20, "gpu_bytes": None} for r, alive in ranks],
            "ranks_alive": sum(1 for _, alive in ranks if alive)}})
    if failed is not None:
        rows.append({"type": "error", "stage": "sft", "data": {
            "message": "the group ended", "fix": "graftline resume r", "world_size": world,
            "failed_rank": failed, "failed_exitcode": -9}})
        rows.append({"type": "stage_finished", "stage": "sft",
                     "data": {"kind": "sft", "status": "failed", "world_size": world}})
        rows.append({"type": "run_finished", "stage": None,
                     "data": {"status": "failed", "message": "the group ended"}})
    return [dict(row, seq=i + 1, time=float(i)) for i, row in enumerate(rows)]


def _live(rows: list[dict]) -> RunModel:
    return fold(Event.from_dict(row) for row in rows)


def _attached(rows: list[dict]) -> RunModel:
    """The console's attach path: the engine's summary of the same log, loaded into a model."""
    summary = Summary()
    summary.extend(rows)
    model = RunModel()
    model.load_summary(Summary.from_dict(summary.to_dict()))
    return model


@pytest.mark.parametrize("load", [_live, _attached], ids=["live", "attached"])
def test_liveness_of_each_rank_on_this_host(load) -> None:  # type: ignore[no-untyped-def]
    both = rank_liveness(load(_rows((0, True), (1, True))))
    assert both is not None and both.states == ((0, "alive"), (1, "alive"))
    assert str(rank_text(both)) == "2 ranks ●●" and str(rank_text(both, True)) == "2 ranks oo"
    # a zombie the launcher has not reaped is dead; a rank missing from the sample is unseen
    zombie = rank_liveness(load(_rows((0, True), (1, False))))
    assert zombie is not None and str(rank_text(zombie)) == "2 ranks ●✗ rank 1 dead"
    missing = rank_liveness(load(_rows((0, True))))
    assert missing is not None and str(rank_text(missing)) == "2 ranks ●○"
    # no sample of the group yet: its size, no verdict
    unsampled = rank_liveness(load(_rows()))
    assert unsampled is not None and str(rank_text(unsampled)) == "2 ranks"
    # the group ended on rank 1's death: that rank dead, the others ended with it
    ended = rank_liveness(load(_rows((0, True), (1, True), failed=1)))
    assert ended is not None and ended.failed_rank == 1
    assert str(rank_text(ended)) == "2 ranks ○✗ rank 1 died"
    assert str(rank_text(ended, True)) == "2 ranks .x rank 1 died"


def test_one_process_stage_shows_no_group() -> None:
    rows = _rows((0, True), world=1, processes=None)
    rows[1]["data"] = {"kind": "sft", "max_steps": 8}  # what the engine sends for one process
    assert rank_liveness(_live(rows)) is None
    assert rank_liveness(_attached(rows)) is None


def test_multi_node_shows_this_hosts_ranks_and_counts_the_others() -> None:
    # machine 1 of 2, two processes each: global ranks 2 and 3 run here
    rows = _rows((2, True), (3, True), world=4, processes=2, machine=1)
    model = _live(rows)
    assert list(local_ranks(model.stages[0])) == [2, 3]
    group = rank_liveness(model)
    assert group is not None and group.elsewhere == 2
    assert str(rank_text(group)) == "4 ranks (2 here) ●●"


def test_a_resumed_stage_forgets_the_dead_rank() -> None:
    rows = _rows((0, True), (1, True), failed=1)
    again = [{"type": "run_started", "stage": None, "data": {"run": "r", "resumed": True}},
             {"type": "stage_started", "stage": "sft", "data": {
                 "kind": "sft", "world_size": 2, "processes": 2, "machine_rank": 0,
                 "resumed_from": "checkpoint-2"}},
             {"type": "telemetry", "stage": "sft", "data": {"ranks": [
                 {"rank": 0, "pid": 7, "alive": True}, {"rank": 1, "pid": 8, "alive": True}]}}]
    rows += [dict(row, seq=len(rows) + i + 1, time=100.0 + i) for i, row in enumerate(again)]
    for model in (_live(rows), _attached(rows)):
        group = rank_liveness(model)
        assert group is not None and group.failed_rank is None
        assert str(rank_text(group)) == "2 ranks ●●"


def test_the_launchers_report_names_the_rank_that_died(tmp_path: Path) -> None:
    """A real torchrun, two workers; worker 1 kills itself with SIGKILL: the launcher's stderr
    names it as the first failure, and group_io reads rank and signal from it."""
    script = tmp_path / "worker.py"
    script.write_text("import os, signal, time\n"
                      "if os.environ['RANK'] == '1':\n"
                      "    time.sleep(0.5)\n"
                      "    os.kill(os.getpid(), signal.SIGKILL)\n"
                      "time.sleep(60)\n")
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                           "--nproc_per_node", "2", str(script)], capture_output=True,
                          text=True, timeout=120, env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert done.returncode != 0
    failure = group_io.first_failure(done.stderr)
    assert failure is not None, done.stderr[-2000:]
    assert (failure.rank, failure.local_rank, failure.exitcode) == (1, 1, -signal.SIGKILL)
    assert failure.cause == "killed by SIGKILL"
    assert group_io.first_failure("RuntimeError: something else entirely") is None


def test_resume_keeps_the_machine_rank_the_run_was_launched_as(tmp_path: Path) -> None:
    run = tmp_path / "run"
    run.mkdir()
    assert group_io.machine_rank_for_resume(run, None) is None  # never launched multi-node
    assert group_io.machine_rank_for_resume(run, 2) == 2
    group_io.record_machine(run, 1, 2)
    assert group_io.machine_rank_for_resume(run, None) == 1
    assert group_io.machine_rank_for_resume(run, 1) == 1
    with pytest.raises(group_io.MachineRankConflict) as refused:
        group_io.machine_rank_for_resume(run, 0)
    assert "ran on this host as machine 1" in refused.value.message
    assert "--machine-rank" in refused.value.fix


if sys.platform != "linux":
    pytestmark = pytest.mark.skip(reason="Linux only (torchrun's signals)")


def test_the_tail_leaves_what_it_never_relayed_for_the_next_launch(tmp_path: Path) -> None:
    """A killed engine's unrelayed lines: those after its last mark, whole lines only; a file
    without a mark (from before marks existed) gives nothing rather than repeat a history."""
    events = tmp_path / group_io.EVENTS
    sink = group_io.FileSink(events, world_size=2)
    assert group_io.EventTail.leftover(events) == []
    tail = group_io.EventTail(events)
    tail.mark()
    assert group_io.EventTail.leftover(events) == []
    for step in (1, 2):
        sink.emit("metrics", "sft", step=step)
    assert [e["data"]["step"] for e in tail.read()] == [1, 2]
    tail.mark()
    sink.emit("metrics", "sft", step=3)
    with events.open("a") as torn:
        torn.write('{"type": "metr')
    left = group_io.EventTail.leftover(events)
    assert [(e["type"], e["data"]) for e in left] == [("metrics", {"step": 3, "world_size": 2})]
    (tmp_path / group_io.RELAYED).unlink()
    assert group_io.EventTail.leftover(events) == []

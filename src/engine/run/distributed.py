"""Running one stage on a process group through torchrun or accelerate launch, and supervising it.

The runner hands a stage here when its scale (pipeline/scaleout.py) asks for more than one
process. The engine stays the only writer of the run's event log and state: rank 0's events
arrive through `<run>/dist/<stage>/events.jsonl` and are relayed into the engine's sink (tagged
with `world_size`), and the engine's control flags go out through `control.json`, which rank 0
broadcasts to every rank (group_io.GroupControl).

Ending the group: the launcher runs in its own session with a parent-death signal, so a killed
engine takes it down; torchrun/accelerate end every rank when one dies (kill -9 of rank 1 ends
the group with a failure), and each rank dies with its launcher. The stage is then reported
failed, and `graftline resume` continues from the last Trainer checkpoint as for one process.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

from graftline.engine.common import atomic
from graftline.engine.common.event_types import FailedRank, StageFinished
from graftline.engine.common.layout import DONE
from graftline.engine.common.sink import emit_record
from graftline.engine.lineage import manifest as mf
from graftline.engine.pipeline import scaleout
from graftline.engine.run import group_io
from graftline.engine.stages.context import StageContext

POLL_S = 0.2
MACHINE_RANK_ENV = group_io.MACHINE_RANK_ENV  # the per-host override for multi-node runs
STOP_GRACE_S = 600.0  # after a stop, how long the group may take to save before it is ended
# Multi-node: once rank 0 has reported the stage failed, how long this host's launcher may wait
# in torch elastic's exit barrier (300 s by default, not settable from torchrun's command line)
# for the other machines' launchers, which a dead peer never brings.
EXIT_BARRIER_GRACE_S = 10.0


def machine_rank_override(run_dir: Path | None = None) -> int | None:
    """GRAFTLINE_MACHINE_RANK (`--machine-rank`), else the rank this run was launched as on this
    host (a resumed run stays the machine it was), else None: the file's `machine_rank`."""
    value = os.environ.get(MACHINE_RANK_ENV)
    if value not in (None, ""):
        return int(value)
    return group_io.recorded_machine_rank(run_dir) if run_dir is not None else None


def scale_for(pipeline: Any, stage: Any, run_dir: Path | None = None) -> scaleout.Scale:
    return scaleout.scale_of(pipeline, stage, machine_rank_override(run_dir))


def _die_with_engine() -> None:
    from graftline.engine.run.rank_main import die_with_parent

    die_with_parent(signal.SIGTERM)  # torchrun/accelerate end their ranks on SIGTERM


def _fresh(work: Path, run_dir: Path) -> None:
    if work.is_symlink():
        work.unlink()
    if work.exists():
        if Path(run_dir).resolve() not in work.resolve().parents:
            raise RuntimeError(f"refusing to clear {work}: outside {run_dir}")
        shutil.rmtree(work)
    work.mkdir(parents=True)


def run_stage(ctx: StageContext, scale: scaleout.Scale, pipeline_text: str,
              pipeline_path: Path) -> tuple[str, str, int]:
    """Run the stage on `scale.world_size` processes; (status, message, steps) as
    `runner.run_stage_here` reports them. Never raises for the group's failure: it is reported
    through the sink."""
    began = time.perf_counter()
    work = group_io.work_dir(ctx.run_dir, ctx.name)
    _relay_leftover(ctx, work)
    _fresh(work, ctx.run_dir)
    request = _write_request(ctx, work, pipeline_text, pipeline_path)
    if scale.num_machines > 1:  # a resume on this host runs as the same machine
        group_io.record_machine(ctx.run_dir, scale.machine_rank, scale.num_machines)
    control_path = work / group_io.CONTROL
    save_seq = 0
    # a refusal (full disk) is harmless here: the fresh work dir has no file, which reads the same
    group_io.write_control(control_path, stop=False, paused=False, save_seq=save_seq)
    proc = _launch(ctx, scale, request)
    assert proc.stderr is not None
    stderr = group_io.StderrRelay(proc.stderr)
    tail = group_io.EventTail(work / group_io.EVENTS)
    tail.mark()  # offset 0: every line from here on is rank 0's news
    finished_seen = False
    last = (False, False, 0)
    stop_asked: float | None = None
    failed_at: float | None = None
    cut_barrier = False

    disk_paused = False  # rank 0 met a full disk and the engine's disk guard paused the run

    def relay() -> None:
        nonlocal finished_seen, disk_paused
        for event in tail.read():
            finished_seen |= event.get("type") == "stage_finished"
            data = _relay(ctx, event)
            if event["type"] == "warning" and data.get("disk_full"):
                # the engine's sink pauses in emit; a plain sink (no engine) never does
                disk_paused |= ctx.control is not None and ctx.control.paused.is_set()
        tail.mark()

    while proc.poll() is None:
        relay()
        control = ctx.control
        if control.take_save_request():
            save_seq += 1
        flags = (control.stop.is_set(), control.paused.is_set(), save_seq)
        if flags != last and group_io.write_control(control_path, stop=flags[0],
                                                    paused=flags[1], save_seq=flags[2]):
            last = flags
        if flags[0] and stop_asked is None:
            stop_asked = time.monotonic()
        if stop_asked is not None and time.monotonic() - stop_asked > STOP_GRACE_S:
            proc.send_signal(signal.SIGTERM)  # the launcher ends its ranks
            stop_asked = float("inf")
        if failed_at is None and scale.num_machines > 1 and _result_failed(work):
            failed_at = time.monotonic()
        if failed_at is not None and time.monotonic() - failed_at > EXIT_BARRIER_GRACE_S:
            # Its rank 0 is done; the barrier is a blocking store wait in C++, where the agent's
            # SIGTERM handler never runs (measured: it waited out the 300 s). SIGKILL the
            # launcher's session: the launcher and any rank still in it.
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            failed_at, cut_barrier = float("inf"), True
        time.sleep(POLL_S)
    relay()
    code = proc.returncode
    launcher_said = stderr.text()  # drained: every line is in engine.log before we report
    result = _read_result(work)
    if result is not None and result[0] == "retry":
        return _after_a_full_disk(ctx, result[1], began, disk_paused)
    if code == 0 and result is not None:
        return result
    if code == 0 and scale.machine_rank > 0:
        return _lent_processes_done(ctx, scale, began)
    return _group_failed(ctx, scale, code, launcher_said, result, began,
                         cut_barrier=cut_barrier, finished_seen=finished_seen)


def _write_request(ctx: StageContext, work: Path, pipeline_text: str,
                   pipeline_path: Path) -> Path:
    """What every rank reads to run the stage (run/rank_main.py), in the group's work folder."""
    request = work / group_io.REQUEST
    atomic.write_json(request, {
        "run_dir": str(Path(ctx.run_dir).resolve()), "stage": ctx.name, "index": ctx.index,
        "pipeline_text": pipeline_text, "pipeline_path": str(pipeline_path),
        "base_path": ctx.base_path, "global_step_offset": ctx.global_step_offset,
        "resume_from": str(ctx.resume_from) if ctx.resume_from else None,
        "work_dir": str(work.resolve()),
    })
    return request


def _launch(ctx: StageContext, scale: scaleout.Scale, request: Path) -> subprocess.Popen[bytes]:
    """The launcher (torchrun or accelerate) for this host's ranks, in its own session, said in
    the log first."""
    argv = scaleout.command(scale, ctx.backend.name, scaleout.detect_env(), str(request),
                            search_dir=ctx.search_dir)
    ctx.sink.emit("info", ctx.name, message=f"launching {scale.world_size} processes: "
                  f"{scaleout.shell_line(argv)}", world_size=scale.world_size,
                  launch=argv, machine_rank=scale.machine_rank, processes=scale.processes)
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    env.setdefault("OMP_NUM_THREADS", "1")
    # stderr through the engine (on to engine.log): the launcher's failure report names the
    # rank that died first
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            start_new_session=True, preexec_fn=_die_with_engine, env=env)
    return proc


def _lent_processes_done(ctx: StageContext, scale: scaleout.Scale,
                         began: float) -> tuple[str, str, int]:
    """Machine 0's rank 0 saved the stage; this host only lent its processes: it marks the
    stage done (a resume here skips it, as machine 0 does) and says so."""
    note = (f"machine {scale.machine_rank}'s ranks are done; machine 0 reports and saves "
            "the stage in its own run")
    seconds = time.perf_counter() - began
    # the completion marker: a resume on this host skips the stage, as machine 0 does
    atomic.write_json(ctx.stage_dir / DONE, {
        "stage": ctx.name, "kind": ctx.kind, "status": "complete", "steps": 0,
        "seconds": seconds, "machine_rank": scale.machine_rank, "note": note})
    emit_record(ctx.sink, ctx.name, StageFinished(
        kind=ctx.kind, status="complete", seconds=seconds, metrics={}, evaluation={},
        world_size=scale.world_size, machine_rank=scale.machine_rank, message=note))
    return "complete", "", 0


def _group_failed(ctx: StageContext, scale: scaleout.Scale, code: int | None,
                  launcher_said: str, result: tuple[str, str, int] | None, began: float, *,
                  cut_barrier: bool, finished_seen: bool) -> tuple[str, str, int]:
    """A rank failed or was killed: the error (the rank the launcher saw die first, and how to
    go on), the stage marked failed, and its stage_finished unless rank 0 sent one."""
    # Rank 0 may have reported its own side of it (a collective that lost its peer); the
    # engine says what happened to the group, and how to go on.
    failure = group_io.first_failure(launcher_said)
    which = (f"rank {failure.rank} failed first ({failure.cause})" if failure is not None
             else "rank 0 failed (above); its launcher was ended while it waited for the other "
             "machines' launchers" if cut_barrier else "a rank failed or was killed")
    message = (f"stage '{ctx.name}': the {scale.world_size}-process group ended with exit code "
               f"{code}: {which}"
               + ("" if result is not None else " before rank 0 finished the stage"))
    fix = (f"see engine.log for the rank and its error; if it was killed or crashed, "
           f"`graftline resume {ctx.run_id}` continues from the stage's last Trainer checkpoint")
    lost: FailedRank = ({"failed_rank": failure.rank, "failed_exitcode": failure.exitcode}
                        if failure is not None else {})
    ctx.sink.emit("error", ctx.name, message=message, fix=fix, world_size=scale.world_size,
                  exit_code=code, **lost)
    _mark_failed(ctx)
    if not finished_seen:
        emit_record(ctx.sink, ctx.name, StageFinished(
            kind=ctx.kind, status="failed", seconds=time.perf_counter() - began, metrics={},
            evaluation={}, world_size=scale.world_size, **lost))
    return "failed", message, 0


def _after_a_full_disk(ctx: StageContext, said: str, began: float,
                       paused: bool) -> tuple[str, str, int]:
    """Rank 0 met a full disk and ended the launch (a rank cannot wait in a save while its peers
    wait in a collective). Its `disk_full` warning, relayed, `paused` the run: wait here as a
    one-process stage waits in its save (the pause may be over already), then ("retry", …): the
    runner launches the group again from the last Trainer checkpoint. Without an engine that
    paused (or after a stop) the stage fails, with the resume fix."""
    control = ctx.control
    if control is not None and paused:
        control.wait_while_paused()  # the engine's disk guard resumes once the space is back
        if not control.stop.is_set():
            return "retry", "", 0  # the disk guard has said the space is back (an info)
    message = f"stage '{ctx.name}' ended on a full disk ({said})"
    ctx.sink.emit("error", ctx.name, message=message, fix="free space on the runs volume, then "
                  f"`graftline resume {ctx.run_id}` continues from the last Trainer checkpoint")
    _mark_failed(ctx)
    emit_record(ctx.sink, ctx.name, StageFinished(
        kind=ctx.kind, status="failed", seconds=time.perf_counter() - began, metrics={},
        evaluation={}))
    return "failed", message, 0


def _relay_leftover(ctx: StageContext, work: Path) -> None:
    """Events rank 0 wrote in the moments before the engine was killed (it relays every POLL_S):
    relayed now, before the stage's files are cleared for its next launch."""
    if work.is_symlink():
        return
    left = group_io.EventTail.leftover(work / group_io.EVENTS)
    if not left:
        return
    ctx.sink.emit("info", ctx.name, message=f"{len(left)} events rank 0 wrote before the engine "
                  "ended were not yet in the log; relayed now", recovered_events=len(left))
    for event in left:
        _relay(ctx, event)


def _relay(ctx: StageContext, event: dict[str, Any]) -> dict[str, Any]:
    """One of rank 0's events into the engine's sink, as rank 0 wrote it; returns its data."""
    data = event.get("data") or {}
    ctx.sink.emit(event["type"], event.get("stage"), **data)
    return data


def _result_failed(work: Path) -> bool:
    found = _read_result(work) if (work / group_io.RESULT).is_file() else None
    return found is not None and found[0] == "failed"


def _read_result(work: Path) -> tuple[str, str, int] | None:
    import json

    try:
        data = json.loads((work / group_io.RESULT).read_text())
    except (OSError, ValueError):
        return None
    return str(data["status"]), str(data.get("message", "")), int(data.get("steps", 0))


def _mark_failed(ctx: StageContext) -> None:
    try:
        found = mf.read(ctx.stage_dir)
    except (OSError, ValueError):
        return
    if found is not None and found.status != "complete":
        mf.write(ctx.stage_dir, found.model_copy(update={"status": "failed"}))

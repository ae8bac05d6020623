"""The background engine: `python -m graftline.engine.run.daemon RUN_DIR [--resume]`.

Started by `launch.spawn` in its own process session. It owns the run directory while it lives:
an exclusive lock (`engine.lock`) so two engines never drive one run, `state.json` with a
heartbeat, the control socket, the telemetry thread, and the event log the runner reports into.

Signals: SIGHUP is ignored (the terminal that launched us may close); SIGTERM and SIGINT ask for
a graceful stop (the runner saves a Trainer checkpoint and stops), the same as `graftline stop`.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import os
import shutil
import signal
import sys
import time
import traceback
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from graftline.engine.common.control import RunControl
from graftline.engine.common.event_types import EventType, RunFinished
from graftline.engine.common.heap import collect_less_often
from graftline.engine.common.layout import LOCK, RunLayout
from graftline.engine.common.sink import emit_record
from graftline.engine.common.units import human_bytes
from graftline.engine.run import launch, stack_imports
from graftline.engine.run import state as runstate
from graftline.engine.run.control import ControlServer
from graftline.engine.run.disk_pause import DiskPause, fix_for, say
from graftline.engine.run.events import EventWriter
from graftline.engine.run.state import RunState, StateKeeper
from graftline.engine.run.telemetry import TelemetryThread, forecast_bytes

if TYPE_CHECKING:
    from graftline.engine.pipeline.file import PipelineFile
    from graftline.engine.pipeline.plan import Plan

EXIT_BUSY = 3
EXIT_BAD_RUN = 2


class EngineSink:
    """The sink the runner reports into: the event log, plus what the state file and the disk
    guard need to know (current stage, global step, which stages are done)."""

    def __init__(self, writer: EventWriter, keeper: StateKeeper, control: RunControl,
                 run_dir: Path, plan: Any, disk: DiskPause | None = None) -> None:
        self.writer = writer
        self.disk = disk
        self.keeper = keeper
        self.control = control
        self.run_dir = run_dir
        self.plan = plan
        self.order = [step.name for step in plan.steps] if plan is not None else []
        self.done: set[str] = set()
        self.current: str | None = None
        self.saw_run_finished = False
        self.telemetry: TelemetryThread | None = None  # started once the log has run_started

    def emit(self, type: EventType, stage: str | None = None, **data: Any) -> object:
        if type == "warning" and data.get("disk_full") and self.disk is not None:
            # a checkpoint or a stage's output hit a full disk (common.disk_full): pause now,
            # the writer waits in wait_for_space until the watcher resumes the run
            self.disk.enter(str(data.get("what") or "a checkpoint"),
                            int(data.get("need_bytes") or 0),
                            OSError(str(data.get("error") or "disk full")), stage)
            data["fix"] = fix_for(self.run_dir)  # the exact command, for this run
        if type == "run_finished":
            # state first: whoever reads `run_finished` in the log finds the final state too
            self.keeper.update(status=str(data.get("status", "finished")),
                               message=str(data.get("message", "") or ""))
        event = self.writer.emit(type, stage, **data)
        if type == "run_started":
            steps = [s.get("max_steps") or 0 for s in data.get("stages") or []]
            self.keeper.note(total_steps=sum(steps) or None)
            if self.telemetry is not None and not self.telemetry.started:
                self.telemetry.start()
        elif type == "stage_started":
            self.current = stage
            self.keeper.update(stage=stage, stage_index=data.get("index"),
                               global_step=data.get("global_step_offset"))
            # A pause asked for between stages (or by the disk guard) holds here, before the
            # stage loads anything; inside a stage the trainer callback pauses at step ends.
            self.control.wait_while_paused()
        elif type == "metrics":
            # no file write per step: the heartbeat carries the step to state.json
            self.keeper.note(global_step=data.get("global_step"))
        elif type == "stage_finished":
            if data.get("status") in ("complete", "skipped") and stage:
                self.done.add(stage)
                self.check_disk(before=self._next_stage(stage))
        elif type == "run_finished":
            self.saw_run_finished = True
        return event

    def _next_stage(self, stage: str) -> str | None:
        try:
            index = self.order.index(stage)
        except ValueError:
            return None
        return self.order[index + 1] if index + 1 < len(self.order) else None

    def remaining(self) -> list[str]:
        return [name for name in self.order if name not in self.done]

    def forecast(self) -> int | None:
        if self.plan is None:
            return None
        return forecast_bytes(self.plan, self.remaining())

    def mark_done(self, stages: list[str]) -> None:
        self.done.update(stages)

    def check_disk(self, before: str | None) -> bool:
        """Pause (with a warning) when the remaining stages will not fit on the runs volume;
        a run that stops between stages is resumable, one that dies mid-save is not."""
        if before is None:
            return True
        need = self.forecast()
        free = shutil.disk_usage(self.run_dir).free
        if need is None or need <= free:
            return True
        self.control.paused.set()
        self.keeper.update(status="paused",
                           message=f"paused before '{before}': disk forecast exceeds free space")
        self.writer.emit(
            "warning", before,
            message=(f"paused before stage '{before}': the remaining stages will write about "
                     f"{human_bytes(need)} but only {human_bytes(free)} is free on {self.run_dir}"),
            fix=f"{fix_for(self.run_dir).replace('resumes by itself', 'waits')}; then "
                f"`graftline resume {self.run_dir.name}` continues where it paused",
            forecast_bytes=need, disk_free=free)
        return False


def _lock(run_dir: Path, wait: float = 0.0) -> int | None:
    """The run's exclusive lock, or None when another engine holds it (after `wait` seconds:
    a resume may start while the previous engine is still writing its last lines)."""
    fd = os.open(run_dir / LOCK, os.O_RDWR | os.O_CREAT, 0o600)
    deadline = time.monotonic() + wait
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            break
        except BlockingIOError:
            if time.monotonic() >= deadline:
                os.close(fd)
                return None
            time.sleep(0.2)
    os.ftruncate(fd, 0)
    os.write(fd, f"{os.getpid()}\n".encode())
    return fd


def _completed_stages(run_dir: Path, names: list[str]) -> list[str]:
    from graftline.engine.stages.context import completed_earlier

    layout = RunLayout(run_dir)
    return [name for name in names if completed_earlier(layout.stage(name)) is not None]


def _handler(control: RunControl, keeper: StateKeeper, writer: EventWriter,
             disk: DiskPause | None = None):
    def handle(command: str, request: dict[str, Any]) -> dict[str, Any]:
        if command == "stop":
            control.stop.set()
            control.paused.clear()  # a paused run must wake up to stop
            keeper.update(status="stopping", message="stop requested")
            writer.emit("info", keeper.state.stage, message="stop requested: saving, then stopping")
        elif command == "pause":
            control.paused.set()
            keeper.update(status="paused", message="paused by request")
            writer.emit("info", keeper.state.stage, message="paused")
        elif command == "resume":
            control.paused.clear()
            keeper.update(status="running", message="")
            writer.emit("info", keeper.state.stage, message="resumed")
        elif command == "save_now":
            control.save_now.set()
            writer.emit("info", keeper.state.stage, message="checkpoint requested")
        state = keeper.state
        # the engine's own state, from memory: the answer a reader needs when state.json on a
        # full disk has fallen behind (`client.read_state` asks when the heartbeat is stale)
        return {"status": state.status, "stage": state.stage, "global_step": state.global_step,
                "pid": state.pid, "message": state.message,
                "disk_full": disk.report() if disk is not None else None}
    return handle


def _pipeline_text(run_dir: Path, meta: dict[str, Any]) -> str | None:
    """The run's copy of its pipeline file; None (and the run failed, saying why) when it no
    longer matches the hash recorded at launch."""
    text = (run_dir / launch.PIPELINE_COPY).read_text(encoding="utf-8")
    if launch.sha256_text(text) == meta.get("sha256"):
        return text
    message = (f"{run_dir / launch.PIPELINE_COPY} no longer matches its hash; the run was "
               "started from a different file. Start a new run instead.")
    print(f"graftline: {message}", file=sys.stderr)
    prior = runstate.read(run_dir)
    if prior is not None:
        runstate.write(run_dir, replace(prior, status="failed", message=message))
    return None


def _first_state(run_dir: Path, meta: dict[str, Any], pipeline: str, stages: int,
                 resume: bool) -> RunState:
    """state.json as this engine starts: a resume carries on the previous engine's counts."""
    prior = runstate.read(run_dir)
    pid, pid_started = runstate.this_process()
    now = time.time()
    carried = prior if resume else None
    return RunState(
        run_id=meta["run_id"], pipeline=pipeline, status="running", pid=pid,
        pid_started=pid_started, started=(prior.started if prior and prior.started else now),
        heartbeat=now, stages=stages, resumes=(carried.resumes + 1 if carried else 0),
        stage=carried.stage if carried else None,
        stage_index=carried.stage_index if carried else None,
        global_step=carried.global_step if carried else None,
        total_steps=prior.total_steps if prior else None,
    )


def _forecast_plan(pf: PipelineFile) -> Plan | None:
    """The plan behind the disk forecast, or None: the forecast is advisory, training does not
    depend on it."""
    try:
        from graftline.engine.pipeline.validate import plan_of

        return plan_of(pf)
    except Exception as exc:
        print(f"graftline: no disk forecast: {exc}", flush=True)
        return None


def _drive(pf: PipelineFile, run_dir: Path, sink: EngineSink, control: RunControl,
           keeper: StateKeeper, resume: bool) -> tuple[str, str]:
    """The rehearsal (when the run asks for one) and the stages: (status, message)."""
    # decided before the training stack's first import, which follows
    if stack_imports.keep_out_what_the_run_does_not_load(pf):
        say(f"graftline: {stack_imports.KEPT_OUT}")
    from graftline.engine.run import rehearsal_phase
    from graftline.engine.run.runner import run_pipeline

    def rehearsal() -> tuple[str, str]:
        keeper.update(stage=rehearsal_phase.NAME, message="rehearsing on a tiny twin")
        outcome = rehearsal_phase.rehearse_first(run_dir, sink, control)
        if outcome[0] == rehearsal_phase.PASSED:
            keeper.update(stage=None, message="")
        return outcome

    first_phase = rehearsal if rehearsal_phase.wanted(run_dir, resume=resume) else None
    result = run_pipeline(pf, run_dir, sink, control, resume=resume, rehearsal=first_phase)
    return str(getattr(result, "status", "finished")), str(getattr(result, "message", "") or "")


def run(run_dir: Path, *, resume: bool = False) -> int:
    from graftline.engine.pipeline import file as pipeline_file

    run_dir = Path(run_dir).resolve()
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    lock = _lock(run_dir, wait=30.0 if resume else 0.0)
    if lock is None:
        print(f"graftline: another engine is already running {run_dir}", file=sys.stderr)
        return EXIT_BUSY
    meta = launch.read_meta(run_dir)
    text = _pipeline_text(run_dir, meta)
    if text is None:
        return EXIT_BAD_RUN
    # Parsed under the original file's path: data paths stay relative to where the user wrote it.
    pf = pipeline_file.parse(text, meta["source"])
    names = [stage.name for stage in pf.pipeline.stage]
    state = _first_state(run_dir, meta, pf.pipeline.pipeline.name, len(names), resume)
    pid = state.pid
    keeper = StateKeeper(run_dir, state)
    keeper.update()
    keeper.start_heartbeat()
    control = RunControl()
    disk = DiskPause(run_dir, keeper, control)
    # a failed log write (full disk) pauses the run instead of killing the engine
    writer = EventWriter(run_dir, on_error=disk.on_write_error)
    disk.writer = writer

    sink = EngineSink(writer, keeper, control, run_dir, _forecast_plan(pf), disk)
    if resume:
        sink.mark_done(_completed_stages(run_dir, names))

    def on_signal(signum: int, _frame: object) -> None:
        control.stop.set()
        control.paused.clear()
        keeper.update(status="stopping", message=f"{signal.Signals(signum).name}: stopping")

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    server = ControlServer(run_dir, _handler(control, keeper, writer, disk)).start()
    telemetry = TelemetryThread(sink, run_dir, sink.forecast, stage=lambda: sink.current)
    sink.telemetry = telemetry
    print(f"graftline: engine pid {pid} {'resuming' if resume else 'starting'} {run_dir}",
          flush=True)

    status, message = "failed", ""
    try:
        first = next((n for n in names if n not in sink.done), None)
        sink.check_disk(before=first)
        control.wait_while_paused()
        status, message = _drive(pf, run_dir, sink, control, keeper, resume)
    except BaseException as exc:
        status, message = "failed", f"{type(exc).__name__}: {exc}"
        with contextlib.suppress(OSError, ValueError):
            traceback.print_exc()
        writer.emit("error", sink.current, message=message,
                    fix=f"see {run_dir / launch.ENGINE_LOG}; fix the cause, then "
                        f"`graftline resume {run_dir.name}`")
    finally:
        telemetry.close()
        server.close()
        keeper.stop_heartbeat()
    if status not in ("finished", "failed", "stopped"):
        status = "stopped" if control.stop.is_set() else "finished"
    if not sink.saw_run_finished:
        emit_record(writer, None, RunFinished(status=status, message=message))
    disk.drain()  # the last events and state.json on disk before we exit, space permitting
    keeper.update(status=status, message=message)
    writer.close()
    os.close(lock)
    if writer.pending or keeper.write_error is not None:
        say(f"graftline: the disk is still full: {writer.pending} events and the final state "
            "were not written")
    say(f"graftline: engine {status}{': ' + message if message else ''}")
    return 0 if status in ("finished", "stopped") else 1


def main(argv: list[str] | None = None) -> int:
    collect_less_often()
    parser = argparse.ArgumentParser(prog="python -m graftline.engine.run.daemon",
                                     description="Run a prepared graftline run directory.")
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--resume", action="store_true",
                        help="skip complete stages; resume the interrupted one from its checkpoint")
    args = parser.parse_args(argv)
    return run(args.run_dir, resume=args.resume)


if __name__ == "__main__":
    # the run is over and on disk (state, events, lock released): skip the interpreter's
    # teardown of the training stack (common/quick_exit.py), which a resume or a console
    # reaping this process would otherwise wait for
    from graftline.engine.common.quick_exit import exit_now

    exit_now(main())

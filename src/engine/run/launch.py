"""Creating a run directory and starting (or resuming) its engine as a background process.

The engine runs as `python -m graftline.engine.run.daemon RUN_DIR [--resume]` in a new process
session (`start_new_session=True`): no controlling terminal, stdin from /dev/null, stdout and
stderr appended to `<run_dir>/engine.log`. Closing the terminal, SIGHUP to the launching
session, or quitting the console does not reach it.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time
from dataclasses import replace
from datetime import datetime
from pathlib import Path

from graftline.engine.common.errors import GraftlineError
from graftline.engine.common.layout import (
    ENGINE_LOG,
    PIPELINE_COPY,
    PIPELINE_HASH,
    RUN_META,
    STATE,
)
from graftline.engine.common.liveness import lock_held, process_alive
from graftline.engine.common.private import (
    PRIVATE_UMASK,
    USER_UMASK_ENV,
    current_umask,
    make_private,
)
from graftline.engine.pipeline.file import PipelineFile
from graftline.engine.pipeline.problems import PipelineError, Problem
from graftline.engine.run import index as run_index
from graftline.engine.run import state as runstate


class LaunchError(GraftlineError, RuntimeError):
    """The run could not be started; `problems` holds validation problems when there were any."""

    def __init__(self, message: str, problems: list[Problem] | None = None,
                 fix: str = "") -> None:
        super().__init__(message, fix)
        self.problems = problems or []


def sha256_text(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def new_run_id(name: str, runs_dir: Path, now: datetime | None = None) -> str:
    stamp = (now or datetime.now()).strftime("%Y%m%d-%H%M%S")
    run_id = f"{name}-{stamp}"
    suffix = 2
    while (runs_dir / run_id).exists():
        run_id = f"{name}-{stamp}-{suffix}"
        suffix += 1
    return run_id


def create_run(pf: PipelineFile, runs_dir: Path, *, rehearse: bool = False) -> Path:
    """A fresh run directory holding the pipeline's copy, its hash, and a `starting` state.
    `rehearse`: the engine rehearses every stage on a tiny twin before stage 1 (run.json says
    so; run/rehearsal_phase.py)."""
    runs_dir = Path(runs_dir).expanduser().resolve()
    runs_dir.mkdir(parents=True, exist_ok=True)
    name = pf.pipeline.pipeline.name
    while True:
        run_id = new_run_id(name, runs_dir)
        try:
            (runs_dir / run_id).mkdir()
            break
        except FileExistsError:  # a second launch in the same second took the name
            continue
    run_dir = runs_dir / run_id
    private = pf.pipeline.pipeline.private
    if private:  # mkdir's mode is cut by the umask, never widened: chmod says it exactly
        make_private(run_dir)
    digest = sha256_text(pf.text)
    (run_dir / PIPELINE_COPY).write_text(pf.text, encoding="utf-8")
    (run_dir / PIPELINE_HASH).write_text(f"{digest}  {pf.path.name}\n", encoding="utf-8")
    meta = {"run_id": run_id, "source": str(Path(pf.path).resolve()), "sha256": digest,
            "cwd": os.getcwd(), "created": time.time(), "rehearse": rehearse}
    (run_dir / RUN_META).write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
    runstate.write(run_dir, runstate.RunState(run_id, name, status="starting",
                                              heartbeat=time.time(),
                                              stages=len(pf.pipeline.stage)))
    if private:  # written by this (user-umask) process: tighten them as the engine would
        for child in (PIPELINE_COPY, PIPELINE_HASH, RUN_META, STATE):
            if (run_dir / child).is_file():
                make_private(run_dir / child)
    # remembered per user, so `graftline attach <id>` finds it from any directory
    run_index.register(run_dir)
    return run_dir


def read_meta(run_dir: Path) -> dict:
    try:
        return json.loads((Path(run_dir) / RUN_META).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise LaunchError(
            f"{run_dir} is not a graftline run directory ({RUN_META}: {exc})") from None


def spawn(run_dir: Path, *, resume: bool = False) -> int:
    """Start the engine for `run_dir` in its own session; its pid. Returns at once."""
    run_dir = Path(run_dir).resolve()
    meta = read_meta(run_dir)
    cwd = meta.get("cwd")
    cwd = cwd if cwd and Path(cwd).is_dir() else str(run_dir)
    command = [sys.executable, "-m", "graftline.engine.run.daemon", str(run_dir)]
    if resume:
        command.append("--resume")
    # a private run (0700 directory) gets an engine under umask 077; exports still follow the
    # user's umask, handed over in the environment
    mine = current_umask()
    private = (run_dir.stat().st_mode & 0o077) == 0
    env = dict(os.environ, PYTHONUNBUFFERED="1", **{USER_UMASK_ENV: f"{mine:03o}"})
    flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT
    with os.fdopen(os.open(run_dir / ENGINE_LOG, flags, 0o600 if private else 0o666),
                   "ab") as log:
        proc = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True, close_fds=True,
                                cwd=cwd, env=env, umask=PRIVATE_UMASK if private else mine)
    return proc.pid


def start_run(pipeline_path: Path, runs_dir: Path | None = None, *,
              check: bool = True, rehearse: bool = False) -> Path:
    """Validate the pipeline file, create its run directory, start the engine; the run directory.
    Returns as soon as the engine is spawned: with `rehearse` the engine itself rehearses every
    stage on a tiny twin as the run's first phase, so nothing slow happens before the return.

    Raises LaunchError (with the problems) when validation finds errors: nothing is created then.
    """
    from graftline.engine.pipeline import file as pipeline_file

    try:
        pf = pipeline_file.load(pipeline_path)
    except PipelineError as exc:
        raise LaunchError(f"{pipeline_path} has problems", exc.problems) from None
    if check:
        from graftline.engine.pipeline.validate import validate

        problems = validate(pf, runs_dir)  # --runs-dir's volume, not the file's
        errors = [p for p in problems if p.severity == "error"]
        if errors:
            raise LaunchError(f"{pipeline_path} has problems", errors)
    if runs_dir is None:
        runs_dir = pf.resolve(pf.pipeline.pipeline.runs_dir)
    run_dir = create_run(pf, runs_dir, rehearse=rehearse)
    spawn(run_dir)
    return run_dir


# An engine writes its final status, then its last events, then exits and drops the lock; a
# killed one's lock goes with the last of its process tree. A resume asked for in that moment
# (right after `stop`, or a kill) waits for the lock instead of calling the ending engine alive.
ENDING = ("stopped", "failed", "finished")
EXIT_WAIT_S = 15.0


def _wait_for_exit(run_dir: Path) -> None:
    deadline = time.monotonic() + EXIT_WAIT_S
    while lock_held(run_dir) and time.monotonic() < deadline:
        time.sleep(0.1)


def resume_run(run_dir: Path) -> int:
    """Start a new engine on a run that is not running (crashed, stopped, failed); its pid."""
    run_dir = Path(run_dir).resolve()
    read_meta(run_dir)
    state = runstate.read(run_dir)
    if state is not None:
        status = runstate.effective_status(state)
        engine_gone = not process_alive(state.pid, state.pid_started)
        if (state.status in ENDING or engine_gone) and lock_held(run_dir):
            _wait_for_exit(run_dir)
        if lock_held(run_dir) and status not in runstate.LIVE:
            # alive whatever its heartbeat says (a full disk takes no heartbeat)
            raise LaunchError(f"run {run_dir.name} is alive: its engine (pid {state.pid}) holds "
                              f"the run's lock, but its state.json is behind",
                              fix=f"`graftline ls` asks the engine what it is doing; `graftline "
                                  f"stop {run_dir.name}` stops it")
        if status in runstate.LIVE:
            raise LaunchError(f"run {run_dir.name} is {status} (pid {state.pid}); "
                              f"attach to it, or stop it first with `graftline stop`")
        if status == "finished":
            raise LaunchError(f"run {run_dir.name} has already finished; nothing to resume")
    if state is not None:
        # Written before the engine starts (no race with its own first write): readers see a run
        # that is starting, not the crash it is recovering from.
        try:
            runstate.write(run_dir, replace(state, status="starting", pid=None,
                                            pid_started=None, heartbeat=time.time(),
                                            message="resuming"))
        except OSError as exc:
            raise LaunchError(f"cannot resume run {run_dir.name}: writing its state failed "
                              f"({exc.strerror or exc})",
                              fix=f"free space on {run_dir.parent} (a full disk is the usual "
                                  f"cause), then `graftline resume {run_dir.name}` again") \
                from None
    return spawn(run_dir, resume=True)

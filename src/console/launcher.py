"""Start a pipeline in the background engine and return its run directory.

The same call `graftline run FILE --detach` makes (`graftline.engine.run.launch.start_run`):
validate, create the run directory, spawn the engine in its own process session. A launch from
the console is exactly a launch from the shell, and quitting the console never touches it.
"""

from __future__ import annotations

from pathlib import Path


def launch_background(pipeline: Path, *, rehearse: bool = False) -> Path:
    """The new run directory; a clear error (with every problem) when it cannot start. With
    `rehearse`, the engine rehearses the pipeline on a tiny twin as the run's first phase."""
    from graftline.console.reaper import engine_children, reap_later
    from graftline.engine.run import LaunchError, start_run

    before = engine_children()
    try:
        run_dir = start_run(Path(pipeline), rehearse=rehearse)
    except LaunchError as exc:
        # the first problems under the message, the fix kept: the launch screen's failure
        # handler (`WorkerFailures`) prints both
        details = "\n".join(str(p) for p in exc.problems[:5])
        raise LaunchError(f"{exc}\n{details}".strip(), exc.problems, exc.fix) from None
    for pid in engine_children() - before:  # the engine is our child until we exit: reap it
        reap_later(pid)
    return run_dir

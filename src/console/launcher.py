"""Start a pipeline in the background engine and return its run directory.

The same call `graftline run FILE --detach` makes (`graftline.engine.run.launch.start_run`):
validate, create the run directory, spawn the engine in its own process session. A launch from
the console is exactly a launch from the shell, and quitting the console never touches it.
"""

from __future__ import annotations

from pathlib import Path


def launch_background(pipeline: Path) -> Path:
    """The new run directory; a clear error (with every problem) when it cannot start."""
    from graftline.engine.run import LaunchError, start_run

    try:
        return start_run(Path(pipeline))
    except LaunchError as exc:
        details = "\n".join(str(p) for p in exc.problems[:5])
        raise RuntimeError(f"{exc}\n{details}".strip()) from None

"""Start a pipeline in the background engine and return its run directory.

The engine's own process session is started by `graftline run FILE --detach` (the background
engine's command); the console calls that command rather than any engine internals, so a launch
from the console is exactly a launch from the shell.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

RUN_DIR_LINE = re.compile(r"^run directory:\s*(?P<path>.+)$", re.IGNORECASE | re.MULTILINE)


def graftline_command() -> list[str]:
    return [sys.executable, "-c", "from graftline.console.cli import main; main()"]


def launch_background(pipeline: Path, *, timeout: float = 120.0) -> Path:
    """Run `graftline run FILE --detach`; the new run directory, or a clear error."""
    proc = subprocess.run([*graftline_command(), "run", str(pipeline), "--detach"],
                          capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "GRAFTLINE_NO_ATTACH": "1"}, check=False)
    out = proc.stdout + proc.stderr
    if proc.returncode != 0:
        raise RuntimeError(out.strip() or f"graftline run exited with {proc.returncode}")
    return parse_run_dir(out, pipeline)


def parse_run_dir(output: str, pipeline: Path) -> Path:
    match = RUN_DIR_LINE.search(output)
    if match:
        return Path(match.group("path").strip())
    from graftline.engine import client
    from graftline.engine.validate import runs_dir, validate_file

    pf, _problems = validate_file(pipeline)
    if pf is not None:
        latest = client.latest_run(runs_dir(pf))
        if latest is not None:
            return latest
    raise RuntimeError(f"started, but could not tell which run directory: {output.strip()}")

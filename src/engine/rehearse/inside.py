"""A run's rehearsal as its first phase: `python -m graftline.engine.rehearse.inside RUN_DIR PPID`.

`graftline run` starts the engine at once and the engine rehearses (run/rehearsal_phase.py), so
a launch over SSH is detached in the first second. The engine starts this module in a child
process: the twin's imports, memory and random state never touch the real run, and a stop ends
it at once. It rehearses the run's own copy of the pipeline (parsed under the original file's
path, as the engine parses it) with the same `rehearse` as `graftline rehearse FILE`, and writes
JSON lines on its stdout: progress (`twin`, `stage_started`, `stage_finished`, `cleanup`), then
one `report`. Everything the libraries print goes to stderr (the engine's `engine.log`).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sys
from dataclasses import asdict
from pathlib import Path
from typing import IO, Any

from graftline.engine.common.heap import collect_less_often
from graftline.engine.common.layout import PIPELINE_COPY, RUN_META
from graftline.engine.common.protocol_stdout import protocol_stdout

REPORT = "report"
PROGRESS = ("twin", "stage_started", "stage_finished", "cleanup")
SCRATCH = ".rehearsals"  # beside the run, as `graftline rehearse` keeps it under the runs dir


def _die_with_parent(parent: int) -> None:
    """An engine killed with SIGKILL leaves no rehearsal behind (Linux: PR_SET_PDEATHSIG)."""
    with contextlib.suppress(OSError, AttributeError):
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, int(signal.SIGTERM), 0, 0, 0)  # PR_SET_PDEATHSIG
    if parent and os.getppid() != parent:  # it died before the prctl
        sys.exit(1)


def _scalars(data: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in data.items() if isinstance(v, str | int | float | bool | type(None))}


def report_dict(report: Any) -> dict[str, Any]:
    """The report as plain data: `ok`, stages (status, error, fix, checks), problems, notes."""
    data = asdict(report)
    data["ok"] = report.ok
    data["failures"] = [s.name for s in report.failures]
    data["problems"] = [{"where": p.where, "message": p.message, "fix": p.fix or ""}
                        for p in report.problems]
    return data


def rehearse_run(run_dir: Path, out: IO[str]) -> bool:
    from graftline.engine.pipeline.file import parse
    from graftline.engine.run.stack_imports import keep_out_what_the_run_does_not_load

    run_dir = Path(run_dir).resolve()
    meta = json.loads((run_dir / RUN_META).read_text(encoding="utf-8"))
    pf = parse((run_dir / PIPELINE_COPY).read_text(encoding="utf-8"), meta["source"])
    # the twins are full precision, built from the base's config without its quantization
    keep_out_what_the_run_does_not_load(pf, bases=())

    from graftline.engine.rehearse.rehearsal import rehearse

    def say(kind: str, stage: str | None, data: dict[str, Any]) -> None:
        if kind in PROGRESS:
            out.write(json.dumps({"event": kind, "stage": stage, **_scalars(data)}) + "\n")
            out.flush()

    report = rehearse(pf, scratch_parent=run_dir.parent / SCRATCH, on_event=say)
    out.write(json.dumps({"event": REPORT, "report": report_dict(report)}, default=str) + "\n")
    out.flush()
    return report.ok


def main(argv: list[str] | None = None) -> int:
    collect_less_often()
    args = sys.argv[1:] if argv is None else argv
    if not args:
        print("usage: python -m graftline.engine.rehearse.inside RUN_DIR [ENGINE_PID]",
              file=sys.stderr)
        return 2
    _die_with_parent(int(args[1]) if len(args) > 1 else 0)
    return 0 if rehearse_run(Path(args[0]), protocol_stdout()) else 1


if __name__ == "__main__":
    # the report is written and flushed; the engine waits for this exit before stage 1, so
    # skip the teardown of the training stack (common/quick_exit.py)
    from graftline.engine.common.quick_exit import exit_now

    exit_now(main())

"""An export in its own process, reporting as JSON lines: what a console runs so that peft,
torch and gigabytes of weights never enter the UI's process.

    python -m graftline.engine.export.worker plan CHECKPOINT OUT [--dtype D] [--format F]...
    python -m graftline.engine.export.worker run  CHECKPOINT OUT [--dtype D] [--format F]...

Every line on stdout is one JSON object with an `event`:
- `plan`: `checkpoint`, `kind`, `base`, `out` (absolute), `chain` (names, base first), `lines`
  (the plan's own description), `total_bytes`
- `refused`: `message`, `fix` — the plan was refused; nothing was written (exit status 2)
- `progress`: `phase` (merge, files, verify, formats, done), `fraction`, `done`, `total`,
  `shard`, `message` — at most a few a second, and at every change of phase
- `done`: `ok`, `out`, `files`, `bytes`, `seconds`, `verification`, `problems` (exit status 0
  when ok, else 1)
- `failed`: `message`, `fix` — the export raised (exit status 1)

This module imports nothing heavy at import time: the console may call `worker_command()`.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any, TextIO

MODULE = "graftline.engine.export.worker"
PROGRESS_EVERY = 0.2  # seconds between progress lines within one phase


def worker_command(action: str, checkpoint: Path, out: Path, *, dtype: str = "bfloat16",
            formats: tuple[str, ...] | list[str] = ("safetensors",),
            gguf_type: str | None = None, python: str | None = None) -> list[str]:
    """The argv that runs `action` (plan | run) in a fresh interpreter."""
    if action not in ("plan", "run"):
        raise ValueError(f"action must be plan or run, not {action!r}")
    argv = [python or sys.executable, "-m", MODULE, action, str(checkpoint), str(out),
            "--dtype", dtype]
    for fmt in formats:
        if fmt != "safetensors":
            argv += ["--format", fmt]
    if gguf_type is not None:
        argv += ["--gguf-type", gguf_type]
    return argv


def parse_worker_line(line: str) -> dict[str, Any] | None:
    """One stdout line as an event, or None for anything else (a library's stray print)."""
    line = line.strip()
    if not line.startswith("{"):
        return None
    try:
        event = json.loads(line)
    except json.JSONDecodeError:
        return None
    return event if isinstance(event, dict) and "event" in event else None


def _emit(stream: TextIO, event: str, **data: Any) -> None:
    stream.write(json.dumps({"event": event, **data}, default=str) + "\n")
    stream.flush()


def _plan_event(plan: Any) -> dict[str, Any]:
    chain = [node.name or Path(node.path).name for node in plan.lineage]
    return {"checkpoint": str(plan.checkpoint), "kind": plan.kind, "base": str(plan.base),
            "out": str(plan.out), "chain": chain, "lines": plan.describe(),
            "total_bytes": plan.total_bytes}


def main(argv: list[str] | None = None, stream: TextIO | None = None) -> int:
    parser = argparse.ArgumentParser(prog=MODULE, description=__doc__.splitlines()[0])
    parser.add_argument("action", choices=("plan", "run"))
    parser.add_argument("checkpoint", type=Path)
    parser.add_argument("out", type=Path)
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--format", action="append", default=[], dest="formats")
    parser.add_argument("--gguf-type", default=None, dest="gguf_type")
    args = parser.parse_args(argv)
    out_stream = stream or sys.stdout
    if stream is None:
        # libraries print to stdout: keep the protocol's stream clean, send their words away
        sys.stdout = sys.stderr

    from graftline.engine.common.errors import GraftlineError
    from graftline.engine.export.writer import ExportProgress, plan_export, run_export

    try:
        plan = plan_export(args.checkpoint, args.out, dtype=args.dtype,
                           formats=("safetensors", *args.formats), gguf_type=args.gguf_type)
    except GraftlineError as exc:
        _emit(out_stream, "refused", message=exc.message, fix=exc.fix)
        return 2
    _emit(out_stream, "plan", **_plan_event(plan))
    if args.action == "plan":
        return 0

    last: dict[str, Any] = {"phase": "", "at": 0.0}

    def progress(update: ExportProgress) -> None:
        now = time.monotonic()
        if update.phase == last["phase"] and now - last["at"] < PROGRESS_EVERY:
            return
        last["phase"], last["at"] = update.phase, now
        _emit(out_stream, "progress", phase=update.phase, fraction=round(update.fraction, 4),
              done=update.done_bytes, total=update.total_bytes, shard=update.shard,
              message=update.message)

    try:
        result = run_export(plan, progress)
    except GraftlineError as exc:
        _emit(out_stream, "failed", message=exc.message, fix=exc.fix)
        return 1
    except Exception as exc:  # a library's error: say it whole, the traceback goes to stderr
        import traceback

        traceback.print_exc()
        _emit(out_stream, "failed", message=f"{type(exc).__name__}: {exc}", fix="")
        return 1
    _emit(out_stream, "done", ok=result.ok, out=str(result.out), files=list(result.files),
          bytes=result.bytes, seconds=round(result.seconds, 3),
          verification=result.verification, problems=list(result.problems))
    return 0 if result.ok else 1


if __name__ == "__main__":
    raise SystemExit(main())

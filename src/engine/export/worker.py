"""An export in its own process, reporting as JSON lines: what a console runs so that peft,
torch and gigabytes of weights never enter the UI's process.

    python -m graftline.engine.export.worker plan CHECKPOINT OUT [--dtype D] [--format F]...
    python -m graftline.engine.export.worker run  CHECKPOINT OUT [--dtype D] [--format F]...
    python -m graftline.engine.export.worker serve

`plan` and `run` do one thing and exit. `serve` is the console's: one process per export
dialog, which pays for torch and transformers once and then answers every request the dialog
sends. It reads one JSON request per line on stdin,

    {"id": 7, "action": "plan" | "run", "checkpoint": PATH, "out": PATH,
     "dtype": "bfloat16", "formats": ["safetensors", "gguf"], "gguf_type": "q8_0" | null}

(`id` any JSON value, echoed in every answer so a client can drop a stale plan; `dtype`,
`formats` and `gguf_type` optional, as on the command line), answers each with the events below,
each carrying the request's `id`, and takes the requests in order, one at a time, until stdin
closes. A request it cannot read (not JSON, an unknown or missing field, a wrong type) is
answered with one `refused` event that names the `field` and the fix; an error while planning
or exporting with a `failed` event; neither ends the process. A client that goes away does not
abort an export under way: the export finishes, then the worker reads end-of-file and exits.

Every line on stdout is one JSON object with an `event`:
- `plan`: `checkpoint`, `kind`, `base`, `out` (absolute), `chain` (names, base first), `lines`
  (the plan's own description), `total_bytes` — the one answer to a `plan`, and a `run`'s
  first line
- `refused`: `message`, `fix` (and in `serve`, `field`: the request's field at fault, or null)
  — the plan was refused; nothing was written (`plan`/`run`: exit status 2)
- `progress`: `phase` (merge, files, verify, formats, done), `fraction`, `done`, `total`,
  `shard`, `message` — at most a few a second, and at every change of phase
- `done`: `ok`, `out`, `files`, `bytes`, `seconds`, `verification`, `problems` (exit status 0
  when ok, else 1) — a `run`'s last line
- `failed`: `message`, `fix` — the planner or the export raised (exit status 1)

A `plan` request ends with `plan`, `refused` or `failed`; a `run` with `done`, `refused` or
`failed`. Whatever libraries print, in Python or in C, goes to stderr: stdout carries the
protocol alone.

This module imports nothing heavy at import time: the console calls `serve_command()`,
`request_line()` and `parse_worker_line()`.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from graftline.engine.common.errors import GraftlineError
from graftline.engine.common.heap import collect_less_often
from graftline.engine.common.optional_imports import keep_out_bitsandbytes
from graftline.engine.common.protocol_stdout import protocol_stdout

__all__ = ["MODULE", "WorkerRequest", "main", "parse_worker_line", "read_request",
           "request_line", "serve", "serve_command", "worker_command"]

MODULE = "graftline.engine.export.worker"
PROGRESS_EVERY = 0.2  # seconds between progress lines within one phase
ACTIONS = ("plan", "run")
REQUEST_FIELDS = ("id", "action", "checkpoint", "out", "dtype", "formats", "gguf_type")
_EXAMPLE = ('{"id": 1, "action": "plan", "checkpoint": "runs/<run>/stages/<stage>", '
            '"out": "exports/<name>"}')

Emit = Callable[..., None]  # emit(event, **fields): one protocol line


def worker_command(action: str, checkpoint: Path, out: Path, *, dtype: str = "bfloat16",
            formats: tuple[str, ...] | list[str] = ("safetensors",),
            gguf_type: str | None = None, python: str | None = None) -> list[str]:
    """The argv that runs `action` (plan | run) in a fresh interpreter."""
    if action not in ACTIONS:
        raise ValueError(f"action must be plan or run, not {action!r}")
    argv = [python or sys.executable, "-m", MODULE, action, str(checkpoint), str(out),
            "--dtype", dtype]
    for fmt in formats:
        if fmt != "safetensors":
            argv += ["--format", fmt]
    if gguf_type is not None:
        argv += ["--gguf-type", gguf_type]
    return argv


def serve_command(python: str | None = None) -> list[str]:
    """The argv of a `serve` worker: requests on its stdin, answers on its stdout."""
    return [python or sys.executable, "-m", MODULE, "serve"]


def request_line(action: str, checkpoint: Path, out: Path, *, request_id: Any = None,
                 dtype: str = "bfloat16",
                 formats: tuple[str, ...] | list[str] = ("safetensors",),
                 gguf_type: str | None = None) -> str:
    """One request for a `serve` worker, newline included."""
    return json.dumps({"id": request_id, "action": action, "checkpoint": str(checkpoint),
                       "out": str(out), "dtype": dtype, "formats": list(formats),
                       "gguf_type": gguf_type}) + "\n"


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


@dataclass(frozen=True)
class WorkerRequest:
    """One plan or run, from the command line or a `serve` request line."""

    action: str
    checkpoint: Path
    out: Path
    dtype: str = "bfloat16"
    formats: tuple[str, ...] = ("safetensors",)
    gguf_type: str | None = None
    id: Any = None


class RequestRefused(GraftlineError):
    """A `serve` request line that cannot be read: the field at fault (None: the line itself),
    what is wrong, and the fix. Answered as a `refused` event, never raised out of `serve`."""

    def __init__(self, field: str | None, message: str, fix: str, request_id: Any = None
                 ) -> None:
        super().__init__(message, fix)
        self.field, self.request_id = field, request_id


def read_request(line: str) -> WorkerRequest:
    """A `serve` request line as a `WorkerRequest`; `RequestRefused` names what is wrong. Pure:
    the values themselves (does the checkpoint exist, is the dtype one the export writes) are
    the planner's to judge, with its own refusals."""
    try:
        data = json.loads(line)
    except json.JSONDecodeError as exc:
        raise RequestRefused(None, f"the request is not JSON ({exc.msg} at column "
                             f"{exc.colno}): {line.strip()[:80]!r}",
                             f"send one JSON object per line, e.g. {_EXAMPLE}") from None
    if not isinstance(data, dict):
        raise RequestRefused(None, f"the request is a JSON {type(data).__name__}, not an object",
                             f"send one JSON object per line, e.g. {_EXAMPLE}")
    request_id = data.get("id")
    unknown = [key for key in data if key not in REQUEST_FIELDS]
    if unknown:
        raise RequestRefused(unknown[0], f"unknown field {unknown[0]!r} in the request",
                             f"the fields are {', '.join(REQUEST_FIELDS)}", request_id)

    def text(field: str, default: str | None = None, *, nullable: bool = False) -> str | None:
        value = data.get(field, default)
        if value is None and (nullable or default is not None):
            return default
        if value is None:
            raise RequestRefused(field, f"the request has no {field!r}",
                                 f"add \"{field}\", e.g. {_EXAMPLE}", request_id)
        if not isinstance(value, str) or not value.strip():
            raise RequestRefused(field, f"field {field!r} must be a non-empty string, not "
                                 f"{json.dumps(value)}", f"give {field!r} as a string",
                                 request_id)
        return value

    action = text("action")
    if action not in ACTIONS:
        raise RequestRefused("action", f"field 'action' must be 'plan' or 'run', not "
                             f"{action!r}", "send \"action\": \"plan\" to see what an export "
                             "will do, \"run\" to export", request_id)
    formats = data.get("formats", ["safetensors"])
    if not isinstance(formats, list) or not all(isinstance(f, str) for f in formats):
        raise RequestRefused("formats", f"field 'formats' must be a list of format names, not "
                             f"{json.dumps(formats)}", "send e.g. \"formats\": "
                             "[\"safetensors\", \"gguf\"]", request_id)
    return WorkerRequest(action=str(action), checkpoint=Path(str(text("checkpoint"))),
                         out=Path(str(text("out"))), dtype=str(text("dtype", "bfloat16")),
                         formats=tuple(formats) or ("safetensors",),
                         gguf_type=text("gguf_type", nullable=True), id=request_id)


def _plan_event(plan: Any) -> dict[str, Any]:
    chain = [node.name or Path(node.path).name for node in plan.lineage]
    return {"checkpoint": str(plan.checkpoint), "kind": plan.kind, "base": str(plan.base),
            "out": str(plan.out), "chain": chain, "lines": plan.describe(),
            "total_bytes": plan.total_bytes}


def _failed(emit: Emit, exc: Exception) -> None:
    """A library's error, said whole; its traceback goes to stderr."""
    import traceback

    traceback.print_exc()
    emit("failed", message=f"{type(exc).__name__}: {exc}", fix="")


def handle(request: WorkerRequest, emit: Emit) -> int:
    """Plan (and for `run`, export) one request, told through `emit`; the exit status a
    one-shot worker ends with (0 ok, 1 failed, 2 refused)."""
    from graftline.engine.export.writer import ExportProgress, plan_export, run_export

    try:
        plan = plan_export(request.checkpoint, request.out, dtype=request.dtype,
                           formats=("safetensors", *request.formats),
                           gguf_type=request.gguf_type)
    except GraftlineError as exc:
        emit("refused", message=exc.message, fix=exc.fix)
        return 2
    except Exception as exc:  # the planner's bug: told, and a serving worker lives on
        _failed(emit, exc)
        return 1
    emit("plan", **_plan_event(plan))
    if request.action == "plan":
        return 0

    last: dict[str, Any] = {"phase": "", "at": 0.0}

    def progress(update: ExportProgress) -> None:
        now = time.monotonic()
        if update.phase == last["phase"] and now - last["at"] < PROGRESS_EVERY:
            return
        last["phase"], last["at"] = update.phase, now
        emit("progress", phase=update.phase, fraction=round(update.fraction, 4),
             done=update.done_bytes, total=update.total_bytes, shard=update.shard,
             message=update.message)

    try:
        result = run_export(plan, progress)
    except GraftlineError as exc:
        emit("failed", message=exc.message, fix=exc.fix)
        return 1
    except Exception as exc:
        _failed(emit, exc)
        return 1
    emit("done", ok=result.ok, out=str(result.out), files=list(result.files),
         bytes=result.bytes, seconds=round(result.seconds, 3),
         verification=result.verification, problems=list(result.problems))
    return 0 if result.ok else 1


def _emitter(stream: TextIO, **always: Any) -> Emit:
    def emit(event: str, **data: Any) -> None:
        stream.write(json.dumps({"event": event, **always, **data}, default=str) + "\n")
        stream.flush()
    return emit


def serve(requests: TextIO, stream: TextIO) -> int:
    """Answer `requests` (one JSON object a line) on `stream` until end-of-file; see the module
    docstring. Returns 0: a bad request is answered, never fatal."""
    gone = False

    def emit_to(request_id: Any) -> Emit:
        emit = _emitter(stream, id=request_id)

        def tolerant(event: str, **data: Any) -> None:
            nonlocal gone
            if gone:
                return
            try:
                emit(event, **data)
            except (BrokenPipeError, ValueError):
                # the client went away: finish the request under way, then stop at end-of-file;
                # stdout now writes nowhere, so even the interpreter's last flush is quiet
                gone = True
                null = os.open(os.devnull, os.O_WRONLY)
                with contextlib.suppress(OSError, ValueError):
                    os.dup2(null, stream.fileno())
                os.close(null)
        return tolerant

    for line in iter(requests.readline, ""):
        if not line.strip():
            continue
        try:
            request = read_request(line)
        except RequestRefused as refused:
            emit_to(refused.request_id)("refused", message=refused.message, fix=refused.fix,
                                        field=refused.field)
            continue
        handle(request, emit_to(request.id))
    return 0


def main(argv: list[str] | None = None, stream: TextIO | None = None) -> int:
    collect_less_often()
    # an export merges into full-precision weights only (a quantized base is refused before
    # anything loads): bitsandbytes is never needed here
    keep_out_bitsandbytes()
    parser = argparse.ArgumentParser(prog=MODULE, description=__doc__.splitlines()[0])
    parser.add_argument("action", choices=(*ACTIONS, "serve"))
    parser.add_argument("checkpoint", type=Path, nargs="?")
    parser.add_argument("out", type=Path, nargs="?")
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--format", action="append", default=[], dest="formats")
    parser.add_argument("--gguf-type", default=None, dest="gguf_type")
    args = parser.parse_args(argv)
    if args.action == "serve" and args.checkpoint is not None:
        parser.error("serve takes no CHECKPOINT or OUT: it reads requests on stdin")
    if args.action != "serve" and args.out is None:
        parser.error(f"{args.action} needs CHECKPOINT and OUT")
    out_stream = stream or protocol_stdout()
    if args.action == "serve":
        return serve(sys.stdin, out_stream)
    request = WorkerRequest(action=args.action, checkpoint=args.checkpoint, out=args.out,
                            dtype=args.dtype, formats=tuple(args.formats),
                            gguf_type=args.gguf_type)
    return handle(request, _emitter(out_stream))


if __name__ == "__main__":
    raise SystemExit(main())

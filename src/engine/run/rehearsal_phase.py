"""The rehearsal as the run's first phase, inside the engine (`graftline run FILE`, rehearsing).

`graftline run` validates in the foreground (fast), starts the engine and returns: nothing slow
stands between the command and a detached run, so an SSH session dropped a second later cannot
stop it. The engine then rehearses every stage on a tiny twin (engine/rehearse/inside.py, in a
child process) before stage 1 and reports into the run's own log:

- `rehearsal` events (durable): `phase` `started`; `twin` (`describe`); `stage` (`name`, `kind`,
  `status` running/passed/failed, `seconds`) per rehearsed stage; `finished` with `ok`,
  `seconds`, `twin`, `stages` (name, kind, status, seconds, checks passed/total, error, fix),
  `problems`, `notes`, and for a failure `message` and `fix`;
- a failed rehearsal ends the run before stage 1: an `error` with the failing stage's error and
  fix, then `run_finished` failed. The whole report is kept in `<run>/rehearsal.json`.

A resumed run rehearses again only when no rehearsal passed before.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Final

from graftline.engine.common import atomic
from graftline.engine.common.control import RunControl
from graftline.engine.common.layout import REHEARSAL, RUN_META
from graftline.engine.common.sink import Sink

CHILD = "graftline.engine.rehearse.inside"
PASSED, FAILED, STOPPED = "passed", "failed", "stopped"
NAME: Final = "rehearsal"  # the pipeline row's name, and `state.json`'s stage while it runs


def wanted(run_dir: Path, *, resume: bool) -> bool:
    """Whether this engine rehearses first: the launch asked for it (run.json), and no rehearsal
    of this run has passed yet (a resume after a crash in stage 3 does not rehearse again)."""
    try:
        meta = json.loads((Path(run_dir) / RUN_META).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    if not meta.get("rehearse"):
        return False
    if resume:
        with contextlib.suppress(OSError, ValueError):
            done = json.loads((Path(run_dir) / REHEARSAL).read_text(encoding="utf-8"))
            if done.get("ok"):
                return False
    return True


def _stage_row(stage: dict[str, Any]) -> dict[str, Any]:
    checks = stage.get("checks") or []
    passed = sum(1 for c in checks if isinstance(c, list | tuple) and len(c) > 1
                 and c[1] == "pass")
    return {"name": stage.get("name"), "kind": stage.get("kind"), "status": stage.get("status"),
            "seconds": round(float(stage.get("seconds") or 0.0), 2),
            "checks": f"{passed}/{len(checks)}" if checks else "",
            "error": str(stage.get("error") or "")[:2000],
            "fix": str(stage.get("fix") or "")[:1000]}


def verdict(report: dict[str, Any]) -> tuple[str, str]:
    """A failed report in one message and one fix: the first failing stage's, or the
    validator's first problem."""
    for stage in report.get("stages") or []:
        if stage.get("status") == "failed":
            message = (f"the rehearsal failed at stage '{stage.get('name')}' "
                       f"({stage.get('kind')}): {stage.get('error')}")
            fix = stage.get("fix") or "see `graftline rehearse FILE` for the whole report"
            return message, f"{fix}; then start the run again (or skip the rehearsal with " \
                            f"`graftline run FILE --no-rehearse`)"
    for problem in report.get("problems") or []:
        return (f"the rehearsal failed: {problem.get('where')}: {problem.get('message')}",
                problem.get("fix") or "fix the pipeline file, then start the run again")
    return ("the rehearsal failed", "see engine.log; `graftline rehearse FILE` shows the report")


class _Relay:
    def __init__(self, sink: Sink) -> None:
        self.sink = sink
        self.report: dict[str, Any] | None = None

    def line(self, raw: str) -> None:
        try:
            row = json.loads(raw)
        except ValueError:
            return
        if not isinstance(row, dict):
            return
        event, stage = row.get("event"), row.get("stage")
        if event == "report" and isinstance(row.get("report"), dict):
            self.report = row["report"]
        elif event == "twin":
            self.sink.emit(NAME, None, phase="twin", describe=str(row.get("describe") or ""))
        elif event == "stage_started":
            self.sink.emit(NAME, None, phase="stage", name=stage, kind=row.get("kind"),
                           status="running")
        elif event == "stage_finished":
            status = PASSED if row.get("status") == "complete" else FAILED
            self.sink.emit(NAME, None, phase="stage", name=stage, kind=row.get("kind"),
                           status=status, seconds=row.get("seconds"))
        elif event == "cleanup":
            self.sink.emit(NAME, None, phase="cleanup", name=stage, rules=row.get("rules"),
                           deleted=row.get("deleted"))


def rehearse_first(run_dir: Path, sink: Sink, control: RunControl) -> tuple[str, str]:
    """Rehearse in a child process, relaying its progress; (passed|failed|stopped, message).
    A failure has been reported (`error` with the fix) when this returns."""
    run_dir = Path(run_dir)
    began = time.monotonic()
    sink.emit(NAME, None, phase="started",
              message="rehearsing every stage for a few steps on a tiny twin before stage 1 "
                      "(`graftline run --no-rehearse` skips this)")
    command = [sys.executable, "-m", CHILD, str(run_dir), str(os.getpid())]
    relay = _Relay(sink)
    proc = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=None, text=True, encoding="utf-8", errors="replace")
    done = threading.Event()

    def stop_watch() -> None:  # `graftline stop` (or SIGTERM) ends the rehearsal at once
        while not done.wait(0.2):
            if control.stop.is_set():
                with contextlib.suppress(OSError):
                    proc.terminate()
                return

    threading.Thread(target=stop_watch, name="graftline-rehearsal-stop", daemon=True).start()
    try:
        assert proc.stdout is not None
        for raw in proc.stdout:
            relay.line(raw)
        code = proc.wait()
    finally:
        done.set()
    seconds = round(time.monotonic() - began, 2)
    if control.stop.is_set():
        message = "stopped during the rehearsal, before stage 1"
        sink.emit(NAME, None, phase="finished", ok=False, status=STOPPED, seconds=seconds,
                  message=message)
        return STOPPED, message
    report = relay.report
    if report is None:
        message = f"the rehearsal process ended without a report (exit status {code})"
        fix = (f"see {run_dir / 'engine.log'} for its traceback; `graftline rehearse FILE` "
               "runs the same rehearsal in the foreground")
        report = {"ok": False, "stages": [], "problems": [], "notes": [], "twin": "",
                  "seconds": seconds, "message": message, "fix": fix}
    ok = bool(report.get("ok"))
    if ok:
        message, fix = "", ""
    elif report.get("message"):
        message, fix = str(report["message"]), str(report.get("fix") or "")
    else:
        message, fix = verdict(report)
    with contextlib.suppress(OSError):  # the whole report; the log keeps a bounded one
        atomic.write_json(run_dir / REHEARSAL, {**report, "message": message, "fix": fix})
    sink.emit(NAME, None, phase="finished", ok=ok, status=PASSED if ok else FAILED,
              seconds=seconds, twin=str(report.get("twin") or ""),
              stages=[_stage_row(s) for s in report.get("stages") or []],
              problems=list(report.get("problems") or [])[:20],
              notes=[str(n)[:500] for n in report.get("notes") or []][:20],
              message=message, fix=fix)
    if ok:
        return PASSED, ""
    sink.emit("error", None, message=message, fix=fix, rehearsal=True)
    return FAILED, message

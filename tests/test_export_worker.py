"""`python -m graftline.engine.export.worker`: the export the console runs in a child process,
speaking JSON lines. The full export through it is tested from the dashboard
(test_console.py::test_export_key_on_attach_exports_the_final_model); here, the protocol's
refusals and its plan, in a real child process."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from console_support import install_recorded_run

from graftline.engine.export import parse_worker_line, worker_command


def run_worker(argv: list[str]) -> tuple[int, list[dict]]:
    done = subprocess.run(argv, capture_output=True, text=True, env=os.environ.copy(),
                          timeout=300)
    events = [e for e in map(parse_worker_line, done.stdout.splitlines()) if e]
    # every stdout line is a protocol event: libraries' prints go to stderr
    assert len(events) == len([line for line in done.stdout.splitlines() if line.strip()])
    return done.returncode, events


def test_a_refused_plan_is_one_line_with_the_fix_and_writes_nothing(tmp_path: Path) -> None:
    out = tmp_path / "out"
    code, events = run_worker(worker_command("plan", tmp_path / "missing", out))
    assert code == 2 and [e["event"] for e in events] == ["refused"]
    assert events[0]["message"] and "fix" in events[0]
    assert not out.exists()
    code, events = run_worker(worker_command("run", tmp_path / "missing", out, dtype="int3"))
    assert code == 2 and events[0]["event"] == "refused" and "int3" in events[0]["message"]
    assert not out.exists()


def test_plan_names_the_chain_and_the_absolute_target(tmp_path: Path, toy_base: Path) -> None:
    run = install_recorded_run(tmp_path / "runs", toy_base)
    out = tmp_path / "exports" / "ipo"
    code, events = run_worker(worker_command("plan", run / "stages" / "ipo", out))
    assert code == 0 and [e["event"] for e in events] == ["plan"]
    plan = events[0]
    assert plan["out"] == str(out) and Path(plan["out"]).is_absolute()
    assert "merged" in plan["chain"] and plan["total_bytes"] > 0
    assert not out.exists()  # planning writes nothing


def test_parse_worker_line_ignores_what_is_not_an_event() -> None:
    assert parse_worker_line('{"event": "progress", "fraction": 0.5}')["fraction"] == 0.5
    assert parse_worker_line("Loading weights…") is None
    assert parse_worker_line('{"no": "event"}') is None
    assert parse_worker_line("{broken") is None

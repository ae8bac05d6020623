"""`python -m graftline.engine.export.worker`: the export the console runs in a child process,
speaking JSON lines. The console's dialog keeps one `serve` worker and sends it every plan and
the export (test_console.py's export tests run the full export through it); here, the
protocol in real child processes: one-shot `plan`/`run` refusals and their exit status, and a
`serve` worker answering plans and bad requests alike, in order, while it lives."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

from console_support import install_recorded_run

from graftline.engine.export import (
    parse_worker_line,
    request_line,
    serve_command,
    worker_command,
)


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


def test_serve_answers_each_request_in_order_and_outlives_bad_ones(
        tmp_path: Path, toy_base: Path) -> None:
    """One process, many requests: each answered (with its `id`) while stdin stays open, a
    request it cannot read or a refused plan answered with the field and the fix, and the
    process still serving after them, until stdin closes."""
    run = install_recorded_run(tmp_path / "runs", toy_base)
    ipo = run / "stages" / "ipo"
    worker = subprocess.Popen(serve_command(), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, env=os.environ.copy())
    assert worker.stdin is not None and worker.stdout is not None

    def ask(line: str) -> dict[str, Any]:
        assert worker.stdin is not None and worker.stdout is not None
        worker.stdin.write(line)
        worker.stdin.flush()
        answer = worker.stdout.readline()
        event = parse_worker_line(answer)
        assert event is not None, f"not a protocol line: {answer!r}"  # prints go to stderr
        assert worker.poll() is None  # it serves on
        return event

    try:
        plan = ask(request_line("plan", ipo, tmp_path / "exports" / "ipo", request_id=1))
        assert plan["event"] == "plan" and plan["id"] == 1
        assert plan["out"] == str(tmp_path / "exports" / "ipo") and Path(plan["out"]).is_absolute()
        assert "merged" in plan["chain"] and plan["total_bytes"] > 0

        refused = ask("export ipo please\n")
        assert refused["event"] == "refused" and refused["id"] is None
        assert "not JSON" in refused["message"] and "one JSON object per line" in refused["fix"]
        bad = {"id": 2, "action": "plan", "checkpoint": str(ipo), "out": str(tmp_path / "x")}
        for field, value, words in (("fromat", ["gguf"], "unknown field 'fromat'"),
                                    ("action", "export", "'plan' or 'run'"),
                                    ("checkpoint", None, "no 'checkpoint'"),
                                    ("formats", "gguf", "list of format names")):
            request = {**bad, field: value} if value is not None else \
                {k: v for k, v in bad.items() if k != field}
            refused = ask(json.dumps(request) + "\n")
            assert refused["event"] == "refused" and refused["id"] == 2
            assert refused["field"] == field and words in refused["message"] and refused["fix"]
        refused = ask(request_line("run", ipo, tmp_path / "y", request_id=3, dtype="int3"))
        assert refused["event"] == "refused" and refused["id"] == 3
        assert "int3" in refused["message"] and refused["fix"]
        refused = ask(request_line("plan", tmp_path / "missing", tmp_path / "z", request_id=4))
        assert refused["event"] == "refused" and refused["id"] == 4 and refused["fix"]
        # a chain whose base stores quantized weights is refused by this worker, which has no
        # bitsandbytes to load them with (export/worker.py), and it serves on
        merged = install_recorded_run(tmp_path / "quantized", toy_base) / "stages" / "merged"
        config = json.loads((merged / "config.json").read_text())
        config["quantization_config"] = {"quant_method": "bitsandbytes", "load_in_4bit": True}
        (merged / "config.json").write_text(json.dumps(config))
        refused = ask(request_line("run", merged.parent / "ipo", tmp_path / "q", request_id=6))
        assert refused["event"] == "refused" and refused["id"] == 6
        assert "stores quantized weights" in refused["message"] and "full-precision" in \
            refused["fix"]

        plan = ask(request_line("plan", ipo, tmp_path / "again", request_id=5,
                                dtype="float32", formats=["safetensors"]))
        assert plan["event"] == "plan" and plan["id"] == 5
        assert plan["out"] == str(tmp_path / "again")
    finally:
        worker.stdin.close()  # end of requests: the worker exits
        rest = worker.stdout.read()
        worker.wait(timeout=60)
        assert worker.stderr is not None
        worker.stderr.close()
        worker.stdout.close()
    assert worker.returncode == 0 and not rest.strip()
    assert not any((tmp_path / name).exists() for name in ("exports", "x", "y", "z", "q", "again"))


def test_parse_worker_line_ignores_what_is_not_an_event() -> None:
    assert parse_worker_line('{"event": "progress", "fraction": 0.5}')["fraction"] == 0.5
    assert parse_worker_line("Loading weights…") is None
    assert parse_worker_line('{"no": "event"}') is None
    assert parse_worker_line("{broken") is None

"""Attaching to a long run, and what logging costs the engine per training step.

1. A run directory with 100,000 metric events (SFT's logged keys, like a real run) plus stage and
   telemetry events. Time for the client API to load the full history ready for display
   (`load_history` + the chart's loss and learning-rate series) vs the plain baseline, a
   `json.loads` of every line. Target: ratio <= 1.5.
2. The engine's per-step cost of writing one metrics event with `EventWriter.emit` (one write()
   per line, unbuffered, so a killed engine loses nothing) vs the plain library: `json.dumps` to a
   buffered file object.

Run: .venv/bin/python benchmarks/attach.py [N]
"""

from __future__ import annotations

import json
import math
import sys
import tempfile
import time
from pathlib import Path

from graftline.engine.run.client import load_history
from graftline.engine.run.events import EVENTS, EventWriter, read_events


def metrics(step: int, total: int) -> dict:
    return {"step": step, "global_step": step, "max_steps": total, "epoch": step / 1000,
            "loss": 2.0 * math.exp(-step / total) + 0.01 * math.sin(step),
            "grad_norm": 1.0 + 0.1 * math.cos(step), "learning_rate": 2e-4 * (1 - step / total),
            "entropy": 1.5, "mean_token_accuracy": 0.5 + 0.4 * step / total,
            "num_tokens": 512.0 * step, "tokens_per_s": 2000.0, "steps_per_s": 4.0,
            "eta_s": (total - step) / 4.0}


def write_run(run_dir: Path, n: int) -> float:
    """Writes the run; returns seconds spent in emit for the metric events."""
    spent = 0.0
    with EventWriter(run_dir) as writer:
        writer.emit("run_started", None, run="bench", stages=[{"name": "sft", "kind": "sft",
                                                               "max_steps": n}])
        writer.emit("stage_started", "sft", kind="sft", index=0, max_steps=n,
                    global_step_offset=0)
        for step in range(1, n + 1):
            data = metrics(step, n)
            start = time.perf_counter()
            writer.emit("metrics", "sft", **data)
            spent += time.perf_counter() - start
            if step % 1000 == 0:
                writer.emit("telemetry", "sft", gpus=None, gpu=None, gpu_reason="no GPU",
                            rss=1 << 30, ram_used=1 << 32, ram_total=1 << 34, cpu_percent=50.0,
                            disk_free=1 << 40, forecast_bytes=1 << 20)
        writer.emit("stage_finished", "sft", kind="sft", status="complete", seconds=1.0,
                    metrics={"loss": 0.1})
        writer.emit("run_finished", None, status="finished", message="")
    return spent


def plain_write(path: Path, n: int) -> float:
    spent = 0.0
    with path.open("w") as handle:
        for step in range(1, n + 1):
            data = metrics(step, n)
            start = time.perf_counter()
            handle.write(json.dumps({"seq": step, "time": time.time(), "type": "metrics",
                                     "stage": "sft", "data": data}) + "\n")
            spent += time.perf_counter() - start
    return spent


def baseline_load(path: Path) -> list:
    with path.open("rb") as handle:
        return [json.loads(line) for line in handle]


def client_load(run_dir: Path):
    history = load_history(run_dir)
    history.series("loss")
    history.series("learning_rate")
    return history


def best_of(fn, repeat: int = 5) -> float:
    best = math.inf
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 100_000
    with tempfile.TemporaryDirectory() as tmp:
        run_dir = Path(tmp)
        emit_s = write_run(run_dir, n)
        plain_s = plain_write(run_dir / "plain.jsonl", n)
        path = run_dir / EVENTS
        lines = sum(1 for _ in path.open("rb"))
        size = path.stat().st_size

        history = client_load(run_dir)
        xs, _ = history.series("loss")
        assert len(xs) == n and history.stages["sft"].status == "complete"
        assert len(baseline_load(path)) == lines

        # interleave the two so a noisy neighbour hurts both alike
        base_t, client_t, events_t = math.inf, math.inf, math.inf
        for _ in range(5):
            base_t = min(base_t, best_of(lambda: baseline_load(path), 1))
            client_t = min(client_t, best_of(lambda: client_load(run_dir), 1))
            events_t = min(events_t, best_of(lambda: read_events(path), 1))

    print(f"event log: {lines:,} lines, {size / 1e6:.1f} MB ({n:,} metric events)")
    print("load the full history (best of 5):")
    print(f"  plain json.loads per line        {base_t * 1000:8.1f} ms")
    print(f"  client.load_history + 2 series   {client_t * 1000:8.1f} ms"
          f"   ratio {client_t / base_t:.2f}  (target <= 1.5)")
    print(f"  events.read_events (Event objs)  {events_t * 1000:8.1f} ms"
          f"   ratio {events_t / base_t:.2f}")
    print("write one metrics event (engine side, per training step):")
    print(f"  plain json.dumps + buffered write {plain_s / n * 1e6:7.1f} us")
    print(f"  EventWriter.emit (write + flush)  {emit_s / n * 1e6:7.1f} us"
          f"   ratio {emit_s / plain_s:.2f}")


if __name__ == "__main__":
    main()

"""The console's cost: CPU while attached to a live run, and the chart's redraw at 1M points.

    .venv/bin/python benchmarks/console_cpu.py [--seconds 60] [--rate 20]

1. A writer process appends events with the engine's EventWriter at `--rate` metric events a
   second (plus telemetry every 2 s), like a fast-logging run; the console (the real
   GraftlineApp, headless, in its own process) is attached for `--seconds`. Printed: the
   console process's CPU seconds ÷ wall seconds (target ≤ 0.03).
2. A run model holding 1,000,000 loss points: the chart's update + render time at 200×60,
   against a bare numpy min/max pass over the same points in the same run (the floor any
   downsampling pays), printed as a ratio.
"""

from __future__ import annotations

import argparse
import asyncio
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import psutil

WRITER = """
import math, sys, time
from pathlib import Path
from graftline.engine.run.events import EventWriter
run, rate, seconds = Path(sys.argv[1]), float(sys.argv[2]), float(sys.argv[3])
steps = int(rate * seconds) + 100
with EventWriter(run) as w:
    w.emit("run_started", run=run.name, pipeline="bench.toml", backend="hf", resumed=False,
           stages=[{"name": "sft", "kind": "sft", "action": "new r16", "max_steps": steps}])
    w.emit("stage_started", "sft", kind="sft", index=0, max_steps=steps, global_step_offset=0)
    start = time.monotonic()
    step = 0
    while time.monotonic() - start < seconds + 10:
        step += 1
        w.emit("metrics", "sft", step=step, global_step=step, max_steps=steps, epoch=0.1,
               loss=2 * math.exp(-step / 500) + 0.3, learning_rate=1e-3, grad_norm=1.0,
               tokens_per_s=4000.0, steps_per_s=rate, eta_s=(steps - step) / rate)
        if step % int(max(1, rate * 2)) == 0:
            w.emit("telemetry", "sft", gpus=None, gpu_reason="bench", rss=1e9, ram_used=4e9,
                   ram_total=8e9, cpu_percent=50.0, disk_free=1e11, forecast_bytes=1e8)
        time.sleep(1 / rate)
"""

CONSOLE = """
import sys
from pathlib import Path
from graftline.console.app import GraftlineApp
run = Path(sys.argv[1])
app = GraftlineApp(run, run.parent, ascii_only=False)
app.run(headless=True, size=(120, 40))
"""


def console_cpu(seconds: float, rate: float) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        run = Path(tmp) / "bench-run"
        run.mkdir()
        writer = subprocess.Popen([sys.executable, "-c", WRITER, str(run), str(rate),
                                   str(seconds)])
        time.sleep(1.0)
        console = subprocess.Popen([sys.executable, "-c", CONSOLE, str(run)],
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        proc = psutil.Process(console.pid)
        time.sleep(5.0)  # start-up (imports, first layout) is not the steady state measured
        cpu0, wall0 = proc.cpu_times(), time.monotonic()
        time.sleep(seconds)
        cpu1, wall1 = proc.cpu_times(), time.monotonic()
        console.terminate()
        writer.terminate()
        console.wait(10)
        writer.wait(10)
    used = (cpu1.user - cpu0.user) + (cpu1.system - cpu0.system)
    return used / (wall1 - wall0)


async def chart_redraw(points: int, repeats: int = 20) -> tuple[float, float]:
    from textual.app import App, ComposeResult

    from graftline.console.run_view import RunModel, Series, StageView
    from graftline.console.widgets.chart import MetricChart

    model = RunModel()
    model.status = "running"
    model.state.stages["sft"] = StageView("sft", "sft", 0, max_steps=points, status="running")
    model.state.current = "sft"
    steps = np.arange(1, points + 1, dtype=np.float64)
    values = 2 * np.exp(-steps / (points / 5)) + 0.3 + 0.05 * np.sin(steps / 7)
    series = Series()
    series.steps.frombytes(steps.tobytes())
    series.values.frombytes(values.tobytes())
    model.series["loss"] = series

    class Bench(App[None]):
        def compose(self) -> ComposeResult:
            yield MetricChart(id="chart")

    app = Bench()
    async with app.run_test(size=(200, 60)) as pilot:
        chart = app.query_one(MetricChart)
        await pilot.pause()
        chart.update_from(model)
        chart.render()
        start = time.perf_counter()
        for _ in range(repeats):
            chart.update_from(model)
            chart.render()
        ours = (time.perf_counter() - start) / repeats
    start = time.perf_counter()
    for _ in range(repeats):
        view_s = np.frombuffer(series.steps, dtype=np.float64)
        view_v = np.frombuffer(series.values, dtype=np.float64)
        _ = (view_s.min(), view_s.max(), view_v.min(), view_v.max())
        del view_s, view_v
    floor = (time.perf_counter() - start) / repeats
    return ours, floor


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--rate", type=float, default=20.0, help="metric events per second")
    parser.add_argument("--points", type=int, default=1_000_000)
    args = parser.parse_args()
    ours, floor = asyncio.run(chart_redraw(args.points))
    print(f"chart redraw, {args.points:,} points at 200x60: {ours * 1e3:.1f} ms "
          f"(numpy min/max floor {floor * 1e3:.2f} ms, ratio {ours / floor:.1f})")
    ratio = console_cpu(args.seconds, args.rate)
    verdict = "ok" if ratio <= 0.03 else "ABOVE TARGET"
    print(f"console attached to a live run ({args.rate:g} metric events/s) for "
          f"{args.seconds:g} s: CPU/wall = {ratio:.4f} (target <= 0.03: {verdict})")


if __name__ == "__main__":
    main()

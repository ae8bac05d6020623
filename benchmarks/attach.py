"""Attaching to a long run, and what logging (with the summary) costs the engine per event.

    .venv/bin/python benchmarks/attach.py [--sizes 10000,1000000,10000000] [--cache DIR]
                                          [--engine-events 30000]

1. The engine's cost per event: `EventWriter.emit` now (one write() per line, plus folding the
   event into the summary and replacing `events.summary.json` every 2 s and at stage
   boundaries) vs today's emit as it was before the summary (a verbatim copy below,
   `LegacyWriter`), interleaved in one process; the time includes close (the last save).
   Target: ratio <= 1.5.
2. Attach: synthetic runs of 10,000, 1,000,000 and 10,000,000 events in the real event schema
   (run_started, stage boundaries, SFT/DPO/GRPO metrics with their logged keys, telemetry every
   50 events, trainer checkpoints, checks, warnings, run_finished), generated once into
   `--cache` (default /tmp/graftline-attach-bench; 10M events is about 4 GB) and reused. The
   summary is folded as the engine folds it, and the last 500 events are left after its
   offset, as a live engine's summary lags by up to 2 s. For each: the real console
   (GraftlineApp, headless, 120x40, its own process) is started on the run; printed are the
   time from the process's first line to the first full frame (the dashboard drawn with every
   event folded: the last event in the log tail, the chart drawn) and the process's peak RSS.
   Targets: first frame at 10M / first frame at 10k <= 2; peak RSS at 10M <= 250 MB.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from graftline.engine.run import summary as S
from graftline.engine.run import summary_file
from graftline.engine.run.events import DURABLE, EVENTS, Event, EventWriter

SCHEMA = 2  # bump when the generated run changes: the cache is rebuilt
TAIL = 500  # events after the summary's offset


# -- 1. the engine's cost per event ---------------------------------------------------------


class LegacyWriter:
    """`EventWriter` as of 838ba11 (before the summary): the baseline of the per-event ratio."""

    def __init__(self, run_dir: Path) -> None:
        self.path = Path(run_dir) / EVENTS
        self._lock = threading.Lock()
        self._seq = 0
        self._fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)

    def emit(self, type: str, stage: str | None = None, **data: object) -> Event:
        with self._lock:
            self._seq += 1
            event = Event(self._seq, time.time(), type, stage, data)
            text = json.dumps({"seq": event.seq, "time": event.time, "type": event.type,
                               "stage": event.stage, "data": event.data},
                              separators=(",", ":"), default=str)  # Event.to_json then
            os.write(self._fd, (text + "\n").encode())
            if type in DURABLE:
                os.fsync(self._fd)
            return event

    def close(self) -> None:
        os.fsync(self._fd)
        os.close(self._fd)


def sft_metrics(step: int, total: int) -> dict:
    return {"step": step, "global_step": step, "max_steps": total, "epoch": step / 1000,
            "loss": 2.0 * math.exp(-step / total) + 0.01 * math.sin(step),
            "grad_norm": 1.0 + 0.1 * math.cos(step), "learning_rate": 2e-4 * (1 - step / total),
            "entropy": 1.5, "mean_token_accuracy": 0.5 + 0.4 * step / total,
            "num_tokens": 512.0 * step, "tokens_per_s": 2000.0, "steps_per_s": 4.0,
            "eta_s": (total - step) / 4.0}


def engine_run(writer: object, n: int) -> tuple[float, float]:
    """(CPU seconds, wall seconds) per metric event, close included."""
    emit = writer.emit  # type: ignore[attr-defined]
    start, cpu = time.perf_counter(), time.process_time()
    emit("run_started", None, run="bench", stages=[{"name": "sft", "kind": "sft",
                                                     "max_steps": n}])
    emit("stage_started", "sft", kind="sft", index=0, max_steps=n, global_step_offset=0)
    for step in range(1, n + 1):
        emit("metrics", "sft", **sft_metrics(step, n))
        if step % 1000 == 0:
            emit("telemetry", "sft", gpus=None, gpu=None, gpu_reason="no GPU", rss=1 << 30,
                 ram_used=1 << 32, ram_total=1 << 34, cpu_percent=50.0, disk_free=1 << 40,
                 forecast_bytes=1 << 20)
    emit("stage_finished", "sft", kind="sft", status="complete", seconds=1.0,
         metrics={"loss": 0.1})
    writer.close()  # type: ignore[attr-defined]
    return (time.process_time() - cpu) / n, (time.perf_counter() - start) / n


def engine_cost(n: int, rounds: int = 3) -> tuple[tuple[float, float], tuple[float, float], int]:
    """Best of `rounds` for the writer before the summary and now: (CPU, wall) per event."""
    legacy = new = (math.inf, math.inf)
    size = 0
    for _ in range(rounds):  # interleaved, so a noisy neighbour hurts both alike
        with tempfile.TemporaryDirectory() as tmp:
            cpu, wall = engine_run(LegacyWriter(Path(tmp)), n)
            legacy = (min(legacy[0], cpu), min(legacy[1], wall))
        with tempfile.TemporaryDirectory() as tmp:
            cpu, wall = engine_run(EventWriter(Path(tmp)), n)
            new = (min(new[0], cpu), min(new[1], wall))
            size = (Path(tmp) / S.SUMMARY).stat().st_size
    return legacy, new, size


# -- 2. attach ------------------------------------------------------------------------------

KINDS = (("sft", "sft", 0.4), ("dpo", "dpo", 0.3), ("grpo", "grpo", 0.3))


def metric_data(kind: str, step: int, gstep: int, total: int, n: int) -> dict:
    data = {"step": step, "global_step": gstep, "max_steps": total, "epoch": step / 1000,
            "grad_norm": 1.0 + 0.1 * math.cos(gstep), "learning_rate": 2e-4 * (1 - step / total),
            "tokens_per_s": 2000.0, "steps_per_s": 4.0, "eta_s": (total - step) / 4.0}
    decay = math.exp(-gstep / max(1, n / 4))
    if kind == "sft":
        data.update(loss=2.0 * decay + 0.01 * math.sin(gstep), entropy=1.5,
                    mean_token_accuracy=0.9 - 0.4 * decay, num_tokens=512.0 * gstep)
    elif kind == "dpo":
        data.update({"loss": 0.69 * decay, "rewards/chosen": 0.1, "rewards/rejected": -0.1,
                     "rewards/accuracies": 1 - 0.5 * decay, "rewards/margins": 1 - decay,
                     "logps/chosen": -20.0, "logps/rejected": -25.0})
    else:
        data.update({"loss": 0.01 * math.sin(gstep), "reward": 1 - 0.5 * decay,
                     "reward_std": 0.2, "rewards/exact/mean": 1 - 0.5 * decay,
                     "rewards/exact/std": 0.2, "completions/mean_length": 12.0,
                     "completions/clipped_ratio": 0.0, "kl": 0.01 * (1 - decay)})
    return data


def generate(run_dir: Path, n: int) -> None:
    """A finished run of `n` events; its summary folded like the engine's, lagging by TAIL."""
    run_dir.mkdir(parents=True, exist_ok=True)
    summary = S.Summary()
    t0 = time.time() - n * 0.05
    seq = 0
    offset = 0
    buffer: list[bytes] = []
    pending = 0
    handle = (run_dir / EVENTS).open("wb")
    cut = n - TAIL

    def emit(type: str, stage: str | None, data: dict) -> None:
        nonlocal seq, offset, pending
        seq += 1
        event = Event(seq, t0 + seq * 0.05, type, stage, data)
        line = (event.to_json() + "\n").encode()
        if seq == 1:
            summary.head_crc = S.crc(line)
        offset += len(line)
        buffer.append(line)
        pending += len(line)
        if seq <= cut:  # folded as the engine folds it
            if type == "metrics":
                summary.add_metrics(stage, data, seq, event.time)
            else:
                summary.add(json.loads(line))
            if seq == cut:
                summary.covered(offset, line)
        if pending > 1 << 20:
            handle.write(b"".join(buffer))
            buffer.clear()
            pending = 0

    stages = [{"name": name, "kind": kind, "action": "continue", "lora_r": 16,
               "max_steps": int(n * share)} for name, kind, share in KINDS]
    emit("run_started", None, {"run": run_dir.name, "pipeline": "bench.toml", "backend": "hf",
                               "resumed": False, "stages": stages})
    body = n - 1 - 3 * len(KINDS) - 1  # all but run_started/finished and the stage frames
    counts = [int(body * share) for _name, _kind, share in KINDS]
    counts[-1] = body - sum(counts[:-1])
    gstep = 0
    for index, ((name, kind, _share), count) in enumerate(zip(KINDS, counts, strict=True)):
        emit("stage_started", name, {"kind": kind, "index": index, "max_steps": count,
                                     "global_step_offset": gstep, "action": "continue",
                                     "reference": None})
        step = 0
        for j in range(1, count + 1):
            if seq % 50 == 0:
                emit("telemetry", name, {"gpus": None, "gpu": None, "gpu_reason": "no GPU",
                                         "rss": 1 << 30, "ram_used": 1 << 32,
                                         "ram_total": 1 << 34, "cpu_percent": 50.0,
                                         "disk_free": 1 << 40, "forecast_bytes": 1 << 20})
            elif j % 5000 == 0:
                emit("checkpoint_saved", name, {"path": f"stages/{name}/trainer/checkpoint-"
                                                f"{step}", "kind": "trainer", "id": str(gstep),
                                                "bytes": 1 << 24})
            elif j % 20001 == 0:
                emit("warning", name, {"message": f"slow step {step}", "fix": "none"})
            else:
                step += 1
                gstep += 1
                emit("metrics", name, metric_data(kind, step, gstep, count, n))
        emit("check_result", name, {"name": "loss_continuity", "status": "pass",
                                     "message": "ok", "data": {}})
        emit("stage_finished", name, {"kind": kind, "status": "complete", "seconds": 1.0,
                                      "metrics": {"loss": 0.1}, "evaluation": {}})
    emit("run_finished", None, {"status": "finished", "message": ""})
    handle.write(b"".join(buffer))
    handle.close()
    summary_file.save(run_dir, summary)
    (run_dir / "bench.json").write_text(json.dumps({"schema": SCHEMA, "events": seq}))


def cached_run(cache: Path, n: int) -> tuple[Path, int, float]:
    run_dir = cache / f"run-{n}"
    try:
        meta = json.loads((run_dir / "bench.json").read_text())
        if meta["schema"] == SCHEMA:
            return run_dir, meta["events"], 0.0
    except (OSError, ValueError, KeyError):
        pass
    shutil.rmtree(run_dir, ignore_errors=True)
    start = time.perf_counter()
    generate(run_dir, n)
    meta = json.loads((run_dir / "bench.json").read_text())
    return run_dir, meta["events"], time.perf_counter() - start


CONSOLE = """
import time
t0 = time.perf_counter()
import asyncio, json, resource, sys
from pathlib import Path
from graftline.console.app import GraftlineApp
from graftline.console.screens.dashboard import DashboardScreen
from graftline.console.widgets.chart import MetricChart

async def main():
    run = Path(sys.argv[1])
    app = GraftlineApp(run, run.parent, ascii_only=False)
    async with app.run_test(size=(120, 40)) as pilot:
        while not (isinstance(app.screen, DashboardScreen) and app.screen.loaded):
            await asyncio.sleep(0.002)
        await pilot.pause()  # the frame with the loaded model, drawn
        first = time.perf_counter() - t0
        model = app.screen.follower.model
        full = (model.last_seq == int(sys.argv[2]) and bool(model.log)
                and not app.screen.follower.rebuilt
                and model.log[-1].text.startswith("run finished")
                and bool(app.screen.query_one(MetricChart)._lines))
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"first_frame": first, "peak_rss_mb": rss, "full": full}))

asyncio.run(main())
"""


def attach(run_dir: Path, events: int, repeat: int) -> tuple[float, float]:
    best, rss = math.inf, 0.0
    for _ in range(repeat):
        out = subprocess.run([sys.executable, "-c", CONSOLE, str(run_dir), str(events)],
                             capture_output=True, text=True, timeout=600)
        if out.returncode:
            raise SystemExit(f"console failed on {run_dir}:\n{out.stderr[-3000:]}")
        result = json.loads(out.stdout.strip().splitlines()[-1])
        if not result["full"]:
            raise SystemExit(f"the first frame on {run_dir} did not show every event")
        best = min(best, result["first_frame"])
        rss = max(rss, result["peak_rss_mb"])
    return best, rss


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", default="10000,1000000,10000000")
    parser.add_argument("--cache", type=Path, default=Path("/tmp/graftline-attach-bench"))
    parser.add_argument("--engine-events", type=int, default=30_000)
    parser.add_argument("--repeat", type=int, default=2)
    args = parser.parse_args()

    if args.engine_events:
        legacy, new, size = engine_cost(args.engine_events)
        print(f"engine, per event ({args.engine_events:,} metric events, best of 3; CPU time is"
              " the cost to training, wall time shows a busy machine's noise):")
        print(f"  EventWriter.emit before the summary (838ba11)  CPU {legacy[0] * 1e6:6.1f} us"
              f"   wall {legacy[1] * 1e6:6.1f} us")
        print(f"  EventWriter.emit with the summary              CPU {new[0] * 1e6:6.1f} us"
              f"   wall {new[1] * 1e6:6.1f} us")
        print(f"  ratio  CPU {new[0] / legacy[0]:.2f}  (target <= 1.5)   wall "
              f"{new[1] / legacy[1]:.2f}   summary file {size / 1e3:.0f} kB")

    results = {}
    for n in [int(size) for size in args.sizes.split(",") if size]:
        run_dir, events, spent = cached_run(args.cache, n)
        log_mb = (run_dir / EVENTS).stat().st_size / 1e6
        summary_kb = (run_dir / S.SUMMARY).stat().st_size / 1e3
        made = f", generated in {spent:.0f} s" if spent else ", cached"
        first, rss = attach(run_dir, events, args.repeat)
        results[n] = (first, rss)
        print(f"attach {events:>12,} events  log {log_mb:9.1f} MB  summary {summary_kb:5.0f} kB"
              f"  first frame {first * 1000:7.0f} ms  peak RSS {rss:6.1f} MB{made}")
    if len(results) > 1:
        small, large = min(results), max(results)
        print(f"first frame {large:,} / {small:,} events: "
              f"{results[large][0] / results[small][0]:.2f}  (target <= 2)")
        print(f"console peak RSS at {large:,} events: {results[large][1]:.0f} MB "
              f"(target <= 250)")


if __name__ == "__main__":
    main()

"""Telemetry: RAM/CPU/disk always; GPU through NVML, or `gpu: null` with the reason."""

from __future__ import annotations

import threading
from pathlib import Path

from graftline.engine.common.sink import ListSink
from graftline.engine.pipeline import file as pipeline_file
from graftline.engine.pipeline.validate import plan_of
from graftline.engine.run import telemetry


def test_sample_has_memory_disk_and_gpu_or_its_absence(tmp_path: Path) -> None:
    probe = telemetry.GpuProbe()
    data = telemetry.sample(probe, tmp_path, forecast_bytes=123)
    assert data["rss"] > 0 and data["ram_total"] >= data["ram_used"] > 0
    assert data["disk_free"] > 0 and data["forecast_bytes"] == 123
    if probe.available:
        assert data["gpus"] and all(g["total"] >= g["used"] for g in data["gpus"])
    else:
        assert data["gpu"] is None and data["gpus"] is None and data["gpu_reason"]
    probe.close()


def test_thread_emits_telemetry_events_until_closed(tmp_path: Path) -> None:
    sink = ListSink()
    done = threading.Event()

    class Counting(ListSink):
        def emit(self, type, stage=None, **data):
            sink.emit(type, stage, **data)
            if len(sink.events) >= 2:
                done.set()

    thread = telemetry.TelemetryThread(Counting(), tmp_path, lambda: None, every=0.05,
                                       stage=lambda: "s1").start()
    assert done.wait(30)
    thread.close()
    assert {t for t, _, _ in sink.events} == {"telemetry"}
    assert {s for _, s, _ in sink.events} == {"s1"}


def test_forecast_sums_remaining_stages_only(tmp_path: Path) -> None:
    (tmp_path / "d.jsonl").write_text("")
    pf = pipeline_file.parse("""
[pipeline]
name = "f"
base = "toy:addition"
[[stage]]
name = "one"
kind = "sft"
data = "d.jsonl"
lora = { r = 8 }
train = { max_steps = 5, save_steps = 2 }
[[stage]]
name = "merged"
kind = "merge"
""", tmp_path / "p.toml")
    plan = plan_of(pf)
    everything = telemetry.forecast_bytes(plan, ["one", "merged"])
    merge_only = telemetry.forecast_bytes(plan, ["merged"])
    assert everything > merge_only > 0
    assert telemetry.forecast_bytes(plan, []) == 0

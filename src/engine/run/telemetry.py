"""Telemetry sampled in the engine: GPU memory (NVML), RAM, CPU, free disk, and a disk forecast.

Without a GPU (no driver, no device) NVML raises `pynvml.NVMLError`; that is a normal machine,
not an error: the samples carry `gpu: null` and the reason, and the console shows RAM instead.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import threading
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import psutil

from graftline.engine.common.sink import Sink
from graftline.engine.pipeline.plan import Plan

RANK_MODULE = "graftline.engine.run.rank_main"
SAMPLE_EVERY = float(os.environ.get("GRAFTLINE_TELEMETRY_EVERY", "5"))


class GpuProbe:
    """NVML, initialised once. `available` is False (with `reason`) on a machine without a GPU."""

    def __init__(self) -> None:
        self.reason: str | None = None
        self._nvml: Any = None
        try:
            import pynvml

            pynvml.nvmlInit()
            if pynvml.nvmlDeviceGetCount() == 0:
                self.reason = "NVML found no GPU"
            else:
                self._nvml = pynvml
        except ImportError:
            self.reason = "pynvml (nvidia-ml-py) is not installed"
        except Exception as exc:  # pynvml.NVMLError and its many subclasses
            self.reason = f"no GPU: {type(exc).__name__}: {exc}".strip()

    @property
    def available(self) -> bool:
        return self._nvml is not None

    def sample(self, pid: int) -> tuple[list[dict[str, Any]], int]:
        """Per-device memory, and the bytes used by `pid` across devices."""
        nvml = self._nvml
        gpus: list[dict[str, Any]] = []
        proc_bytes = 0
        for index in range(nvml.nvmlDeviceGetCount()):
            handle = nvml.nvmlDeviceGetHandleByIndex(index)
            memory = nvml.nvmlDeviceGetMemoryInfo(handle)
            name = nvml.nvmlDeviceGetName(handle)
            gpus.append({"index": index, "name": name.decode() if isinstance(name, bytes) else name,
                         "used": int(memory.used), "total": int(memory.total)})
            for proc in _gpu_processes(nvml, handle):
                if proc.pid == pid and proc.usedGpuMemory:
                    proc_bytes += int(proc.usedGpuMemory)
        return gpus, proc_bytes

    def process_bytes(self) -> dict[int, int]:
        """pid → GPU bytes, for every process NVML sees on any device (empty without a GPU)."""
        nvml = self._nvml
        found: dict[int, int] = {}
        if nvml is None:
            return found
        for index in range(nvml.nvmlDeviceGetCount()):
            handle = nvml.nvmlDeviceGetHandleByIndex(index)
            for proc in _gpu_processes(nvml, handle):
                if proc.usedGpuMemory:
                    found[proc.pid] = found.get(proc.pid, 0) + int(proc.usedGpuMemory)
        return found

    def close(self) -> None:
        if self._nvml is not None:
            with contextlib.suppress(Exception):
                self._nvml.nvmlShutdown()
            self._nvml = None


def _gpu_processes(nvml: Any, handle: Any) -> Iterator[Any]:
    """The compute and graphics processes NVML reports on one device; a kind the device or its
    driver does not support reports none."""
    for getter in ("nvmlDeviceGetComputeRunningProcesses",
                   "nvmlDeviceGetGraphicsRunningProcesses"):
        try:
            procs = getattr(nvml, getter)(handle)
        except Exception:  # not supported on every device / driver
            continue
        yield from procs


def sample(probe: GpuProbe, runs_volume: Path, forecast_bytes: int | None,
           pid: int | None = None) -> dict[str, Any]:
    """One telemetry event's data (see docs/architecture.md, `telemetry`)."""
    pid = os.getpid() if pid is None else pid
    proc = psutil.Process(pid)
    memory = psutil.virtual_memory()
    data: dict[str, Any] = {}
    if probe.available:
        try:
            gpus, proc_gpu = probe.sample(pid)
            data.update(gpus=gpus, proc_gpu_bytes=proc_gpu)
        except Exception as exc:
            data.update(gpus=None, gpu=None, gpu_reason=f"NVML failed: {exc}", proc_gpu_bytes=None)
    else:
        data.update(gpus=None, gpu=None, gpu_reason=probe.reason, proc_gpu_bytes=None)
    with proc.oneshot():
        rss = proc.memory_info().rss
        try:
            children = proc.children(recursive=True)
        except psutil.Error:
            children = []
    for child in children:  # accelerate-launched ranks, dataloader workers
        try:
            rss += child.memory_info().rss
        except psutil.Error:
            continue
    ranks = group_ranks(children, probe)
    if ranks:
        data.update(ranks=ranks, ranks_alive=sum(1 for r in ranks if r["alive"]))
    data.update(rss=rss, ram_used=memory.total - memory.available, ram_total=memory.total,
                cpu_percent=psutil.cpu_percent(interval=None),
                disk_free=shutil.disk_usage(runs_volume).free, forecast_bytes=forecast_bytes)
    return data


def group_ranks(children: list[psutil.Process], probe: GpuProbe) -> list[dict[str, Any]]:
    """The ranks of a distributed stage this engine launched (run/distributed.py), one entry each:
    rank, local_rank, pid, alive, rss and, on a GPU, the bytes NVML counts for that process.
    A rank is a descendant running rank_main with torchrun/accelerate's RANK in its environment;
    sampled every few seconds, this is the group's per-rank heartbeat."""
    by_pid: dict[int, int] | None = None
    ranks: list[dict[str, Any]] = []
    for child in children:
        try:
            if RANK_MODULE not in " ".join(child.cmdline()):
                continue
            env = child.environ()
            if "RANK" not in env:
                continue
            status = child.status()
            alive = status not in (psutil.STATUS_ZOMBIE, psutil.STATUS_DEAD)
            rss = child.memory_info().rss if alive else 0
        except (psutil.Error, OSError):
            continue
        if by_pid is None:
            try:
                by_pid = probe.process_bytes()
            except Exception:  # NVML hiccup: the heartbeat still goes out
                by_pid = {}
        ranks.append({"rank": int(env["RANK"]), "local_rank": int(env.get("LOCAL_RANK", 0)),
                      "pid": child.pid, "alive": alive, "rss": rss,
                      "gpu_bytes": by_pid.get(child.pid) if probe.available else None})
    return sorted(ranks, key=lambda r: r["rank"])


class TelemetryThread:
    """Samples every `every` seconds into the sink until closed."""

    def __init__(self, sink: Sink, runs_volume: Path, forecast: Callable[[], int | None],
                 *, every: float = SAMPLE_EVERY, stage: Callable[[], str | None] = lambda: None
                 ) -> None:
        self._sink = sink
        self._volume = runs_volume
        self._forecast = forecast
        self._every = every
        self._stage = stage
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="graftline-telemetry", daemon=True)
        self.probe = GpuProbe()

    @property
    def started(self) -> bool:
        return self._thread.ident is not None

    def start(self) -> TelemetryThread:
        psutil.cpu_percent(interval=None)  # primes the counter; the first real sample is meaningful
        self._thread.start()
        return self

    def _run(self) -> None:
        while True:
            try:
                self._sink.emit("telemetry", self._stage(),
                                **sample(self.probe, self._volume, self._forecast()))
            except Exception as exc:  # telemetry must never take the training down
                print(f"graftline: telemetry sample failed: {exc}", flush=True)
            if self._stop.wait(self._every):
                return

    def close(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)
        self.probe.close()


# --- disk forecast -----------------------------------------------------------------------------

def forecast_bytes(plan: Plan, remaining: Iterable[str]) -> int | None:
    """Bytes the stages named in `remaining` will write (the plan's per-stage estimate), or None
    when the model cannot be sized."""
    todo = set(remaining)
    sizes = [step.bytes for step in plan.steps if step.name in todo]
    known = [size for size in sizes if size is not None]
    return sum(known) if len(known) == len(sizes) else None

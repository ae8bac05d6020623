"""The CPU math path for graftline's own training: the toy base's build, the test suite, the demo.
Never for a user's run (`graftline run` sets none of this).

PyTorch's CPU build picks its vector kernels by CPU (AVX-512 on one EPYC, AVX2 on another), MKL
and oneDNN do the same, and a tiny model's training then takes another floating-point path on
each machine: the toy recipe once plateaued at 12% on an AVX-512 CPU where it reached 99% on AVX2.
Pinning all three to AVX2 makes every x86-64 CPU with AVX2 (every one sold since 2015) take the
path the shipped toy base was built on. What was measured and what it costs:
docs/reproducibility.md.

Torch reads these when it first picks a kernel, so they are set before torch is imported (the
suite's conftest) or in the environment of the process that will import it (the demo's engine).
A value the user already set wins: `ATEN_CPU_CAPABILITY=default make test` tries the plain path.
"""

from __future__ import annotations

import os
from collections.abc import MutableMapping
from pathlib import Path

PINNED_MATH = {
    "ATEN_CPU_CAPABILITY": "avx2",  # PyTorch's own vector kernels
    "MKL_CBWR": "AVX2",  # MKL's conditional numerical reproducibility: one code path
    "ONEDNN_MAX_CPU_ISA": "AVX2",  # oneDNN (mkldnn) kernels
}


def cpu_has_avx2(cpuinfo: Path = Path("/proc/cpuinfo")) -> bool:
    """True on an x86-64 CPU that reports AVX2; False elsewhere (ARM, or no /proc): there the
    pins would name a path the CPU does not have, so none is set."""
    try:
        text = cpuinfo.read_text(errors="replace")
    except OSError:
        return False
    return any(line.startswith("flags") and " avx2" in line for line in text.splitlines())


def pin_math(environ: MutableMapping[str, str] | None = None) -> dict[str, str]:
    """Set the pins in `environ` (default: this process's) where the user has not set them and
    the CPU supports them; returns the values now in effect for the three names."""
    env = os.environ if environ is None else environ
    if cpu_has_avx2():
        for name, value in PINNED_MATH.items():
            env.setdefault(name, value)
    return {name: env[name] for name in PINNED_MATH if name in env}


def built_with(pins: dict[str, str]) -> dict[str, str]:
    """What a shipped model's record says of the math it was built with: torch, its threads,
    the CPU path in use and the pins (`pin_math`'s answer). Imports torch."""
    import torch

    return {"torch": torch.__version__, "threads": str(torch.get_num_threads()),
            "cpu_capability": torch.backends.cpu.get_cpu_capability(), **pins}


__all__ = ["PINNED_MATH", "built_with", "cpu_has_avx2", "pin_math"]

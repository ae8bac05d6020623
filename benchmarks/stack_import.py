"""The training stack's import in a fresh process, as the plain libraries do it vs as an engine
that keeps bitsandbytes out does it (common/optional_imports.py).

Alternates the two, ROUNDS times each, so machine load hits both alike, and prints the median
CPU seconds (user + sys) and wall seconds of each and their ratio. Each child imports what an
engine's stage does (transformers, PEFT, TRL, datasets) and nothing else.

    .venv/bin/python benchmarks/stack_import.py [--rounds 5]
"""

from __future__ import annotations

import argparse
import resource
import statistics
import subprocess
import sys
import time

STACK = "import transformers, peft, trl, datasets"
KEPT_OUT = ("from graftline.engine.common.optional_imports import keep_out_bitsandbytes\n"
            "keep_out_bitsandbytes()\n")


def child(code: str) -> tuple[float, float]:
    """(CPU seconds, wall seconds) of one fresh interpreter running `code`."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return (after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime), wall


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    plain: list[tuple[float, float]] = []
    engine: list[tuple[float, float]] = []
    child(STACK)  # warm the page cache for both
    for _ in range(args.rounds):
        plain.append(child(STACK))
        engine.append(child(KEPT_OUT + STACK))
    for name, runs in (("plain libraries", plain), ("bitsandbytes kept out", engine)):
        cpu = statistics.median(c for c, _ in runs)
        wall = statistics.median(w for _, w in runs)
        print(f"{name:>22}: {cpu:6.2f} s CPU  {wall:6.2f} s wall  (median of {args.rounds})")
    ratio = statistics.median(c for c, _ in engine) / statistics.median(c for c, _ in plain)
    print(f"CPU ratio, kept out / plain: {ratio:.2f}")


if __name__ == "__main__":
    main()

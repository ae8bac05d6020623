"""Rehearse the coding-TUI example (tool SFT → merge → agent SFT → IPO → GRPO → export) and
print the per-stage times. Target: the whole rehearsal under 3 minutes on 2 CPU cores.

    .venv/bin/python benchmarks/rehearse.py [--steps N] [--base PATH]

`--base` points the example at another base, e.g. tests/fixtures/configs/gpt-oss-20b, to time
the rehearsal on a twin of that architecture. Nothing is asserted: this prints.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
TARGET_S = 180.0


def main() -> int:
    from graftline.engine.rehearse.rehearsal import DEFAULT_STEPS, rehearse

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=DEFAULT_STEPS)
    parser.add_argument("--base", default=None, help="another base for the example")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="graftline-bench-") as tmp:
        folder = Path(tmp) / "examples"
        shutil.copytree(REPO / "examples", folder,
                        ignore=shutil.ignore_patterns("full", "__pycache__"))
        path = folder / "coding_tui.toml"
        if args.base:
            base = Path(args.base).resolve()
            path.write_text(path.read_text().replace('base = "toy:addition"', f'base = "{base}"'))
        from graftline.engine.toy.model import build_base

        build_base()  # the cached toy model: built once, not part of a rehearsal's time
        began = time.perf_counter()
        report = rehearse(path, steps=args.steps, scratch_parent=Path(tmp) / "scratch")
        total = time.perf_counter() - began

    print(f"rehearsal of examples/coding_tui.toml on {report.twin or 'nothing'}")
    print(f"{'stage':<16}{'kind':<10}{'result':<10}{'seconds':>9}")
    for stage in report.stages:
        print(f"{stage.name:<16}{stage.kind:<10}{stage.status:<10}{stage.seconds:>9.1f}")
    staged = sum(s.seconds for s in report.stages)
    print(f"{'stages':<36}{staged:>9.1f}")
    print(f"{'twin, samples, checks':<36}{total - staged:>9.1f}")
    print(f"{'total':<36}{total:>9.1f}   target < {TARGET_S:.0f} s: "
          f"{'met' if total < TARGET_S else 'MISSED'} (ratio {total / TARGET_S:.2f})")
    for stage in report.failures:
        print(f"FAILED {stage.name}: {stage.error}")
    for problem in report.problems:
        print(f"problem: {problem}")
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())

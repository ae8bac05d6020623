"""How long `graftline validate` takes: on every example, and on a pipeline whose datasets are a
5 GB JSONL and a 5 GB parquet file. The README promises problems "in the first second".

Each figure is the median of a few runs of the real command in a fresh process, printed as a
ratio against `graftline --help` timed in the same run (the cost of starting Python and the CLI
at all), so the numbers mean the same on a busy or a quiet machine. Target: validate ≤ 1 s, and
the big files no slower than the examples (the validator reads a first row or a parquet footer,
never a whole file).

The big files are made sparse (a hole in the middle), so they cost no disk and take no time to
write: the JSONL's first lines are real rows, the parquet file is a real one with the hole
between its data and its footer (its offsets stay valid). A validator that read either file
whole would take seconds and fail on the hole's NUL bytes. Both are deleted afterwards.

Run: .venv/bin/python benchmarks/validate.py [REPEATS]
"""

from __future__ import annotations

import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
BIG = 5 * 1024**3


def graftline(*args: str) -> list[str]:
    return [sys.executable, "-m", "graftline.console.cli", *args]


CPU: dict[str, float] = {}


def timed(command: list[str], repeats: int) -> float:
    """Median wall seconds; the median CPU seconds (user + system, less sensitive to a busy
    machine) are kept in CPU under the command's last argument."""
    times, cpu = [], []
    for _ in range(repeats):
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        start = time.perf_counter()
        subprocess.run(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                       check=False, cwd=REPO)
        times.append(time.perf_counter() - start)
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu.append(after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime)
    CPU[command[-1]] = statistics.median(cpu)
    return statistics.median(times)


def row(label: str, seconds: float, help_s: float, cpu: float, help_cpu: float) -> None:
    print(f"{label:<44} {seconds:7.2f} {seconds / help_s:9.2f} {cpu:6.2f} {cpu / help_cpu:9.2f}")


def sparse_jsonl(path: Path, kind: str) -> None:
    rows = ([{"prompt": "12+34=", "chosen": "46", "rejected": "47"}] if kind == "dpo"
            else [{"prompt": "12+34=", "completion": "46"}])
    with open(path, "wb") as handle:
        handle.write("".join(json.dumps(r) + "\n" for r in rows * 100).encode())
        handle.seek(BIG - 1)
        handle.write(b"\n")


def sparse_parquet(path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    small = path.with_suffix(".small.parquet")
    pq.write_table(pa.table({"prompt": ["12+34="] * 100, "completion": ["46"] * 100}), small)
    data = small.read_bytes()
    small.unlink()
    footer_len = int.from_bytes(data[-8:-4], "little")
    footer_start = len(data) - 8 - footer_len
    with open(path, "wb") as handle:
        handle.write(data[:footer_start])
        handle.seek(BIG - (len(data) - footer_start))
        handle.write(data[footer_start:])
    assert pq.read_schema(path).names == ["prompt", "completion"]
    assert os.path.getsize(path) == BIG


PIPELINE = """\
[pipeline]
name = "big"
base = "toy:addition"
runs_dir = "runs"

[defaults]
train = {{ max_steps = 10, batch_size = 8 }}

[[stage]]
name = "sft"
kind = "sft"
data = "{data}"
lora = {{ r = 8 }}

[[stage]]
name = "dpo"
kind = "dpo"
adapter = "continue"
data = "prefs.jsonl"
"""


def main() -> None:
    repeats = int(sys.argv[1]) if len(sys.argv) > 1 else 3
    help_s = timed(graftline("--help"), repeats)
    help_cpu = CPU["--help"]
    print(f"graftline --help: {help_s:.2f} s wall, {help_cpu:.2f} s CPU (the baseline; median "
          f"of {repeats})")
    print(f"{'file':<44} {'wall s':>7} {'× --help':>9} {'CPU s':>6} {'× --help':>9}")
    examples = sorted((REPO / "examples").glob("*.toml")) + \
        sorted((REPO / "examples" / "full").glob("*.toml"))
    worst = worst_cpu = 0.0
    for path in examples:
        seconds = timed(graftline("validate", str(path)), repeats)
        worst, worst_cpu = max(worst, seconds), max(worst_cpu, CPU[str(path)])
        row(str(path.relative_to(REPO)), seconds, help_s, CPU[str(path)], help_cpu)
    with tempfile.TemporaryDirectory(prefix="graftline-bench-") as tmp:
        root = Path(tmp)
        sparse_jsonl(root / "prefs.jsonl", "dpo")
        for name, make in (("sft.jsonl", lambda p: sparse_jsonl(p, "sft")),
                           ("sft.parquet", sparse_parquet)):
            make(root / name)
            pipeline = root / f"big_{name.replace('.', '_')}.toml"
            pipeline.write_text(PIPELINE.format(data=name))
            check = subprocess.run(graftline("validate", str(pipeline)), capture_output=True,
                                   text=True, cwd=REPO)
            if check.returncode != 0:
                print(check.stdout + check.stderr)
                raise SystemExit(f"validate failed on the {name} pipeline")
            seconds = timed(graftline("validate", str(pipeline)), repeats)
            worst, worst_cpu = max(worst, seconds), max(worst_cpu, CPU[str(pipeline)])
            label = f"5 GB {name} (+ 5 GB prefs.jsonl)"
            row(label, seconds, help_s, CPU[str(pipeline)], help_cpu)
            (root / name).unlink()
    print(f"slowest validate: {worst:.2f} s wall = {worst / help_s:.2f} × --help; "
          f"{worst_cpu:.2f} s CPU = {worst_cpu / help_cpu:.2f} × --help")
    print(f"the 1 s target: wall {'met' if worst <= 1.0 else 'missed'}, CPU "
          f"{'met' if worst_cpu <= 1.0 else 'missed'} (wall on a busy machine includes waiting "
          f"for a core)")


if __name__ == "__main__":
    main()

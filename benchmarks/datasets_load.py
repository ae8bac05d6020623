"""What the stage loader's row checks cost (docs/datasets.md).

`load_stage_rows` parses every JSONL line with its line number, checks each row's columns and
types, applies the `columns` mapping and builds the Dataset. The baseline, timed in the same run
on the same file, is the plain `datasets` way to load the same rows:
`datasets.Dataset.from_list([json.loads(line) for line in file])`. Printed as a ratio (the
figure that means the same on a busy or a quiet machine), median of a few runs.

Run: .venv/bin/python benchmarks/datasets_load.py [ROWS] [REPEATS]
"""

from __future__ import annotations

import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

from graftline.engine.pipeline.stage_rows import load_stage_rows
from graftline.engine.toy import tasks


def _median(fn, repeats: int) -> float:  # type: ignore[no-untyped-def]
    times = []
    for _ in range(repeats):
        began = time.perf_counter()
        fn()
        times.append(time.perf_counter() - began)
    return statistics.median(times)


def main() -> None:
    import datasets

    rows = int(sys.argv[1]) if len(sys.argv) > 1 else 50_000
    repeats = int(sys.argv[2]) if len(sys.argv) > 2 else 3
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "d.jsonl"
        path.write_text("".join(json.dumps({"question": r["prompt"], "answer": r["completion"]})
                                + "\n" for r in tasks.sft_rows(rows, 1)))

        def plain() -> None:
            with path.open(encoding="utf-8") as handle:
                datasets.Dataset.from_list([json.loads(line) for line in handle])

        def graftline() -> None:
            load_stage_rows(path.name, "sft", base_dir=Path(folder),
                            columns={"prompt": "question", "completion": "answer"})

        base = _median(plain, repeats)
        ours = _median(graftline, repeats)
    print(f"{rows:,} conversational rows, median of {repeats}:")
    print(f"  Dataset.from_list(json.loads(...))  {base:.2f} s")
    print(f"  load_stage_rows (+checks, mapping)  {ours:.2f} s  ratio {ours / base:.2f}×")


if __name__ == "__main__":
    main()

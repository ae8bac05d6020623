"""Example data for tests that run an example at a fraction of its steps: each file cut to the
rows its stages can reach. TRL tokenizes a whole dataset, and DPO's precomputed reference scores
every row, before the first step, so rows no step reaches only cost time (the examples' own files
are sized for their full steps)."""

from __future__ import annotations

import shutil
from pathlib import Path

from graftline.engine.pipeline.file import PipelineFile

EXAMPLE_DATA = Path(__file__).resolve().parents[1] / "examples" / "data"
EVAL_ROWS = 128  # an SFT stage's eval loss on this many held-out rows


def rows_reached(pf: PipelineFile) -> dict[str, int]:
    """Data file (as the pipeline names it) → the most rows any of its stages can reach."""
    rows: dict[str, int] = {}
    for stage in pf.pipeline.stage:
        train = getattr(stage, "train", None)
        data, limit = getattr(stage, "data", None), getattr(stage, "limit", None)
        if isinstance(data, str) and not data.startswith("@"):  # `@stage`: generated in the run
            reach = (train.max_steps * train.batch_size * train.grad_accum if train is not None
                     else limit or 10**9)
            rows[data] = max(rows.get(data, 0), reach)
        eval_data = getattr(stage, "eval_data", None)
        if isinstance(eval_data, str):
            rows[eval_data] = max(rows.get(eval_data, 0), EVAL_ROWS)
    return rows


def copy_example_data(pf: PipelineFile, folder: Path) -> None:
    """examples/data into `folder`/data, each file the pipeline names cut to the rows it reaches
    (a file the test writes itself later is left to it)."""
    shutil.copytree(EXAMPLE_DATA, folder / "data")
    for name, keep in rows_reached(pf).items():
        copy = folder / name
        if copy.is_file():
            lines = copy.read_text().splitlines(keepends=True)
            copy.write_text("".join(lines[:keep]))

"""`graftline validate` loads no model and imports no training library: it answers in the first
second (benchmarks/validate.py measures it) because it only reads the file, a first row or a
parquet footer of each dataset, and a local config.json."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

PROBE = """
import sys
from graftline.console.cli import app
from typer.testing import CliRunner
result = CliRunner().invoke(app, ["validate", sys.argv[1]])
heavy = sorted(m for m in ("torch", "transformers", "datasets", "trl", "peft") if m in sys.modules)
print(result.exit_code, " ".join(heavy) or "-")
"""


def test_validate_imports_no_training_library(tmp_path: Path) -> None:
    env = dict(os.environ)
    for example in ("demo.toml", "coding_tui.toml", "full/coding_tui.toml"):
        out = subprocess.run([sys.executable, "-c", PROBE, str(REPO / "examples" / example)],
                             capture_output=True, text=True, env=env, check=True).stdout
        code, heavy = out.split()
        assert code == "0", out
        assert heavy == "-", f"validate {example} imported {heavy}"


def test_validate_reads_only_the_head_of_a_huge_dataset(tmp_path: Path) -> None:
    """A 1 GB sparse JSONL: its first row is real, the rest a hole of NUL bytes that no JSON
    reader could parse. Validation passes only because it reads the first row alone."""
    data = tmp_path / "big.jsonl"
    with open(data, "wb") as handle:
        handle.write((json.dumps({"prompt": "1+1=", "completion": "2"}) + "\n").encode())
        handle.seek(1024**3)
        handle.write(b"\n")
    pipeline = tmp_path / "p.toml"
    pipeline.write_text('[pipeline]\nname = "p"\nbase = "toy:addition"\n\n[[stage]]\n'
                        'name = "sft"\nkind = "sft"\ndata = "big.jsonl"\n'
                        'train = { max_steps = 5 }\n')
    out = subprocess.run([sys.executable, "-c", PROBE, str(pipeline)], capture_output=True,
                         text=True, check=True).stdout
    assert out.split()[0] == "0", out

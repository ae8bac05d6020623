"""Helpers for the engine's stage, check and runner tests: pipeline files on disk, toy data."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from graftline.engine.pipeline.file import PipelineFile, parse
from graftline.engine.toy import tasks

PROBES = ["12+34", "50+27", "33+48", "71+19"]
HEADER = f"""
[pipeline]
name = "t"
base = "toy:addition"
probes = {json.dumps(PROBES)}
"""


def write_jsonl(path: Path, rows) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def write_data(directory: Path) -> Path:
    """The toy data files the tests' pipelines name, next to the pipeline file."""
    directory.mkdir(parents=True, exist_ok=True)
    write_jsonl(directory / "sft.jsonl", tasks.sft_rows(400, 1))
    write_jsonl(directory / "sft2.jsonl", tasks.sft_rows(400, 2))
    write_jsonl(directory / "pref.jsonl", tasks.preference_rows(200, 3))
    write_jsonl(directory / "grpo.jsonl", tasks.grpo_rows(200, 4))
    write_jsonl(directory / "eval.jsonl", list(tasks.eval_rows())[:64])
    write_jsonl(directory / "prompts.jsonl", tasks.prompt_rows(48, 5))
    # completions that are nothing but the end token: training on them forces EOS (collapse)
    write_jsonl(directory / "empty.jsonl",
                ({"prompt": r["prompt"], "completion": tasks.assistant("")}
                 for r in tasks.sft_rows(400, 6)))
    return directory


def pipeline(directory: Path, stages: str, name: str = "pipeline.toml") -> PipelineFile:
    text = HEADER + stages
    path = directory / name
    path.write_text(text)
    return parse(text, path)


@pytest.fixture
def one_thread():
    """One torch thread for the tiny model: its matrices are too small to gain from two, and on
    a shared 2-core box two OpenMP threads spin against other processes (measured 40× slower
    under load)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)

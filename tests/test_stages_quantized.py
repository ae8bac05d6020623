"""The bitsandbytes 4-bit path runs end to end on CPU (QLoRA SFT, then a full-precision merge).

Quality is not tested through 4-bit: NF4 wrecks a 350k-parameter model (FINDINGS.md).
"""

from __future__ import annotations

from pathlib import Path

import pytest
from stage_helpers import HEADER, one_thread, write_data  # noqa: F401

from graftline.engine.backends.hf import HFBackend
from graftline.engine.common.sink import ListSink
from graftline.engine.lineage import manifest as mf
from graftline.engine.run.runner import run_pipeline

STAGES = """
[[stage]]
name = "q"
kind = "sft"
data = "sft.jsonl"
lora = { r = 4 }
train = { max_steps = 2, batch_size = 4 }

[[stage]]
name = "m"
kind = "merge"
"""

pytestmark = pytest.mark.usefixtures("one_thread")


def test_4bit_load_trains_an_adapter_and_merges_in_full_precision(tmp_path: Path,
                                                                  toy_base: Path) -> None:
    import bitsandbytes as bnb

    from graftline.engine.pipeline.file import parse

    model, _ = HFBackend().load_model(toy_base, quantization="4bit")
    assert any(isinstance(m, bnb.nn.Linear4bit) for m in model.modules())

    root = write_data(tmp_path)
    text = HEADER.replace('base = "toy:addition"', 'base = "toy:addition"\nquantization = "4bit"')
    path = root / "q.toml"
    path.write_text(text + STAGES)
    sink = ListSink()
    result = run_pipeline(parse(path.read_text(), path), root / "runs" / "r", sink)
    assert result.status == "finished", result.message
    assert all(c["status"] == "pass" for c in sink.of_type("check_result"))
    adapter = mf.read(root / "runs/r/stages/q")
    assert adapter.status == "complete" and adapter.lora.r == 4
    merged = mf.read(root / "runs/r/stages/m")
    assert merged.kind == "merged" and merged.status == "complete"

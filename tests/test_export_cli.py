"""`graftline export` as a user runs it: a real subprocess, real files, exit codes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import torch
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM

from graftline.engine.lineage import manifest as manifest_io


def graftline(*args: str) -> subprocess.CompletedProcess[str]:
    code = "from graftline.console.cli import main; main()"
    env = {**os.environ, "COLUMNS": "120", "HF_HUB_OFFLINE": "1"}
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True,
                          env=env, timeout=600, check=False)


def test_cli_exports_verifies_and_refuses(toy_base: Path, tmp_path: Path):
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(toy_base, dtype=torch.float32)
    adapter = tmp_path / "sft"
    get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules="all-linear",
                                     init_lora_weights=False)).save_pretrained(adapter)
    out = tmp_path / "model"

    done = graftline("export", str(adapter), "--out", str(out), "--format", "ollama")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "verified" in done.stdout and "bfloat16" in done.stdout
    record = manifest_io.read(out)
    assert record is not None and record.status == "complete" and record.kind == "export"
    assert json.loads((out / "verification.json").read_text())["passed"]
    assert (out / "Modelfile").is_file()

    again = graftline("export", str(adapter), "--out", str(out))
    assert again.returncode == 2
    assert "not empty" in again.stderr and "--force" in again.stderr

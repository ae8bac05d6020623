"""Which runs keep bitsandbytes out of their processes (pipeline/bitsandbytes_use.py): only a
run that nothing loads it in; each way a run can load it is a reason to keep it, and so is what
cannot be settled on this disk. The engine and its ranks acting on it: test_distributed's chain.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from graftline.engine.pipeline.bitsandbytes_use import bitsandbytes_reason
from graftline.engine.pipeline.file import parse
from graftline.engine.pipeline.plan import resolve
from graftline.engine.pipeline.scaleout import Env

CPU = Env(cuda=False, cpus=2)
GPU_WITH_UNSLOTH = Env(cuda=True, gpus=1, unsloth=True, cpus=16)


def _reason(root: Path, header: str = "", stage: str = "", defaults: str = "",
            base: str = "base", env: Env = CPU, config: dict | None = None) -> str | None:
    (root / "base").mkdir(exist_ok=True)
    (root / "base" / "config.json").write_text(json.dumps(config or {"model_type": "llama"}))
    text = (f'[pipeline]\nname = "t"\nbase = "{base}"\n{header}\n{defaults}\n'
            f'[[stage]]\nname = "sft"\nkind = "sft"\ndata = "d.jsonl"\n{stage}\n')
    pf = parse(text, root / "p.toml")
    found = root / base
    return bitsandbytes_reason(pf.pipeline, resolve(pf.pipeline, pf.directory),
                               [found if found.is_dir() else None], env)


def test_a_full_precision_run_on_torchs_optimizers_loads_none(tmp_path: Path) -> None:
    assert _reason(tmp_path) is None
    assert _reason(tmp_path, stage='train = { optim = "adamw_torch_fused" }') is None
    assert _reason(tmp_path, header='backend = "hf"', env=GPU_WITH_UNSLOTH) is None


@pytest.mark.parametrize(("kw", "says"), [
    ({"header": 'quantization = "4bit"'}, 'quantization = "4bit"'),
    ({"header": 'backend = "unsloth"'}, "unsloth backend"),
    ({"env": GPU_WITH_UNSLOTH}, "unsloth backend"),  # auto picks unsloth where it can run
    ({"stage": 'train = { optim = "paged_adamw_8bit" }'}, 'optim = "paged_adamw_8bit"'),
    ({"defaults": '[defaults.train]\noptim = "adamw_bnb_8bit"'}, 'optim = "adamw_bnb_8bit"'),
    ({"config": {"model_type": "llama",
                 "quantization_config": {"quant_method": "bitsandbytes", "load_in_4bit": True}}},
     "saved quantized"),
    ({"base": "someone/model-not-downloaded"}, "not on this disk"),
])
def test_each_way_a_run_can_load_it_keeps_it(tmp_path: Path, kw: dict, says: str) -> None:
    reason = _reason(tmp_path, **kw)
    assert reason is not None and says in reason


def test_a_trl_table_reaching_a_loader_keeps_it(tmp_path: Path) -> None:
    reason = _reason(tmp_path, stage="trl = { model_init_kwargs = { load_in_4bit = true } }")
    assert reason is not None and "model_init_kwargs" in reason
    reason = _reason(tmp_path, defaults='[defaults.trl]\noptim = "lion_8bit"')
    assert reason is not None and "optim" in reason

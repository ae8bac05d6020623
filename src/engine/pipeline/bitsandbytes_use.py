"""Whether a run may load anything through bitsandbytes (pure: the run/ side acts on it).

A process that imports PEFT pays ~2.3 s of CPU for bitsandbytes whether it uses it or not
(common/optional_imports.py); an engine and every rank of every stage import PEFT.

Only these use it: a quantized load (`quantization`, or a base saved quantized), the unsloth
backend (it imports bitsandbytes itself), an optimizer of bitsandbytes' (`adamw_8bit`,
`paged_*`, `lion_*`...), and TRL's own model loading when a `trl` table passes it arguments.
`bitsandbytes_reason` names the first of these a run may meet, or None; anything it cannot
settle (a hub id not in the local cache, a checkpoint from another run, an optimizer it does
not know as torch's own) is a reason, so that process keeps it.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from graftline.engine.pipeline import spec
from graftline.engine.pipeline.plan import StepPlan
from graftline.engine.pipeline.scaleout import Env, backend_for

__all__ = ["TORCH_OPTIMIZERS", "bitsandbytes_reason"]

# transformers' OptimizerNames implemented by torch itself (or transformers), never bitsandbytes
TORCH_OPTIMIZERS = frozenset({
    "adamw_torch", "adamw_torch_fused", "adafactor", "sgd", "adagrad", "rmsprop",
    "adamw_torch_npu_fused", "adamw_torch_xla",
})

# TRL fields through which a `trl` table can reach a loader or an optimizer
_TRL_KEYS = frozenset({"optim", "optim_args", "model_init_kwargs", "ref_model_init_kwargs"})


def _quantized(base: str | Path) -> str | None:
    config = Path(base) / "config.json"
    try:
        found = json.loads(config.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return f"the base's config is not readable here ({config})"
    if isinstance(found, Mapping) and found.get("quantization_config"):
        return f"the base {base} is saved quantized"
    return None


def _trl_tables(pipeline: spec.Pipeline, steps: Iterable[StepPlan]) -> Iterable[dict[str, Any]]:
    yield pipeline.defaults.trl
    for step in steps:
        yield getattr(step.stage, "trl", None) or {}


def bitsandbytes_reason(pipeline: spec.Pipeline, steps: Iterable[StepPlan],
                        bases: Iterable[str | Path | None], env: Env) -> str | None:
    """Why a process running `steps` of `pipeline` on `bases` (resolved folders; None: not on
    this disk) may need bitsandbytes; None when nothing it does can."""
    steps = list(steps)
    header = pipeline.pipeline
    backend = backend_for(header.backend, env)
    if backend != "hf":
        return f"the {backend} backend imports it"
    if header.quantization != "none":
        return f"quantization = \"{header.quantization}\""
    for step in steps:
        if (step.foreign is not None or step.model_foreign is not None
                or any(part.foreign is not None for part in step.parts)):
            return f"stage {step.name} starts from a checkpoint made elsewhere"
        optim = step.train.optim if step.train is not None else None
        if optim is not None and optim not in TORCH_OPTIMIZERS:
            return f"stage {step.name}: optim = \"{optim}\""
    for table in _trl_tables(pipeline, steps):
        if used := sorted(_TRL_KEYS & set(table)):
            return f"a trl table sets {', '.join(used)}"
    for base in bases:
        if base is None:
            return "the base is not on this disk"
        if reason := _quantized(base):
            return reason
    return None

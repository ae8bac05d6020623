"""The disk forecast of one stage: what it writes, from the base model's sizes.

`plan.build_plan` puts each stage's figure on its step; `validate` compares the total with the
free space, and the engine's telemetry says what the remaining stages will write
(`run/telemetry.forecast_bytes`). The constants were measured on the toy demo
(tests/test_forecast.py holds a real run to them).
"""

from __future__ import annotations

from graftline.engine.common.layout import KEEP_CHECKPOINTS
from graftline.engine.pipeline import spec
from graftline.engine.pipeline.modelinfo import ModelInfo

__all__ = ["CHECKPOINT_OVERHEAD", "EVENT_BYTES", "stage_bytes"]

CHECKPOINT_OVERHEAD = 64 << 10
EVENT_BYTES = 512  # one logged step's line in events.jsonl


def stage_bytes(
    stage: spec.AnyStage,
    lora: spec.Lora | None,
    info: ModelInfo | None,
    combined_r: int | None,
) -> int | None:
    """What `stage` writes to disk: its adapter (and, while it trains, its Trainer checkpoints
    and log lines), a merged or exported model, or a few bytes; None when a size is unknown."""
    if isinstance(stage, spec.EvalStage):
        return 4096
    if isinstance(stage, spec.GenerateStage):
        return 1 << 20
    if info is None:
        return None
    if isinstance(stage, spec.MergeStage | spec.ExportStage):
        return info.full_bytes(stage.dtype)
    if isinstance(stage, spec.CombineStage) and combined_r:
        return info.lora_bytes(combined_r)
    if lora is None:
        return None
    adapter = info.lora_bytes(lora.r, lora.target_modules)
    if not isinstance(stage, spec.TrainingStage):
        return adapter
    train = stage.train
    # A Trainer checkpoint holds the adapter, AdamW's two moments, the scheduler, RNG state,
    # tokenizer and trainer state: measured at about 4x the adapter + 64 KiB on the toy demo.
    # For a moment KEEP_CHECKPOINTS + 1 exist: the new one is written before the oldest goes.
    resume = (KEEP_CHECKPOINTS + 1) * (4 * adapter + CHECKPOINT_OVERHEAD) \
        if train.save_steps else 0
    logged = (train.max_steps or 0) // max(1, train.logging_steps or 1) * EVENT_BYTES
    return adapter + resume + logged

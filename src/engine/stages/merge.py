"""Merge: an adapter into its base → a new full model, saved and reloaded from disk.

Always in float32 into the full-precision base (never a dequantized 4-bit copy). The next
stage's adapter is created on the model loaded from this directory, so its adapter_config.json
names the merged model, not the old base (an in-memory merge keeps the old name_or_path).
"""

from __future__ import annotations

import torch

from graftline.engine.pipeline import spec
from graftline.engine.stages import checks
from graftline.engine.stages.context import StageContext, StageOutcome
from graftline.engine.stages.loading import load_checkpoint_model, load_full
from graftline.engine.stages.parents import parent_ref
from graftline.engine.stages.samples import probe_prompts

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def run(ctx: StageContext) -> StageOutcome:
    log = checks.CheckLog(ctx.name, ctx.sink)
    adapter_model, tokenizer, source = load_checkpoint_model(ctx, ctx.step.parent, for_merge=True)
    ids = checks.probe_ids(tokenizer, probe_prompts(ctx))
    expected = checks.logits(adapter_model, ids)
    merged = adapter_model.merge_and_unload()
    out = ctx.stage_dir
    dtype = DTYPES[ctx.spec_as(spec.MergeStage).dtype]
    merged.to(dtype)
    merged.config.name_or_path = str(out)
    ctx.backend.save_merged(merged, tokenizer, out)
    del merged, adapter_model
    # Check what the next stage will load: the directory, not the object in memory.
    reloaded, _ = load_full(ctx, out, for_merge=True)
    tolerance = checks.MERGE_TOLERANCE if dtype == torch.float32 else 5e-2
    log.record(checks.merge_equal(reloaded, expected, ids, tolerance=tolerance))
    outcome = StageOutcome(kind="merged", checks=log)
    outcome.parents = [parent_ref(ctx, "merged_from", ctx.step.parent)]
    if source is not None and source.base:
        outcome.extra["merged_into"] = source.base
    outcome.extra["dtype"] = ctx.spec_as(spec.MergeStage).dtype
    return outcome

"""Export: the checkpoint's full model, merged, in a complete model directory.

Hands over to `graftline.engine.export.run_export` (streaming, shard by shard, verified) when
that module provides it; otherwise a plain merged save in float32 merge → dtype, reloaded and
compared with the adapter model's logits.
"""

from __future__ import annotations

import inspect
from pathlib import Path

import torch

from graftline.engine import checks
from graftline.engine import manifest as mf
from graftline.engine.stages.common import (
    StageContext,
    StageOutcome,
    load_checkpoint_model,
    load_full,
    parent_ref,
    probe_prompts,
)
from graftline.engine.stages.merge import DTYPES


def _run_export():  # type: ignore[no-untyped-def]
    try:
        from graftline.engine.export import run_export
    except ImportError:
        return None
    return run_export


def plain_export(ctx: StageContext, out: Path) -> StageOutcome:
    log = checks.CheckLog(ctx.name, ctx.sink)
    model, tokenizer, source = load_checkpoint_model(ctx, ctx.step.parent, for_merge=True)
    ids = checks.probe_ids(tokenizer, probe_prompts(ctx))
    expected = checks.logits(model, ids)
    if hasattr(model, "merge_and_unload"):
        model = model.merge_and_unload()
    dtype = DTYPES[ctx.stage.dtype]  # type: ignore[attr-defined]
    model.to(dtype)
    model.config.name_or_path = str(out)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(out), safe_serialization=True)
    tokenizer.save_pretrained(str(out))
    del model
    reloaded, _ = load_full(ctx, out, for_merge=True)
    tolerance = checks.MERGE_TOLERANCE if dtype == torch.float32 else 5e-2
    log.record(checks.merge_equal(reloaded, expected, ids, tolerance=tolerance,
                                  name="export_equal"))
    outcome = StageOutcome(kind="export", checks=log, out_dir=out)
    outcome.parents = [parent_ref(ctx, "exported_from", ctx.step.parent)]
    outcome.extra = {"dtype": ctx.stage.dtype, "out": str(out)}  # type: ignore[attr-defined]
    if source is not None:
        outcome.lora = source.lora
    return outcome


def run(ctx: StageContext) -> StageOutcome:
    stage = ctx.stage
    out = ctx.resolve(stage.out)  # type: ignore[attr-defined]
    if out.exists() and any(out.iterdir()) and not stage.force:  # type: ignore[attr-defined]
        found = mf.read(out)
        if found is None or found.kind != "export":
            raise checks.StageFailed(ctx.name, f"the export directory {out} exists and is not "
                                     "an earlier export", "", "choose another `out`, or set "
                                     "force = true to write into it")
    handover = _run_export()
    if handover is not None and "checkpoint" in inspect.signature(handover).parameters:
        ctx.sink.emit("info", ctx.name, message="exporting with the streaming exporter")
    return plain_export(ctx, out)

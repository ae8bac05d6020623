"""Export: the checkpoint's full model, merged, in a complete model directory.

Hands over to `graftline.engine.export.writer` (streaming merge shard by shard into the original
full-precision base, verified, with a model card) when it is installed and the stage exports a
checkpoint; otherwise (or for the bare base) a plain merged save: float32 merge, cast to the
dtype, reloaded and compared with the adapter model's logits.
"""

from __future__ import annotations

from pathlib import Path

import torch

from graftline.engine.common.tokenizer_files import save_tokenizer
from graftline.engine.lineage import manifest as mf
from graftline.engine.pipeline import spec
from graftline.engine.stages import checks
from graftline.engine.stages.context import StageContext, StageOutcome
from graftline.engine.stages.loading import load_checkpoint_model, load_full
from graftline.engine.stages.merge import DTYPES
from graftline.engine.stages.parents import parent_ref
from graftline.engine.stages.samples import probe_prompts


def plain_export(ctx: StageContext, out: Path) -> StageOutcome:
    log = checks.CheckLog(ctx.name, ctx.sink)
    model, tokenizer, source = load_checkpoint_model(ctx, ctx.step.parent, for_merge=True)
    ids = checks.probe_ids(tokenizer, probe_prompts(ctx))
    expected = checks.logits(model, ids)
    if hasattr(model, "merge_and_unload"):
        model = model.merge_and_unload()
    dtype = DTYPES[ctx.spec_as(spec.ExportStage).dtype]
    model.to(dtype)
    model.config.name_or_path = str(out)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(out), safe_serialization=True)
    save_tokenizer(tokenizer, out)
    del model
    reloaded, _ = load_full(ctx, out, for_merge=True)
    tolerance = checks.MERGE_TOLERANCE if dtype == torch.float32 else 5e-2
    log.record(checks.merge_equal(reloaded, expected, ids, tolerance=tolerance,
                                  name="export_equal"))
    outcome = StageOutcome(kind="export", checks=log, out_dir=out)
    outcome.parents = [parent_ref(ctx, "exported_from", ctx.step.parent)]
    outcome.extra = {"dtype": ctx.spec_as(spec.ExportStage).dtype, "out": str(out)}
    if source is not None:
        outcome.lora = source.lora
    return outcome


def streaming_export(ctx: StageContext, out: Path) -> StageOutcome | None:
    """The export engine's streaming merge and verification; None where it is not installed."""
    try:
        from graftline.engine.export.chain import ExportRefused
        from graftline.engine.export.writer import plan_export, run_export
    except ImportError:
        return None
    stage = ctx.spec_as(spec.ExportStage)
    checkpoint = ctx.parent_dir()
    try:
        plan = plan_export(checkpoint, out, dtype=stage.dtype,
                           formats=tuple(stage.formats), force=stage.force,
                           shard_size=stage.shard_size,
                           gguf_type=stage.gguf_type)
    except ExportRefused as exc:
        raise checks.StageFailed(ctx.name, f"export refused: {exc.message}", "",
                                 exc.fix or "") from None
    result = run_export(plan, sink=ctx.sink, stage=ctx.name)
    if not result.ok:
        raise checks.StageFailed(ctx.name, f"export verification failed: {result.problems[0]}",
                                 "the merged export does not reproduce the adapter model",
                                 "do not ship this export; check the adapter chain")
    # the exporter wrote and completed the manifest in `out`; the stage keeps a marker only
    outcome = StageOutcome(kind=None)
    outcome.extra = {"out": str(out), "export_id": result.manifest.id,
                     "dtype": stage.dtype}
    outcome.metrics = {"bytes": float(result.bytes), "export_seconds": result.seconds}
    return outcome


def run(ctx: StageContext) -> StageOutcome:
    stage = ctx.spec_as(spec.ExportStage)
    out = ctx.resolve(stage.out)
    if ctx.step.parent is not None:
        streamed = streaming_export(ctx, out)
        if streamed is not None:
            return streamed
    if out.exists() and any(out.iterdir()) and not stage.force:
        found = mf.read(out)
        if found is None or found.kind != "export":
            raise checks.StageFailed(ctx.name, f"the export directory {out} exists and is not "
                                     "an earlier export", "", "choose another `out`, or set "
                                     "force = true to write into it")
    return plain_export(ctx, out)

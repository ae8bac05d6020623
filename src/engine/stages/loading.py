"""Loading the model a checkpoint stands for: the base, a merged model, base + adapter, or a
checkpoint made outside the run."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from graftline.engine.lineage import manifest as mf
from graftline.engine.stages.context import StageContext, stage_dir


def load_full(ctx: StageContext, path: str | Path, *, for_merge: bool = False) -> tuple[Any, Any]:
    """A full model. Merges and exports always load full precision with plain transformers:
    merging into a (de)quantized copy is lossy (FINDINGS.md)."""
    if ctx.hooks.load_model is not None:
        return ctx.hooks.load_model(path)
    if for_merge:
        from graftline.engine.backends.hf import HFBackend

        return HFBackend().load_model(path, dtype=torch.float32)
    return ctx.backend.load_model(path, quantization=ctx.quantization)


def load_checkpoint_model(ctx: StageContext, stage_name: str | None, *, for_merge: bool = False
                          ) -> tuple[Any, Any, mf.Manifest | None]:
    """The model a stage's checkpoint stands for: base, merged model, or base + adapter. None is
    the stage's own start when that is a checkpoint outside the run (`from` a path), else the
    base."""
    foreign = getattr(ctx.step, "foreign", None)
    if stage_name is None and foreign is not None:
        return load_foreign(ctx, for_merge=for_merge)
    if stage_name is None:
        model, tokenizer = load_full(ctx, ctx.base_path, for_merge=for_merge)
        return model, tokenizer, None
    directory = stage_dir(ctx.run_dir, stage_name)
    found = mf.read(directory)
    if found is None or found.status != "complete":
        raise FileNotFoundError(f"stage '{stage_name}' has no complete checkpoint in {directory}")
    if found.kind in ("adapter", "combined"):
        from peft import PeftModel

        model, tokenizer = load_full(ctx, found.base or ctx.base_path, for_merge=for_merge)
        model = PeftModel.from_pretrained(model, str(directory), adapter_name="default")
        return model, tokenizer, found
    model, tokenizer = load_full(ctx, directory, for_merge=for_merge)
    return model, tokenizer, found


def load_foreign(ctx: StageContext, *, for_merge: bool = False
                 ) -> tuple[Any, Any, mf.Manifest | None]:
    """The model a foreign checkpoint stands for: a full model, or its adapter (as `default`,
    frozen) on the full model the plan chose for it (its recorded base, or the pipeline's)."""
    foreign = ctx.step.foreign
    found = mf.read(Path(foreign.path)) if foreign.source == "graftline" else None
    if foreign.kind == "model":
        model, tokenizer = load_full(ctx, foreign.path, for_merge=for_merge)
        return model, tokenizer, found
    from peft import PeftModel

    # the plan's choice (`base_from`), not model_path(): a merge's model_stage is itself
    on = ctx.base_path if ctx.stage.base_from == "pipeline" else \
        (foreign.base_path or foreign.base_ref or ctx.base_path)
    model, tokenizer = load_full(ctx, on, for_merge=for_merge)
    model = PeftModel.from_pretrained(model, foreign.path, adapter_name="default")
    return model, tokenizer, found

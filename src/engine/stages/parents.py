"""What a stage's manifest names as its parents: the stage it continued, the model it was
trained on, a checkpoint from outside the run; and the LoRA config as the manifest records it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from graftline.engine.lineage import manifest as mf
from graftline.engine.stages.checks import token_ids_of
from graftline.engine.stages.context import StageContext, stage_dir


def foreign_ref(ctx: StageContext, relation: mf.Relation, foreign: Any = None) -> mf.Parent:
    """The checkpoint outside the run that this stage starts from (or `foreign`, one of a
    combine's adapter folders), as a manifest parent: its kind, path, the base it records, and
    what made it, so lineage shows it, cleanup keeps it (it is outside the run: never ours to
    delete) and export walks through it."""
    foreign = foreign if foreign is not None else ctx.step.foreign
    found = mf.read(Path(foreign.path)) if foreign.source == "graftline" else None
    return mf.Parent(relation=relation, path=foreign.path, id=found.id if found else None,
                     kind=foreign.kind, source=foreign.source, base=foreign.base_path
                     or foreign.base_ref, foreign=True, ref=foreign.ref)


def model_ref(ctx: StageContext, relation: mf.Relation) -> mf.Parent:
    """The full model a stage's result sits on, as a manifest parent."""
    if ctx.step.model_stage is None and getattr(ctx.step, "model_foreign", None):
        return mf.Parent(relation=relation, path=str(ctx.step.model_foreign), kind="model",
                         foreign=True)
    return parent_ref(ctx, relation, ctx.step.model_stage)


def training_parents(ctx: StageContext) -> list[mf.Parent]:
    """What a trained adapter's manifest names as its parents: the adapter it continued (a
    stage's or one from outside the run) and the full model it was trained on."""
    step = ctx.step
    if step.action == "continue":
        first = foreign_ref(ctx, "continued_from") if step.parent is None and step.foreign \
            else parent_ref(ctx, "continued_from", step.parent)
        on_model = step.model_stage is not None or getattr(step, "model_foreign", None)
        return [first, model_ref(ctx, "trained_on")] if on_model else [first]
    if step.parent is None and getattr(step, "foreign", None) is not None:
        return [foreign_ref(ctx, "trained_on")]
    return [model_ref(ctx, "trained_on")]


def parent_ref(ctx: StageContext, relation: mf.Relation, stage_name: str | None) -> mf.Parent:
    if stage_name is None and getattr(ctx.step, "foreign", None) is not None:
        return foreign_ref(ctx, relation)
    if stage_name is None:
        return mf.Parent(relation=relation, path=ctx.base_path)
    directory = stage_dir(ctx.run_dir, stage_name)
    found = mf.read(directory)
    return mf.Parent(relation=relation, path=str(directory), id=found.id if found else None)


def lora_spec_from_config(config: Any) -> mf.LoraSpec:
    targets = config.target_modules
    targets = sorted(targets) if isinstance(targets, set | list | tuple) else str(targets)
    return mf.LoraSpec(r=int(config.r), alpha=int(config.lora_alpha),
                       dropout=float(config.lora_dropout), target_modules=targets,
                       use_rslora=bool(config.use_rslora), use_dora=bool(config.use_dora),
                       trainable_tokens=token_ids_of(config))

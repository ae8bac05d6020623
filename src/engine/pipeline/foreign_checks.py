"""`validate`'s checks for stages whose `from` names a checkpoint made elsewhere (issue 19).

What `plan` cannot see by itself: the adapter's recorded base exists here and is a full model;
the pipeline's `base` and that recorded base agree, or the stage says which wins (`base_from`);
and the in-memory-merge pitfall (PEFT records the OLD base for an adapter trained on a merge
done in memory), proven from weights by the lineage reader where the tree holds the evidence,
else a warning that it cannot be proven. The classification and the LoRA-shape rule are the
plan's (a bad `from` is already a plan problem).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

from graftline.engine.common.checkpoint_files import (
    ADAPTER_CONFIG,
    MODEL_CONFIG,
    folder_files,
)
from graftline.engine.lineage.resolve import resolve_base
from graftline.engine.pipeline.file import HEADER_BLOCK, PipelineFile
from graftline.engine.pipeline.foreign import Foreign, is_full_model
from graftline.engine.pipeline.plan import Plan, StepPlan
from graftline.engine.pipeline.problems import Problem, Where, moved

__all__ = ["foreign_problems", "merge_problems", "pipeline_base", "recorded_base_problems"]

SEEDS_FIX = ("save the merged model with save_pretrained and load it from disk before adding "
             "the next adapter (or set model.name_or_path), then point the adapter's "
             "base_model_name_or_path at that saved merge; or set base_from = \"pipeline\" with "
             "[pipeline] base = the merge")
_MIN_SCAN_DEPTH = 3  # never scan `/` or `/home` for evidence: too wide to be the notebook's tree


def pipeline_base(pf: PipelineFile) -> str | None:
    """The pipeline's `base` as a real path on this machine (None: a hub id not cached here)."""
    base = pf.pipeline.pipeline.base
    if base.startswith("toy:"):
        return resolve_base(base, pf.directory).path
    local = pf.resolve(base)
    if local.exists():
        return os.path.realpath(local)
    found = resolve_base(base, pf.directory, use_cwd=False)
    return found.path if found.exists else None


def foreign_problems(pf: PipelineFile, plan: Plan) -> Iterator[Problem]:
    base = pipeline_base(pf)
    for step in plan.steps:
        stage = step.stage
        at = Where(file=str(pf.path), line=pf.line(stage.name, "from"), stage=stage.name,
                   field="from")
        foreign = step.foreign
        if stage.base_from is not None and (foreign is None or foreign.kind != "adapter"):
            yield Problem(
                "base_from only matters when `from` names an adapter made elsewhere; here it "
                "changes nothing",
                **moved(at, field="base_from", line=pf.line(stage.name, "base_from")),
                fix="remove base_from", severity="warning")
        if foreign is None or foreign.kind != "adapter":
            continue
        yield from _base_problems(pf, step, foreign, base, at)
        if foreign.source != "graftline":
            yield from merge_problems(foreign, at)


def recorded_base_problems(foreign: Foreign, at: Where) -> Iterator[Problem]:
    """The base a foreign adapter records: named, on this machine, and a full model. Shared by
    a `from = path` stage and a combine's adapter folders (pipeline/combine_checks.py)."""
    config = Path(foreign.path) / ADAPTER_CONFIG
    if not foreign.base_ref:
        yield Problem(f"{config} names no base_model_name_or_path: which model it applies to is "
                      "unknown", **at,
                      fix='set base_from = "pipeline" to load it on [pipeline] base, or write '
                          "the base's directory into base_model_name_or_path")
        return
    if foreign.base_path is None:
        if foreign.base_kind == "hub":
            what = (f"its recorded base '{foreign.base_ref}' is a hub id that is not in the "
                    "local Hugging Face cache (graftline never downloads)")
            fix = ("download it first (huggingface-cli download) or set base_from = "
                   '"pipeline" to load the adapter on [pipeline] base')
        else:
            what = f"its recorded base '{foreign.base_ref}' is not on this machine"
            fix = ("restore that model, edit base_model_name_or_path in "
                   f'{config}, or set base_from = "pipeline" to load it on [pipeline] base')
        yield Problem(f"the adapter at {foreign.path}: {what}", **at, fix=fix)
        return
    if not is_full_model(foreign.base_path):
        files = folder_files(foreign.base_path)
        pickled = files.is_model and not files.adapter_config
        yield Problem(f"the adapter at {foreign.path} records base {foreign.base_path}, which is "
                      f"not a full model ({MODEL_CONFIG} + safetensors weights)"
                      + (" but an adapter" if files.adapter_config else
                         f" but holds pickle weights only ({', '.join(files.pickle)})"
                         if pickled else ""),
                      **at, fix="re-save that model with save_pretrained(safe_serialization=True)"
                      if pickled else "merge that adapter into its base and save it "
                                      "(save_pretrained), then point base_model_name_or_path at it")


def _base_problems(pf: PipelineFile, step: StepPlan, foreign: Foreign, base: str | None,
                   at: Where) -> Iterator[Problem]:
    stage = step.stage
    if stage.base_from == "pipeline":
        return  # loaded on the pipeline's base, which `validate` checks on its own
    found = list(recorded_base_problems(foreign, at))
    if found:
        yield from found
        return
    assert foreign.base_path is not None  # recorded_base_problems reports a missing one
    if stage.base_from is None and base is not None and \
            os.path.realpath(foreign.base_path) != base:
        yield Problem(
            f"the adapter at {foreign.path} was trained on {foreign.base_path}, but [pipeline] "
            f"base is {pf.pipeline.pipeline.base} ({base})", **at,
            fix='say which wins: base_from = "adapter" (train on the model it was trained on; '
                'export merges into it) or base_from = "pipeline" (load it on [pipeline] base); '
                "or set [pipeline] base to its base")
    elif stage.base_from is None and base is None:
        yield Problem(f"[pipeline] base {pf.pipeline.pipeline.base} is not on this machine, so "
                      f"it cannot be compared with the adapter's recorded base "
                      f"{foreign.base_path}",
                      **moved(at, field=at["field"], line=pf.line(HEADER_BLOCK, "base")),
                      fix='set base_from = "adapter" or "pipeline" on this stage',
                      severity="warning")


def _scan_root(foreign: Foreign) -> str | None:
    """The folder that holds the adapter and its recorded base (the notebook's tree), or None
    when that is too wide to walk."""
    if foreign.base_path is None:
        return None
    root = os.path.commonpath([foreign.path, os.path.realpath(foreign.base_path)])
    return root if len(Path(root).parts) > _MIN_SCAN_DEPTH else None


def merge_problems(foreign: Foreign, at: Where) -> Iterator[Problem]:
    """The in-memory-merge pitfall, through the lineage reader's proof from weights."""
    from graftline.engine.lineage.reader import ScanError, scan

    root = _scan_root(foreign)
    found = None
    if root is not None:
        try:
            node = scan([root]).get(foreign.path)
        except (ScanError, OSError):
            node = None
        found = node.in_memory_merge if node is not None else None
    if found is not None and found.certainty == "proven":
        yield Problem(f"the adapter at {foreign.path} was trained on an in-memory merge: "
                      + found.message.rstrip("."), **at, fix=SEEDS_FIX)
    elif found is not None:
        yield Problem(f"the adapter at {foreign.path}: {found.message}", **at, fix=SEEDS_FIX,
                      severity="warning")
    else:
        yield Problem(
            f"cannot prove that the adapter at {foreign.path} was trained on the weights of its "
            f"recorded base {foreign.base_path or foreign.base_ref}: a PEFT adapter carries no "
            "fingerprint of them, and no merge of that base was found beside it. If it was "
            "trained on a merge done in memory, PEFT recorded the old base and the result will "
            "be wrong", **at, fix=SEEDS_FIX, severity="warning")

"""`validate`'s checks for a combine whose `adapters` name adapter folders made elsewhere.

The plan has already read each folder with the one foreign resolver (`pipeline/foreign.py`:
adapter_config.json, r, recorded base, safetensors weights) and reported what is not an adapter
on `adapters[i]`. What needs the machine is checked here, as for a `from = path` stage: each
folder's recorded base is named, here and a full model (`foreign_checks.recorded_base_problems`),
the in-memory-merge pitfall (`foreign_checks.merge_problems`), and the combine's own rule: every
part applies to ONE model. A part made elsewhere applies to its recorded base, or to the
pipeline's base when the stage says `base_from = "pipeline"` (its recorded path is then not
checked, as for `from`).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

from graftline.engine.common.checkpoint_files import ADAPTER_CONFIG
from graftline.engine.pipeline.file import PipelineFile
from graftline.engine.pipeline.foreign_checks import (
    merge_problems,
    pipeline_base,
    recorded_base_problems,
)
from graftline.engine.pipeline.plan import CombinePart, Plan, StepPlan
from graftline.engine.pipeline.problems import Problem, Where

__all__ = ["combine_problems"]

SAME_BASE_FIX = ("combine adapters trained on the same model: use one made on {want}, or train "
                 "it in this pipeline; if its recorded base is that same model saved at another "
                 'path, set base_from = "pipeline" on this stage (or edit base_model_name_or_path '
                 "in {config})")
WHICH_WINS_FIX = ('say which wins: base_from = "adapter" (combine on the model they were trained '
                  'on; export merges into it) or base_from = "pipeline" (load them on [pipeline] '
                  "base); or set [pipeline] base to their base")


def combine_problems(pf: PipelineFile, plan: Plan) -> Iterator[Problem]:
    base = pipeline_base(pf)
    for step in plan.steps:
        if any(p.foreign is not None and p.foreign.kind == "adapter" for p in step.parts):
            yield from _step_problems(pf, plan, step, base)


def _where(pf: PipelineFile, step: StepPlan, part: CombinePart) -> Where:
    return Where(file=str(pf.path), line=pf.line(step.name, "adapters"), stage=step.name,
                 field=f"adapters[{part.index}]")


def _stage_model(plan: Plan, name: str, base: str | None) -> tuple[str | None, str]:
    """The model an earlier stage's adapter applies to: (real path or None, in words)."""
    up = plan.step(name)
    if up.model_stage is not None:
        return f"stage:{up.model_stage}", f"the merged model from '{up.model_stage}'"
    if up.model_foreign is not None:
        return os.path.realpath(up.model_foreign), up.model_foreign
    return base, f"[pipeline] base {plan.base}" + (f" ({base})" if base else "")


def _step_problems(pf: PipelineFile, plan: Plan, step: StepPlan, base: str | None
                   ) -> Iterator[Problem]:
    stage = step.stage
    on_pipeline = stage.base_from == "pipeline"
    bases: dict[int, str | None] = {}  # part index → the model it applies to (None: unknown)
    for part in step.parts:
        foreign = part.foreign
        if foreign is None or foreign.kind != "adapter":
            continue
        at = _where(pf, step, part)
        if on_pipeline:
            bases[part.index] = base
            continue
        found = list(recorded_base_problems(foreign, at))
        yield from found
        if foreign.source != "graftline":
            yield from merge_problems(foreign, at)
        bases[part.index] = None if found or foreign.base_path is None \
            else os.path.realpath(foreign.base_path)
    # the one model: the first stage's, else (adapters made elsewhere only) the pipeline's base,
    # unless base_from = "adapter" says theirs wins
    staged = [p for p in step.parts if p.stage is not None and p.stage in
              {s.name for s in plan.steps}]
    if staged:
        want, words = _stage_model(plan, staged[0].entry, base)
        words = f"adapters[{staged[0].index}] ('{staged[0].entry}') applies to {words}"
        fix = SAME_BASE_FIX
    elif stage.base_from == "adapter":
        first = next((i for i, b in bases.items() if b is not None), None)
        if first is None:
            return
        want, words = bases[first], f"adapters[{first}] applies to {bases[first]}"
        fix = SAME_BASE_FIX
    else:
        want = base
        words = f"[pipeline] base is {pf.pipeline.pipeline.base} ({base})"
        fix = WHICH_WINS_FIX
    if want is None:
        return  # a base that is not here is reported on its own
    for part in step.parts:
        got = bases.get(part.index)
        if got is None or got == want or part.foreign is None:
            continue
        config = Path(part.foreign.path) / ADAPTER_CONFIG
        yield Problem(f"the adapter at {part.foreign.path} was trained on {got}, but {words}: a "
                      "combine adds adapters made on one model", **_where(pf, step, part),
                      fix=fix.format(want=want.removeprefix("stage:"), config=config))

"""Combine: PEFT's add_weighted_adapter over adapters trained on the same base.

`cat` (the default) is the exact weighted sum of the adapters' deltas, at rank = sum of ranks;
`linear` scales A and B by √w separately and is far from the sum (FINDINGS.md). The weights are
used exactly as given unless `normalize = true`, and both are recorded in the manifest.

Each part is an earlier stage's adapter or a PEFT adapter folder made elsewhere (the plan read it
with the one foreign resolver). A folder made elsewhere applies to the model a `from = path`
stage would load it on: its recorded base, or the pipeline's with `base_from = "pipeline"`. It is
read, never written, and the manifest names it by path as a foreign parent, so lineage shows it
and cleanup never deletes it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from graftline.engine.common.checkpoint_files import ADAPTER_CONFIG
from graftline.engine.common.tokenizer_files import save_tokenizer
from graftline.engine.lineage import manifest as mf
from graftline.engine.pipeline import spec
from graftline.engine.stages import checks
from graftline.engine.stages.context import StageContext, StageOutcome, stage_dir
from graftline.engine.stages.loading import load_full
from graftline.engine.stages.parents import foreign_ref, lora_spec_from_config, parent_ref


@dataclass(frozen=True)
class _Source:
    """Where one part is read from and the model it applies to (None: unknown)."""

    label: str
    directory: Path
    base: str | None
    foreign: Any = None  # pipeline.foreign.Foreign, for a folder made elsewhere


def _same(path: str | None) -> str | None:
    """One spelling per model: a local folder by its real path, a hub id as written."""
    return os.path.realpath(path) if path and os.path.isdir(path) else path


def _sources(ctx: StageContext, stage: spec.CombineStage) -> list[_Source]:
    parts = getattr(ctx.step, "parts", ()) or ()
    if not parts:  # a plan without parts names stages only
        return [_stage_source(ctx, name) for name in stage.adapters]
    found = []
    for part in parts:
        foreign = part.foreign
        if foreign is None:
            found.append(_stage_source(ctx, part.entry))
            continue
        if not (Path(foreign.path) / ADAPTER_CONFIG).is_file():
            raise checks.StageFailed(ctx.name, f"adapters[{part.index}]: the adapter at "
                                     f"{foreign.path} is gone (no {ADAPTER_CONFIG})",
                                     "it was moved or deleted after validate",
                                     "restore the folder, or point the entry at where it is now")
        # the model a `from = path` stage would load it on (stages.loading.load_foreign)
        on = ctx.base_path if stage.base_from == "pipeline" else \
            (foreign.base_path or foreign.base_ref)
        found.append(_Source(f"adapters[{part.index}] ({foreign.path})", Path(foreign.path),
                             _same(on), foreign))
    return found


def _stage_source(ctx: StageContext, name: str) -> _Source:
    directory = stage_dir(ctx.run_dir, name)
    found = mf.read(directory)
    return _Source(f"'{name}'", directory,
                   _same(found.base or ctx.base_path) if found is not None else None)


def run(ctx: StageContext) -> StageOutcome:
    from peft import PeftModel

    stage = ctx.spec_as(spec.CombineStage)
    names: list[str] = list(stage.adapters)
    weights = [float(w) for w in stage.weights]
    if stage.normalize:
        total = sum(weights)
        weights = [w / total for w in weights]
    sources = _sources(ctx, stage)
    bases = {s.base for s in sources}
    if None in bases or len(bases) != 1:
        seen = ", ".join(f"{s.label} on {s.base or 'an unknown model'}" for s in sources)
        raise checks.StageFailed(ctx.name, f"the adapters do not share one base ({seen})",
                                 "they were trained on different models",
                                 "combine adapters trained on the same base or merged model")
    base = bases.pop() or ctx.base_path
    model, tokenizer = load_full(ctx, base, for_merge=True)
    parts = [f"part{i}" for i in range(len(sources))]
    model = PeftModel.from_pretrained(model, str(sources[0].directory), adapter_name=parts[0])
    for part, source in zip(parts[1:], sources[1:], strict=True):
        model.load_adapter(str(source.directory), adapter_name=part)
    kwargs: dict[str, float] = {}
    if stage.svd_rank is not None:
        kwargs["svd_rank"] = stage.svd_rank
    if stage.density is not None:
        kwargs["density"] = stage.density
    model.add_weighted_adapter(parts, weights, adapter_name=checks.ADAPTER,
                               combination_type=stage.method, **kwargs)
    model.set_adapter(checks.ADAPTER)
    for part in parts:
        model.delete_adapter(part)
    # PEFT copies the first part's config, recorded base included: a folder made elsewhere may
    # record it relative to itself, so the result names the model it was really combined on
    model.peft_config[checks.ADAPTER].base_model_name_or_path = str(base)
    out = ctx.stage_dir
    model.save_pretrained(str(out), selected_adapters=[checks.ADAPTER])
    save_tokenizer(tokenizer, out)
    log = checks.CheckLog(ctx.name, ctx.sink)
    log.record(checks.no_stray_ref(out))
    log.record(checks.adapter_base(out, base))
    outcome = StageOutcome(kind="combined", checks=log, base=str(base))
    outcome.lora = lora_spec_from_config(model.peft_config[checks.ADAPTER])
    outcome.parents = [
        foreign_ref(ctx, "combined_from", s.foreign) if s.foreign is not None
        else parent_ref(ctx, "combined_from", name)
        for s, name in zip(sources, names, strict=True)
    ]
    outcome.extra["combine"] = {"method": stage.method, "adapters": names,
                                "weights_given": list(stage.weights),
                                "weights_used": weights,
                                "normalized": bool(stage.normalize)}
    return outcome

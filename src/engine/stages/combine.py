"""Combine: PEFT's add_weighted_adapter over adapters trained on the same base.

`cat` (the default) is the exact weighted sum of the adapters' deltas, at rank = sum of ranks;
`linear` scales A and B by √w separately and is far from the sum (FINDINGS.md). The weights are
used exactly as given unless `normalize = true`, and both are recorded in the manifest.
"""

from __future__ import annotations

from graftline.engine.lineage import manifest as mf
from graftline.engine.pipeline import spec
from graftline.engine.stages import checks
from graftline.engine.stages.common import (
    StageContext,
    StageOutcome,
    load_full,
    lora_spec_from_config,
    parent_ref,
    stage_dir,
)


def run(ctx: StageContext) -> StageOutcome:
    from peft import PeftModel

    stage = ctx.spec_as(spec.CombineStage)
    names: list[str] = list(stage.adapters)
    weights = [float(w) for w in stage.weights]
    if stage.normalize:
        total = sum(weights)
        weights = [w / total for w in weights]
    found = [mf.read(stage_dir(ctx.run_dir, n)) for n in names]
    bases = {f.base for f in found if f is not None}
    if any(f is None for f in found) or len(bases) != 1:
        raise checks.StageFailed(ctx.name, f"the adapters {names} do not share one base "
                                 f"(bases: {sorted(str(b) for b in bases)})",
                                 "they were trained on different models",
                                 "combine adapters trained on the same base or merged model")
    base = bases.pop() or ctx.base_path
    model, tokenizer = load_full(ctx, base, for_merge=True)
    parts = [f"part{i}" for i in range(len(names))]
    model = PeftModel.from_pretrained(model, str(stage_dir(ctx.run_dir, names[0])),
                                      adapter_name=parts[0])
    for part, name in zip(parts[1:], names[1:], strict=True):
        model.load_adapter(str(stage_dir(ctx.run_dir, name)), adapter_name=part)
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
    out = ctx.stage_dir
    model.save_pretrained(str(out), selected_adapters=[checks.ADAPTER])
    tokenizer.save_pretrained(str(out))
    log = checks.CheckLog(ctx.name, ctx.sink)
    log.record(checks.no_stray_ref(out))
    log.record(checks.adapter_base(out, base))
    outcome = StageOutcome(kind="combined", checks=log, base=str(base))
    outcome.lora = lora_spec_from_config(model.peft_config[checks.ADAPTER])
    outcome.parents = [parent_ref(ctx, "combined_from", n) for n in names]
    outcome.extra["combine"] = {"method": stage.method, "adapters": names,
                                "weights_given": list(stage.weights),
                                "weights_used": weights,
                                "normalized": bool(stage.normalize)}
    return outcome

"""The plan in words: what a step starts from and what it writes (the `plan` command and the
launch screen print these), and the notes on what the plan could not size or what a LoRA misses
on a mixture of experts. Pure: strings from the plan's own records.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from graftline.engine.pipeline import spec
from graftline.engine.pipeline.foreign import Foreign
from graftline.engine.pipeline.modelinfo import ModelInfo

if TYPE_CHECKING:  # plan.py imports this module: its records only as annotations here
    from graftline.engine.pipeline.plan import Action, CombinePart, StepPlan


def size_notes(base: str, info: ModelInfo | None, steps: list[StepPlan]) -> tuple[str, ...]:
    """What the plan could not size, and LoRA targets that miss a mixture's experts."""
    unknown = () if info is not None else (
        f"sizes unknown: no config.json for '{base}' on this machine (a local path or the "
        "Hugging Face cache); nothing is downloaded",)
    return unknown + moe_target_notes(info, [s.lora for s in steps if s.lora is not None])


# What PEFT 0.21 with transformers 5.17 does with `target_modules = "all-linear"` on the
# mixture-of-experts families we measured (experts are parameters, not nn.Linear modules).
MOE_ALL_LINEAR = {
    "qwen3_moe": "the attention projections, and — through PEFT's weight conversion for this "
                 "family — the experts' fused gate_up_proj/down_proj and the router as "
                 "target_parameters",
    "gpt_oss": "the attention projections only: the experts (gate_up_proj, down_proj) and the "
               "router are parameters it does not reach",
}


def moe_target_notes(info: ModelInfo | None, loras: list[spec.Lora]) -> tuple[str, ...]:
    """In words, what an adapter reaches on a mixture-of-experts base. Pure."""
    if info is None or not info.experts:
        return ()
    notes: list[str] = []
    if any(lora.target_modules == "all-linear" and not lora.target_parameters
           for lora in loras):
        reached = MOE_ALL_LINEAR.get(
            info.model_type, "the attention projections (and any nn.Linear router or shared "
            "expert); the experts are parameters, reached only through lora.target_parameters")
        notes.append(
            f"mixture of experts ({info.model_type or 'this model'}, {info.experts} experts a "
            f"layer): target_modules = \"all-linear\" trains {reached}. To train the experts "
            "for sure, name them: lora = { target_parameters = [\"mlp.experts.gate_up_proj\", "
            "\"mlp.experts.down_proj\"] } (dropout 0; the export merges each expert's delta)")
    for lora in loras:
        if lora.target_parameters:
            notes.append(f"LoRA on parameters: {', '.join(lora.target_parameters)} (PEFT "
                         "target_parameters; each expert gets its own rank-r delta)")
            break
    return tuple(notes)


def starts_from(
    stage: spec.AnyStage, action: Action, parent: str | None, model: str,
    foreign: Foreign | None = None, parts: tuple[CombinePart, ...] | None = None,
) -> str:
    if isinstance(stage, spec.CombineStage):
        return " + ".join(p.label for p in parts or ()) + f" on {model}"
    if foreign is not None:
        what = "adapter" if foreign.kind == "adapter" else "model"
        if action == "continue":
            return f"the {what} at {foreign.path}, continued, on {model}"
        if action == "new":
            return f"a new adapter on {model}"
        return f"the {what} at {foreign.path}" + (f" on {model}" if what == "adapter" else "")
    if parent is None:
        return "the base model"
    if action == "continue":
        return f"'{parent}' adapter on {model}"
    if action == "new":
        return model
    return f"'{parent}'"


def writes(stage: spec.AnyStage, lora: spec.Lora | None) -> str:
    if isinstance(stage, spec.TrainingStage):
        if lora is None:
            return ""
        rows = lora.trainable_tokens
        tokens = "" if not rows else " + the template's token rows" if rows == "template" \
            else f" + token rows {', '.join(rows)}"
        return f"adapter r={lora.r} α={lora.lora_alpha}{tokens}"
    if isinstance(stage, spec.MergeStage):
        return "full merged model (config, tokenizer, weights)"
    if isinstance(stage, spec.CombineStage):
        return f"combined adapter ({stage.method})"
    if isinstance(stage, spec.GenerateStage):
        return "a JSONL dataset"
    if isinstance(stage, spec.EvalStage):
        return "evaluation.json"
    return f"exported model → {stage.out}"


__all__ = ["MOE_ALL_LINEAR", "moe_target_notes", "size_notes", "starts_from", "writes"]

"""The plan: what each stage starts from, what it does to the adapter, what it writes.

Pure functions over a parsed pipeline. The runner executes this plan; `graftline plan` prints it;
`validate` reports the adapter-flow errors found while building it (stacking, continuing nothing,
a rank change without a merge).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from graftline.engine.common import disk
from graftline.engine.pipeline import spec
from graftline.engine.pipeline.modelinfo import ModelInfo, describe
from graftline.engine.pipeline.problems import Problem, did_you_mean

Action = Literal["new", "continue", "merge", "combine", "none"]
MODEL_KINDS = frozenset({"sft", "dpo", "grpo", "merge", "combine"})


@dataclass(frozen=True)
class StepPlan:
    name: str
    kind: str
    stage: spec.StageBase
    parent: str | None  # the stage this one starts from; None = the pipeline's base
    action: Action
    model_stage: str | None  # the full model the result sits on: None = base, or a merge stage
    lora: spec.Lora | None = None
    train: spec.Train | None = None  # lr already multiplied by lr_multiplier
    reference: str | None = None
    reference_label: str | None = None  # the reference as a table cell: "sft (frozen)", "base"
    starts_from: str = ""
    writes: str = ""
    bytes: int | None = None
    origin: str | None = None  # the [[foreach]] template it was expanded from

    @property
    def produces_adapter(self) -> bool:
        return self.kind in spec.ADAPTER_KINDS


@dataclass(frozen=True)
class Plan:
    name: str
    base: str
    steps: tuple[StepPlan, ...]
    problems: tuple[Problem, ...] = ()
    model: ModelInfo | None = None
    free_bytes: int | None = None
    notes: tuple[str, ...] = field(default_factory=tuple)

    @property
    def total_bytes(self) -> int | None:
        sizes = [s.bytes for s in self.steps]
        return None if any(b is None for b in sizes) else sum(sizes)  # type: ignore[misc]

    @property
    def merged_bytes(self) -> int | None:
        """What the full-model stages (merges) add to the total: the part a user can trade away by
        exporting instead of keeping merged bases, once nothing downstream needs them."""
        sizes = [s.bytes for s in self.steps if s.kind == "merge"]
        return None if any(b is None for b in sizes) else sum(sizes)  # type: ignore[misc]

    def step(self, name: str) -> StepPlan:
        return next(s for s in self.steps if s.name == name)


def _default_parent(previous: list[StepPlan]) -> str | None:
    for step in reversed(previous):
        if step.kind in MODEL_KINDS:
            return step.name
    return None


def _model_words(model_stage: str | None) -> str:
    return "the base model" if model_stage is None else f"the merged model from '{model_stage}'"


def _reference(
    stage: spec.StageBase, action: Action, parent: str | None, model_stage: str | None
) -> str | None:
    if isinstance(stage, spec.GRPOStage) and stage.beta == 0:
        return "none (beta = 0: no KL term, no reference model)"
    if not isinstance(stage, spec.DPOStage | spec.GRPOStage):
        return None
    how = ", log-probs precomputed" if getattr(stage, "precompute_ref", False) else ""
    if action == "continue":
        return f"the '{parent}' adapter as it is when '{stage.name}' starts (frozen copy{how})"
    return f"{_model_words(model_stage)} with the adapter disabled{how}"


def _reference_label(
    stage: spec.StageBase, action: Action, parent: str | None, model_stage: str | None
) -> str | None:
    """The same fact as `_reference`, short enough for a table cell."""
    if isinstance(stage, spec.GRPOStage) and stage.beta == 0:
        return "none"
    if not isinstance(stage, spec.DPOStage | spec.GRPOStage):
        return None
    if action == "continue":
        return f"{parent} (frozen)"
    return f"{model_stage or 'base'} (adapter off)"


def _bytes(
    step_kind: str,
    stage: spec.StageBase,
    lora: spec.Lora | None,
    info: ModelInfo | None,
    combined_r: int | None,
) -> int | None:
    if step_kind in ("eval",):
        return 4096
    if step_kind == "generate":
        return 1 << 20
    if info is None:
        return None
    if step_kind == "merge":
        return info.full_bytes(getattr(stage, "dtype", None) or info.dtype)
    if step_kind == "export":
        return info.full_bytes(getattr(stage, "dtype", "bfloat16"))
    if step_kind == "combine" and combined_r:
        return info.lora_bytes(combined_r)
    if lora is None:
        return None
    adapter = info.lora_bytes(lora.r, lora.target_modules)
    train = getattr(stage, "train", None)
    # Trainer checkpoints hold the adapter plus AdamW's two moments; we keep the last two.
    resume = 2 * 3 * adapter if train is not None and train.save_steps else 0
    return adapter + resume


def build_plan(
    pipeline: spec.Pipeline,
    *,
    file: str = "<pipeline>",
    search_dir: Path | None = None,
    runs_dir: Path | None = None,
    origins: dict[str, str] | None = None,
    line_of: Callable[[str, str], int | None] | None = None,
) -> Plan:
    """Resolve every stage's parent, adapter action, LoRA shape and reference.

    Adapter-flow mistakes become Problems on the plan (not exceptions), so `validate` reports
    them all together with every other problem.
    """
    info = describe(pipeline.pipeline.base, search_dir)
    names = [s.name for s in pipeline.stage]
    problems: list[Problem] = []
    steps: list[StepPlan] = []
    by_name: dict[str, StepPlan] = {}

    def problem(stage: spec.StageBase, fieldname: str, message: str, fix: str) -> None:
        problems.append(
            Problem(
                message,
                file,
                line_of(stage.name, fieldname) if line_of else None,
                stage.name,
                fieldname,
                fix,
            )
        )

    for stage in pipeline.stage:
        kind = stage.kind  # type: ignore[attr-defined]
        parent: str | None
        if stage.from_ in (None, ""):
            parent = _default_parent(steps)
        elif stage.from_ == "base":
            parent = None
        else:
            parent = stage.from_
        if parent is not None and parent not in by_name:
            if parent == stage.name:
                problem(
                    stage,
                    "from",
                    f"stage '{stage.name}' starts from itself (a cycle)",
                    "point `from` at an earlier stage or 'base'",
                )
            elif parent in names:
                problem(
                    stage,
                    "from",
                    f"'{parent}' comes later in the file; stages run in file "
                    "order, so this would be a cycle",
                    f"move '{parent}' above '{stage.name}'",
                )
            else:
                problem(
                    stage,
                    "from",
                    f"no stage named '{parent}'",
                    did_you_mean(parent, [*names, "base"]),
                )
            parent = None
        up = by_name.get(parent) if parent else None
        action: Action = "none"
        model_stage = up.model_stage if up else None
        lora: spec.Lora | None = None
        combined_r: int | None = None

        if kind in spec.TRAINING_KINDS:
            parent_has_adapter = up is not None and up.produces_adapter
            wanted = stage.adapter or ("continue" if parent_has_adapter else "new")  # type: ignore[attr-defined]
            action = wanted
            if wanted == "new":
                if parent_has_adapter:
                    problem(
                        stage,
                        "adapter",
                        f"a new adapter on top of '{parent}', which is an "
                        "adapter, would stack two adapters",
                        f"add a merge stage after "
                        f'\'{parent}\', or set adapter = "continue", or from = "base"',
                    )
                model_stage = up.name if up is not None and up.kind == "merge" else model_stage
                lora = stage.lora or pipeline.defaults.lora  # type: ignore[attr-defined]
            else:
                if not parent_has_adapter:
                    start = "the base model" if up is None else f"'{parent}' ({up.kind})"
                    problem(
                        stage,
                        "adapter",
                        f'adapter = "continue" but {start} has no adapter to continue',
                        'use adapter = "new"',
                    )
                lora = up.lora if up is not None else None
                asked = stage.lora  # type: ignore[attr-defined]
                if asked is not None and lora is not None and asked != lora:
                    what = (
                        f"rank {lora.r} → {asked.r}"
                        if asked.r != lora.r
                        else "a different LoRA config"
                    )
                    problem(
                        stage,
                        "lora",
                        f"continuing '{parent}' with {what}: a continued adapter keeps its shape",
                        f"add a merge stage after '{parent}' and start a new adapter "
                        '(adapter = "new"), or drop `lora` from this stage',
                    )
        elif kind == "merge":
            action = "merge"
            if up is None or not up.produces_adapter:
                problem(
                    stage,
                    "from",
                    "a merge needs an adapter to merge, but "
                    f"{'the base' if up is None else repr(parent)} is a full model",
                    "point `from` at an sft, dpo, grpo or combine stage",
                )
            model_stage = stage.name
        elif kind == "combine":
            action = "combine"
            parts = [by_name.get(a) for a in stage.adapters]  # type: ignore[attr-defined]
            for name, part in zip(stage.adapters, parts, strict=True):  # type: ignore[attr-defined]
                if part is None:
                    problem(
                        stage,
                        "adapters",
                        f"no earlier stage named '{name}'",
                        "list adapters made by earlier stages",
                    )
                elif not part.produces_adapter:
                    problem(
                        stage,
                        "adapters",
                        f"'{name}' is a {part.kind} stage, not an adapter",
                        "combine only sft, dpo, grpo or combine stages",
                    )
            real = [p for p in parts if p is not None and p.produces_adapter]
            if len(stage.weights) != len(stage.adapters):  # type: ignore[attr-defined]
                problem(
                    stage,
                    "weights",
                    f"{len(stage.weights)} weights for "  # type: ignore[attr-defined]
                    f"{len(stage.adapters)} adapters",
                    "give one weight per adapter",
                )  # type: ignore[attr-defined]
            if len({p.model_stage for p in real}) > 1:
                problem(
                    stage,
                    "adapters",
                    "the adapters sit on different base models",
                    "combine adapters trained on the same base",
                )
            ranks = {p.lora.r for p in real if p.lora}
            method = stage.method  # type: ignore[attr-defined]
            if (
                method in ("linear", "ties", "dare_linear", "dare_ties", "magnitude_prune")
                and len(ranks) > 1
            ):
                problem(
                    stage,
                    "method",
                    f"method '{method}' needs equal ranks, got {sorted(ranks)}",
                    'use method = "cat" (exact) or "svd"',
                )
            if real:
                model_stage = real[0].model_stage
                first = real[0].lora
                if method == "cat":
                    combined_r = sum(p.lora.r for p in real if p.lora)
                else:
                    combined_r = stage.svd_rank or max(ranks or {0})  # type: ignore[attr-defined]
                if first is not None:
                    lora = first.model_copy(update={"r": combined_r, "alpha": combined_r})
            parent = None
        elif kind in ("eval", "generate", "export"):
            action = "none"

        train = getattr(stage, "train", None)
        if train is not None:
            train = train.model_copy(update={"lr": train.effective_lr, "lr_multiplier": 1.0})
        step = StepPlan(
            name=stage.name,
            kind=kind,
            stage=stage,
            parent=parent,
            action=action,
            model_stage=model_stage,
            lora=lora,
            train=train,
            reference=_reference(stage, action, parent, model_stage),
            reference_label=_reference_label(stage, action, parent, model_stage),
            starts_from=_starts_from(kind, action, parent, model_stage, stage),
            writes=_writes(kind, lora, stage),
            bytes=_bytes(kind, stage, lora, info, combined_r),
            origin=(origins or {}).get(stage.name),
        )
        steps.append(step)
        by_name[stage.name] = step

    free = disk.free_bytes(runs_dir) if runs_dir is not None else None
    notes = (
        ()
        if info is not None
        else (
            f"sizes unknown: no config.json for '{pipeline.pipeline.base}' on this machine "
            "(a local path or the Hugging Face cache); nothing is downloaded",
        )
    )
    return Plan(
        pipeline.pipeline.name,
        pipeline.pipeline.base,
        tuple(steps),
        tuple(problems),
        info,
        free,
        notes,
    )


def _starts_from(
    kind: str, action: Action, parent: str | None, model_stage: str | None, stage: spec.StageBase
) -> str:
    if kind == "combine":
        return " + ".join(stage.adapters) + f" on {_model_words(model_stage)}"  # type: ignore[attr-defined]
    if parent is None:
        return "the base model"
    if action == "continue":
        return f"'{parent}' adapter on {_model_words(model_stage)}"
    if action == "new":
        return _model_words(model_stage)
    return f"'{parent}'"


def _writes(kind: str, lora: spec.Lora | None, stage: spec.StageBase) -> str:
    if kind in spec.TRAINING_KINDS and lora is not None:
        return f"adapter r={lora.r} α={lora.lora_alpha}"
    return {
        "merge": "full merged model (config, tokenizer, weights)",
        "combine": f"combined adapter ({getattr(stage, 'method', '')})",
        "generate": "a JSONL dataset",
        "eval": "evaluation.json",
        "export": f"exported model → {getattr(stage, 'out', '')}",
    }.get(kind, "")


def resolve(pipeline: spec.Pipeline) -> list[StepPlan]:
    """The steps alone, for the runner (which has already validated the file)."""
    return list(build_plan(pipeline).steps)

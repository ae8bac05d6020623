"""The plan: what each stage starts from, what it does to the adapter, what it writes.

Pure functions over a parsed pipeline. The runner executes this plan; `graftline plan` prints it;
`validate` reports the adapter-flow errors found while building it (stacking, continuing nothing,
a rank change without a merge).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from graftline.engine.common import disk
from graftline.engine.pipeline import spec
from graftline.engine.pipeline.disk_forecast import stage_bytes
from graftline.engine.pipeline.foreign import Foreign, ForeignError, is_reference, read_foreign
from graftline.engine.pipeline.modelinfo import ModelInfo, describe
from graftline.engine.pipeline.plan_words import size_notes, starts_from, writes
from graftline.engine.pipeline.problems import Problem, did_you_mean

Action = Literal["new", "continue", "merge", "combine", "none"]
MODEL_KINDS = frozenset({"sft", "dpo", "grpo", "merge", "combine"})
# How a planner reports an adapter-flow mistake: (stage, field, message, fix).
Report = Callable[[spec.StageBase, str, str, str], None]


@dataclass(frozen=True)
class CombinePart:
    """One entry of a combine's `adapters`: an earlier stage, or a PEFT adapter folder made
    elsewhere (a path relative to the pipeline file, read by the one foreign resolver)."""

    index: int
    entry: str  # as written
    stage: str | None = None
    foreign: Foreign | None = None

    @property
    def label(self) -> str:
        return self.foreign.label if self.foreign is not None else self.entry

    def describe(self) -> str:
        """Where it comes from, in words, for `plan`."""
        what = self.foreign.describe() if self.foreign is not None else f"stage '{self.entry}'"
        return f"{what} (adapters[{self.index}])"


@dataclass(frozen=True)
class StepPlan:
    name: str
    kind: str
    stage: spec.AnyStage
    parent: str | None  # the stage this one starts from; None = the pipeline's base (or `foreign`)
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
    # A checkpoint outside the run (issue 19): `foreign` is what this stage starts from when its
    # `from` names one (then `parent` is None); `model_foreign` is the full model outside the
    # run that the result sits on, when `model_stage` is None and it is not the pipeline's base.
    foreign: Foreign | None = None
    model_foreign: str | None = None
    # A combine's adapters, each a stage or an adapter folder made elsewhere (in file order).
    parts: tuple[CombinePart, ...] = ()

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
        return _sum_known([s.bytes for s in self.steps])

    @property
    def merged_bytes(self) -> int | None:
        """What the full-model stages (merges) add to the total: the part a user can trade away by
        exporting instead of keeping merged bases, once nothing downstream needs them."""
        return _sum_known([s.bytes for s in self.steps if s.kind == "merge"])

    def step(self, name: str) -> StepPlan:
        return next(s for s in self.steps if s.name == name)

    @property
    def chain_words(self) -> tuple[str, ...]:
        """The checkpoints from outside the run that stages start from or combine, in words."""
        words: list[str] = []
        for s in self.steps:
            if s.foreign is not None:
                words.append(f"'{s.name}' starts from {s.foreign.describe()}"
                             + (f"; its result sits on {s.model_foreign}"
                                if s.model_foreign else ""))
            for part in s.parts:
                if part.foreign is not None:
                    words.append(f"'{s.name}' combines {part.describe()}")
        return tuple(words)


def _sum_known(sizes: list[int | None]) -> int | None:
    """The total, or None when any part is unknown."""
    known = [b for b in sizes if b is not None]
    return sum(known) if len(known) == len(sizes) else None


def _default_parent(previous: list[StepPlan]) -> str | None:
    for step in reversed(previous):
        if step.kind in MODEL_KINDS:
            return step.name
    return None


def _model_words(model_stage: str | None, model_foreign: str | None = None) -> str:
    if model_stage is None and model_foreign is not None:
        return f"the model at {model_foreign}"
    return "the base model" if model_stage is None else f"the merged model from '{model_stage}'"


def _reference(
    stage: spec.StageBase, action: Action, parent: str | None, model: str
) -> str | None:
    if isinstance(stage, spec.GRPOStage) and stage.beta == 0:
        return "none (beta = 0: no KL term, no reference model)"
    if not isinstance(stage, spec.DPOStage | spec.GRPOStage):
        return None
    precomputed = isinstance(stage, spec.DPOStage) and stage.precompute_ref
    how = ", log-probs precomputed" if precomputed else ""
    if action == "continue":
        return f"the '{parent}' adapter as it is when '{stage.name}' starts (frozen copy{how})"
    return f"{model} with the adapter disabled{how}"


def _reference_label(
    stage: spec.StageBase, action: Action, parent: str | None, model_label: str | None
) -> str | None:
    """The same fact as `_reference`, short enough for a table cell."""
    if isinstance(stage, spec.GRPOStage) and stage.beta == 0:
        return "none"
    if not isinstance(stage, spec.DPOStage | spec.GRPOStage):
        return None
    if action == "continue":
        return f"{parent} (frozen)"
    return f"{model_label or 'base'} (adapter off)"


@dataclass(frozen=True)
class _From:
    """What a stage starts from, as every kind sees it: the resolved parent and its step."""

    parent: str | None
    up: StepPlan | None
    by_name: Mapping[str, StepPlan]
    default_lora: spec.Lora
    report: Report
    foreign: Foreign | None = None  # `from` names a checkpoint outside the run
    search_dir: Path | None = None  # the pipeline file's folder: paths are relative to it


@dataclass(frozen=True)
class _Flow:
    """What a kind's planner decides: the adapter action and the model the result sits on."""

    action: Action
    model_stage: str | None
    parent: str | None
    lora: spec.Lora | None = None
    combined_r: int | None = None
    model_foreign: str | None = None
    parts: tuple[CombinePart, ...] = ()


def _foreign_model(stage: spec.StageBase, foreign: Foreign) -> str | None:
    """The full model outside the run that a foreign checkpoint's result sits on: the model
    itself, or the adapter's recorded base (None: the pipeline's base, when the stage says
    `base_from = "pipeline"`)."""
    if foreign.kind == "model":
        return foreign.path
    if stage.base_from == "pipeline":
        return None
    return foreign.base_path or foreign.base_ref


def _plan_foreign_training(stage: spec.TrainingStage, at: _From, foreign: Foreign) -> _Flow:
    """A training stage whose `from` is a checkpoint outside the run: the same rules as a stage
    parent (continue keeps the shape; a new adapter never stacks on an adapter)."""
    label = f"the adapter at {foreign.path}"
    if foreign.kind == "model":
        if stage.adapter == "continue":
            at.report(stage, "adapter",
                      f'adapter = "continue" but {foreign.path} is a full model with no adapter '
                      "to continue", 'use adapter = "new"')
        return _Flow("new", None, None, stage.lora or at.default_lora,
                     model_foreign=foreign.path)
    model = _foreign_model(stage, foreign)
    if stage.adapter == "new":
        at.report(stage, "adapter",
                  f"a new adapter on top of {label} would stack two adapters",
                  "add a merge stage with this `from` and start the new adapter from it, or set "
                  'adapter = "continue"')
        return _Flow("new", None, None, stage.lora or at.default_lora, model_foreign=model)
    _keeps_shape(stage, foreign.lora, label, "with this `from`", at)
    return _Flow("continue", None, None, foreign.lora, model_foreign=model)


def _keeps_shape(stage: spec.TrainingStage, lora: spec.Lora | None, label: str, merge_at: str,
                 at: _From) -> None:
    """A continued adapter keeps its LoRA shape: a stage asking for another one is reported."""
    asked = stage.lora
    if asked is None or lora is None or asked == lora:
        return
    what = f"rank {lora.r} → {asked.r}" if asked.r != lora.r else "a different LoRA config"
    at.report(stage, "lora", f"continuing {label} with {what}: a continued adapter keeps its shape",
              f"add a merge stage {merge_at} and start a new adapter from it (adapter = \"new\"), "
              "or drop `lora` from this stage")


def _plan_training(stage: spec.TrainingStage, at: _From) -> _Flow:
    if at.foreign is not None:
        return _plan_foreign_training(stage, at, at.foreign)
    parent, up = at.parent, at.up
    model_stage = up.model_stage if up else None
    model_foreign = up.model_foreign if up else None
    parent_has_adapter = up is not None and up.produces_adapter
    wanted: Literal["new", "continue"] = stage.adapter or (
        "continue" if parent_has_adapter else "new"
    )
    if wanted == "new":
        if parent_has_adapter:
            at.report(
                stage,
                "adapter",
                f"a new adapter on top of '{parent}', which is an "
                "adapter, would stack two adapters",
                f"add a merge stage after "
                f'\'{parent}\', or set adapter = "continue", or from = "base"',
            )
        if up is not None and up.kind == "merge":
            model_stage, model_foreign = up.name, None
        return _Flow("new", model_stage, parent, stage.lora or at.default_lora,
                     model_foreign=model_foreign)
    if not parent_has_adapter:
        start = "the base model" if up is None else f"'{parent}' ({up.kind})"
        at.report(
            stage,
            "adapter",
            f'adapter = "continue" but {start} has no adapter to continue',
            'use adapter = "new"',
        )
    lora = up.lora if up is not None else None
    _keeps_shape(stage, lora, f"'{parent}'", f"after '{parent}'", at)
    return _Flow("continue", model_stage, parent, lora, model_foreign=model_foreign)


def _plan_merge(stage: spec.MergeStage, at: _From) -> _Flow:
    up = at.up
    if at.foreign is not None:
        if at.foreign.kind != "adapter":
            at.report(stage, "from", f"a merge needs an adapter to merge, but {at.foreign.path} "
                      "is a full model", "point `from` at an adapter")
        return _Flow("merge", stage.name, None)
    if up is None or not up.produces_adapter:
        at.report(
            stage,
            "from",
            "a merge needs an adapter to merge, but "
            f"{'the base' if up is None else repr(at.parent)} is a full model",
            "point `from` at an sft, dpo, grpo or combine stage",
        )
    return _Flow("merge", stage.name, at.parent)


# Methods that add the adapters' matrices element-wise, so every rank must match.
_EQUAL_RANK_METHODS = ("linear", "ties", "dare_linear", "dare_ties", "magnitude_prune")


@dataclass(frozen=True)
class _Part:
    """What the flow needs of a combined adapter: the model it sits on and its shape."""

    model_stage: str | None
    model_foreign: str | None
    lora: spec.Lora | None


def _combine_part(stage: spec.CombineStage, index: int, entry: str, at: _From
                  ) -> tuple[CombinePart, _Part | None]:
    """One `adapters` entry: a stage above, or an adapter folder made elsewhere. A bad entry is
    reported on `adapters[i]` and left out of the flow."""
    field_name = f"adapters[{index}]"
    if is_reference(entry):
        try:
            foreign = read_foreign(entry, at.search_dir or Path.cwd())
        except ForeignError as exc:
            at.report(stage, field_name, exc.message, exc.fix)
            return CombinePart(index, entry), None
        part = CombinePart(index, entry, foreign=foreign)
        if foreign.kind != "adapter":
            at.report(stage, field_name,
                      f"{foreign.path} is a full model, not an adapter: there is nothing to "
                      "combine in it", "point it at a PEFT adapter folder (adapter_config.json "
                      "+ adapter weights), or add a stage that trains an adapter on that model")
            return part, None
        # the model it applies to, chosen as a `from = path` stage chooses (`base_from`)
        return part, _Part(None, _foreign_model(stage, foreign), foreign.lora)
    step = at.by_name.get(entry)
    if step is None:
        at.report(stage, field_name, f"no earlier stage named '{entry}'",
                  "list adapters made by earlier stages, or a path (with a `/`, relative to "
                  "this file) to a PEFT adapter folder made elsewhere")
        return CombinePart(index, entry), None
    part = CombinePart(index, entry, stage=entry)
    if not step.produces_adapter:
        at.report(stage, field_name, f"'{entry}' is a {step.kind} stage, not an adapter",
                  "combine only sft, dpo, grpo or combine stages, or adapter folders")
        return part, None
    return part, _Part(step.model_stage, step.model_foreign, step.lora)


def _plan_combine(stage: spec.CombineStage, at: _From) -> _Flow:
    model_stage = at.up.model_stage if at.up else None
    parts: list[CombinePart] = []
    planned: list[tuple[CombinePart, _Part]] = []  # the entries that resolved to an adapter
    for index, entry in enumerate(stage.adapters):
        part, flow = _combine_part(stage, index, entry, at)
        parts.append(part)
        if flow is not None:
            planned.append((part, flow))
    real = [flow for _, flow in planned]
    if len(stage.weights) != len(stage.adapters):
        at.report(
            stage,
            "weights",
            f"{len(stage.weights)} weights for {len(stage.adapters)} adapters",
            "give one weight per adapter",
        )
    # Stages' adapters are compared here; an adapter made elsewhere is compared with them by
    # validate (pipeline/combine_checks.py), which knows where the pipeline's base really is.
    staged = [flow for part, flow in planned if part.stage is not None]
    if len({(p.model_stage, p.model_foreign) for p in staged}) > 1:
        at.report(
            stage,
            "adapters",
            "the adapters sit on different base models",
            "combine adapters trained on the same base",
        )
    ranks = {p.lora.r for p in real if p.lora}
    method = stage.method
    if method in _EQUAL_RANK_METHODS and len(ranks) > 1:
        at.report(
            stage,
            "method",
            f"method '{method}' needs equal ranks, got {sorted(ranks)}",
            'use method = "cat" (exact) or "svd"',
        )
    lora: spec.Lora | None = None
    combined_r: int | None = None
    model_foreign: str | None = None
    if real:
        # the result sits on the stages' model when a stage is combined, else on the model the
        # first adapter made elsewhere applies to
        first_on = staged[0] if staged else real[0]
        model_stage, model_foreign = first_on.model_stage, first_on.model_foreign
        first = real[0].lora
        if method == "cat":
            combined_r = sum(p.lora.r for p in real if p.lora)
        else:
            combined_r = stage.svd_rank or max(ranks or {0})
        if first is not None:
            lora = first.model_copy(update={"r": combined_r, "alpha": combined_r})
    # A combine reads its adapters, not a parent: it has none.
    return _Flow("combine", model_stage, None, lora, combined_r, model_foreign, tuple(parts))


def _plan_stage(stage: spec.AnyStage, at: _From) -> _Flow:
    """Dispatch on the stage's model: each kind decides its own adapter flow."""
    if isinstance(stage, spec.TrainingStage):
        return _plan_training(stage, at)
    if isinstance(stage, spec.MergeStage):
        return _plan_merge(stage, at)
    if isinstance(stage, spec.CombineStage):
        return _plan_combine(stage, at)
    # eval, generate, export: read the model they start from, change nothing.
    if at.foreign is not None:
        return _Flow("none", None, None, model_foreign=_foreign_model(stage, at.foreign))
    return _Flow("none", at.up.model_stage if at.up else None, at.parent,
                 model_foreign=at.up.model_foreign if at.up else None)


def _resolve_foreign(stage: spec.AnyStage, search_dir: Path | None, report: Report
                     ) -> Foreign | None:
    """The checkpoint a path-like `from` names; a bad one is reported (and planned as the base,
    so the rest of the plan still resolves)."""
    if not is_reference(stage.from_):
        return None
    try:
        return read_foreign(str(stage.from_), search_dir or Path.cwd())
    except ForeignError as exc:
        report(stage, "from", exc.message, exc.fix)
        return None


def _resolve_parent(
    stage: spec.AnyStage, steps: list[StepPlan], names: list[str], report: Report
) -> str | None:
    """The stage this one starts from, or None for the base; a bad `from` is reported and
    planned as the base so the rest of the plan still resolves."""
    parent: str | None
    if is_reference(stage.from_):
        return None  # a checkpoint outside the run: `_resolve_foreign`
    if stage.from_ in (None, ""):
        parent = _default_parent(steps)
    elif stage.from_ == "base":
        parent = None
    else:
        parent = stage.from_
    if parent is None or any(s.name == parent for s in steps):
        return parent
    if parent == stage.name:
        report(
            stage,
            "from",
            f"stage '{stage.name}' starts from itself (a cycle)",
            "point `from` at an earlier stage or 'base'",
        )
    elif parent in names:
        report(
            stage,
            "from",
            f"'{parent}' comes later in the file; stages run in file "
            "order, so this would be a cycle",
            f"move '{parent}' above '{stage.name}'",
        )
    else:
        report(
            stage,
            "from",
            f"no stage named '{parent}'",
            did_you_mean(parent, [*names, "base"]),
        )
    return None


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

    def report(stage: spec.StageBase, fieldname: str, message: str, fix: str) -> None:
        # `adapters[1]` is written on the `adapters` line
        line = line_of(stage.name, fieldname.partition("[")[0]) if line_of else None
        problems.append(Problem(message, file, line, stage.name, fieldname, fix))

    for stage in pipeline.stage:
        parent = _resolve_parent(stage, steps, names, report)
        foreign = _resolve_foreign(stage, search_dir, report)
        up = by_name.get(parent) if parent else None
        flow = _plan_stage(stage, _From(parent, up, by_name, pipeline.defaults.lora, report,
                                        foreign, search_dir))
        model = _model_words(flow.model_stage, flow.model_foreign)
        parent_label = parent if foreign is None else foreign.label
        model_label = flow.model_stage or (foreign.label if foreign is not None and
                                           foreign.kind == "model" else None)
        train = None
        if isinstance(stage, spec.TrainingStage):
            train = stage.train.model_copy(
                update={"lr": stage.train.effective_lr, "lr_multiplier": 1.0}
            )
        step = StepPlan(
            name=stage.name,
            kind=stage.kind,
            stage=stage,
            parent=flow.parent,
            action=flow.action,
            model_stage=flow.model_stage,
            lora=flow.lora,
            train=train,
            reference=_reference(stage, flow.action, parent_label, model),
            reference_label=_reference_label(stage, flow.action, parent_label, model_label),
            starts_from=starts_from(stage, flow.action, flow.parent, model, foreign,
                                     flow.parts),
            writes=writes(stage, flow.lora),
            bytes=stage_bytes(stage, flow.lora, info, flow.combined_r),
            origin=(origins or {}).get(stage.name),
            foreign=foreign,
            model_foreign=flow.model_foreign,
            parts=flow.parts,
        )
        steps.append(step)
        by_name[stage.name] = step

    free = disk.free_bytes(runs_dir) if runs_dir is not None else None
    return Plan(pipeline.pipeline.name, pipeline.pipeline.base, tuple(steps), tuple(problems),
                info, free, size_notes(pipeline.pipeline.base, info, steps))


def resolve(pipeline: spec.Pipeline, search_dir: Path | None = None) -> list[StepPlan]:
    """The steps alone, for the runner (which has already validated the file). `search_dir`:
    the pipeline file's folder, which a `from` path is relative to."""
    return list(build_plan(pipeline, search_dir=search_dir).steps)

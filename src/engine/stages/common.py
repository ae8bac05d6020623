"""What a stage is given and what it gives back, and loading the model a checkpoint stands for."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import torch

from graftline.engine.backends.base import Backend
from graftline.engine.common.control import RunControl
from graftline.engine.common.layout import DONE, STAGES
from graftline.engine.common.sink import Sink
from graftline.engine.lineage import manifest as mf
from graftline.engine.pipeline import spec
from graftline.engine.stages.checks import CheckLog, token_ids_of

StageSpec = TypeVar("StageSpec", bound=spec.StageBase)


@dataclass(frozen=True)
class StageHooks:
    """Seams for tests that plant faults; a real run leaves them empty."""

    prepare_model: Callable[[StageContext], tuple[Any, Any, Any]] | None = None
    before_train: Callable[[Any], None] | None = None
    load_model: Callable[[str | Path], tuple[Any, Any]] | None = None


@dataclass(frozen=True)
class StageContext:
    stage: spec.StageBase
    step: Any  # plan.StepPlan
    index: int
    run_dir: Path
    run_id: str
    base_path: str  # the pipeline's base model, resolved
    backend: Backend
    sink: Sink
    control: RunControl
    quantization: str = "none"
    seed: int = 0
    probes: tuple[str, ...] = ()
    global_step_offset: int = 0
    resume_from: Path | None = None
    search_dir: Path = Path(".")
    hooks: StageHooks = StageHooks()
    report_to: tuple[str, ...] = ()  # [pipeline] report_to: trackers (stages/tracking.py)
    pipeline_name: str = ""  # [pipeline] name: the trackers' project

    @property
    def name(self) -> str:
        return self.stage.name

    @property
    def kind(self) -> str:
        return self.stage.kind  # type: ignore[attr-defined]

    @property
    def stage_dir(self) -> Path:
        return stage_dir(self.run_dir, self.name)

    def dir_of(self, stage_name: str | None) -> Path | None:
        return None if stage_name is None else stage_dir(self.run_dir, stage_name)

    def parent_dir(self) -> Path:
        """The directory of the stage this one starts from (the plan names one for `continue`
        and for stages that read a parent's output), or the checkpoint outside the run that its
        `from` names."""
        foreign = getattr(self.step, "foreign", None)
        if self.step.parent is None and foreign is not None:
            return Path(foreign.path)
        if self.step.parent is None:
            raise ValueError(f"stage '{self.name}' has no parent stage")
        return stage_dir(self.run_dir, self.step.parent)

    def model_path(self) -> str:
        """The full model a training stage's adapter sits on: the base, a merge's output, or a
        full model outside the run (a foreign model, or a foreign adapter's recorded base)."""
        model_stage = self.step.model_stage
        if model_stage is None and getattr(self.step, "model_foreign", None):
            return str(self.step.model_foreign)
        return self.base_path if model_stage is None else str(stage_dir(self.run_dir, model_stage))

    def resolve(self, relative: str) -> Path:
        path = Path(relative).expanduser()
        return path if path.is_absolute() else (self.search_dir / path).resolve()

    def spec_as(self, kind: type[StageSpec]) -> StageSpec:
        """The stage's spec as its own kind's model. The runner dispatches on the kind, so this
        holds; the check turns a dispatch bug into a clear error instead of a wrong attribute."""
        if not isinstance(self.stage, kind):
            raise TypeError(f"stage '{self.name}' is a {type(self.stage).__name__}, "
                            f"not a {kind.__name__}")
        return self.stage


@dataclass
class StageOutcome:
    status: str = "complete"  # complete | stopped
    kind: mf.Kind | None = None  # checkpoint kind written to the stage dir; None: no checkpoint
    parents: list[mf.Parent] = field(default_factory=list)
    base: str | None = None
    lora: mf.LoraSpec | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    history: list[dict[str, Any]] = field(default_factory=list)
    evaluation: dict[str, float] = field(default_factory=dict)
    checks: CheckLog | None = None
    steps: int = 0
    extra: dict[str, Any] = field(default_factory=dict)
    out_dir: Path | None = None  # where the checkpoint lives, when not the stage dir (export)


def stage_dir(run_dir: Path, name: str) -> Path:
    return Path(run_dir) / STAGES / name


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


def probe_prompts(ctx: StageContext, rows: Any = None, count: int = 4,
                  at_least: bool = False) -> list[str]:
    """The pipeline's probes, or the first prompts of the stage's own data. With `at_least`,
    the pipeline's probes topped up from the data to `count` (a collapse is judged on enough)."""
    if ctx.probes and not (at_least and len(ctx.probes) < count):
        return list(ctx.probes)
    found: list[str] = list(ctx.probes)
    if rows is not None and "prompt" in rows.column_names:
        for prompt in rows.select(range(min(count * 2, len(rows))))["prompt"]:
            if len(found) >= count:
                break
            if isinstance(prompt, list):
                users = [m.get("content", "") for m in prompt if m.get("role") == "user"]
                text = users[-1] if users else ""
            else:
                text = str(prompt)
            if text and text not in found:
                found.append(text)
    return [p for p in found if p] or ["Hello", "1+1"]


SAMPLE_PROBES = 8  # probes kept per sample event (the summary keeps the same)
SAMPLE_CHARS = 160  # characters kept per answer


def emit_samples(ctx: StageContext, when: str, probes: list[str], said: list[Any],
                 step: int | None = None, expected: dict[str, str] | None = None) -> None:
    """What the model answers to the probes (greedy, bounded), as a `samples` event: `when`
    start, eval (during training) or end of the stage, `step` the stage's step (sent on the
    run's global axis), `samples` [{prompt, answer, expected?}]: `expected`, the data's own
    answer to that prompt, when the data has one."""
    # the pipeline's own probes when it names them: the collapse check tops them up with rows
    # of the data, which are not what the user chose to read
    shown = min(SAMPLE_PROBES, len(ctx.probes) or len(probes))
    rows = []
    for p, g in zip(probes[:shown], said, strict=False):
        row = {"prompt": str(p)[:SAMPLE_CHARS], "answer": str(getattr(g, "text", g))[:SAMPLE_CHARS]}
        if expected and expected.get(str(p)):
            row["expected"] = expected[str(p)][:SAMPLE_CHARS]
        rows.append(row)
    ctx.sink.emit("samples", ctx.name, when=when, kind=ctx.kind, samples=rows,
                  global_step=ctx.global_step_offset + (step or 0))


def _answer_text(value: Any) -> str:
    """A completion or chosen answer as text: a conversation's assistant turns, or the text."""
    if isinstance(value, list):
        return "".join(str(m.get("content", "")) for m in value
                       if isinstance(m, dict) and m.get("role") == "assistant")
    return "" if value is None else str(value)


def expected_answers(rows: Any, probes: list[str], scan: int = 256) -> dict[str, str]:
    """The data's own answer to each probe that is one of its prompts (`completion`, else
    `chosen`), from the first `scan` rows; {} when the data has none (GRPO prompts, text)."""
    if rows is None or "prompt" not in rows.column_names:
        return {}
    column = next((c for c in ("completion", "chosen") if c in rows.column_names), None)
    if column is None:
        return {}
    wanted, found = set(probes), {}
    head = rows.select(range(min(scan, len(rows))))
    for prompt, answer in zip(head["prompt"], head[column], strict=True):
        if isinstance(prompt, list):
            users = [m.get("content", "") for m in prompt if m.get("role") == "user"]
            text = str(users[-1]) if users else ""
        else:
            text = str(prompt)
        if text in wanted and text not in found and (said := _answer_text(answer)):
            found[text] = said
    return found


def completed_earlier(directory: Path) -> dict[str, Any] | None:
    """{'steps': n} for a stage that completed earlier (its manifest, or the `stage.json` marker
    of stages that write no checkpoint), else None. A corrupt manifest or marker is not complete."""
    try:
        found = mf.read(directory) if (directory / mf.MANIFEST).is_file() else None
    except (OSError, ValueError):
        found = None
    if found is not None and found.status == "complete":
        return {"steps": int(found.metrics.get("steps", 0))}
    marker = directory / DONE
    if marker.is_file():
        try:
            data = json.loads(marker.read_text())
        except (OSError, ValueError):
            return None
        if data.get("status") == "complete":
            return {"steps": int(data.get("steps", 0))}
    return None

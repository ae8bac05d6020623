"""What a stage is given and what it gives back (`StageContext`, `StageOutcome`, the test
seams in `StageHooks`), where its directory is, and whether it completed earlier."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from graftline.engine.backends.base import Backend
from graftline.engine.common.control import RunControl
from graftline.engine.common.layout import DONE, STAGES
from graftline.engine.common.sink import Sink
from graftline.engine.lineage import manifest as mf
from graftline.engine.pipeline import spec
from graftline.engine.stages.checks import CheckLog

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
    # False in a rehearsal (a few steps a stage, often on random weights): the quality checks
    # (collapse, end of turn) report only; the plumbing checks gate as always
    judge_quality: bool = True

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

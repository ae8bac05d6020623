"""The run as its events tell it: one typed fold, `RunFold` of `StageState`s.

Every reader of a run folds its events here and nowhere else: the engine's summary
(run/summary.py, which adds the downsampled curves, the log rows and the file's bookkeeping), the
reconciler (run/reconcile.py, which checks the fold against state.json and the manifests) and the
console's view model (console/run_view.py, which adds only display: log lines, curves, ETA).

`RunFold.apply(type, stage, data, time)` takes one event that is not a metric row;
`RunFold.add_metrics(rows)` takes metric rows in batches (the hot path: one call per many
training steps) and answers each row's global step. Folding the whole log at once, or its
summary and then the tail, gives the same fold.

(The name `RunState` is taken by state.json's record, run/state.py.)
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

__all__ = [
    "CHECKPOINTS_KEPT",
    "CHECKS_KEPT",
    "EVAL_BOOKKEEPING",
    "EXPORTABLE",
    "KEY_METRIC",
    "LATEST_SKIP",
    "TRAINING_KINDS",
    "CheckState",
    "RunFold",
    "StageState",
    "fold_rehearsal",
    "fold_samples",
]

# What a stage of each kind is judged by (the pipeline table, the chart's default curve).
KEY_METRIC: dict[str, str] = {"sft": "loss", "dpo": "rewards/margins", "grpo": "reward"}
TRAINING_KINDS = frozenset(KEY_METRIC)
# Checkpoint kinds a user can export (a Trainer checkpoint is for crash resume only).
EXPORTABLE = ("adapter", "merged", "combined", "export")
CHECKPOINTS_KEPT = 8  # trainer checkpoints per stage (a week of them stays bounded)
CHECKS_KEPT = 64  # per stage, by name
# Keys a trainer's evaluation logs carry beside the metric itself: bookkeeping, not results.
EVAL_BOOKKEEPING = frozenset({"eval_runtime", "eval_samples_per_second",
                              "eval_steps_per_second"})
LATEST_SKIP = frozenset({"step", "global_step", "max_steps", "epoch"}) | EVAL_BOOKKEEPING
THROUGHPUT = ("tokens_per_s", "steps_per_s")
RATES = frozenset({*THROUGHPUT, "eta_s"})  # the engine's training rates: not an evaluation's


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def is_evaluation(data: dict[str, Any]) -> bool:
    """A metric row the trainer logged from an evaluation (two lookups: no scan per row)."""
    return "eval_loss" in data or "eval_runtime" in data


@dataclass(frozen=True)
class CheckState:
    name: str
    status: str  # pass | warn | fail
    message: str


@dataclass(eq=False)
class StageState:
    """One stage as the log tells it. Folded in place as events arrive."""

    name: str
    kind: str = "?"
    index: int = 0
    status: str = "pending"  # pending | running | complete | failed | stopped | skipped
    max_steps: int | None = None
    global_step_offset: int = 0
    step: int = 0
    started: float | None = None  # event time of its (latest) stage_started
    finished: float | None = None
    seconds: float | None = None
    action: str | None = None
    reference: str | None = None  # the reference as a sentence
    reference_short: str | None = None  # the engine's short label ("sft_r8 (frozen)")
    lora_r: int | None = None
    resumed: bool = False  # continued from a Trainer checkpoint by `graftline resume`
    started_step: int = 0  # the stage step it (re)started at: a resumed stage's rate counts
    done_earlier: bool = False  # complete before a resume, so the resumed engine skipped it
    # scale-out (run/distributed.py): the stage's process group and the rank that ended it
    world_size: int | None = None
    processes: int | None = None  # ranks on this host
    machine_rank: int | None = None
    failed_rank: int | None = None
    latest: dict[str, float] = field(default_factory=dict)  # last value of every metric
    summary: dict[str, Any] = field(default_factory=dict)
    evaluation: dict[str, Any] = field(default_factory=dict)
    checks: list[CheckState] = field(default_factory=list)  # latest result per name, in order
    checkpoints: list[dict[str, Any]] = field(default_factory=list)
    # what the model answers to the probes: {"start"|"end": {"global_step", "samples": [...]}}
    samples: dict[str, Any] = field(default_factory=dict)

    # -- facts derived from the fold ---------------------------------------------------------

    @property
    def progress(self) -> float | None:
        if self.status in ("complete", "skipped"):
            return 1.0
        if not self.max_steps:
            return None
        return min(1.0, self.step / self.max_steps)

    @property
    def eval_latest(self) -> dict[str, float]:
        """The last evaluation's numbers during training (eval_loss …)."""
        return {k: v for k, v in self.latest.items() if k.startswith("eval_")}

    @property
    def key_metric(self) -> tuple[str, float] | None:
        name = KEY_METRIC.get(self.kind)
        if name is None:
            return None
        value = self.latest.get(name)
        if value is None:
            value = self.summary.get(name) if isinstance(self.summary.get(name), float) else None
        return (name, value) if value is not None else None

    @property
    def exportable(self) -> dict[str, Any] | None:
        """The newest checkpoint of this stage a user can export, or None."""
        for saved in reversed(self.checkpoints):
            if saved.get("kind") in EXPORTABLE and saved.get("path"):
                return saved
        return None

    @property
    def reference_label(self) -> str:
        """The reference in a few words: the engine's short label, or its whole sentence for a
        log written before the engine recorded one."""
        return self.reference_short or self.reference or ""

    # -- the summary file's form (events.summary.json) -----------------------------------------

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name, "kind": self.kind, "index": self.index, "status": self.status,
            "max_steps": self.max_steps, "global_step_offset": self.global_step_offset,
            "step": self.step, "started": self.started, "finished": self.finished,
            "seconds": self.seconds, "action": self.action, "reference": self.reference,
            "reference_label": self.reference_short, "lora_r": self.lora_r,
            "resumed": self.resumed, "started_step": self.started_step,
            "done_earlier": self.done_earlier, "world_size": self.world_size,
            "processes": self.processes, "machine_rank": self.machine_rank,
            "failed_rank": self.failed_rank, "latest": self.latest, "summary": self.summary,
            "evaluation": self.evaluation,
            "checks": {c.name: {"status": c.status, "message": c.message} for c in self.checks},
            "checkpoints": self.checkpoints, "samples": self.samples,
        }

    def load(self, raw: dict[str, Any]) -> None:
        """Fill this stage from its `to_dict` form."""
        self.kind = str(raw.get("kind") or self.kind)
        index = raw.get("index")
        self.index = index if isinstance(index, int) else self.index
        self.status = str(raw.get("status") or self.status)
        for key in ("max_steps", "seconds", "action", "reference", "lora_r", "started",
                    "finished", "world_size", "processes", "machine_rank", "failed_rank"):
            setattr(self, key, raw.get(key))
        self.reference_short = raw.get("reference_label")
        self.global_step_offset = int(raw.get("global_step_offset") or 0)
        self.step = int(raw.get("step") or 0)
        self.started_step = int(raw.get("started_step") or 0)
        self.resumed, self.done_earlier = bool(raw.get("resumed")), bool(raw.get("done_earlier"))
        self.latest = {str(k): float(v) for k, v in (raw.get("latest") or {}).items()}
        self.summary = dict(raw.get("summary") or {})
        self.evaluation = dict(raw.get("evaluation") or {})
        self.checks = [CheckState(str(name), str(c.get("status")), str(c.get("message") or ""))
                       for name, c in (raw.get("checks") or {}).items()]
        self.checkpoints = [dict(c) for c in raw.get("checkpoints") or []]
        self.samples = dict(raw.get("samples") or {})


S = TypeVar("S", bound=StageState)
Handler = Callable[["RunFold[Any]", str | None, dict[str, Any], Any], None]


@dataclass(eq=False)
class RunFold(Generic[S]):
    """The run folded from its events. `make_stage` builds a stage record: `StageState`, or a
    reader's subclass that adds display rules (console/stage_view.StageView) but no state."""

    make_stage: Callable[..., S]
    run: dict[str, Any] = field(default_factory=dict)  # the latest run_started's data
    resumes: int = 0
    status: str = "waiting"  # waiting | running | finished | failed | stopped
    message: str | None = None
    finished_time: float | None = None
    current: str | None = None
    stages: dict[str, S] = field(default_factory=dict)  # in pipeline order
    # where each stage starts on the run's global-step axis: (global step, stage, kind)
    boundaries: list[tuple[int, str, str]] = field(default_factory=list)
    telemetry: dict[str, Any] | None = None
    gpu_reason: str | None = None  # the last reason telemetry gave for having no GPU
    throughput: dict[str, float] = field(default_factory=dict)
    # the engine's rehearsal before stage 1 (run/rehearsal_phase.py): status, stage, passed, …
    rehearsal: dict[str, Any] | None = None

    def stage(self, name: str, kind: str = "?") -> S:
        view = self.stages.get(name)
        if view is None:
            view = self.stages[name] = self.make_stage(name=name, kind=kind,
                                                       index=len(self.stages))
        return view

    # -- folding ------------------------------------------------------------------------------

    def apply(self, kind: str, stage: str | None, data: dict[str, Any], when: Any) -> None:
        """One event that is not a metric row (those go through `add_metrics`)."""
        handler = _HANDLERS.get(kind)
        if handler is not None:
            handler(self, stage, data, when)

    def add_metrics(self, rows: Sequence[tuple[Any, dict[str, Any]]]) -> list[Any]:
        """Metric rows (stage name, data) in log order → each row's global step (None when it
        has none). The stages' latest values are cleaned once per batch, not per row."""
        xs: list[Any] = []
        seen: Any = object()
        view: S | None = None
        touched: dict[int, S] = {}
        rates: dict[str, Any] = {}
        for name, data in rows:
            if name is not seen:  # consecutive rows share their stage
                seen = name
                view = self.stage(name) if isinstance(name, str) else None
            x = data.get("global_step")
            evaluation = is_evaluation(data)
            if view is not None:
                if view.status == "pending":
                    view.status = "running"
                step: Any = data.get("step")
                if type(step) is int or _number(step):
                    view.step = int(step)
                    if x is None:
                        x = view.global_step_offset + step
                if data.get("max_steps"):
                    view.max_steps = int(data["max_steps"])
                latest: dict[str, Any] = view.latest  # raw values until cleaned below
                if evaluation:  # an evaluation's row carries no training rate
                    latest.update((k, v) for k, v in data.items() if k not in RATES)
                else:
                    latest.update(data)
                touched[id(view)] = view
            if not evaluation:
                for key in THROUGHPUT:
                    if key in data:
                        rates[key] = data[key]
            xs.append(x if x is not None and (type(x) is int or _number(x)) else None)
        for view in touched.values():  # latest: the last value of every numeric metric
            view.latest = {key: float(value) for key, value in view.latest.items()
                           if key not in LATEST_SKIP and _number(value)}
        for key, value in rates.items():
            if _number(value):
                self.throughput[key] = float(value)
        return xs

    # -- the summary file's form ----------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        return {
            "run": self.run, "resumes": self.resumes, "status": self.status,
            "message": self.message, "finished_time": self.finished_time,
            "current": self.current,
            "stages": {name: view.to_dict() for name, view in self.stages.items()},
            "boundaries": [list(b) for b in self.boundaries], "telemetry": self.telemetry,
            "gpu_reason": self.gpu_reason, "throughput": self.throughput,
            "rehearsal": self.rehearsal,
        }

    def load(self, raw: dict[str, Any]) -> None:
        """Fill this fold from its `to_dict` form (keys it lacks keep their defaults)."""
        self.run = dict(raw.get("run") or {})
        self.resumes = int(raw.get("resumes", 0))
        self.status = str(raw.get("status", "waiting"))
        self.message, self.finished_time = raw.get("message"), raw.get("finished_time")
        self.current = raw.get("current")
        self.stages = {}
        for name, stage_raw in (raw.get("stages") or {}).items():
            self.stage(str(name)).load(dict(stage_raw))
        self.boundaries = [(int(b[0]), str(b[1]), str(b[2]))
                           for b in raw.get("boundaries") or []]
        self.telemetry = raw.get("telemetry")
        self.gpu_reason = raw.get("gpu_reason")
        self.throughput = {str(k): float(v) for k, v in (raw.get("throughput") or {}).items()}
        rehearsal = raw.get("rehearsal")
        self.rehearsal = dict(rehearsal) if isinstance(rehearsal, dict) else None


# -- event handlers (everything but metrics) ------------------------------------------------------


def _run_started(s: RunFold[Any], _name: str | None, data: dict[str, Any], _when: Any) -> None:
    if s.run or data.get("resumed"):
        s.resumes += 1
    s.run = data
    s.status = "running"
    s.message = None
    s.finished_time = None
    for index, raw in enumerate(data.get("stages") or []):
        if not isinstance(raw, dict) or not isinstance(raw.get("name"), str):
            continue
        view = s.stage(raw["name"])
        view.index = index
        _take_plan(view, raw, ("kind", "action", "lora_r", "reference", "max_steps"))


def _take_plan(view: StageState, data: dict[str, Any], keys: tuple[str, ...]) -> None:
    """What the engine's plan says of a stage (run_started, stage_started): the keys given,
    and its short reference label; a value the event leaves out keeps what was known."""
    for key in keys:
        if data.get(key) is not None:
            setattr(view, key, data[key])
    if data.get("reference_label") is not None:
        view.reference_short = data["reference_label"]


def _stage_started(s: RunFold[Any], name: str | None, data: dict[str, Any], when: Any) -> None:
    if not isinstance(name, str):
        return
    view = s.stage(name)
    view.status = "running"
    view.started = when
    _take_plan(view, data, ("kind", "index", "max_steps", "action", "reference"))
    view.world_size, view.processes, view.machine_rank = (  # scale-out
        data.get("world_size"), data.get("processes"), data.get("machine_rank"))
    view.failed_rank = None
    view.resumed = bool(data.get("resumed_from"))
    view.started_step = view.step if view.resumed else 0
    view.seconds = None
    offset = data.get("global_step_offset")
    view.global_step_offset = int(offset) if isinstance(offset, int | float) else 0
    s.current = name
    if not any(b[1] == name for b in s.boundaries):
        s.boundaries.append((view.global_step_offset, name, view.kind))


def _checkpoint_saved(s: RunFold[Any], name: str | None, data: dict[str, Any],
                      _when: Any) -> None:
    if isinstance(name, str):
        kept = s.stage(name).checkpoints
        kept.append(dict(data))
        # Every adapter/merged/export checkpoint stays (the export key needs them; a stage has
        # a few), trainer checkpoints only the last CHECKPOINTS_KEPT (a week saves thousands).
        trainer = [i for i, c in enumerate(kept) if c.get("kind") == "trainer"]
        if len(trainer) > CHECKPOINTS_KEPT or len(kept) > 4 * CHECKPOINTS_KEPT:
            del kept[trainer[0] if trainer else 0]


def _check_result(s: RunFold[Any], name: str | None, data: dict[str, Any], _when: Any) -> None:
    if not isinstance(name, str):
        return
    view = s.stage(name)
    check = CheckState(str(data.get("name", "?")), str(data.get("status", "?")),
                       str(data.get("message") or ""))
    # the latest result per name, last: the list's order is the order of the latest results
    kept = [c for c in view.checks if c.name != check.name][-(CHECKS_KEPT - 1):]
    view.checks = [*kept, check]


def _stage_finished(s: RunFold[Any], name: str | None, data: dict[str, Any], when: Any) -> None:
    if not isinstance(name, str):
        return
    view = s.stage(name)
    if data.get("kind") is not None:
        view.kind = data["kind"]
    if data.get("status") == "skipped":
        # the engine skips only stages a resume found complete: it ran before, keep its results
        view.status, view.done_earlier = "skipped", True
        return
    view.done_earlier = False
    view.status = str(data.get("status", "complete"))
    view.finished = when
    view.seconds = data.get("seconds")
    view.summary = dict(data.get("metrics") or {})
    view.evaluation = dict(data.get("evaluation") or {})
    if view.status == "complete" and view.max_steps:
        view.step = max(view.step, view.max_steps)


def _error(s: RunFold[Any], name: str | None, data: dict[str, Any], _when: Any) -> None:
    # scale-out (run/distributed.py): the rank whose death ended a stage's process group
    if isinstance(name, str) and isinstance(data.get("failed_rank"), int):
        s.stage(name).failed_rank = data["failed_rank"]


def _run_finished(s: RunFold[Any], _name: str | None, data: dict[str, Any], when: Any) -> None:
    s.status = str(data.get("status", "finished"))
    s.message = data.get("message")
    s.finished_time = when
    s.current = None
    for view in s.stages.values():
        if view.status == "running":
            view.status = "stopped" if s.status == "stopped" else "failed"


def _telemetry(s: RunFold[Any], _name: str | None, data: dict[str, Any], _when: Any) -> None:
    s.telemetry = data
    if data.get("gpu_reason"):
        s.gpu_reason = data["gpu_reason"]


def fold_rehearsal(view: dict[str, Any] | None, data: dict[str, Any]) -> dict[str, Any]:
    """The rehearsal row from one `rehearsal` event: `status` (running, passed, failed,
    stopped), the twin stage it is on, how many passed, its seconds, message and fix."""
    view = dict(view or {"status": "running", "stage": None, "passed": 0, "seconds": None,
                         "message": "", "fix": ""})
    phase = data.get("phase")
    if phase == "started":
        view.update(status="running", stage=None, passed=0, seconds=None, message="", fix="")
    elif phase == "stage":
        view["stage"] = data.get("name")
        if data.get("status") == "passed":
            view["passed"] = int(view.get("passed") or 0) + 1
    elif phase == "finished":
        view.update(status=str(data.get("status") or ("passed" if data.get("ok") else "failed")),
                    stage=None, seconds=data.get("seconds"),
                    message=str(data.get("message") or ""), fix=str(data.get("fix") or ""))
        stages = data.get("stages")
        if isinstance(stages, list):
            view["passed"] = sum(1 for st in stages if isinstance(st, dict)
                                 and st.get("status") == "passed")
            view["failed_stage"] = next((st.get("name") for st in stages if isinstance(st, dict)
                                         and st.get("status") == "failed"), None)
    return view


SAMPLE_ROWS = 8  # probes kept per stage and moment (the engine sends no more)
SAMPLE_CHARS = 160


def fold_samples(kept: dict[str, Any], data: dict[str, Any]) -> dict[str, Any]:
    """A stage's probe answers after one `samples` event: the latest per moment (start, eval:
    the latest evaluation during training, end), bounded, so a week-long run's samples open as
    fast as its chart."""
    when = str(data.get("when") or "end")
    rows = [{"prompt": str(r.get("prompt", ""))[:SAMPLE_CHARS],
             "answer": str(r.get("answer", ""))[:SAMPLE_CHARS],
             **({"expected": str(r["expected"])[:SAMPLE_CHARS]} if r.get("expected") else {})}
            for r in (data.get("samples") or [])[:SAMPLE_ROWS] if isinstance(r, dict)]
    kept = dict(kept)
    kept[when] = {"global_step": data.get("global_step"), "samples": rows}
    return kept


def _samples(s: RunFold[Any], name: str | None, data: dict[str, Any], _when: Any) -> None:
    if isinstance(name, str):
        view = s.stage(name)
        view.samples = fold_samples(view.samples, data)


def _rehearsal(s: RunFold[Any], _name: str | None, data: dict[str, Any], _when: Any) -> None:
    s.rehearsal = fold_rehearsal(s.rehearsal, data)


_HANDLERS: dict[str, Handler] = {
    "rehearsal": _rehearsal,
    "samples": _samples,
    "run_started": _run_started,
    "stage_started": _stage_started,
    "checkpoint_saved": _checkpoint_saved,
    "check_result": _check_result,
    "stage_finished": _stage_finished,
    "run_finished": _run_finished,
    "error": _error,
    "warning": _error,
    "telemetry": _telemetry,
}

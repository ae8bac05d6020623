"""What the console shows of a run's parts: a stage (its row in the pipeline table, its checks
and checkpoints), a log line, a metric's curve, a telemetry sample. Plain records with the
display rules that belong to each; the fold that fills them from events is `run_view.RunModel`.
"""

from __future__ import annotations

from array import array
from dataclasses import dataclass, field
from typing import Any

from graftline.console.formats import evaluation_text, format_metric, short_metric

__all__ = [
    "DISPLAY_STATUSES", "EXPORTABLE", "KEY_METRIC", "STAGE_STATUSES", "TRAINING_KINDS",
    "CheckView", "LogLine", "Series", "StageView", "Telemetry",
]

# What a stage of each kind is judged by, in the pipeline table and as the chart's default.
KEY_METRIC: dict[str, str] = {"sft": "loss", "dpo": "rewards/margins", "grpo": "reward"}
TRAINING_KINDS = frozenset(KEY_METRIC)
# Checkpoint kinds a user can export (a Trainer checkpoint is for crash resume only).
EXPORTABLE = ("adapter", "merged", "combined", "export")
STAGE_STATUSES = ("pending", "running", "complete", "failed", "stopped", "skipped")
# What a row says, beyond the event log's own statuses: the engine's state (paused, crashed)
# and the history (a stage done before a resume, a stage continued by one).
DISPLAY_STATUSES = (*STAGE_STATUSES, "paused", "crashed", "resumed", "done earlier")


@dataclass
class CheckView:
    name: str
    status: str  # pass | warn | fail
    message: str


@dataclass
class StageView:
    name: str
    kind: str
    index: int
    action: str | None = None
    lora_r: int | None = None
    reference: str | None = None
    reference_short: str | None = None  # the engine's own short label (run_started)
    max_steps: int | None = None
    status: str = "pending"
    step: int = 0
    global_step_offset: int = 0
    seconds: float | None = None
    latest: dict[str, float] = field(default_factory=dict)
    summary: dict[str, Any] = field(default_factory=dict)
    evaluation: dict[str, Any] = field(default_factory=dict)
    checks: list[CheckView] = field(default_factory=list)
    checkpoints: list[dict[str, Any]] = field(default_factory=list)
    resumed: bool = False  # continued from a Trainer checkpoint by `graftline resume`
    done_earlier: bool = False  # complete before a resume, so the resumed engine skipped it
    started_time: float | None = None
    started_step: int = 0  # the stage step it (re)started at: a resumed stage's rate counts
    eval_latest: dict[str, float] = field(default_factory=dict)  # eval_loss … during training
    # scale-out: the stage's process group (None: one process) and the rank that ended it
    world_size: int | None = None
    processes: int | None = None  # ranks on this host
    machine_rank: int | None = None
    failed_rank: int | None = None
    # what the model answers to the probes: {"start"|"end": {"global_step", "samples": [...]}}
    samples: dict[str, Any] = field(default_factory=dict)

    @property
    def progress(self) -> float | None:
        if self.status in ("complete", "skipped"):
            return 1.0
        if not self.max_steps:
            return None
        return min(1.0, self.step / self.max_steps)

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

    def display_status(self, run_status: str) -> str:
        """The row's status: the event log's, corrected by what the engine's state says."""
        if self.status == "skipped" and self.done_earlier:
            return "done earlier"
        if self.status == "running":
            if run_status in ("paused", "crashed"):
                return run_status
            if run_status in ("stopped", "failed"):
                return run_status
            if self.resumed:
                return "resumed"
        return self.status

    def metric_label(self) -> str:
        """The row's result: the kind's key metric, and evaluation where there is one."""
        parts: list[str] = []
        key = self.key_metric
        if key is not None:
            parts.append(f"{short_metric(key[0])} {format_metric(key[1])}")
        evaluation = evaluation_text(self.evaluation, short=True)
        if evaluation:
            parts.append(evaluation)
        elif "eval_loss" in self.eval_latest:
            parts.append(f"eval {format_metric(self.eval_latest['eval_loss'])}")
        return " · ".join(parts)

    @property
    def reference_label(self) -> str:
        """The reference as a table cell: the engine's short label ("sft_r8 (frozen)"), or its
        whole sentence for a log written before the engine recorded one."""
        return self.reference_short or self.reference or ""

    @property
    def action_label(self) -> str:
        """'new r16', 'continue', 'merge' … as the pipeline table shows it."""
        if self.kind in ("merge", "combine", "export", "eval", "generate"):
            return self.action or self.kind
        if self.action == "new" and self.lora_r:
            return f"new r{self.lora_r}"
        return self.action or "—"


@dataclass(frozen=True)
class LogLine:
    time: float  # seconds since the run started: deterministic, host-independent
    level: str  # info | warning | error | check
    stage: str | None
    text: str


class Series:
    """One metric's points on the global-step axis, append-only."""

    __slots__ = ("steps", "values")

    def __init__(self) -> None:
        self.steps = array("d")
        self.values = array("d")

    def append(self, step: float, value: float) -> None:
        self.steps.append(step)
        self.values.append(value)

    def __len__(self) -> int:
        return len(self.values)


@dataclass
class Telemetry:
    gpus: list[dict[str, Any]] | None = None
    gpu_reason: str | None = None
    proc_gpu_bytes: int | None = None
    rss: int | None = None
    ram_used: int | None = None
    ram_total: int | None = None
    cpu_percent: float | None = None
    disk_free: int | None = None
    forecast_bytes: int | None = None
    seen: bool = False
    # while a distributed stage runs: its ranks on this host (rank, pid, alive, rss, gpu_bytes)
    ranks: list[dict[str, Any]] | None = None

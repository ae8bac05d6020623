"""What the console shows of a run's parts: a stage (its row in the pipeline table, its checks
and checkpoints), a log line, a metric's curve. A stage is the engine's `StageState`
(engine/run/fold.py, the one fold of a run) with its display rules; the log line and curve
records are the console's own, filled by `run_view.RunModel`. (A telemetry sample is the
engine's typed record, engine/common/event_types.Telemetry.)
"""

from __future__ import annotations

from array import array
from dataclasses import dataclass

from graftline.console.formats import evaluation_text, format_metric, short_metric
from graftline.engine.run import EXPORTABLE, KEY_METRIC, TRAINING_KINDS, CheckState, StageState

__all__ = [
    "DISPLAY_STATUSES", "EXPORTABLE", "KEY_METRIC", "STAGE_STATUSES", "TRAINING_KINDS",
    "CheckState", "LogLine", "Series", "StageView",
]

STAGE_STATUSES = ("pending", "running", "complete", "failed", "stopped", "skipped")
# What a row says, beyond the event log's own statuses: the engine's state (paused, crashed)
# and the history (a stage done before a resume, a stage continued by one).
DISPLAY_STATUSES = (*STAGE_STATUSES, "paused", "crashed", "resumed", "done earlier")


@dataclass(eq=False)
class StageView(StageState):
    """A stage as the engine's fold has it (`StageState`: no state of its own here), with the
    rules for showing it."""

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

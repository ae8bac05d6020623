"""The TrainerCallback every stage trains with: metrics out through the sink, control flags in.

TRL logs no ETA and no instantaneous throughput, so both are computed here from the time
between logs. stop → a Trainer checkpoint is saved and training stops (resume continues from
it); save_now → a checkpoint now; pause → the training loop waits at the next step boundary.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments

from graftline.engine.common.checkpoint_files import checkpoint_name, directory_bytes
from graftline.engine.common.control import RunControl
from graftline.engine.common.event_types import CheckpointSaved
from graftline.engine.common.sink import Sink, emit_record

SUMMARY_KEYS = ("train_runtime", "train_samples_per_second", "train_steps_per_second",
                "train_loss", "total_flos")


class StageCallback(TrainerCallback):
    def __init__(self, stage: str, sink: Sink, control: RunControl | None,
                 global_step_offset: int = 0,
                 on_first_log: Callable[[dict[str, Any]], None] | None = None,
                 on_begin: Callable[[], None] | None = None) -> None:
        self.stage, self.sink, self.control = stage, sink, control
        # runs once the Trainer has loaded a checkpoint it resumes from, before the first step
        self.on_begin = on_begin
        # checks that must see the first step (reference margin, loss continuity) fail fast here
        self.on_first_log = on_first_log
        self.offset = global_step_offset
        self.history: list[dict[str, Any]] = []
        self.summary: dict[str, float] = {}
        self.stopped = False
        self._last: tuple[float, int, float] | None = None  # time, step, tokens
        self._rate: float | None = None

    def on_train_begin(self, args: TrainingArguments, state: TrainerState, control: TrainerControl,
                **kwargs: Any) -> Any:
        self._last = (time.perf_counter(), state.global_step, 0.0)
        if self.on_begin is not None:
            self.on_begin()

    def on_log(self, args: TrainingArguments, state: TrainerState, control: TrainerControl,
               logs: dict[str, Any] | None = None, **kwargs: Any) -> Any:
        logs = dict(logs or {})
        if any(k in logs for k in SUMMARY_KEYS):
            self.summary.update({k: float(v) for k, v in logs.items()
                                 if isinstance(v, int | float)})
            return
        now, step = time.perf_counter(), state.global_step
        tokens = float(logs.get("num_tokens", 0.0) or 0.0)
        tokens_per_s = steps_per_s = None
        if self._last is not None and now > self._last[0] and step > self._last[1]:
            dt = now - self._last[0]
            steps_per_s = (step - self._last[1]) / dt
            if tokens and self._last[2]:
                tokens_per_s = (tokens - self._last[2]) / dt
            # a short moving average keeps the ETA from jumping with every log
            self._rate = steps_per_s if self._rate is None else 0.7 * self._rate + 0.3 * steps_per_s
        self._last = (now, step, tokens or (self._last[2] if self._last else 0.0))
        eta = (state.max_steps - step) / self._rate if self._rate else None
        record = {k: (float(v) if isinstance(v, int | float) else v) for k, v in logs.items()
                  if not (isinstance(v, float) and math.isnan(v))}
        record.update(step=step, global_step=self.offset + step, max_steps=state.max_steps,
                      epoch=state.epoch, tokens_per_s=tokens_per_s, steps_per_s=steps_per_s,
                      eta_s=eta)
        self.history.append(record)
        self.sink.emit("metrics", self.stage, **record)
        if len(self.history) == 1 and self.on_first_log is not None:
            self.on_first_log(record)
        return self._obey(control)

    def on_step_end(self, args: TrainingArguments, state: TrainerState, control: TrainerControl,
                **kwargs: Any) -> Any:
        return self._obey(control)

    def _obey(self, control: TrainerControl) -> TrainerControl:
        """Apply the run's control flags. Called after each step and after each log, so a stop
        asked while a step's metrics were being written saves that very step."""
        if self.control is None:
            return control
        self.control.wait_while_paused()
        if self.control.stop.is_set():
            self.stopped = True
            control.should_save = True
            control.should_training_stop = True
        elif self.control.take_save_request():
            control.should_save = True
        return control

    def on_save(self, args: TrainingArguments, state: TrainerState, control: TrainerControl,
                **kwargs: Any) -> Any:
        path = Path(str(args.output_dir)) / checkpoint_name(state.global_step)
        emit_record(self.sink, self.stage, CheckpointSaved(
            path=str(path), kind="trainer", id=f"{self.stage}@{state.global_step}",
            bytes=_bytes(path)))


def _bytes(path: Path) -> int:
    return directory_bytes(path) if path.exists() else 0


def summarize(history: list[dict[str, Any]], summary: dict[str, float]) -> dict[str, float]:
    """First/last values and start/end window means of what charts and checks look at."""
    out: dict[str, float] = {k: v for k, v in summary.items() if k in SUMMARY_KEYS}
    if not history:
        return out
    out["steps"] = float(history[-1]["step"])
    window = max(1, len(history) // 4)
    for key in ("loss", "rewards/accuracies", "rewards/margins", "reward", "kl",
                "mean_token_accuracy"):
        values = [float(h[key]) for h in history if isinstance(h.get(key), int | float)]
        if not values:
            continue
        out[f"{key}_first"] = values[0]
        out[f"{key}_last"] = values[-1]
        out[f"{key}_start"] = sum(values[:window]) / len(values[:window])
        out[f"{key}_end"] = sum(values[-window:]) / len(values[-window:])
    return out


class ProbeSamples(TrainerCallback):
    """The probes' answers during training: at every evaluation (`eval_strategy` through
    `train.eval_steps` or the `trl` table), and every `every` steps when the stage has no
    eval data to evaluate. Once per step at most; never at the last step (the stage's end
    samples are that)."""

    def __init__(self, every: int | None, sample: Callable[[int], None]) -> None:
        self.every, self.sample = every, sample
        self.done: set[int] = set()

    def _at(self, state: TrainerState) -> None:
        step = state.global_step
        if step in self.done or (state.max_steps and step >= state.max_steps):
            return
        self.done.add(step)
        self.sample(step)

    def on_step_end(self, args: TrainingArguments, state: TrainerState, control: TrainerControl,
                    **kwargs: Any) -> Any:
        strategy = getattr(args, "eval_strategy", "no")
        if self.every and state.global_step % self.every == 0 \
                and getattr(strategy, "value", strategy) == "no":
            self._at(state)

    def on_evaluate(self, args: TrainingArguments, state: TrainerState, control: TrainerControl,
                    **kwargs: Any) -> Any:
        self._at(state)

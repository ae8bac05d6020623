"""Trackers' steps lined up across stages, so one run reads as one curve (docs/trackers.md).

Each stage builds its own Trainer, whose `state.global_step` starts at 0; transformers'
integration callbacks (TensorBoard, wandb, trackio, mlflow) log at that step. The engine's own
events carry `global_step = offset + step` (stages/callbacks.py); here every integration callback
the Trainer made from `report_to` is wrapped so that it sees the same global step. TensorBoard
writes every stage into one directory of the run, `<run>/tensorboard`, unless
TENSORBOARD_LOGGING_DIR says otherwise.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments
from transformers.integrations.integration_utils import (
    INTEGRATION_TO_CALLBACK,
    TensorBoardCallback,
)

from graftline.engine.stages.common import StageContext

TENSORBOARD_DIR = "tensorboard"
# every event a TrainerCallback can receive
EVENTS = tuple(name for name in vars(TrainerCallback) if name.startswith("on_"))


class OffsetSteps(TrainerCallback):
    """Forwards every event to `inner` with `state.global_step` moved by `offset` (on a copy:
    the Trainer's own state is never touched)."""

    def __init__(self, inner: TrainerCallback, offset: int) -> None:
        self.inner, self.offset = inner, offset
        for event in EVENTS:
            setattr(self, event, self._forward(event))

    def _forward(self, event: str) -> Callable[..., Any]:
        target = getattr(self.inner, event)

        def call(args: TrainingArguments, state: TrainerState, control: TrainerControl,
                 **kwargs: Any) -> Any:
            shifted = copy.copy(state)
            shifted.global_step = state.global_step + self.offset
            return target(args, shifted, control, **kwargs)

        return call

    def __repr__(self) -> str:
        return f"OffsetSteps({type(self.inner).__name__}, +{self.offset})"


def tensorboard_dir(run_dir: Path) -> Path:
    return Path(run_dir) / TENSORBOARD_DIR


def line_up(trainer: Any, ctx: StageContext) -> Any:
    """Wrap the trainer's tracker callbacks with the stage's global step offset; point
    TensorBoard at the run's one directory. Returns the trainer."""
    trackers = tuple(INTEGRATION_TO_CALLBACK.values())
    handler = trainer.callback_handler
    for index, callback in enumerate(handler.callbacks):
        if not isinstance(callback, trackers):
            continue
        if isinstance(callback, TensorBoardCallback) and \
                os.environ.get("TENSORBOARD_LOGGING_DIR") is None:
            callback.logging_dir = str(tensorboard_dir(ctx.run_dir))
        handler.callbacks[index] = OffsetSteps(callback, ctx.global_step_offset)
    return trainer

"""Trackers' steps lined up across stages, so one run reads as one curve (docs/trackers.md).

Each stage builds its own Trainer, whose `state.global_step` starts at 0; transformers'
integration callbacks (TensorBoard, wandb, trackio, mlflow) log at that step. The engine's own
events carry `global_step = offset + step` (stages/callbacks.py); here every integration callback
the Trainer made from `report_to` is wrapped so that it sees the same global step. TensorBoard
writes every stage into one directory of the run, `<run>/tensorboard`, unless
TENSORBOARD_LOGGING_DIR says otherwise.

A resumed stage trains again the steps between its checkpoint and the crash. TensorBoard's writer
takes `purge_step`: its readers then hide what an earlier writer logged from that step on, so
the run stays one curve. The other trackers have no such rewind (docs/trackers.md).
"""

from __future__ import annotations

import copy
import functools
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments
from transformers.integrations.integration_utils import (
    INTEGRATION_TO_CALLBACK,
    TensorBoardCallback,
)

from graftline.engine.stages import resume
from graftline.engine.stages.context import StageContext

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


def first_step_again(ctx: StageContext) -> int | None:
    """The run's global step a resumed stage logs first (one past its checkpoint); None when the
    stage starts afresh."""
    steps = resume.checkpoint_steps(ctx.resume_from) if ctx.resume_from is not None else None
    return None if steps is None else ctx.global_step_offset + steps.global_step + 1


def line_up(trainer: Any, ctx: StageContext) -> Any:
    """Wrap the trainer's tracker callbacks with the stage's global step offset; point
    TensorBoard at the run's one directory, purging what a crashed attempt logged past the
    checkpoint a resume starts from. Returns the trainer."""
    trackers = tuple(INTEGRATION_TO_CALLBACK.values())
    purge = first_step_again(ctx)
    handler = trainer.callback_handler
    for index, callback in enumerate(handler.callbacks):
        if not isinstance(callback, trackers):
            continue
        if isinstance(callback, TensorBoardCallback) and \
                os.environ.get("TENSORBOARD_LOGGING_DIR") is None:
            callback.logging_dir = str(tensorboard_dir(ctx.run_dir))
        if isinstance(callback, TensorBoardCallback) and purge is not None:
            # the writer class transformers picked (torch's or tensorboardX's): both take
            # purge_step; the callback only calls it with log_dir
            callback._SummaryWriter = functools.partial(  # type: ignore[assignment]
                callback._SummaryWriter, purge_step=purge)
        handler.callbacks[index] = OffsetSteps(callback, ctx.global_step_offset)
    return trainer

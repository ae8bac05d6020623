"""A stage's saves that hit a full disk are done again once space is back, not the stage.

transformers writes `checkpoint-N` in place (weights, optimizer, scheduler, RNG, then
`trainer_state.json`) and lets an OSError out of `train()`, which used to fail the stage. The
guard wraps the Trainer's `_save_checkpoint`: on ENOSPC/EDQUOT it deletes the half-written
directory (never marked complete: `checkpoint_saved` is only emitted after a whole save, and
resume skips a directory without a valid `trainer_state.json` anyway), asks the engine to pause
until the checkpoint fits (`common.disk_full`), and saves the same step again.

The stage's own adapter save after training (`save_when_space`) is retried the same way, with
the trained model still in memory. (The runner's fallback, running the whole stage again from
its last Trainer checkpoint, loads the model and runs the checks before training once more.)
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from graftline.engine.common.checkpoint_files import (
    checkpoint_dirs,
    checkpoint_name,
    directory_bytes,
)
from graftline.engine.common.disk_full import is_disk_full, wait_for_space
from graftline.engine.stages.context import StageContext


def guard_checkpoint_saves(trainer: Any, ctx: StageContext) -> None:
    """Replace `trainer._save_checkpoint` with one that survives a full disk."""
    original = trainer._save_checkpoint

    def save(model: Any, trial: Any, *args: Any, **kwargs: Any) -> None:
        while True:
            folder = Path(trainer.args.output_dir) / checkpoint_name(trainer.state.global_step)
            existed = folder.exists()
            try:
                return original(model, trial, *args, **kwargs)
            except Exception as exc:
                if not is_disk_full(exc):
                    raise
                written = directory_bytes(folder)
                if not existed:
                    _remove_partial(folder)
                # at least what the failed save had reached, and what the last whole one took
                need = max(_checkpoint_need(folder.parent), written + written // 2)
                if not wait_for_space(ctx.sink, ctx.control, ctx.name, folder.name, need, exc,
                                      folder.parent):
                    if ctx.control is not None and ctx.control.stop.is_set():
                        return None  # stopping: the previous complete checkpoint resumes
                    raise

    trainer._save_checkpoint = save


def save_when_space(ctx: StageContext, what: str, where: Path, need: int,
                    write: Callable[[], None]) -> None:
    """`write()`, again after each full disk once the engine has resumed; the same error when
    no engine waits (a rehearsal, a test's sink) or a stop came while it waited. `write` must
    be safe to repeat: it rewrites the same files."""
    while True:
        try:
            return write()
        except Exception as exc:
            if not is_disk_full(exc) or not wait_for_space(ctx.sink, ctx.control, ctx.name, what,
                                                           need, exc, where):
                raise


def _remove_partial(folder: Path) -> None:
    """The half-written checkpoint this save made; only a real directory, never a link."""
    if folder.is_dir() and not folder.is_symlink():
        shutil.rmtree(folder, ignore_errors=True)


def _checkpoint_need(root: Path) -> int:
    """What one more checkpoint takes: the largest earlier one (the Trainer deletes the oldest
    only after the new one is whole), or 0 when none is there yet."""
    return max((directory_bytes(child) for _step, child in checkpoint_dirs(root)), default=0)

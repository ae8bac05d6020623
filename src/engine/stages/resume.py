"""Resuming a training stage from a Trainer checkpoint without silently training something else.

transformers' `Trainer._load_from_checkpoint` (5.x) loads a PEFT checkpoint in one of two ways:
with no adapter subfolders it loads the root adapter into the active one; with subfolders (TRL's
frozen `ref/` copy in DPO/IPO/GRPO on a continued adapter) it loads *only* the subfolders and
never the root `default` adapter. The policy then restarts from where the stage began while the
log says `resumed_from checkpoint-N` (issue 23: an IPO resume trained from the SFT adapter).

`restore_policy` loads the root adapter's weights into `default` in place (the parameters keep
their identity, so the optimizer state the Trainer restores afterwards still points at them);
`resumed_weights` then proves, at the first step of the resumed loop, that the trainable weights
are the checkpoint's, bit for bit.

A checkpoint saved at the stage's last step (a crash between it and the stage's adapter save)
means training is over: transformers 5.17 resumed at `global_step == max_steps` still trains one
step (step 5 of a 4-step stage, a checkpoint-5, `steps` 5 in the manifest), so the stage must not
enter the Trainer's loop at all. `final_step` says when; `no_step` replaces `trainer.train` with
a load of the checkpoint's state; `logged_history` gives the stage its metrics back.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from graftline.engine.common.checkpoint_files import ADAPTER_SAFETENSORS, TRAINER_STATE
from graftline.engine.lineage.manifest import CheckResult
from graftline.engine.stages.callbacks import SUMMARY_KEYS
from graftline.engine.stages.checks import ADAPTER, verdict


@dataclass(frozen=True)
class CheckpointSteps:
    """Where a Trainer checkpoint stands in its stage: the step it holds, of how many."""

    global_step: int
    max_steps: int

    @property
    def final(self) -> bool:
        return 0 < self.max_steps <= self.global_step


def checkpoint_steps(checkpoint: Path) -> CheckpointSteps | None:
    """The global and max step a checkpoint's trainer_state.json records, or None when it does
    not say (the runner only resumes from checkpoints whose state parses)."""
    try:
        state = json.loads((Path(checkpoint) / TRAINER_STATE).read_text())
    except (OSError, ValueError):
        return None
    step, most = (state.get("global_step"), state.get("max_steps")) \
        if isinstance(state, dict) else (None, None)
    if not isinstance(step, int) or not isinstance(most, int):
        return None
    return CheckpointSteps(step, most)


def final_step(checkpoint: Path | None) -> CheckpointSteps | None:
    """The checkpoint's steps when it was saved at its stage's last step (nothing is left to
    train), else None. The Trainer's own `max_steps` is the measure: it also holds for a stage
    sized in epochs."""
    found = checkpoint_steps(checkpoint) if checkpoint is not None else None
    return found if found is not None and found.final else None


def no_step(trainer: Any, checkpoint: Path,
            after: Callable[[], None] | None = None) -> Callable[..., None]:
    """A stand-in for `trainer.train` on a finished checkpoint: the Trainer's state (global step,
    log history) becomes the checkpoint's and no optimizer step runs. The adapter itself is
    `restore_policy`'s. It stands where `train` stood, so a distributed rank's wrapper around
    `train` (rank_main) still ends the rank after it. `after` runs once the state is loaded."""
    from transformers import TrainerState

    def train(*_args: Any, **_kwargs: Any) -> None:
        trainer.state = TrainerState.load_from_json(str(Path(checkpoint) / TRAINER_STATE))
        if after is not None:
            after()

    return train


def logged_history(checkpoint: Path, global_step_offset: int = 0) -> list[dict[str, Any]]:
    """The metrics the stage logged up to the checkpoint (its trainer_state.json log history),
    shaped like StageCallback's records, so a stage finished from it keeps its summary (a next
    SFT stage's loss continuity reads `loss_last`). The events themselves were written before
    the crash and are not sent again."""
    try:
        state = json.loads((Path(checkpoint) / TRAINER_STATE).read_text())
    except (OSError, ValueError):
        return []
    entries = state.get("log_history", []) if isinstance(state, dict) else []
    history: list[dict[str, Any]] = []
    for entry in entries:
        if not isinstance(entry, dict) or not isinstance(entry.get("step"), int) \
                or any(k in entry for k in SUMMARY_KEYS):
            continue
        record = {k: (float(v) if isinstance(v, int | float) else v) for k, v in entry.items()
                  if not (isinstance(v, float) and math.isnan(v))}
        record.update(step=entry["step"], global_step=global_step_offset + entry["step"],
                      max_steps=state.get("max_steps"), epoch=entry.get("epoch"))
        history.append(record)
    return history


def checkpoint_adapter(checkpoint: Path) -> dict[str, torch.Tensor] | None:
    """The root adapter's weights in a Trainer checkpoint (keys without the adapter name), or
    None when the checkpoint holds no PEFT adapter at its root (a full-model checkpoint)."""
    from safetensors.torch import load_file

    path = Path(checkpoint) / ADAPTER_SAFETENSORS
    return load_file(str(path)) if path.is_file() else None


def restore_policy(policy: Any, checkpoint: Path, adapter: str = ADAPTER) -> int:
    """Copy the checkpoint's root adapter into `adapter`; returns how many tensors were set.
    Idempotent: where the Trainer also loads the root (no subfolders) the values are equal."""
    from peft.utils import set_peft_model_state_dict

    weights = checkpoint_adapter(checkpoint)
    if weights is None or adapter not in getattr(policy, "peft_config", {}):
        return 0
    with torch.no_grad():
        result = set_peft_model_state_dict(policy, weights, adapter_name=adapter)
    missing = [k for k in getattr(result, "unexpected_keys", []) if f".{adapter}." in k]
    if missing:
        raise RuntimeError(f"checkpoint {checkpoint} does not fit adapter '{adapter}': "
                           f"{missing[:3]}")
    return len(weights)


def resumed_weights(policy: Any, checkpoint: Path, adapter: str = ADAPTER) -> CheckResult:
    """The trainable weights of a resumed stage equal those of the checkpoint it resumes from."""
    from peft.utils import get_peft_model_state_dict

    saved = checkpoint_adapter(checkpoint)
    if saved is None:
        return verdict("resumed_weights", "warn",
                       f"{checkpoint.name} holds no {ADAPTER_SAFETENSORS}: resumed weights not "
                       "verified", checkpoint=str(checkpoint))
    live = get_peft_model_state_dict(policy, adapter_name=adapter)
    absent = sorted(set(saved) - set(live))
    differ = [k for k in sorted(set(saved) & set(live))
              if not torch.equal(live[k].detach().cpu().to(saved[k].dtype), saved[k])]
    if absent or differ or not saved:
        worst = max((float((live[k].detach().cpu().float() - saved[k].float()).abs().max())
                     for k in differ), default=0.0)
        return verdict(
            "resumed_weights", "fail",
            f"resumed from {checkpoint.name} but the `{adapter}` adapter is not its weights "
            f"({len(differ)} of {len(saved)} tensors differ, max |Δ| {worst:.3g}; "
            f"{len(absent)} missing)",
            cause="the Trainer did not load the checkpoint's root adapter (it loads only "
                  "adapter subfolders such as TRL's ref/ when they exist)",
            fix="report this; `graftline run` the stage again from its start",
            checkpoint=str(checkpoint), differ=differ[:5], missing=absent[:5])
    return verdict("resumed_weights", "pass",
                   f"the `{adapter}` adapter equals {checkpoint.name} ({len(saved)} tensors)",
                   checkpoint=str(checkpoint), tensors=len(saved))

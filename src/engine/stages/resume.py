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
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from graftline.engine.common.checkpoint_files import ADAPTER_SAFETENSORS
from graftline.engine.lineage.manifest import CheckResult
from graftline.engine.stages.checks import ADAPTER, _result


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
        return _result("resumed_weights", "warn",
                       f"{checkpoint.name} holds no {ADAPTER_SAFETENSORS}: resumed weights not "
                       "verified", checkpoint=str(checkpoint))
    live = get_peft_model_state_dict(policy, adapter_name=adapter)
    absent = sorted(set(saved) - set(live))
    differ = [k for k in sorted(set(saved) & set(live))
              if not torch.equal(live[k].detach().cpu().to(saved[k].dtype), saved[k])]
    if absent or differ or not saved:
        worst = max((float((live[k].detach().cpu().float() - saved[k].float()).abs().max())
                     for k in differ), default=0.0)
        return _result(
            "resumed_weights", "fail",
            f"resumed from {checkpoint.name} but the `{adapter}` adapter is not its weights "
            f"({len(differ)} of {len(saved)} tensors differ, max |Δ| {worst:.3g}; "
            f"{len(absent)} missing)",
            cause="the Trainer did not load the checkpoint's root adapter (it loads only "
                  "adapter subfolders such as TRL's ref/ when they exist)",
            fix="report this; `graftline run` the stage again from its start",
            checkpoint=str(checkpoint), differ=differ[:5], missing=absent[:5])
    return _result("resumed_weights", "pass",
                   f"the `{adapter}` adapter equals {checkpoint.name} ({len(saved)} tensors)",
                   checkpoint=str(checkpoint), tensors=len(saved))

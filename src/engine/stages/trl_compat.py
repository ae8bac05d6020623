"""A pure-torch stand-in for TRL 1.15's Triton log-prob kernel, for torch builds without Triton.

TRL 1.15 computes SFT and DPO losses through a fused LM head whose kernel
(`trl.kernels.ChunkedLogProbFunction`) is written in Triton. The CPU wheels of torch ship no
Triton, so TRL sets the kernel to None and the first training step fails with
"'NoneType' object has no attribute 'apply'". This module fills the slot with the same
computation in plain torch (full logits per call; autograd does the backward). It changes
nothing where Triton is present.
"""

from __future__ import annotations

import torch

OPTIONAL_OUTPUTS = ("entropy", "log_sum_sq_probs", "mean_logits", "is_top1")


class TorchChunkedLogProb:
    """Same signature and outputs as `trl.kernels.ChunkedLogProbFunction.apply`."""

    @staticmethod
    def apply(hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
              targets: torch.Tensor, temperature: float, chunk_size: int,
              final_logit_softcapping: float | None = None, logit_scale: float = 1.0,
              outputs: tuple[str, ...] = OPTIONAL_OUTPUTS
              ) -> tuple[torch.Tensor | None, ...]:
        z = hidden @ weight.to(hidden.dtype).t()
        if bias is not None:
            z = z + bias.to(z.dtype)
        z = z.float() * logit_scale
        if final_logit_softcapping is not None:
            z = final_logit_softcapping * torch.tanh(z / final_logit_softcapping)
        z = z / temperature
        log_z = torch.logsumexp(z, dim=-1)
        target = z.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
        logprobs = target - log_z
        entropy = log_sum_sq = mean_logits = is_top1 = None
        if any(name in outputs for name in ("entropy", "log_sum_sq_probs")):
            probs = torch.softmax(z, dim=-1)
            if "entropy" in outputs:
                entropy = log_z - (probs * z).sum(-1)
            if "log_sum_sq_probs" in outputs:
                log_sum_sq = torch.log((probs.detach() ** 2).sum(-1))
        if "mean_logits" in outputs:
            mean_logits = z.detach().mean(-1)
        if "is_top1" in outputs:
            is_top1 = z.detach().argmax(-1) == targets
        return logprobs, entropy, log_sum_sq, mean_logits, is_top1


def install() -> bool:
    """Fill TRL's kernel slot when Triton is missing. True when the stand-in is in use."""
    from trl.trainer import utils

    if getattr(utils, "_ChunkedLogProbFunction", None) is not None:
        return False
    # TRL types the slot as its Triton autograd Function; ours has the same apply() signature
    utils._ChunkedLogProbFunction = TorchChunkedLogProb  # type: ignore[misc,assignment]
    return True

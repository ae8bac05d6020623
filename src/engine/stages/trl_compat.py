"""A pure-torch stand-in for TRL 1.15's Triton log-prob kernel, for torch builds without Triton.

TRL 1.15 computes SFT and DPO losses through a fused LM head whose kernel
(`trl.kernels.ChunkedLogProbFunction`) is written in Triton. The CPU wheels of torch ship no
Triton, so TRL sets the kernel to None and the first training step fails with
"'NoneType' object has no attribute 'apply'". This module fills the slot with the same
computation in plain torch (full logits per call; autograd does the backward). It changes
nothing where Triton is present.

Also two seams where TRL meets PEFT's trained token rows (`lora.trainable_tokens`), at the end.
"""

from __future__ import annotations

from typing import Any

import torch

from graftline.engine.common.checkpoint_files import REFERENCE_ADAPTER

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


# ---------------------------------------------------------------- trained token rows under TRL

def token_rows_for_trl(model: Any) -> None:
    """Let TRL's fused LM head see an output layer whose token rows train (`lora.trainable_tokens`).

    TRL 1.15 computes every loss from `lm_head.weight` and `lm_head.bias` directly. PEFT's
    TrainableTokensWrapper answers `weight` with the merged rows (gradients reach the trained
    rows) but has no `bias` while its adapter is active, and the first step fails with
    "'TrainableTokensWrapper' object has no attribute 'bias'". The wrapped layer's own bias (None
    for every family we train) is the right answer: the rows replace weights only."""
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if head is None or type(head).__name__ != "TrainableTokensWrapper" or "bias" in vars(head):
        return
    vars(head)["bias"] = getattr(head.original_module, "bias", None)


def ref_copies_token_rows(model: Any) -> None:
    """Make TRL's frozen `ref` adapter a true copy of a continued adapter that trains token rows.

    On a continued adapter TRL (DPO, GRPO) adds `ref` and copies every parameter whose name holds
    `.default.`; the rows' parameter is named `…trainable_tokens_delta.default` (no dot after),
    so `ref` would keep the base's rows and the reference would not be the policy at the start.
    This copies them right after TRL's `add_adapter("ref", …)`, before any reference is computed."""
    if not hasattr(model, "add_adapter") or not any(
            name.endswith(_ROWS + "default") for name, _ in model.named_parameters()):
        return
    original = model.add_adapter

    def add_adapter(adapter_name: str, peft_config: Any, *args: Any, **kwargs: Any) -> Any:
        result = original(adapter_name, peft_config, *args, **kwargs)
        if adapter_name == REFERENCE_ADAPTER:
            with torch.no_grad():
                for name, param in model.named_parameters():
                    if name.endswith(_ROWS + "default"):
                        copy = name[: -len("default")] + REFERENCE_ADAPTER
                        model.get_parameter(copy).copy_(param)
        return result

    model.add_adapter = add_adapter


_ROWS = "trainable_tokens_delta."

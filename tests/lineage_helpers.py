"""Helpers for the lineage/cleanup tests: real PEFT adapters on the toy model, no graftline."""

from __future__ import annotations

from pathlib import Path

import torch
from peft import LoraConfig, PeftModel, get_peft_model
from transformers import AutoModelForCausalLM, PreTrainedModel


def make_adapter(
    out: Path, base: Path | None = None, *, model: PreTrainedModel | None = None, r: int = 4,
    seed: int = 0,
) -> Path:
    """Save a LoRA adapter with random non-zero weights (so it really changes the model)."""
    model = model if model is not None else AutoModelForCausalLM.from_pretrained(base)
    peft_model = get_peft_model(model, LoraConfig(r=r, lora_alpha=2 * r,
                                                  target_modules=["q_proj", "v_proj"]))
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_B" in name:
                param.copy_(torch.randn(param.shape, generator=generator) * 0.05)
    peft_model.save_pretrained(out)
    return out


def forward_with(base: Path, adapter: Path) -> torch.Tensor:
    """Load `adapter` on `base` the plain way and run one forward pass; the logits."""
    model = AutoModelForCausalLM.from_pretrained(base)
    peft_model = PeftModel.from_pretrained(model, adapter)
    ids = torch.tensor([[1, 5, 6, 7, 8, 9]])
    with torch.no_grad():
        logits = peft_model(input_ids=ids).logits
    assert torch.isfinite(logits).all()
    return logits


def files_under(root: Path) -> dict[str, int]:
    """Every file and link under `root` (never following links), with its size."""
    return {
        str(p.relative_to(root)): p.lstat().st_size
        for p in sorted(root.rglob("*")) if p.is_symlink() or p.is_file()
    }

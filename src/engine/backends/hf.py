"""transformers + peft: CPU or GPU, bitsandbytes 4/8-bit where asked and possible."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from graftline.engine.backends.base import Backend, BackendError, lora_config
from graftline.engine.pipeline import spec


def _quantization_config(quantization: str) -> Any:
    if quantization == "none":
        return None
    try:
        import bitsandbytes  # noqa: F401
        from transformers import BitsAndBytesConfig
    except ImportError:
        raise BackendError(f"quantization = \"{quantization}\" needs bitsandbytes",
                           "pip install bitsandbytes, or set quantization = \"none\"") from None
    if quantization == "4bit":
        compute = torch.bfloat16 if torch.cuda.is_available() and torch.cuda.is_bf16_supported() \
            else torch.float32
        return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
                                  bnb_4bit_use_double_quant=True, bnb_4bit_compute_dtype=compute)
    return BitsAndBytesConfig(load_in_8bit=True)


def _no_cpu_repacking(model: Any) -> None:
    """bitsandbytes repacks 4-bit weights in place for CPU inference (on CPUs with AVX512-BF16):
    it needs in_features divisible by the quantization block (64), fails otherwise, and rewrites
    the base weights under the trainer between steps. Training and our checks want them as
    loaded."""
    for module in model.modules():
        if hasattr(module, "support_avx512bf16_for_cpu"):
            module.support_avx512bf16_for_cpu = False


def attention_for(path: str | Path) -> dict[str, str]:
    """Eager attention for a model whose attention logits are soft-capped (Gemma 2): SDPA, the
    default, silently drops the cap (transformers 5.x), so training would fit a function that
    inference (eager, llama.cpp, vLLM) does not compute. Everything else keeps the default."""
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(str(path))
    except (OSError, ValueError):
        return {}
    capped = getattr(config, "attn_logit_softcapping", None) or getattr(
        getattr(config, "text_config", None), "attn_logit_softcapping", None)
    return {"attn_implementation": "eager"} if capped else {}


class HFBackend(Backend):
    name = "hf"

    def load_model(self, path: str | Path, *, quantization: str = "none",
                   dtype: torch.dtype | None = None, max_length: int = 2048) -> tuple[Any, Any]:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        kwargs: dict[str, Any] = {"dtype": dtype or torch.float32,
                                  **attention_for(path)}
        quant = _quantization_config(quantization)
        if quant is not None:
            kwargs["quantization_config"] = quant
            if torch.cuda.is_available():
                kwargs["device_map"] = {"": 0}
        model = AutoModelForCausalLM.from_pretrained(str(path), **kwargs)
        tokenizer = AutoTokenizer.from_pretrained(str(path))
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
        if quant is not None and not torch.cuda.is_available():
            _no_cpu_repacking(model)
        if quant is not None:
            from peft import prepare_model_for_kbit_training

            model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
        return model, tokenizer

    def new_adapter(self, model: Any, lora: spec.Lora, seed: int = 0,
                    tokenizer: Any = None) -> tuple[Any, Any]:
        # TRL applies it: the trainer then owns exactly one adapter, `default`.
        return model, lora_config(lora, model, tokenizer)

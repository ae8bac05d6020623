"""Unsloth: FastLanguageModel loading, its get_peft_model, and its merged-save path.

Imported only when `select_backend` chose it (a CUDA GPU and an importable unsloth): importing
unsloth patches transformers and TRL for the whole process. The trainers stay TRL's.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from graftline.engine.backends.base import DECODER_PROJECTIONS, Backend, BackendError
from graftline.engine.pipeline import spec


def _fast_language_model() -> Any:
    from unsloth import FastLanguageModel

    return FastLanguageModel


class UnslothBackend(Backend):
    name = "unsloth"

    def load_model(self, path: str | Path, *, quantization: str = "none",
                   dtype: torch.dtype | None = None, max_length: int = 2048) -> tuple[Any, Any]:
        flm = _fast_language_model()
        model, tokenizer = flm.from_pretrained(
            model_name=str(path),
            max_seq_length=max_length,
            dtype=dtype,  # None: unsloth picks bf16 where the GPU has it
            load_in_4bit=quantization == "4bit",
            load_in_8bit=quantization == "8bit",
            full_finetuning=False,
        )
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
        return model, tokenizer

    def new_adapter(self, model: Any, lora: spec.Lora, seed: int = 0,
                    tokenizer: Any = None) -> tuple[Any, Any]:
        if lora.trainable_tokens:
            # Unsloth's get_peft_model has no trainable_token_indices; a silently dropped field
            # would train a model that never stops
            raise BackendError("lora.trainable_tokens is not supported by the unsloth backend",
                               'use backend = "hf" for the stages that train token rows')
        flm = _fast_language_model()
        targets = DECODER_PROJECTIONS if lora.target_modules == "all-linear" \
            else list(lora.target_modules)
        # Unsloth applies the adapter itself (its fused LoRA kernels); TRL gets no peft_config.
        peft_model = flm.get_peft_model(
            model,
            r=lora.r,
            target_modules=targets,
            lora_alpha=lora.lora_alpha,
            lora_dropout=lora.dropout,
            bias="none",
            use_gradient_checkpointing="unsloth",
            random_state=seed,
            use_rslora=lora.use_rslora,
            loftq_config=None,
        )
        return peft_model, None

    def for_inference(self, model: Any) -> Any:
        _fast_language_model().for_inference(model)
        return model

    def save_merged(self, model: Any, tokenizer: Any, out: Path) -> None:
        if hasattr(model, "save_pretrained_merged"):
            model.save_pretrained_merged(str(out), tokenizer, save_method="merged_16bit")
        else:  # already merged (merge_and_unload): a plain save
            super().save_merged(model, tokenizer, out)

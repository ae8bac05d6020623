"""The one Backend interface and the `auto` choice between backends."""

from __future__ import annotations

import importlib.util
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any

import torch

from graftline.engine.common.errors import GraftlineError
from graftline.engine.common.tokenizer_files import save_tokenizer
from graftline.engine.pipeline import spec

# What "all-linear" means for the decoder-only families Unsloth patches (it wants a list).
DECODER_PROJECTIONS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj",
                       "down_proj"]


class BackendError(GraftlineError):
    """Raised with the fix a user needs, which its text carries."""

    fix_in_text = True


class Backend(ABC):
    """Loads models and adapters for the stages; the stages drive TRL themselves."""

    name: str = ""

    @abstractmethod
    def load_model(self, path: str | Path, *, quantization: str = "none",
                   dtype: torch.dtype | None = None, max_length: int = 2048) -> tuple[Any, Any]:
        """(model, tokenizer) for a full model directory or hub id."""

    @abstractmethod
    def new_adapter(self, model: Any, lora: spec.Lora, seed: int = 0,
                    tokenizer: Any = None) -> tuple[Any, Any]:
        """(model, peft_config_for_trl): a fresh `default` adapter, either applied here (and no
        config for TRL) or described by a LoraConfig that TRL applies — never both. The
        tokenizer resolves `lora.trainable_tokens` to ids."""

    def load_adapter(self, model: Any, adapter_dir: str | Path, *, trainable: bool = True) -> Any:
        """The saved adapter as the one trainable `default` adapter of a PeftModel."""
        from peft import PeftModel

        return PeftModel.from_pretrained(model, str(adapter_dir), is_trainable=trainable,
                                         adapter_name="default")

    def trainer_defaults(self) -> dict[str, Any]:
        """TrainingArguments the device needs (TRL's defaults assume a bf16 GPU)."""
        if not torch.cuda.is_available():
            return {"use_cpu": True, "bf16": False, "fp16": False}
        return {"bf16": torch.cuda.is_bf16_supported(), "fp16": not torch.cuda.is_bf16_supported()}

    def for_inference(self, model: Any) -> Any:
        model.eval()
        return model

    def save_merged(self, model: Any, tokenizer: Any, out: Path) -> None:
        """Save a full model that `load_model(out)` reads back with its tokenizer and template."""
        model.save_pretrained(str(out), safe_serialization=True)
        save_tokenizer(tokenizer, out)


def cuda_available() -> bool:
    return torch.cuda.is_available()


def unsloth_importable() -> bool:
    """Whether `import unsloth` will work. Only tried with a GPU present: importing unsloth
    patches transformers and TRL process-wide, and some releases raise without a GPU."""
    if importlib.util.find_spec("unsloth") is None:
        return False
    try:
        import unsloth  # noqa: F401
    except Exception:
        return False
    return True


def choose_backend(requested: str, *, cuda: bool, unsloth: bool) -> str:
    """The pure choice: `auto` → unsloth only with CUDA and an importable unsloth."""
    if requested == "hf":
        return "hf"
    if requested == "unsloth":
        if not cuda:
            raise BackendError("backend = \"unsloth\" needs a CUDA GPU, and none is visible",
                               'use backend = "auto" or "hf" on this machine')
        if not unsloth:
            raise BackendError("backend = \"unsloth\" but unsloth cannot be imported",
                               "pip install 'graftline[unsloth]', or use backend = \"auto\"")
        return "unsloth"
    if requested == "auto":
        return "unsloth" if cuda and unsloth else "hf"
    raise BackendError(f"unknown backend '{requested}'", 'use "auto", "hf" or "unsloth"')


def select_backend(requested: str) -> Backend:
    cuda = cuda_available()
    # Never import unsloth on a CPU box: auto would not pick it anyway.
    name = choose_backend(requested, cuda=cuda,
                          unsloth=cuda and requested != "hf" and unsloth_importable())
    if name == "unsloth":
        from graftline.engine.backends.unsloth import UnslothBackend

        return UnslothBackend()
    from graftline.engine.backends.hf import HFBackend

    return HFBackend()


def trainable_token_ids(lora: spec.Lora, tokenizer: Any) -> list[int]:
    """`lora.trainable_tokens` as ids of the stage's tokenizer ("template": the special tokens
    its chat template writes). Validate said it first; this is the stage's own word on it."""
    from graftline.engine.pipeline.template_tokens import (
        resolve_trainable_tokens,
        written_by_template,
    )

    if not lora.trainable_tokens:
        return []
    special = {str(t.content): int(i) for i, t in
               getattr(tokenizer, "added_tokens_decoder", {}).items() if t.special}
    template = tokenizer.chat_template if isinstance(tokenizer.chat_template, str) else ""
    written = written_by_template(template, special, tokenizer.bos_token, tokenizer.eos_token)
    found, unknown = resolve_trainable_tokens(lora.trainable_tokens, tokenizer.get_vocab(),
                                              written)
    if unknown:
        raise BackendError(f"lora.trainable_tokens names {unknown}, which the stage's tokenizer "
                           "does not have as one token",
                           "name tokens exactly as the tokenizer spells them, or use "
                           'trainable_tokens = "template"')
    if not found:
        raise BackendError('lora.trainable_tokens = "template", but the chat template writes no '
                           "special token", 'list the tokens to train, e.g. ["<|eot_id|>"]')
    return sorted(set(found.values()))


def trainable_token_indices(model: Any, ids: list[int]) -> list[int] | dict[str, list[int]]:
    """PEFT's `trainable_token_indices` for `ids`: the list form (the input embedding) when the
    output embedding is tied to it (PEFT then shares one delta between both), else the same rows
    of the input embedding AND of the output layer by module name, so both train."""
    inp, out = model.get_input_embeddings(), model.get_output_embeddings()
    if out is None or out.weight is inp.weight:
        return list(ids)
    names = {id(module): name for name, module in model.named_modules()}
    return {names[id(inp)]: list(ids), names[id(out)]: list(ids)}


def lora_config(lora: spec.Lora, model: Any = None, tokenizer: Any = None) -> Any:
    """PEFT's LoraConfig for `lora`; `model` and `tokenizer` resolve `trainable_tokens`."""
    from peft import LoraConfig

    extra: dict[str, Any] = ({"target_parameters": list(lora.target_parameters)}
                             if lora.target_parameters else {})
    if lora.trainable_tokens:
        if model is None or tokenizer is None:
            raise ValueError("lora.trainable_tokens needs the model and its tokenizer")
        ids = trainable_token_ids(lora, tokenizer)
        extra["trainable_token_indices"] = trainable_token_indices(model, ids)
    return LoraConfig(r=lora.r, lora_alpha=lora.lora_alpha, lora_dropout=lora.dropout,
                      target_modules=lora.target_modules, use_rslora=lora.use_rslora,
                      use_dora=lora.use_dora, bias="none", task_type="CAUSAL_LM", **extra)

"""Model configurations llama.cpp cannot run as configured, known before conversion.

A GGUF carries what the converter writes; llama.cpp derives the rest from the architecture
(and, for some, from the layer count that names a published size). Where a config.json value is
neither written nor derived the same way, llama.cpp runs a different network from the one
trained: wrong logits, nothing said. Those configurations are refused before conversion
(`gguf_convert.preflight`), naming the family, the value, what llama.cpp uses instead and the
fix. Read in the pinned runtime's llama.cpp (llama-cpp-python 0.3.36, `src/models/gemma2.cpp`,
`gemma3.cpp`) and measured on the family twins: each rule below changed the twin's logits by
more than 1.5 on a logit scale of 10 when broken. The published Gemma 2 and Gemma 3 configs
(2b/9b/27b, 270m/1b/4b/12b/27b) all pass.

What is NOT here because graftline's converter driver fixes it: a sliding/full layer pattern
other than the family's (written per layer, `gguf_driver.sliding_window_layers`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

# llama.cpp scales Gemma's queries by 1/sqrt(hidden/heads) for the one published size whose
# query_pre_attn_scalar is not head_dim (recognised by its layer count), else by
# 1/sqrt(head_dim); config.json's query_pre_attn_scalar is not read.
_HIDDEN_PER_HEAD_SCALE_LAYERS = {"gemma2": 46, "gemma3": 62}  # Gemma 2 27B, Gemma 3 27B
# transformers' defaults, for a config.json that omits a value
_DEFAULTS: dict[str, dict[str, Any]] = {
    "gemma2": {"head_dim": 256, "query_pre_attn_scalar": 256, "attn_logit_softcapping": 50.0,
               "final_logit_softcapping": 30.0},
    "gemma3": {"head_dim": 256, "query_pre_attn_scalar": 256, "attn_logit_softcapping": None},
}


@dataclass(frozen=True)
class RuntimeLimit:
    """Why llama.cpp would run this configuration differently, and the fix."""

    family: str
    field: str
    reason: str
    fix: str


def _family(config: dict[str, Any]) -> tuple[str | None, dict[str, Any]]:
    text = config.get("text_config") or config
    model_type = str(text.get("model_type") or config.get("model_type") or "")
    if model_type == "gemma2":
        return "gemma2", text
    if model_type in ("gemma3", "gemma3_text"):
        return "gemma3", text
    return None, text


def runtime_limit(config: dict[str, Any]) -> RuntimeLimit | None:
    """The first value of `config` (a config.json) llama.cpp would not run as configured."""
    family, text = _family(config)
    if family is None:
        return None
    defaults = _DEFAULTS[family]

    def value(key: str) -> Any:
        return text[key] if key in text else defaults.get(key)

    fix = ("use the safetensors export (transformers and vLLM run the model as configured); "
           "a GGUF of this configuration would need llama.cpp to read the value")
    if family == "gemma2":
        for key in ("attn_logit_softcapping", "final_logit_softcapping"):
            if value(key) is None:
                return RuntimeLimit(
                    family, key, f"{key} is null: llama.cpp's gemma2 always soft-caps (the "
                    "pinned converter cannot write a missing cap, and llama.cpp would cap "
                    "at its default)", fix)
    if family == "gemma3" and value("attn_logit_softcapping") is not None:
        return RuntimeLimit(
            family, "attn_logit_softcapping",
            f"attn_logit_softcapping is {value('attn_logit_softcapping')}: llama.cpp's gemma3 "
            "has no attention soft-capping (the pinned converter stops on it)", fix)
    layers = int(text.get("num_hidden_layers") or 0)
    if layers == _HIDDEN_PER_HEAD_SCALE_LAYERS[family]:
        # an integer division in llama.cpp (uint32 / uint32)
        used = float(int(text["hidden_size"]) // int(text["num_attention_heads"]))
        rule = f"hidden_size / num_attention_heads = {used:g} (a {layers}-layer {family})"
    else:
        used = float(value("head_dim"))
        rule = f"head_dim = {used:g}"
    scalar = value("query_pre_attn_scalar")
    if scalar is not None and not math.isclose(float(scalar), used, rel_tol=1e-6):
        return RuntimeLimit(
            family, "query_pre_attn_scalar",
            f"query_pre_attn_scalar is {scalar:g}, but llama.cpp scales {family}'s queries "
            f"by 1/sqrt({rule}) and does not read query_pre_attn_scalar: every attention "
            "layer would run with another scale", fix)
    return None


__all__ = ["RuntimeLimit", "runtime_limit"]

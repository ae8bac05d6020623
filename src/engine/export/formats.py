"""The export formats and whether each can run here.

safetensors is always written (the merged model directory, the source of every other format);
gguf goes through llama.cpp's converter in its own process (`gguf_convert`) and is verified
tensor by tensor (`gguf_verify`); ollama writes a Modelfile (`ollama`) whose FROM is the GGUF
when one is exported, else the safetensors directory.

`available_formats()` is the pure look-up the console's export dialog uses to offer only what
can run and to say why a format cannot.
"""

from __future__ import annotations

from graftline.engine.export.gguf_convert import (
    CONVERTER_TYPES,
    DTYPE_TO_GGUF,
    GGUF_TYPES,
    QUANTIZE_TYPES,
    find_converter,
    gguf_filename,
    unavailable_reason,
)
from graftline.engine.export.ollama import ChatParts, chat_parts, modelfile

FORMATS = ("safetensors", "gguf", "ollama")


def available_formats(gguf_type: str = "f16") -> list[tuple[str, bool, str]]:
    """(format, available, reason) for every format: reason says why one is not available,
    or what it will use when it is. Reads only the environment and the file system."""
    gguf_reason = unavailable_reason(gguf_type)
    converter = find_converter()
    gguf_note = (f"GGUF {gguf_type} via {converter.describe()}" if converter is not None
                 else "")
    return [
        ("safetensors", True, "the merged model directory (always written)"),
        ("gguf", gguf_reason is None, gguf_reason or gguf_note),
        ("ollama", True, "a Modelfile; FROM the GGUF when gguf is exported too, else the "
                         "safetensors directory"),
    ]


__all__ = ["CONVERTER_TYPES", "DTYPE_TO_GGUF", "FORMATS", "GGUF_TYPES", "QUANTIZE_TYPES",
           "ChatParts", "available_formats", "chat_parts", "gguf_filename", "modelfile"]

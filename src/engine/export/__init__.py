"""graftline.engine.export: a checkpoint's adapter chain merged into its full-precision base,
written as a complete model directory and verified.

Modules: writer (plan_export, run_export), worker (an export in its own process, reporting
JSON lines: what the console runs), chain (the adapter chain to merge), merge (the
streaming per-tensor merge), safetensors (header and tensor reads), ordered_io (the writer
thread), verify (reload and compare logits), formats (which formats can run here), gguf_convert
(llama.cpp's converter in its own process), gguf_verify (the GGUF read back, tensor by tensor),
ollama (the Modelfile), card (the model card).
"""

from __future__ import annotations

from graftline.engine.common.lazy import lazy_exports

_EXPORTS = {
    "writer": "writer",
    "FORMATS": "writer",
    "ExportPlan": "writer",
    "ExportProgress": "writer",
    "ExportResult": "writer",
    "plan_export": "writer",
    "run_export": "writer",
    "parse_size": "writer",
    "chain": "chain",
    "ExportRefused": "chain",
    "merge": "merge",
    "safetensors": "safetensors",
    "ordered_io": "ordered_io",
    "verify": "verify",
    "formats": "formats",
    "available_formats": "formats",
    "GGUF_TYPES": "gguf_convert",
    "gguf_convert": "gguf_convert",
    "gguf_verify": "gguf_verify",
    "verify_gguf": "gguf_verify",
    "ollama": "ollama",
    "card": "card",
    "worker": "worker",
    "worker_command": "worker",
    "parse_worker_line": "worker",
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)

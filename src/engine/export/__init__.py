"""graftline.engine.export: a checkpoint's adapter chain merged into its full-precision base,
written as a complete model directory and verified.

Modules: writer (plan_export, run_export), worker (an export in its own process, reporting
JSON lines: what the console runs), chain (the adapter chain to merge), merge (the
streaming per-tensor merge), safetensors (header and tensor reads), ordered_io (the writer
thread), verify (reload and compare logits), formats (gguf, ollama), card (the model card).
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
    "card": "card",
    "worker": "worker",
    "worker_command": "worker",
    "parse_worker_line": "worker",
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)

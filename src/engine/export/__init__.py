"""graftline.engine.export: a checkpoint's adapter chain merged into its full-precision base,
written as a complete model directory and verified.

Modules: writer (plan_export, run_export), worker (an export in its own process, reporting JSON
lines: one `serve` process per console export dialog), chain (the adapter chain to merge),
adapter_plan (what each adapter tensor changes in its base, refused where inexact), merge (the
streaming per-tensor merge), safetensors (header and tensor reads), ordered_io (the writer
thread), verify (reload and compare logits), formats (which formats can run here), gguf_convert
(llama.cpp's converter in its own process), gguf_verify (the GGUF read back, tensor by tensor),
gguf_run (the GGUF run in llama.cpp, in a child process: gguf_llama), ollama (the Modelfile),
card (the model card), provenance (`--check-data`: which model a hand-made adapter was trained
on, decided from its loss on data).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from graftline.engine.common.lazy import lazy_exports

if TYPE_CHECKING:  # what mypy sees through the lazy surface (lazy_exports at run time)
    from graftline.engine.export import card as card
    from graftline.engine.export import chain as chain
    from graftline.engine.export import formats as formats
    from graftline.engine.export import gguf_convert as gguf_convert
    from graftline.engine.export import gguf_run as gguf_run
    from graftline.engine.export import gguf_verify as gguf_verify
    from graftline.engine.export import merge as merge
    from graftline.engine.export import ollama as ollama
    from graftline.engine.export import ordered_io as ordered_io
    from graftline.engine.export import provenance as provenance
    from graftline.engine.export import safetensors as safetensors
    from graftline.engine.export import verify as verify
    from graftline.engine.export import worker as worker
    from graftline.engine.export import writer as writer
    from graftline.engine.export.chain import ExportRefused as ExportRefused
    from graftline.engine.export.formats import available_formats as available_formats
    from graftline.engine.export.gguf_convert import GGUF_TYPES as GGUF_TYPES
    from graftline.engine.export.gguf_verify import verify_gguf as verify_gguf
    from graftline.engine.export.provenance import check_adapter as check_adapter
    from graftline.engine.export.worker import (
        parse_worker_line as parse_worker_line,
    )
    from graftline.engine.export.worker import (
        request_line as request_line,
    )
    from graftline.engine.export.worker import (
        serve_command as serve_command,
    )
    from graftline.engine.export.worker import (
        worker_command as worker_command,
    )
    from graftline.engine.export.writer import (
        FORMATS as FORMATS,
    )
    from graftline.engine.export.writer import (
        ExportPlan as ExportPlan,
    )
    from graftline.engine.export.writer import (
        ExportProgress as ExportProgress,
    )
    from graftline.engine.export.writer import (
        ExportResult as ExportResult,
    )
    from graftline.engine.export.writer import (
        parse_size as parse_size,
    )
    from graftline.engine.export.writer import (
        plan_export as plan_export,
    )
    from graftline.engine.export.writer import (
        run_export as run_export,
    )


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
    "gguf_run": "gguf_run",
    "verify_gguf": "gguf_verify",
    "ollama": "ollama",
    "card": "card",
    "worker": "worker",
    "worker_command": "worker",
    "parse_worker_line": "worker",
    "serve_command": "worker",
    "request_line": "worker",
    "provenance": "provenance",
    "check_adapter": "provenance",
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)

"""graftline.engine.common: small pieces every area uses: the error root, atomic writes, units,
checkpoint file names (and what a folder holds, its Trainer checkpoints, its size, its LoRA
scaling), the one safetensors header reader, disk space, the metrics sink, run-control flags
and lazy public surfaces.
"""

from __future__ import annotations

from graftline.engine.common.lazy import lazy_exports

_EXPORTS = {
    "errors": "errors",
    "GraftlineError": "errors",
    "atomic": "atomic",
    "checkpoint_files": "checkpoint_files",
    "FolderFiles": "checkpoint_files",
    "folder_files": "checkpoint_files",
    "safetensors_header": "safetensors_header",
    "units": "units",
    "human_bytes": "units",
    "disk": "disk",
    "sink": "sink",
    "Sink": "sink",
    "ListSink": "sink",
    "control": "control",
    "RunControl": "control",
    "lazy": "lazy",
    "lazy_exports": "lazy",
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)

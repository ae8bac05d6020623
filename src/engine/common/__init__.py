"""graftline.engine.common: small pieces every area uses: the error root, atomic writes, units,
checkpoint file names (and what a folder holds, its Trainer checkpoints, its size, its LoRA
scaling), the one safetensors header reader, disk space, the metrics sink, run-control flags,
lazy public surfaces, and the stdout of a child that speaks JSON lines (protocol_stdout).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from graftline.engine.common.lazy import lazy_exports

if TYPE_CHECKING:  # what mypy sees through the lazy surface (lazy_exports at run time)
    from graftline.engine.common import atomic as atomic
    from graftline.engine.common import checkpoint_files as checkpoint_files
    from graftline.engine.common import control as control
    from graftline.engine.common import disk as disk
    from graftline.engine.common import errors as errors
    from graftline.engine.common import event_types as event_types
    from graftline.engine.common import heap as heap
    from graftline.engine.common import lazy as lazy
    from graftline.engine.common import safetensors_header as safetensors_header
    from graftline.engine.common import sink as sink
    from graftline.engine.common import units as units
    from graftline.engine.common.atomic import write_text as atomic_write_text  # noqa: F401
    from graftline.engine.common.checkpoint_files import (
        FolderFiles as FolderFiles,
    )
    from graftline.engine.common.checkpoint_files import (
        folder_files as folder_files,
    )
    from graftline.engine.common.control import RunControl as RunControl
    from graftline.engine.common.errors import GraftlineError as GraftlineError
    from graftline.engine.common.event_types import EventType as EventType
    from graftline.engine.common.event_types import Telemetry as Telemetry
    from graftline.engine.common.event_types import record_of as record_of
    from graftline.engine.common.heap import collect_less_often as collect_less_often
    from graftline.engine.common.lazy import lazy_exports as lazy_exports
    from graftline.engine.common.sink import ListSink as ListSink
    from graftline.engine.common.sink import Sink as Sink
    from graftline.engine.common.units import human_bytes as human_bytes


_EXPORTS = {
    "errors": "errors",
    "GraftlineError": "errors",
    "atomic": "atomic",
    "atomic_write_text": "atomic:write_text",
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
    "event_types": "event_types",
    "EventType": "event_types",
    "Telemetry": "event_types",
    "record_of": "event_types",
    "heap": "heap",
    "collect_less_often": "heap",
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)

"""What an engine, a rank or a rehearsal keeps out of its imports, decided before it imports the
training stack: bitsandbytes, when nothing the process runs loads it
(pipeline/bitsandbytes_use.py says why, and what counts; common/optional_imports.py how). The
engine's log says so in one line, for whoever meets the ModuleNotFoundError in their own code (a
reward function that imports bitsandbytes).
"""

from __future__ import annotations

import sys
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

from graftline.engine.common.optional_imports import keep_out_bitsandbytes

if TYPE_CHECKING:
    from graftline.engine.pipeline.file import PipelineFile
    from graftline.engine.pipeline.plan import StepPlan

__all__ = ["KEPT_OUT", "keep_out_what_the_run_does_not_load"]

# engine.log's line, after "graftline: " (the engine) or "graftline: rank 0: " (a group's)
KEPT_OUT = ("bitsandbytes is not imported in this process: nothing in this run loads it (no "
            "quantization, no bitsandbytes optimizer, a full-precision base)")


def _run_bases(pf: PipelineFile) -> list[str | None]:
    """The run's base on this disk, as the runner finds it: a local folder, or None (a hub id,
    which may be anything). Nothing to read for the toy base, which graftline ships or builds in
    full precision (and which the runner copies into the cache after run_started, not here)."""
    from graftline.engine.toy.named import TOY_SCHEME

    if pf.pipeline.pipeline.base.startswith(TOY_SCHEME):
        return []
    from graftline.engine.run.runner import base_model_path

    found = base_model_path(pf)
    return [found if Path(found).is_dir() else None]


def keep_out_what_the_run_does_not_load(pf: PipelineFile,
                                        steps: Iterable[StepPlan] | None = None,
                                        bases: Iterable[str | Path | None] | None = None
                                        ) -> bool:
    """Before the training stack's first import. `steps`: the ones this process runs (all of
    the run's by default); `bases`: the folders they load (the run's base by default). True
    when bitsandbytes was kept out. Anything that fails here keeps it: the run then reports its
    own problem where it always did."""
    if "bitsandbytes" in sys.modules:
        return sys.modules["bitsandbytes"] is None
    try:
        from graftline.engine.pipeline.bitsandbytes_use import bitsandbytes_reason
        from graftline.engine.pipeline.plan import resolve
        from graftline.engine.pipeline.scaleout import detect_env

        steps = resolve(pf.pipeline, pf.directory) if steps is None else steps
        bases = _run_bases(pf) if bases is None else bases
        reason = bitsandbytes_reason(pf.pipeline, steps, bases, detect_env())
    except Exception:  # in doubt, keep
        return False
    return reason is None and keep_out_bitsandbytes()

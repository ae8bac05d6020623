"""The collector's view of a process that has imported the training stack.

torch, transformers, peft, trl and datasets leave ~0.5 M tracked objects behind once imported,
nearly all module-level and alive until the process ends. Every full collection rescans them:
accelerate's at each `Trainer.train()`'s start, the export check's between its two models, and
Python's own generation-2 passes, ~0.3-0.4 s each on 2 cores (~3 s of a 30 s toy chain, ~9 s
of the export tests' 36 s). `freeze_imported_heap` moves them out of the collector's reach once
(`gc.freeze`), so those collections scan only what a stage made since.
"""

from __future__ import annotations

import gc

__all__ = ["freeze_imported_heap"]

_frozen = False


def freeze_imported_heap() -> None:
    """Once per process, after the heavy imports and before a stage or an export holds a model
    of its own: collect, then freeze every object alive now. What is frozen was alive and, being
    modules and the process's own state, stays alive; a model, dataset or trainer made after
    this is collected as before. Never called twice: a later freeze could hold a finished
    stage's garbage (a model on a GPU) until the process ends."""
    global _frozen
    if _frozen:
        return
    _frozen = True
    gc.collect()
    gc.freeze()

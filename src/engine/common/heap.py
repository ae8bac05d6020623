"""The collector's view of a process that has imported the training stack.

torch, transformers, peft, trl and datasets leave ~0.5 M tracked objects behind once imported,
nearly all module-level and alive until the process ends. Every full collection rescans them:
accelerate's at each `Trainer.train()`'s start, the export check's between its two models, and
Python's own generation-2 passes, ~0.3-0.4 s each on 2 cores (~3 s of a 30 s toy chain, ~9 s
of the export tests' 36 s). `freeze_imported_heap` moves them out of the collector's reach once
(`gc.freeze`), so those collections scan only what a stage made since.

Before that, the import itself: ~0.5 M long-lived objects allocated at Python's default
young-generation threshold (700) ran ~1,350 collections, 1.5 s of a 10 s import's CPU on 2
cores, in every engine, rank, export worker and rehearsal child. `collect_less_often` raises the
threshold to 50,000 (a few dozen collections, 0.4-0.6 s): the entry points call it first thing,
never an import of graftline, so a program that imports it keeps its own collector settings.
"""

from __future__ import annotations

import gc

__all__ = ["THRESHOLDS", "collect_less_often", "freeze_imported_heap"]

# young generation, then how many young and middle collections before an older one: a process
# that allocates a million objects once, at import, then mostly tensors (refcounted, no cycles)
THRESHOLDS = (50_000, 20, 10)

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


def collect_less_often() -> None:
    """For a process about to import the training stack: fewer, larger young collections.
    Garbage is still collected (a cycle waits for up to 50,000 new objects, not 700)."""
    gc.set_threshold(*THRESHOLDS)

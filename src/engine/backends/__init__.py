"""Model loading behind one interface: `hf` (transformers + peft) and `unsloth` (FastLanguageModel).

Both hand their models to the same TRL trainers; only loading, adapter creation and merged saves
differ. `select_backend("auto")` picks unsloth only where it can run: a CUDA GPU and an
importable unsloth.
"""

from graftline.engine.backends.base import (
    Backend,
    BackendError,
    choose_backend,
    select_backend,
)

__all__ = ["Backend", "BackendError", "choose_backend", "select_backend"]

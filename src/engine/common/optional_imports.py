"""Keeping an installed optional library out of a process that will not use it.

Only bitsandbytes, for now: PEFT imports it whenever it is installed and reads its 4-bit layer
class before the first LoRA layer it makes, and its `torch.compile`-decorated kernels pull in
torch's compiler stack: ~2.3 s of CPU in every process that imports PEFT (on 2 cores, the
stack's import took 11.5 s with it and 9.2 s without, medians of 5: benchmarks/stack_import.py).
Which processes may go without it: pipeline/bitsandbytes_use.py (a run's engine and ranks) and
export/worker.py (an export never loads quantized weights).

Kept out the documented way, `sys.modules[name] = None`: `importlib.util.find_spec` then answers
None, so PEFT, transformers and accelerate see it as not installed, and `import bitsandbytes`
raises ModuleNotFoundError. Too late once it is imported; then nothing changes.
"""

from __future__ import annotations

import sys

__all__ = ["keep_out_bitsandbytes"]


def keep_out_bitsandbytes() -> bool:
    """Before the training stack's first import. True when it is now kept out."""
    if "bitsandbytes" in sys.modules:
        return sys.modules["bitsandbytes"] is None
    sys.modules["bitsandbytes"] = None  # type: ignore[assignment]
    return True

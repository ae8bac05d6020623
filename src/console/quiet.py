"""Keep the training libraries' chatter out of the CLI's output.

`graftline rehearse` (and the rehearsal before `graftline run`) trains in this process, and
transformers, datasets, TRL and bitsandbytes print progress bars ("Loading weights: 100%…",
"Tokenizing train dataset…") and warnings ("Failed to load CPU gemm_4bit_forward from
kernels-community…") that bury graftline's own per-stage progress. The engine process writes
everything to its engine.log; the CLI shows graftline's lines only.

Nothing here imports those libraries (the console never does): their switches are environment
variables read when they are first imported, and logger levels set by name.
"""

from __future__ import annotations

import contextlib
import logging
import os
import warnings
from collections.abc import Iterator

# read by huggingface_hub (and so transformers' and datasets' tqdm) at import time
PROGRESS_OFF = {"HF_HUB_DISABLE_PROGRESS_BARS": "1", "HF_DATASETS_DISABLE_PROGRESS_BARS": "1",
                "TQDM_DISABLE": "1"}
VERBOSITY = {"TRANSFORMERS_VERBOSITY": "error", "TRANSFORMERS_NO_ADVISORY_WARNINGS": "1",
             "DATASETS_VERBOSITY": "error"}
LOGGERS = ("transformers", "datasets", "trl", "peft", "accelerate", "bitsandbytes", "kernels",
           "huggingface_hub", "torch")


def quiet_progress_bars() -> None:
    """No library progress bars in this process or the engines it starts (a bar in a log file
    is a line of carriage returns); a user's own setting wins."""
    for key, value in PROGRESS_OFF.items():
        os.environ.setdefault(key, value)


@contextlib.contextmanager
def libraries_quiet() -> Iterator[None]:
    """Around in-process training (a rehearsal): library warnings and info lines are silenced,
    then the environment is as it was, so an engine started afterwards logs them as usual."""
    saved = {key: os.environ.get(key) for key in (*PROGRESS_OFF, *VERBOSITY)}
    levels = {name: logging.getLogger(name).level for name in LOGGERS}
    for key, value in {**PROGRESS_OFF, **VERBOSITY}.items():
        os.environ.setdefault(key, value)
    for name in LOGGERS:
        logging.getLogger(name).setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for key, before in saved.items():
            if before is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = before
        for name, level in levels.items():
            logging.getLogger(name).setLevel(level)

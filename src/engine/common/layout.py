"""Every path of a run directory, in one place.

```
<run>/pipeline.toml  pipeline.sha256  run.json  engine.lock  events.jsonl  events.summary.json
      state.json      control.sock  engine.log  rehearsal.json  stages/<stage>/
      stages/<stage>/stage.json
      stages/<stage>/trainer/checkpoint-N
```

Readers and writers (engine, client, lineage, cleanup) ask this module for a path instead of
spelling a file name, so the layout cannot drift between them.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "CONTROL_SOCKET",
    "DONE",
    "ENGINE_LOG",
    "EVENTS",
    "KEEP_CHECKPOINTS",
    "LOCK",
    "PIPELINE_COPY",
    "PIPELINE_HASH",
    "REHEARSAL",
    "RUN_META",
    "STAGES",
    "STATE",
    "SUMMARY",
    "TRAINER_DIR",
    "RunLayout",
]

PIPELINE_COPY = "pipeline.toml"
PIPELINE_HASH = "pipeline.sha256"
RUN_META = "run.json"
LOCK = "engine.lock"
EVENTS = "events.jsonl"
SUMMARY = "events.summary.json"  # the compact summary beside the log (engine/run/summary.py)
STATE = "state.json"
CONTROL_SOCKET = "control.sock"
ENGINE_LOG = "engine.log"
STAGES = "stages"
REHEARSAL = "rehearsal.json"  # the report of the rehearsal the engine ran first (run -d)
DONE = "stage.json"  # the completion marker of stages that write no checkpoint (eval, generate)
TRAINER_DIR = "trainer"
KEEP_CHECKPOINTS = 2  # Trainer checkpoints kept per stage (save_total_limit)


@dataclass(frozen=True)
class RunLayout:
    """The paths of one run directory (nothing is read or created here)."""

    root: Path

    @property
    def lock(self) -> Path:
        return self.root / LOCK

    @property
    def events(self) -> Path:
        return self.root / EVENTS

    @property
    def state(self) -> Path:
        return self.root / STATE

    @property
    def stages(self) -> Path:
        return self.root / STAGES

    def stage(self, name: str) -> Path:
        return self.root / STAGES / name

    def is_run(self) -> bool:
        """A run directory has its state file or its event log."""
        return self.state.is_file() or self.events.is_file()

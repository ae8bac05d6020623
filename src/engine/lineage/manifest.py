"""The checkpoint manifest, `graftline.json`: the truth about a checkpoint, travelling with it.

A checkpoint starts `partial` and becomes `complete` only after every file is written and every
check has passed, so a directory cut short by a crash or a full disk is never mistaken for a good
one.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from graftline import __version__
from graftline.engine.common import atomic
from graftline.engine.common.checkpoint_files import directory_bytes

MANIFEST = "graftline.json"
METRICS = "metrics.json"
EVALUATION = "evaluation.json"

Kind = Literal["base", "adapter", "merged", "combined", "export"]
Relation = Literal["trained_on", "continued_from", "merged_from", "combined_from", "exported_from"]
Status = Literal["partial", "complete", "failed"]


class Parent(BaseModel):
    model_config = ConfigDict(frozen=True)

    relation: Relation
    path: str
    id: str | None = None
    # A parent from outside the run (issue 19: a stage's `from` named a checkpoint made
    # elsewhere): what it is, what made it, the base it records, and the `from` as written.
    # Outside the run, it is never cleanup's to delete.
    kind: Literal["adapter", "model"] | None = None
    source: str | None = None
    base: str | None = None
    foreign: bool = False
    ref: str | None = None


class LoraSpec(BaseModel):
    """What identifies an adapter's shape: continuing an adapter must keep all of it."""

    model_config = ConfigDict(frozen=True)

    r: int
    alpha: int
    dropout: float = 0.0
    target_modules: list[str] | str = "all-linear"
    use_rslora: bool = False
    use_dora: bool = False
    # token ids whose embedding/lm_head rows the adapter trains (PEFT's trainable_token_indices);
    # None: not recorded (manifests written before graftline trained token rows)
    trainable_tokens: list[int] | None = None


class CheckResult(BaseModel):
    model_config = ConfigDict(frozen=True)

    name: str
    status: Literal["pass", "warn", "fail"]
    message: str
    stage: str | None = None
    data: dict[str, Any] = Field(default_factory=dict)


class Manifest(BaseModel):
    model_config = ConfigDict(extra="allow")

    id: str = Field(default_factory=lambda: uuid.uuid4().hex[:12])
    kind: Kind
    name: str = ""
    parents: list[Parent] = Field(default_factory=list)
    base: str | None = None  # the full model an adapter applies to (resolved path or hub id)
    stage: str | None = None
    stage_kind: str | None = None
    run: str | None = None
    lora: LoraSpec | None = None
    metrics: dict[str, float] = Field(default_factory=dict)
    evaluation: dict[str, float] = Field(default_factory=dict)
    checks: list[CheckResult] = Field(default_factory=list)
    bytes: int = 0
    status: Status = "partial"
    created: str = Field(default_factory=lambda: datetime.now(UTC).isoformat(timespec="seconds"))
    graftline_version: str = __version__
    # an export's own record: how it was written
    dtype: str | None = None
    formats: list[str] | None = None
    source_base: str | None = None
    untied_embeddings: bool | None = None
    # what the export said when it was planned (e.g. the in-memory-merge doubt), kept with it
    warnings: list[str] = Field(default_factory=list)


def read(directory: Path) -> Manifest | None:
    path = Path(directory) / MANIFEST
    if not path.is_file():
        return None
    return Manifest.model_validate_json(path.read_text(encoding="utf-8"))


def write(directory: Path, manifest: Manifest) -> None:
    atomic.write_json(Path(directory) / MANIFEST, manifest.model_dump(mode="json"))


def complete(directory: Path, manifest: Manifest) -> Manifest:
    """Mark complete, with the final size. Call last, after every other file is on disk."""
    done = manifest.model_copy(update={"status": "complete"})
    done.bytes = directory_bytes(Path(directory))
    write(directory, done)
    return done

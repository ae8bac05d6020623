"""A `from` that names something outside the pipeline: a checkpoint made elsewhere.

Besides a stage name or `base`, a stage's `from` may name (relative to the pipeline file):

- a PEFT adapter directory (`adapter_config.json` + weights), e.g. a notebook's save, a DPO
  output with TRL's frozen `ref/` copy beside it (the top-level adapter is the policy);
- a full model directory (`config.json` + safetensors), e.g. a merge saved by hand;
- a Trainer `checkpoint-N` directory (its adapter or its model);
- another graftline run's stage, `run:NAME/STAGE`, found through the per-user run index.

A value with a `/`, or starting with `.` or `~`, or `run:`, is such a reference; a bare word is a
stage name (`is_reference`). Reading one is pure apart from `stat` and small JSON reads: no
weights, no torch, nothing written. An adapter's base is what its manifest or
`adapter_config.json` records, resolved by the one resolver (`lineage.resolve`), so the plan,
lineage, cleanup and export agree on which full model it needs.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from graftline.engine.common.checkpoint_files import (
    ADAPTER_CONFIG,
    ADAPTER_WEIGHTS,
    MODEL_CONFIG,
    MODEL_SAFETENSORS,
    MODEL_SAFETENSORS_INDEX,
    REFERENCE_ADAPTER,
    checkpoint_dirs,
    checkpoint_step,
    folder_files,
)
from graftline.engine.common.errors import GraftlineError
from graftline.engine.common.layout import STAGES
from graftline.engine.lineage import manifest as mf
from graftline.engine.lineage.resolve import resolve_base
from graftline.engine.pipeline import spec

__all__ = [
    "RUN_SCHEME",
    "Foreign",
    "ForeignError",
    "is_full_model",
    "is_reference",
    "lora_of",
    "read_foreign",
]

RUN_SCHEME = "run:"

ForeignKind = Literal["adapter", "model"]
Source = Literal["peft", "transformers", "trainer", "graftline"]


class ForeignError(GraftlineError):
    """A `from` reference that does not name a usable checkpoint (message, fix)."""


@dataclass(frozen=True)
class Foreign:
    """A checkpoint outside the run that a stage starts from.

    `path` is the real path of the checkpoint directory; for an adapter, `base_ref` is the base
    it records, verbatim, and `base_path` where that resolves on this machine (None when it does
    not: the validate step says why).
    """

    ref: str  # as written in `from`
    path: str
    kind: ForeignKind
    source: Source
    base_ref: str | None = None
    base_path: str | None = None
    base_kind: Literal["path", "hub", "missing"] | None = None
    lora: spec.Lora | None = None
    step: int | None = None  # N of a Trainer checkpoint-N
    has_ref: bool = False  # TRL's `ref/` beside the adapter: ignored, the top level is the policy
    run: str | None = None  # run:NAME/STAGE: the run id and its stage
    stage: str | None = None

    @property
    def label(self) -> str:
        """Short, for a table cell: the path's last two parts, or the run reference."""
        if self.run is not None:
            return f"{RUN_SCHEME}{self.run}/{self.stage}"
        parts = Path(self.path).parts
        return "/".join(parts[-2:])

    def describe(self) -> str:
        """What it is, in words, for `plan`."""
        what = {
            "peft": "a PEFT adapter" if self.kind == "adapter" else "a model",
            "transformers": "a full model saved with transformers",
            "trainer": f"Trainer checkpoint-{self.step}'s "
            + ("adapter" if self.kind == "adapter" else "model"),
            "graftline": f"stage '{self.stage}' of run {self.run}" if self.run
            else "a graftline checkpoint",
        }[self.source]
        text = f"{what} at {self.path}"
        if self.kind == "adapter":
            shape = f"r={self.lora.r}" if self.lora else "LoRA"
            base = self.base_path or f"{self.base_ref} (not found here)"
            text += f" ({shape}, recorded base {base})"
        if self.has_ref:
            text += "; TRL's ref/ copy beside it is not used"
        return text


def is_reference(value: str | None) -> bool:
    """A `from` that names a checkpoint rather than a stage: a path or `run:NAME/STAGE`."""
    if not value:
        return False
    return value.startswith((RUN_SCHEME, ".", "~", "/")) or "/" in value


def is_full_model(path: str | Path) -> bool:
    """A model a stage can start from or an adapter can apply to: `config.json` with
    safetensors weights, not an adapter (`FolderFiles.is_safetensors_model`). Stricter than the
    lineage's "a model" on purpose: a pickle-only model would load here but the pipeline's
    export reads safetensors only, so validate refuses it up front with the fix."""
    return folder_files(path).is_safetensors_model


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    return data if isinstance(data, dict) else None


def lora_of(config: dict[str, Any]) -> spec.Lora | None:
    """The LoRA shape `adapter_config.json` records, in the pipeline file's terms (None when it
    is not a LoRA a pipeline can continue)."""
    targets = config.get("target_modules")
    if isinstance(targets, list | tuple):
        targets = sorted(str(t) for t in targets)
    elif targets not in (None, "all-linear"):
        targets = [str(targets)]
    try:
        return spec.Lora(
            r=int(config["r"]),
            alpha=int(config.get("lora_alpha") or 2 * int(config["r"])),
            dropout=float(config.get("lora_dropout") or 0.0),
            target_modules=targets or "all-linear",
            use_rslora=bool(config.get("use_rslora")),
            use_dora=bool(config.get("use_dora")),
        )
    except (KeyError, TypeError, ValueError):
        return None


def _newest_checkpoint(folder: Path) -> Path | None:
    found = checkpoint_dirs(folder)
    return found[0][1] if found else None


def _not_a_checkpoint(folder: Path, ref: str) -> ForeignError:
    newest = _newest_checkpoint(folder)
    subs = sorted(p.name for p in folder.iterdir() if (p / ADAPTER_CONFIG).is_file()) \
        if folder.is_dir() else []
    if newest is not None:
        fix = (f"this looks like a Trainer output_dir: point `from` at one of its checkpoints "
               f"(the newest is {Path(ref) / newest.name})")
    elif subs:
        fix = (f"it holds adapters in subfolders ({', '.join(subs)}): point `from` at one of "
               "them")
    elif (files := folder_files(folder)).is_model:
        fix = ("re-save it with save_pretrained(safe_serialization=True): graftline reads "
               f"safetensors weights ({MODEL_SAFETENSORS} or {MODEL_SAFETENSORS_INDEX})")
        return ForeignError(f"{folder} is a model with pickle weights only "
                            f"({', '.join(files.pickle)}), not safetensors", fix)
    else:
        fix = (f"point `from` at a PEFT adapter directory ({ADAPTER_CONFIG}), a full model "
               f"directory ({MODEL_CONFIG} + safetensors), or a Trainer checkpoint-N")
    return ForeignError(
        f"{folder} is neither an adapter (no {ADAPTER_CONFIG}) nor a full model "
        f"({MODEL_CONFIG} with safetensors weights); it holds {folder_files(folder).describe()}",
        fix)


def _run_stage(ref: str, runs: Callable[[], Sequence[Path]]) -> tuple[Path, str, str]:
    """`run:NAME/STAGE` → (stage directory, run id, stage)."""
    body = ref[len(RUN_SCHEME):]
    name, _, stage = body.partition("/")
    if not name or not stage or "/" in stage:
        raise ForeignError(f"'{ref}' is not run:NAME/STAGE",
                           "write run:<run id or its unique prefix>/<stage name>")
    known = list(runs())
    exact = [r for r in known if r.name == name]
    matches = exact or [r for r in known if r.name.startswith(name)]
    if not matches:
        sample = ", ".join(sorted(r.name for r in known)[-5:]) or "none"
        raise ForeignError(f"no run '{name}' in the run index (known: {sample})",
                           "`graftline runs` lists them; use a run id or a unique prefix")
    if len(matches) > 1:
        raise ForeignError(f"'{name}' matches {len(matches)} runs: "
                           + ", ".join(sorted(r.name for r in matches)),
                           "give more of the run id")
    run_dir = matches[0]
    directory = run_dir / STAGES / stage
    if not directory.is_dir():
        have = sorted(p.name for p in (run_dir / STAGES).iterdir()) \
            if (run_dir / STAGES).is_dir() else []
        raise ForeignError(f"run {run_dir.name} has no stage '{stage}' ({run_dir})",
                           f"its stages: {', '.join(have) or 'none yet'}")
    return directory, run_dir.name, stage


def read_foreign(ref: str, search_dir: Path, *,
                 runs: Callable[[], Sequence[Path]] | None = None) -> Foreign:
    """Classify and read the checkpoint `ref` names (a path relative to `search_dir`, or
    `run:NAME/STAGE` looked up in `runs()`, the run index by default).

    Raises ForeignError when it is not there or not a checkpoint; a recorded base that is
    missing is NOT an error here (`base_path` is None): validate reports it with its fix.
    """
    run = stage = None
    if ref.startswith(RUN_SCHEME):
        if runs is None:
            from graftline.engine.common.run_index import indexed_runs

            runs = indexed_runs
        folder, run, stage = _run_stage(ref, runs)
    else:
        written = Path(ref).expanduser()
        folder = written if written.is_absolute() else search_dir / written
    if folder.is_symlink() and not folder.exists():
        raise ForeignError(f"{folder} is a dangling symlink", "point `from` at the real folder")
    if not folder.exists():
        raise ForeignError(f"checkpoint not found: {folder}",
                           "check the path; it is relative to the pipeline file")
    if not folder.is_dir():
        raise ForeignError(f"{folder} is a file, not a checkpoint directory",
                           "point `from` at the folder that holds it")
    real = Path(os.path.realpath(folder))
    step = checkpoint_step(real.name)
    manifest = None
    try:
        manifest = mf.read(real)
    except ValueError:
        manifest = None
    if manifest is not None and manifest.status != "complete":
        raise ForeignError(f"{real} is a {manifest.status} graftline checkpoint (its stage did "
                           "not finish writing it)",
                           "start from a complete checkpoint, or resume that run first")
    source: Source = "graftline" if manifest is not None else \
        "trainer" if step is not None else "peft"
    config = _read_json(real / ADAPTER_CONFIG)
    if (real / ADAPTER_CONFIG).is_file():
        if config is None:
            raise ForeignError(f"{real / ADAPTER_CONFIG} cannot be read as a JSON object",
                               "restore it from the adapter's source (peft writes it)")
        if not folder_files(real).adapter_weights:
            raise ForeignError(f"{real} has {ADAPTER_CONFIG} but no adapter weights "
                               f"({' or '.join(ADAPTER_WEIGHTS)})",
                               "copy the whole adapter folder, weights included")
        lora = lora_of(config)
        if lora is None:
            raise ForeignError(f"{real / ADAPTER_CONFIG} does not describe a LoRA adapter "
                               f"(peft_type {config.get('peft_type')!r}, r {config.get('r')!r})",
                               "graftline continues LoRA adapters only")
        base_ref = (manifest.base if manifest is not None and manifest.base else
                    config.get("base_model_name_or_path"))
        base_path = base_kind = None
        if isinstance(base_ref, str) and base_ref:
            found = resolve_base(base_ref, real)
            base_kind = found.kind
            base_path = found.path if found.exists else None
        has_ref = (real / REFERENCE_ADAPTER / ADAPTER_CONFIG).is_file()
        return Foreign(ref, str(real), "adapter", source, base_ref or None, base_path, base_kind,
                       lora, step, has_ref, run, stage)
    if is_full_model(real):
        return Foreign(ref, str(real), "model",
                       "transformers" if source == "peft" else source, step=step, run=run,
                       stage=stage)
    raise _not_a_checkpoint(real, ref)

"""The file names of a checkpoint folder, and what a folder holds in those terms.

transformers, peft and the Trainer write fixed names; every module that looks into a checkpoint
asks this one for them instead of spelling them, so the names cannot drift apart:

```
adapter    adapter_config.json  adapter_model.safetensors | adapter_model.bin (pickle)
model      config.json          model.safetensors | model.safetensors.index.json + shards
                                pytorch_model.bin | pytorch_model.bin.index.json + shards (pickle)
trainer    trainer_state.json   training_args.bin  optimizer.pt  scheduler.pt  scaler.pt
                                rng_state*.pth
           checkpoint-N/        a Trainer checkpoint of global step N (`checkpoint_dirs`)
           ref/                 TRL's frozen reference adapter, saved beside `default`
```

The other facts of a checkpoint live here too: the LoRA scaling its `adapter_config.json`
implies (`lora_scale`) and its size on disk (`directory_bytes`). Its safetensors headers are
read by the sibling `common/safetensors_header.py`.

What a "full model" is depends on who asks, so this module does not answer that with one
yes/no. `folder_files` (or `files_from_names`, for a caller that already listed the folder)
reports what the folder holds: whether each config is there, which adapter weights, which model
weights in safetensors form and which in pickle form. Callers decide from that one answer:

- `FolderFiles.is_model` — recognisably a model: `config.json` and model weights of any form
  (the lineage scan: it shows and protects what exists, whatever can or cannot load it);
- `FolderFiles.is_safetensors_model` — a full model a stage or an export can read:
  `config.json` and the safetensors file or index `from_pretrained` looks for, and no
  `adapter_config.json` (a `from` that names a model, the base of an adapter, export; export
  reads safetensors headers only and never unpickles, so pickle weights are refused there
  and at validate, with the fix, instead of hours later).

Pure apart from directory listings and stats: no file is opened.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "ADAPTER_CONFIG",
    "ADAPTER_PICKLE",
    "ADAPTER_SAFETENSORS",
    "ADAPTER_WEIGHTS",
    "CHECKPOINT_DIR",
    "CHECKPOINT_PREFIX",
    "MODEL_CONFIG",
    "MODEL_PICKLE",
    "MODEL_PICKLE_INDEX",
    "MODEL_SAFETENSORS",
    "MODEL_SAFETENSORS_INDEX",
    "MODEL_SHARDS_GLOB",
    "REFERENCE_ADAPTER",
    "TRAINER_STATE",
    "TRAINER_STATE_FILES",
    "FolderFiles",
    "checkpoint_dirs",
    "checkpoint_name",
    "checkpoint_step",
    "directory_bytes",
    "files_from_names",
    "folder_files",
    "lora_scale",
    "shard_name",
]

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_SAFETENSORS = "adapter_model.safetensors"
ADAPTER_PICKLE = "adapter_model.bin"
ADAPTER_WEIGHTS = (ADAPTER_SAFETENSORS, ADAPTER_PICKLE)  # peft's order of preference
MODEL_CONFIG = "config.json"
MODEL_SAFETENSORS = "model.safetensors"
MODEL_SAFETENSORS_INDEX = "model.safetensors.index.json"
MODEL_PICKLE = "pytorch_model.bin"
MODEL_PICKLE_INDEX = "pytorch_model.bin.index.json"
MODEL_SHARDS_GLOB = "model*.safetensors"  # a single file or save_pretrained's shards
TRAINER_STATE = "trainer_state.json"
# What a Trainer checkpoint holds besides the model: pickles that are not weights.
TRAINER_STATE_FILES = ("training_args.bin", "optimizer.pt", "scheduler.pt", "scaler.pt")

# The Trainer's checkpoint of global step N: `checkpoint-N` in its output_dir.
CHECKPOINT_PREFIX = "checkpoint-"
CHECKPOINT_DIR = re.compile(r"^checkpoint-(\d+)$")
# TRL's frozen reference adapter (DPO/GRPO on a PeftModel): its name beside `default` in the
# model, and the folder save_pretrained gives it inside the output (a copy of the adapter the
# stage continued, bit for bit).
REFERENCE_ADAPTER = "ref"

_SAFETENSORS = (".safetensors", ".safetensors.index.json")
_PICKLE = (".bin", ".pt", ".bin.index.json")


def shard_name(index: int, count: int) -> str:
    """save_pretrained's name for shard `index` (1-based) of `count` safetensors shards."""
    return f"model-{index:05d}-of-{count:05d}.safetensors"


def checkpoint_name(step: int) -> str:
    """The folder the Trainer saves global step `step` in: `checkpoint-N`."""
    return f"{CHECKPOINT_PREFIX}{step}"


def checkpoint_step(name: str) -> int | None:
    """N of a `checkpoint-N` folder name, None for any other name."""
    match = CHECKPOINT_DIR.match(name)
    return int(match.group(1)) if match else None


def checkpoint_dirs(folder: str | Path) -> list[tuple[int, Path]]:
    """The `checkpoint-N` folders directly in `folder`, as (N, path), newest first; symlinks are
    never followed and a missing folder holds none."""
    found: list[tuple[int, Path]] = []
    try:
        children = list(Path(folder).iterdir())
    except OSError:
        return []
    for child in children:
        step = checkpoint_step(child.name)
        if step is not None and child.is_dir() and not child.is_symlink():
            found.append((step, child))
    return sorted(found, reverse=True)


def lora_scale(r: float, alpha: float, rslora: bool = False) -> float:
    """What peft multiplies `B @ A` by: alpha / r, or alpha / √r with rsLoRA."""
    return alpha / math.sqrt(r) if rslora else alpha / r


def directory_bytes(path: str | Path) -> int:
    """Bytes on disk under `path`, from stat only (never reads weights, never follows links: a
    link counts as itself)."""
    total = 0
    for root, _dirs, files in os.walk(path, followlinks=False):
        for name in files:
            try:
                total += os.lstat(os.path.join(root, name)).st_size
            except FileNotFoundError:
                continue
    return total


@dataclass(frozen=True)
class FolderFiles:
    """What a folder holds, by name. Model weights exclude the adapter's and the Trainer's own
    pickles (training_args.bin, optimizer.pt, …), which say nothing about a model."""

    adapter_config: bool = False
    model_config: bool = False
    adapter_weights: tuple[str, ...] = ()  # present, in peft's order of preference
    safetensors: tuple[str, ...] = ()  # model weights and indexes in safetensors form, sorted
    pickle: tuple[str, ...] = ()  # model weights and indexes in pickle form (.bin, .pt), sorted

    @property
    def model_weights(self) -> tuple[str, ...]:
        return self.safetensors + self.pickle

    @property
    def loadable_safetensors(self) -> bool:
        """The file or index from_pretrained looks for (bare shards without an index are not
        loadable: nothing says which tensors they hold)."""
        return MODEL_SAFETENSORS in self.safetensors or MODEL_SAFETENSORS_INDEX in self.safetensors

    @property
    def is_model(self) -> bool:
        """Recognisably a model: config.json and model weights of any form."""
        return self.model_config and bool(self.model_weights)

    @property
    def is_safetensors_model(self) -> bool:
        """A full model graftline can train from or export: config.json, model.safetensors or
        its index, and not an adapter folder."""
        return self.model_config and self.loadable_safetensors and not self.adapter_config

    def describe(self) -> str:
        """What it holds, in words, for a refusal: `config.json, pickle weights
        (pytorch_model.bin)`."""
        parts = [name for name, present in ((ADAPTER_CONFIG, self.adapter_config),
                                            (MODEL_CONFIG, self.model_config)) if present]
        parts += list(self.adapter_weights)
        if self.safetensors:
            parts.append(f"safetensors weights ({', '.join(self.safetensors[:3])}"
                         + (", …)" if len(self.safetensors) > 3 else ")"))
        if self.pickle:
            parts.append(f"pickle weights ({', '.join(self.pickle[:3])}"
                         + (", …)" if len(self.pickle) > 3 else ")"))
        return ", ".join(parts) or "no checkpoint files"


def files_from_names(names: Iterable[str]) -> FolderFiles:
    """Classify a folder's file names (the caller listed it; pure)."""
    present = set(names)
    rest = sorted(present.difference(ADAPTER_WEIGHTS, TRAINER_STATE_FILES))
    return FolderFiles(
        adapter_config=ADAPTER_CONFIG in present,
        model_config=MODEL_CONFIG in present,
        adapter_weights=tuple(n for n in ADAPTER_WEIGHTS if n in present),
        safetensors=tuple(n for n in rest if n.endswith(_SAFETENSORS)),
        pickle=tuple(n for n in rest if n.endswith(_PICKLE)),
    )


def folder_files(folder: str | Path) -> FolderFiles:
    """What `folder` holds: its regular files, symlinked files included (a Hugging Face cache
    snapshot is links into its blobs); a dangling link or a missing folder holds nothing."""
    try:
        with os.scandir(folder) as entries:
            names = [e.name for e in entries if _is_file(e)]
    except OSError:
        return FolderFiles()
    return files_from_names(names)


def _is_file(entry: os.DirEntry[str]) -> bool:
    try:
        return entry.is_file()
    except OSError:
        return False

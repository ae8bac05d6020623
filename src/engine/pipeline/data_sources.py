"""Where a stage's rows live: paths, globs, lists of them, and `hf:org/name` from the local cache.

`data` in a pipeline file is one reference or a list of them. Each reference is a file or a
`save_to_disk` directory (relative to the pipeline file), a glob (`shards/*.jsonl`), a generate
stage's output (`@stage`), or a Hugging Face dataset id (`hf:org/name`). A hub dataset is read
from the local Hugging Face cache ONLY (what HF_HUB_OFFLINE=1 would find): nothing is ever
downloaded, and a dataset that is not cached is a clear error saying how to get it there.

The cache is found the way huggingface_hub finds it (HF_HUB_CACHE, HF_HOME/hub, XDG_CACHE_HOME),
read from the environment at call time, so a test or a user can point it elsewhere. Which files
of a snapshot make a split or a subset is decided by the `datasets` library itself
(`load_dataset_builder` on the snapshot directory: its README `configs:` and file-name rules), so
graftline reads exactly what `load_dataset` would; only that step imports `datasets`.
"""

from __future__ import annotations

import glob
import os
import re
from collections.abc import Sequence
from pathlib import Path

from graftline.engine.common.errors import GraftlineError
from graftline.engine.common.layout import RunLayout
from graftline.engine.pipeline.problems import did_you_mean

HF_PREFIX = "hf:"
GENERATED = "data.jsonl"  # a generate stage's output in its stage directory
_GLOB = re.compile(r"[*?\[]")
_REPO_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*(/[A-Za-z0-9][A-Za-z0-9_.-]*)?$")
# file kinds graftline reads row by row (with line numbers); a hub snapshot may hold others
READABLE = (".jsonl", ".json", ".ndjson", ".parquet", ".pq", ".csv")


class DataSourceError(GraftlineError):
    """A `data` reference that names nothing readable; the message names the reference."""

    fix_in_text = True


def as_list(ref: str | Sequence[str]) -> list[str]:
    return [ref] if isinstance(ref, str) else list(ref)


def describe(ref: str | Sequence[str]) -> str:
    """The reference as the user wrote it, for messages."""
    return ref if isinstance(ref, str) else ", ".join(ref)


def is_generated(ref: str | Sequence[str]) -> bool:
    return any(r.startswith("@") for r in as_list(ref))


def hub_cache() -> Path:
    """The hub cache directory, by huggingface_hub's rules, read from the environment now."""
    env = os.environ
    for key in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"):
        if env.get(key):
            return Path(env[key]).expanduser()
    if env.get("HF_HOME"):
        return Path(env["HF_HOME"]).expanduser() / "hub"
    return Path(env.get("XDG_CACHE_HOME") or "~/.cache").expanduser() / "huggingface" / "hub"


def _download_fix(repo_id: str, cache: Path) -> str:
    return (f"on a machine with internet run `huggingface-cli download --repo-type dataset "
            f"{repo_id}` (or `hf download {repo_id} --repo-type dataset`) and copy its "
            f"datasets--{repo_id.replace('/', '--')} folder into {cache}, or set HF_HUB_CACHE / "
            "HF_HOME to the cache that holds it; graftline never downloads")


def hf_snapshot(ref: str) -> Path:
    """The cached snapshot directory of `hf:org/name` (its `refs/main`, else its only one)."""
    repo_id = ref[len(HF_PREFIX):].strip()
    if not _REPO_ID.match(repo_id):
        raise DataSourceError(f"'{ref}' is not a Hugging Face dataset id",
                              "write hf:org/name, e.g. hf:openai/gsm8k")
    cache = hub_cache()
    repo = cache / f"datasets--{repo_id.replace('/', '--')}"
    snapshots = repo / "snapshots"
    main = repo / "refs" / "main"
    if main.is_file():
        chosen = snapshots / main.read_text(encoding="utf-8").strip()
        if chosen.is_dir():
            return chosen
    found = sorted(p for p in snapshots.iterdir() if p.is_dir()) if snapshots.is_dir() else []
    if len(found) == 1:
        return found[0]
    if found:
        raise DataSourceError(f"{ref}: {len(found)} cached snapshots in {snapshots} and no "
                              "refs/main to choose one",
                              "delete the stale snapshots, or write refs/main with the revision")
    raise DataSourceError(f"{ref}: dataset '{repo_id}' is not in the local Hugging Face cache "
                          f"({cache})", _download_fix(repo_id, cache))


def hf_files(ref: str, split: str | None, subset: str | None) -> list[Path]:
    """The files of one split of a cached hub dataset, as the `datasets` library maps them."""
    snapshot = hf_snapshot(ref)
    import datasets

    _check_subset(ref, snapshot, subset)
    try:
        builder = datasets.load_dataset_builder(str(snapshot), name=subset)
    except (ValueError, FileNotFoundError) as exc:
        text = " ".join(str(exc).split("Example of usage")[0].split())
        raise DataSourceError(f"{ref}: {text}", "check the cached snapshot's files") from None
    splits = {name: list(files) for name, files in (builder.config.data_files or {}).items()}
    if not splits:
        raise DataSourceError(f"{ref}: no data files in {snapshot}",
                              "the cached snapshot is incomplete; download it again")
    if split is None:
        split = "train" if "train" in splits else next(iter(splits)) if len(splits) == 1 else None
        if split is None:
            raise DataSourceError(f"{ref}: no `train` split; it has {', '.join(splits)}",
                                  "set `split` to one of them")
    if split not in splits:
        raise DataSourceError(f"{ref}: no split '{split}'; it has {', '.join(splits)}",
                              "set `split` to one of them")
    files = [Path(f) for f in splits[split]]
    odd = [f.name for f in files if f.suffix.lower() not in READABLE]
    if odd:
        raise DataSourceError(f"{ref}: split '{split}' is stored as {', '.join(odd[:3])}, which "
                              "graftline does not read",
                              "convert it to parquet or JSONL (Dataset.to_parquet) and point "
                              "`data` at that")
    return files


def _check_subset(ref: str, snapshot: Path, subset: str | None) -> None:
    """The subset, checked against the ones the snapshot declares before `datasets` loads it: the
    names come from the library as a list, so the error and its fix are ours to write."""
    import datasets

    try:
        names = list(datasets.get_dataset_config_names(str(snapshot)))
    except (ValueError, FileNotFoundError):
        return  # the builder below reports an unreadable snapshot
    if subset is None and len(names) > 1:
        raise DataSourceError(f"{ref} has {len(names)} subsets ({', '.join(names)}) and the "
                              "stage names none", f"set `subset` to one of: {', '.join(names)}")
    if subset is not None and subset not in names:
        raise DataSourceError(f"{ref}: no subset '{subset}'; it has {', '.join(names)}",
                              f"set `subset`: {did_you_mean(subset, names)}")


def _one(ref: str, base_dir: Path, run_dir: Path | None, split: str | None,
         subset: str | None) -> list[Path]:
    if ref.startswith(HF_PREFIX):
        return hf_files(ref, split, subset)
    if ref.startswith("@"):
        if run_dir is None:
            raise DataSourceError(f"'{ref}' names a generate stage's output, which exists only "
                                  "in a run", "run the pipeline, or point `data` at a file")
        return [RunLayout(Path(run_dir)).stage(ref[1:]) / GENERATED]
    path = Path(ref).expanduser()
    path = path if path.is_absolute() else Path(base_dir) / path
    if _GLOB.search(ref):
        matched = sorted(Path(p) for p in glob.glob(str(path), recursive=True))
        matched = [p.resolve() for p in matched if p.is_dir() or p.suffix.lower() in READABLE]
        if not matched:
            raise DataSourceError(f"'{ref}' matches no data file (looked in {path.parent})",
                                  "check the pattern; it is relative to the pipeline file")
        return matched
    path = path.resolve()
    if not path.exists():
        raise DataSourceError(f"dataset not found: {path}",
                              "check the path; it is relative to the pipeline file")
    return [path]


def resolve_sources(ref: str | Sequence[str], base_dir: Path, run_dir: Path | None = None, *,
                    split: str | None = None, subset: str | None = None) -> list[Path]:
    """Every file (or saved directory) a `data` value names, in order, each once."""
    entries = as_list(ref)
    if not entries:
        raise DataSourceError("`data` is an empty list", "name at least one file")
    seen: dict[Path, None] = {}
    for entry in entries:
        for path in _one(entry, base_dir, run_dir, split, subset):
            seen.setdefault(path, None)
    return list(seen)

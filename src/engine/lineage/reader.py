"""Scanning roots on disk into a `Lineage`.

Reads only small JSON files (graftline.json, adapter_config.json, trainer_state.json, config.json,
metrics.json, evaluation.json, state.json) and stats everything else: weights are never read,
except a few bytes of one normalization tensor used to tell whether a hand-made full model is a
merge of another (`forensics`: hand-made merges and TRL references, proven from the bytes).
Never follows a symlink: each one is reported instead.

Sizes and parsed JSON are cached in-process by mtime (`cached_reads`), so the console can rescan
cheaply. A file
rewritten in place without its directory changing keeps its cached size until the directory
itself changes (every writer we know of writes a new file and renames it).
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from graftline.engine.common import export_index
from graftline.engine.common.checkpoint_files import (
    ADAPTER_CONFIG,
    ADAPTER_PICKLE,
    ADAPTER_SAFETENSORS,
    MODEL_PICKLE,
    MODEL_SAFETENSORS,
    REFERENCE_ADAPTER,
    TRAINER_STATE,
    checkpoint_step,
    files_from_names,
)
from graftline.engine.common.errors import GraftlineError
from graftline.engine.common.layout import STAGES, STATE
from graftline.engine.common.liveness import is_live
from graftline.engine.lineage import forensics, resolve
from graftline.engine.lineage import journal as cleanup_journal
from graftline.engine.lineage.cached_reads import (
    read_entry,
    read_json,
    read_manifest_view,
    safetensors_header,
)
from graftline.engine.lineage.checkpoint_metrics import metrics_beside, trainer_metrics
from graftline.engine.lineage.manifest import MANIFEST
from graftline.engine.lineage.manifest_view import ManifestView, view
from graftline.engine.lineage.model import Edge, Lineage, LoraInfo, Node, Symlink

_dir_cache: dict[str, tuple[int, int, float]] = {}  # dir -> (mtime_ns, file bytes, newest mtime)


class ScanError(GraftlineError, ValueError):
    """A root that cannot be scanned (it does not exist, or is not a directory)."""


@dataclass
class Draft:
    """A node being assembled; frozen into a `Node` once every edge is known."""

    key: str
    kind: str
    source: str
    path: str | None
    root: str | None
    name: str
    manifest: ManifestView | None = None
    bytes: int = 0
    newest: float = 0.0
    fields: dict[str, Any] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)


def scan(roots: Sequence[Path | str]) -> Lineage:
    """Scan `roots` (run directories, a runs directory, any folder) into one lineage.

    Raises ScanError, changing nothing, when a root is missing or not a directory.
    """
    real_roots: list[str] = []
    for root in roots:
        raw = os.path.abspath(os.path.expanduser(str(root)))
        if os.path.islink(raw):
            raise ScanError(f"{raw}: is a symlink; pass the directory it points to")
        if not os.path.isdir(raw):
            raise ScanError(
                f"{raw}: no such directory (pass a runs directory or a checkpoint folder)"
            )
        real = os.path.realpath(raw)
        if real not in real_roots:
            real_roots.append(real)
    return _Scanner(tuple(real_roots)).run()


class _Scanner:
    def __init__(self, roots: tuple[str, ...]) -> None:
        self.roots = roots
        self.symlinks: list[Symlink] = []
        self.runs: dict[str, dict[str, Any]] = {}  # run dir -> {"active", "pid", "status"}
        self.drafts: dict[str, Draft] = {}
        self.edges: list[Edge] = []
        self.history: dict[str, cleanup_journal.Removal] = {}
        self.journals: list[str] = []

    # -- walking -----------------------------------------------------------------------------

    def run(self) -> Lineage:
        for root in self.roots:
            self.history.update(cleanup_journal.read_history(Path(root)))
            if os.path.lexists(os.path.join(root, cleanup_journal.JOURNAL)):
                self.journals.append(root)
            self._walk(root)
        for draft in list(self.drafts.values()):
            self._link(draft)
        self._exports_elsewhere()
        forensics.infer_merges(self.drafts, self.edges)
        forensics.flag_in_memory_merges(self.drafts, self.edges)
        forensics.flag_unsaved_chains(self.drafts, self.edges)
        forensics.infer_continued(self.drafts, self.edges)
        return self._freeze()

    def _walk(self, root: str) -> None:
        stack: list[tuple[str, str, str | None, str | None]] = [
            (root, os.path.basename(root), None, None)
        ]
        while stack:
            path, base, owner, run_dir = stack.pop()
            try:
                it = os.scandir(path)
            except OSError:
                continue
            subdirs: list[os.DirEntry[str]] = []
            files: list[os.DirEntry[str]] = []
            with it:
                for entry in it:
                    if entry.is_dir(follow_symlinks=False):
                        if not entry.name.startswith("."):
                            subdirs.append(entry)
                        continue
                    if entry.is_symlink():
                        self._symlink(entry.path)  # counted below as its own few bytes
                    files.append(entry)
            size, newest = self._dir_bytes(path, files)
            jsons = {e.name: e for e in files if e.name.endswith(".json")}
            names = {e.name for e in files}
            if STATE in names and any(d.name == STAGES for d in subdirs):
                run_dir = path
                self.runs[path] = self._run_state(path)
            if owner is not None and base == REFERENCE_ADAPTER and ADAPTER_CONFIG in names:
                # TRL's frozen reference (DPO on a PeftModel saves it inside its output): part
                # of the checkpoint that holds it, kept and deleted with it, never on its own.
                self.drafts[owner].fields["ref_dir"] = path
            elif self._classify(path, base, root, names, jsons, run_dir):
                owner = path
                self.drafts[path].newest = newest
            if owner is not None:
                # A folder's files belong to the nearest checkpoint at or above it.
                self.drafts[owner].bytes += size
            for sub in sorted(subdirs, key=lambda e: e.name, reverse=True):
                stack.append((sub.path, sub.name, owner, run_dir))

    def _dir_bytes(self, path: str, files: list[os.DirEntry[str]]) -> tuple[int, float]:
        try:
            mtime = os.lstat(path).st_mtime_ns
        except OSError:
            return 0, 0.0
        cached = _dir_cache.get(path)
        if cached and cached[0] == mtime:
            return cached[1], cached[2]
        total, newest = 0, 0.0
        for entry in files:
            try:
                st = entry.stat(follow_symlinks=False)
            except OSError:
                continue
            total += st.st_size
            newest = max(newest, st.st_mtime)
        _dir_cache[path] = (mtime, total, newest)
        return total, newest

    def _symlink(self, path: str) -> None:
        try:
            target = os.readlink(path)
        except OSError:
            target = "?"
        resolved = os.path.realpath(path)
        outside = not os.path.exists(resolved) or not self._in_roots(resolved)
        self.symlinks.append(Symlink(path=path, target=target, outside=outside))

    def _run_state(self, run_dir: str) -> dict[str, Any]:
        return run_state(run_dir)

    def _in_roots(self, path: str) -> bool:
        return any(path == r or path.startswith(r + os.sep) for r in self.roots)

    # -- recognising checkpoints ---------------------------------------------------------------

    def _classify(
        self,
        path: str,
        base: str,
        root: str,
        names: set[str],
        jsons: dict[str, os.DirEntry[str]],
        run_dir: str | None,
    ) -> bool:
        step = checkpoint_step(base)
        is_trainer = step is not None and TRAINER_STATE in names
        fields: dict[str, Any] = {}
        manifest: ManifestView | None = None
        if MANIFEST in jsons:
            manifest = view(read_entry(jsons[MANIFEST]))
        if manifest is not None:
            kind, source = manifest.kind, "graftline"
        elif ADAPTER_CONFIG in names:
            kind, source = ("trainer", "trainer") if is_trainer else ("adapter", "peft")
        elif is_trainer:
            kind, source = "trainer", "trainer"
        elif files_from_names(names).is_model:
            # Any model weights count, pickle included: the scan shows and protects what is
            # there, and a Trainer's own pickles (optimizer.pt, training_args.bin) are not a
            # model. Whether it can be trained from or exported is the caller's question
            # (`FolderFiles.is_safetensors_model`).
            kind, source = "base", "transformers"
        elif MANIFEST in names:
            kind, source = "adapter", "graftline"
            fields["broken"] = f"{MANIFEST} cannot be read; fix or remove it"
        else:
            return False
        if step is not None:
            fields["step"] = step
        if run_dir is not None:
            fields["run_dir"] = run_dir
            fields["running"] = self.runs[run_dir]["active"]
            fields["run"] = os.path.basename(run_dir)
            stage = _stage_of(path, run_dir)
            if stage:
                fields["stage"] = stage
        name = manifest.name if manifest and manifest.name else base
        if step is not None and (parent_stage := fields.get("stage")):
            name = f"{parent_stage}/{base}"
        draft = Draft(path, kind, source, path, root, name, manifest, fields=fields)
        draft.fields["jsons"] = jsons
        self.drafts[path] = draft
        return True

    def _link(self, draft: Draft) -> None:
        path = draft.path
        assert path is not None
        jsons: dict[str, os.DirEntry[str]] = draft.fields.pop("jsons")
        metrics: dict[str, float] = {}
        config = None
        if ADAPTER_CONFIG in jsons:
            config = read_entry(jsons[ADAPTER_CONFIG])
            if not isinstance(config, dict):
                config = None
                draft.warnings.append(
                    f"{ADAPTER_CONFIG} cannot be read (not JSON, or a symlink, which the scan "
                    "never follows): its base is unknown"
                )
        m = draft.manifest
        if m is not None:
            self._link_manifest(draft, m, config, metrics)
        elif config is not None:
            ref = config.get("base_model_name_or_path")
            draft.fields["base_ref"] = ref
            if ref:
                key = self._resolve(ref, path, None)
                self.edges.append(Edge(path, key, "trained_on", "config"))
            else:
                draft.warnings.append(f"{ADAPTER_CONFIG} names no base_model_name_or_path")
        if config is not None:
            draft.fields.setdefault("base_ref", config.get("base_model_name_or_path"))
            if "lora" not in draft.fields and config.get("r") is not None:
                targets = config.get("target_modules")
                draft.fields["lora"] = LoraInfo(
                    config.get("r"), config.get("lora_alpha"),
                    tuple(sorted(targets)) if isinstance(targets, list) else targets,
                    config.get("lora_dropout"),
                )
        corrupt: list[str] = []
        if ADAPTER_CONFIG in jsons and config is None:
            corrupt.append(f"{ADAPTER_CONFIG} cannot be read")
        if TRAINER_STATE in jsons:
            state = read_entry(jsons[TRAINER_STATE])
            if isinstance(state, dict):
                metrics.update(trainer_metrics(state))
            else:
                corrupt.append(f"{TRAINER_STATE} cannot be read (truncated?): not resumable")
        if draft.kind in ("adapter", "trainer") and config is not None \
                and (why := _adapter_weights_problem(path)):
            corrupt.append(why)
        if corrupt and draft.fields.get("status") != "partial":
            draft.fields["status"] = "corrupt"
            draft.warnings.append("CORRUPT: " + "; ".join(corrupt))
        for key, value in metrics_beside(path, draft.kind).items():
            metrics.setdefault(key, value)
        draft.fields["metrics"] = metrics

    def _link_manifest(self, draft: Draft, m: ManifestView, config: dict[str, Any] | None,
                       metrics: dict[str, float]) -> None:
        """What a graftline manifest records: its fields, metrics, parents and base; and a
        warning when the adapter config names another base (an in-memory merge)."""
        path = draft.path
        assert path is not None
        draft.fields.update(
            created=m.created,
            status=m.status,
            stage=m.stage or draft.fields.get("stage"),
            run=m.run or draft.fields.get("run"),
        )
        if m.lora is not None:
            draft.fields["lora"] = m.lora
        metrics.update(m.metrics)
        metrics.update({f"eval/{k}": v for k, v in m.evaluation.items()})
        manifest_bases: set[str] = set()
        for parent in m.parents:
            key = self._resolve(parent.path, path, parent.id)
            self.edges.append(Edge(path, key, parent.relation, "manifest"))
            if parent.foreign and key in self.drafts:
                user = f"{m.run or draft.fields.get('run') or '?'}/{m.stage or draft.name}"
                self.drafts[key].fields.setdefault("started", []).append(user)
            if parent.relation == "trained_on":
                manifest_bases.add(key)
        if m.base and draft.kind in ("adapter", "combined") and not manifest_bases:
            key = self._resolve(m.base, path, None)
            self.edges.append(Edge(path, key, "trained_on", "manifest"))
            manifest_bases.add(key)
        if config is not None and manifest_bases:
            named = self._resolve(config.get("base_model_name_or_path"), path, None)
            if named not in manifest_bases:
                draft.warnings.append(
                    f"{ADAPTER_CONFIG} names {config.get('base_model_name_or_path')} but it "
                    f"was trained on {', '.join(sorted(manifest_bases))} (an in-memory merge "
                    "keeps the old name): load it on the base its manifest records"
                )
                self.edges.append(Edge(path, named, "trained_on", "config"))

    def _exports_elsewhere(self) -> None:
        """Exports written outside the roots from a checkpoint inside them (the per-user export
        index remembers each pair): shown as leaves of their source, never deleted (outside)."""
        for entry in export_index.read_entries():
            source, out = entry["source"], entry["out"]
            if source not in self.drafts or out in self.drafts or self._in_roots(out):
                continue
            manifest = read_manifest_view(out)
            if manifest is None or manifest.kind != "export" or manifest.id != entry["id"]:
                continue  # gone, or another export written there since
            key = self._existing(out)
            self.edges.append(Edge(key, source, "exported_from", "manifest"))

    def _resolve(self, ref: str | None, where: str, ref_id: str | None) -> str:
        """The node key `ref` (a path or hub id named in `where`) points at; adds it if new.

        The spellings come from the one resolver (`lineage.resolve`): the adapter's folder and
        each folder above it up to the root, then the roots and the current folder. A path that
        holds a checkpoint wins; then a manifest id (manifests travel with their directory, so
        a moved checkpoint is still found); a path a cleanup removed is shown as removed (even
        when a kept nested checkpoint keeps its folder); then a hub id; else missing.
        """
        candidates: list[str] = []
        if ref and ref.startswith(resolve.TOY_SCHEME):
            return self._toy(ref)
        if ref:
            candidates = resolve.candidates(ref, where, self.roots)
            for candidate in candidates:
                # Checkpoints found by the walk are keyed by real paths: no syscall needed.
                if candidate in self.drafts:
                    return candidate
            for candidate in candidates:
                real = os.path.realpath(candidate)
                if real in self.drafts:
                    return real
                if real in self.history:
                    return self._missing(real)
                if os.path.isdir(candidate):
                    return self._existing(real)
        if ref_id:
            for draft in self.drafts.values():
                if draft.manifest is not None and draft.manifest.id == ref_id:
                    return draft.key
        if not ref:
            return self._missing(os.path.join(where, "<unnamed base>"))
        if resolve.looks_like_hub_id(ref):
            key = f"hub:{ref}"
            if key not in self.drafts:
                self.drafts[key] = Draft(key, "external", "hub", None, None, ref,
                                          fields={"in_roots": False, "status": "external"})
            return key
        return self._missing(os.path.realpath(candidates[0]))

    def _toy(self, ref: str) -> str:
        """graftline's built-in toy base: a cached model outside the roots, never ours."""
        key = f"hub:{ref}"
        if key not in self.drafts:
            self.drafts[key] = Draft(key, "external", "hub", None, None, ref,
                                      fields={"in_roots": False, "status": "external"})
        return key

    def _existing(self, path: str) -> str:
        if path in self.drafts:
            return path
        # Every checkpoint inside a root is already a draft, so this is a base outside the
        # roots (or a folder the scan did not recognise): shown, sized from its top-level
        # files, never deleted.
        total, newest = 0, 0.0
        try:
            with os.scandir(path) as it:
                for entry in it:
                    if entry.is_file(follow_symlinks=False):
                        st = entry.stat(follow_symlinks=False)
                        total += st.st_size
                        newest = max(newest, st.st_mtime)
        except OSError:
            pass
        kind = "base"
        manifest = read_manifest_view(path)
        config = read_json(os.path.join(path, ADAPTER_CONFIG)) if manifest is None else None
        if manifest is not None:
            kind = manifest.kind
        elif isinstance(config, dict):
            kind = "adapter"  # e.g. a notebook's adapter a stage started from (`from` a path)
        source = "graftline" if manifest else "peft" if kind == "adapter" else "transformers"
        draft = Draft(path, kind, source, path, None,
                       os.path.basename(path), manifest, bytes=total, newest=newest,
                       fields={"in_roots": False, "status": manifest.status if manifest
                               else "complete"})
        self.drafts[path] = draft
        if isinstance(config, dict):
            # its own base, so the chain shows (and export's walk agrees) past the roots
            ref = config.get("base_model_name_or_path")
            draft.fields["base_ref"] = ref
            if isinstance(ref, str) and ref:
                self.edges.append(Edge(path, self._resolve(ref, path, None), "trained_on",
                                       "config"))
        return path

    def _missing(self, path: str) -> str:
        if path not in self.drafts:
            removal = self.history.get(path) or None
            fields: dict[str, Any] = {"in_roots": self._in_roots(path), "status": "missing"}
            if removal is not None:
                fields["removed_by"] = removal.describe()
            else:
                by = cleanup_journal.removed_by(Path(path))
                if by:
                    fields["removed_by"] = by
            self.drafts[path] = Draft(path, "missing", "missing", path, None,
                                       os.path.basename(path), fields=fields)
        return path

    # -- freezing ------------------------------------------------------------------------------

    def _freeze(self) -> Lineage:
        ids: set[str] = set()
        nodes: list[Node] = []
        for draft in self.drafts.values():
            f = draft.fields
            node_id = draft.manifest.id if draft.manifest is not None else None
            if node_id is None or node_id in ids:
                if draft.root is not None and draft.path is not None:
                    node_id = draft.path[len(draft.root) + 1:].replace(os.sep, "/") or draft.name
                else:
                    node_id = draft.name if draft.kind == "external" else draft.key
            ids.add(node_id)
            # only what a manifest recorded: a file's mtime is when it was last written, not
            # when the checkpoint was made (`written` keeps it, for ordering)
            created = f.get("created")
            nodes.append(Node(
                key=draft.key,
                id=node_id,
                kind=draft.kind,  # type: ignore[arg-type]
                name=draft.name,
                path=draft.path,
                source=draft.source,
                bytes=draft.bytes,
                created=created,
                written=draft.newest,
                stage=f.get("stage"),
                run=f.get("run"),
                run_dir=f.get("run_dir"),
                lora=f.get("lora"),
                metrics=f.get("metrics", {}),
                status=f.get("status", "complete" if draft.source != "graftline" else "unknown"),
                step=f.get("step"),
                base_ref=f.get("base_ref"),
                in_roots=f.get("in_roots", True),
                running=f.get("running", False),
                broken=f.get("broken"),
                warnings=tuple(draft.warnings),
                in_memory_merge=f.get("in_memory_merge"),
                removed_by=f.get("removed_by"),
                started=tuple(dict.fromkeys(f.get("started", ()))),
                export=draft.manifest.export if draft.manifest is not None else None,
            ))
        by_key = {n.key: n for n in nodes}
        # A checkpoint whose base is gone can no longer be loaded or exported: say so loudly.
        for edge in self.edges:
            parent = by_key[edge.parent]
            child = by_key[edge.child]
            if parent.kind != "missing" or child.broken:
                continue
            where = f" (removed by {parent.removed_by})" if parent.removed_by else ""
            if edge.relation == "trained_on":
                message = f"BROKEN: its base {parent.path} no longer exists{where}"
                by_key[edge.child] = replace(child, broken=message)
            else:
                note = f"{edge.relation} {parent.path}, which no longer exists{where}"
                by_key[edge.child] = replace(child, warnings=(*child.warnings, note))
        edges = tuple(dict.fromkeys(self.edges))
        return Lineage(
            roots=self.roots,
            nodes=tuple(by_key.values()),
            edges=edges,
            symlinks=tuple(self.symlinks),
            journals=tuple(self.journals),
        )


# -- small readers -----------------------------------------------------------------------------


def run_state(run_dir: str) -> dict[str, Any]:
    """{"active", "pid", "status"} of a run: active by the one liveness rule
    (`common.liveness.is_live`), so a stopping or starting run is never touched.

    Read fresh every time (never cached): a run can start between a scan and a deletion.
    """
    try:
        with open(os.path.join(run_dir, STATE), "rb") as handle:
            state = json.loads(handle.read())
    except (OSError, ValueError):
        state = {}
    if not isinstance(state, dict):
        state = {}
    return {"active": is_live(run_dir), "pid": state.get("pid"),
            "status": str(state.get("status", "unknown"))}


def run_is_active(run_dir: str) -> bool:
    return bool(run_state(run_dir)["active"])


def _stage_of(path: str, run_dir: str) -> str | None:
    rel = path[len(run_dir) + 1:].split(os.sep)
    if len(rel) >= 2 and rel[0] == STAGES:
        return rel[1]
    return None


def _adapter_weights_problem(path: str) -> str | None:
    """Why an adapter folder's weights cannot load, or None: missing, or a safetensors file
    shorter than its own header says (a copy or save cut short)."""
    weights = os.path.join(path, ADAPTER_SAFETENSORS)
    if not os.path.lexists(weights):
        if os.path.lexists(os.path.join(path, ADAPTER_PICKLE)):
            return None
        if os.path.lexists(os.path.join(path, MODEL_SAFETENSORS)) or \
                os.path.lexists(os.path.join(path, MODEL_PICKLE)):
            return None  # a Trainer checkpoint of a full model
        return f"no adapter weights ({ADAPTER_SAFETENSORS})"
    header = safetensors_header(weights)
    if header is None:
        return f"{ADAPTER_SAFETENSORS} cannot be read (truncated?)"
    return None



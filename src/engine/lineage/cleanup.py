"""Reference-counted cleanup: a pure planner over the lineage, and a journaled executor.

    lineage = lineage.scan([root])
    rules = [parse_keep(t) for t in ("final", "last:2", "best:eval/accuracy")]
    plan = plan_cleanup(lineage, rules)         # pure: nothing on disk changes
    print(format_plan(plan, lineage))
    result = execute(plan, lineage)             # deletes plan.delete, journaled
    finish_pending(root)                        # finishes a cleanup a crash interrupted

Guarantees, whatever the rules say:
- nothing a kept checkpoint needs to load or export (its whole base chain, `Lineage.needs`) is
  deleted; each protected checkpoint says why ("merged1 is the base of stage3_dpo, which you
  keep");
- nothing outside the roots is deleted, no symlink is followed (a link inside a deleted
  checkpoint is unlinked, never traversed), and a checkpoint of a running run is refused;
- a checkpoint nested in a deleted one (Trainer `checkpoint-N` under a stage) stays when kept.
"""

from __future__ import annotations

import bisect
import contextlib
import difflib
import os
import secrets
import stat
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from types import MappingProxyType
from typing import Literal

from graftline.engine.common.checkpoint_files import CHECKPOINT_PREFIX
from graftline.engine.common.errors import GraftlineError
from graftline.engine.common.units import human_bytes
from graftline.engine.lineage import journal as cleanup_journal
from graftline.engine.lineage.journal import PendingCleanup, read_journal, removed_by
from graftline.engine.lineage.keep_select import nothing_selected, relative_paths, select
from graftline.engine.lineage.model import NEEDED_RELATIONS, Lineage, Node, need_links
from graftline.engine.lineage.reader import run_is_active, scan

__all__ = [
    "CleanupError",
    "CleanupPlan",
    "CleanupResult",
    "KeepRule",
    "PendingCleanup",
    "execute",
    "finish_pending",
    "format_plan",
    "parse_keep",
    "pending_cleanup",
    "plan_cleanup",
    "removed_by",
]

_GLOB = set("*?[")
_ON_DISK_KINDS = {"base", "adapter", "merged", "combined", "export", "trainer"}


class CleanupError(GraftlineError, ValueError):
    """A keep rule or plan that cannot be used; nothing was changed."""


@dataclass(frozen=True)
class KeepRule:
    """One `--keep` word, parsed.

    Forms: `final` (the last checkpoint of every chain: leaves and `final/` folders),
    `last:N` (the last N readable Trainer checkpoints in each folder of `checkpoint-N`s, and
    the stage results beside them), `best:METRIC[:min|max]` (the best checkpoint of each run or
    training folder by a metric; `min` when the name contains "loss", else `max`),
    `id:ID`, a glob (`*`, `?`, `[`) over paths relative to a root, or a path, id or name.
    """

    kind: Literal["final", "last", "best", "id", "glob", "ref"]
    text: str
    value: str = ""
    count: int = 0
    mode: Literal["min", "max"] = "max"


def parse_keep(token: str) -> KeepRule:
    """Parse one `--keep` word; CleanupError with the fix when it is malformed."""
    text = token.strip()
    if not text:
        raise CleanupError("--keep '': empty; give an id, a path, a glob, final, last:N or best:M")
    head, _, rest = text.partition(":")
    if text == "final":
        return KeepRule("final", text)
    if head == "last":
        if not rest.isdigit() or int(rest) < 1:
            raise CleanupError(f"--keep {text!r}: N must be a whole number ≥ 1, e.g. last:2")
        return KeepRule("last", text, count=int(rest))
    if head == "best":
        metric, _, mode = rest.partition(":")
        if not metric:
            raise CleanupError(f"--keep {text!r}: name the metric, e.g. best:eval/accuracy")
        if mode not in ("", "min", "max"):
            raise CleanupError(f"--keep {text!r}: the direction is min or max, not {mode!r}")
        lower = mode == "min" or (not mode and "loss" in metric.lower())
        return KeepRule("best", text, value=metric, mode="min" if lower else "max")
    if head == "id" and rest:
        return KeepRule("id", text, value=rest)
    if _GLOB & set(text):
        return KeepRule("glob", text, value=text)
    return KeepRule("ref", text, value=text)


@dataclass(frozen=True)
class CleanupPlan:
    """What a cleanup would do. Every on-disk checkpoint inside the roots is in exactly one of
    `keep`, `protected`, `refused` or `delete`.

    keep:      key -> the rules that keep it
    protected: key -> why it must stay (a kept or running checkpoint needs it)
    refused:   key -> why it may not be touched now (its run is running)
    delete:    keys to delete, deepest first
    leave:     delete key -> nested checkpoint directories inside it that stay
    """

    roots: tuple[str, ...]
    rules: tuple[str, ...]
    keep: Mapping[str, tuple[str, ...]]
    protected: Mapping[str, tuple[str, ...]]
    refused: Mapping[str, str]
    delete: tuple[str, ...]
    leave: Mapping[str, tuple[str, ...]]
    bytes_reclaimed: int
    bytes_remaining: int
    warnings: tuple[str, ...] = ()


@dataclass(frozen=True)
class CleanupResult:
    cleanup: str
    removed: tuple[str, ...]
    skipped: tuple[tuple[str, str], ...]  # (path, why)
    bytes_freed: int
    resumed: bool = False


# -- planning ------------------------------------------------------------------------------------


def plan_cleanup(lineage: Lineage, rules: Sequence[KeepRule], *,
                 own_run: str | None = None,
                 delete_exports: Sequence[KeepRule] = ()) -> CleanupPlan:
    """Plan a cleanup of `lineage`'s roots keeping what `rules` select. Pure and O(nodes+edges).

    Raises CleanupError, with "did you mean", when any rule selects nothing (an id, path, glob,
    or a policy such as best:METRIC on a metric no checkpoint has): a typo must never turn
    into "delete everything", so such a plan deletes nothing at all.
    `own_run` is the run directory of the engine asking, between two of its stages: its
    checkpoints are not in use then, so they are not refused as a running run's.

    An export (a model shipped out of the chain) is never deleted by keep rules: it stays
    protected unless one of `delete_exports` (the same words as `--keep`: an id, a path, a
    name or a glob) names it; such a word that names no export refuses the plan too.
    """
    if not rules:
        raise CleanupError("say what to keep: --keep final, --keep last:2, an id, a path or a glob")
    candidates = [n for n in lineage.nodes if n.in_roots and n.kind in _ON_DISK_KINDS]
    keep: dict[str, list[str]] = {}
    warnings: list[str] = []
    for rule in rules:
        matched = select(rule, candidates, lineage)
        if not matched:
            # A typo (or a word that means nothing on this tree) must never turn into "delete
            # everything": every word has to select something, or nothing happens at all.
            raise CleanupError(nothing_selected(rule, candidates, lineage))
        for key in matched:
            keep.setdefault(key, []).append(rule.text)

    refused: dict[str, str] = {}
    for node in candidates:
        between_own_stages = own_run is not None and node.run_dir == own_run
        if node.running and node.key not in keep and not between_own_stages:
            refused[node.key] = f"run {node.run} is running: its files are not touched"

    doomed_exports = _named_exports(delete_exports, candidates, lineage, keep)
    shipped = {n.key: [_SHIPPED.format(name=_short(n))] for n in candidates
               if n.kind == "export" and n.key not in doomed_exports and n.key not in keep
               and n.key not in refused}
    protected = _protected(lineage, candidates, keep, refused, shipped)

    stays = set(keep) | set(protected) | set(refused)
    delete = [n for n in candidates if n.key not in stays]
    delete.sort(key=lambda n: (-(n.path or "").count(os.sep), n.path or ""))
    delete_keys = tuple(n.key for n in delete)
    leave = _nested_that_stay(delete, lineage.nodes, set(delete_keys))
    for root in lineage.journals:
        warnings.append(f"an interrupted cleanup left a journal in {root}: it is finished first")
    for link in lineage.symlinks:
        if link.outside:
            warnings.append(
                f"symlink {link.path} -> {link.target} points outside the roots: "
                "not followed, not deleted through"
            )
    reclaimed = sum(n.bytes for n in delete)
    return CleanupPlan(
        roots=lineage.roots,
        rules=tuple(r.text for r in rules),
        keep=MappingProxyType({k: tuple(v) for k, v in keep.items()}),
        protected=MappingProxyType({k: tuple(v) for k, v in protected.items()}),
        refused=MappingProxyType(refused),
        delete=delete_keys,
        leave=MappingProxyType(leave),
        bytes_reclaimed=reclaimed,
        bytes_remaining=sum(n.bytes for n in candidates) - reclaimed,
        warnings=tuple(warnings),
    )


_SHIPPED_TAIL = "cleanup never deletes one unless it is named (--delete-export)"
_SHIPPED = "{name} is an export (a shipped model): " + _SHIPPED_TAIL


def _named_exports(words: Sequence[KeepRule], candidates: Sequence[Node], lineage: Lineage,
                   keep: Mapping[str, object]) -> set[str]:
    """The exports `words` name for deletion; CleanupError when a word names none, or names one
    a keep word keeps (asked both ways: nothing is decided for the user)."""
    exports = [n for n in candidates if n.kind == "export"]
    named: set[str] = set()
    for word in words:
        if word.kind in ("final", "last", "best"):
            raise CleanupError(f"--delete-export {word.text!r}: name the export (an id, a path, "
                               "its name or a glob), not a policy. Nothing was deleted")
        found = select(word, exports, lineage)
        if not found:
            words_known = sorted({w for n in exports
                                  for w in (n.id, n.name, *relative_paths(n, lineage))})
            guess = difflib.get_close_matches(word.value, words_known, n=3, cutoff=0.5)
            hint = f"did you mean {' or '.join(guess)}? " if guess else ""
            known = ", ".join(sorted(relative_paths(n, lineage)[0] if relative_paths(n, lineage)
                                     else n.id for n in exports)[:8]) or "none"
            raise CleanupError(f"--delete-export {word.text!r} names no export under "
                               f"{', '.join(lineage.roots)}; {hint}exports there: {known}. "
                               "Nothing was deleted")
        both = [k for k in found if k in keep]
        if both:
            raise CleanupError(f"--delete-export {word.text!r} names "
                               f"{_short(lineage.node(both[0]))}, which a --keep word keeps: "
                               "say one or the other. Nothing was deleted")
        named.update(found)
    return named


def _protected(lineage: Lineage, candidates: Sequence[Node], keep: Mapping[str, object],
               refused: Mapping[str, str],
               shipped: Mapping[str, list[str]] | None = None) -> dict[str, list[str]]:
    """What must stay because something that stays needs it, with up to three reasons each.

    One breadth-first pass from everything that stays: the first path that reaches a node
    gives its reason.
    """
    protected: dict[str, list[str]] = {k: list(v) for k, v in (shipped or {}).items()}
    # A checkpoint made elsewhere that a run's stage started from (`from` a path): not a run's
    # to delete, whatever is kept; it stays with what it needs.
    for node in candidates:
        if node.started and node.key not in keep and node.key not in refused:
            protected[node.key] = [f"{_short(node)} was made outside graftline; "
                                   f"{', '.join(node.started)} started from it"]
    up = need_links(lineage)
    queue = deque((key, key) for key in (*keep, *refused, *protected))
    reached: set[str] = set(keep) | set(refused) | set(protected)
    while queue:
        key, origin = queue.popleft()
        for edge in up.get(key, ()):
            if edge.relation not in NEEDED_RELATIONS:
                continue
            parent = lineage.get(edge.parent)
            if parent is None:
                continue
            if parent.key in keep or parent.key in refused:
                continue
            reason = _reason(lineage, edge.parent, key, edge.relation, origin, keep, refused)
            if parent.key not in reached:
                reached.add(parent.key)
                queue.append((parent.key, origin))
            if parent.in_roots and parent.kind in _ON_DISK_KINDS:
                reasons = protected.setdefault(parent.key, [])
                if len(reasons) < 3 and reason not in reasons:
                    reasons.append(reason)
    return protected


def _reason(
    lineage: Lineage,
    parent: str,
    child: str,
    relation: str,
    origin: str,
    keep: Mapping[str, object],
    refused: Mapping[str, str],
) -> str:
    p, c, o = (_short(lineage.node(k)) for k in (parent, child, origin))
    link = (f"{p} is the base of {c}" if relation == "trained_on"
            else f"{p} was merged into {c}")
    if origin in refused:
        return f"{link}, which running run {lineage.node(origin).run} uses"
    if child == origin:
        return f"{link}, which you keep"
    return f"{link}, which {o} (kept) needs"


def _short(node: Node) -> str:
    """A node's name, with its folder when the name alone says nothing (`sft/final`)."""
    name = node.name
    if node.path and (name == "final" or name.startswith(CHECKPOINT_PREFIX)):
        return f"{os.path.basename(os.path.dirname(node.path))}/{name}"
    return name


def _nested_that_stay(
    delete: Sequence[Node], nodes: Sequence[Node], deleted: set[str]
) -> dict[str, tuple[str, ...]]:
    # Everything not deleted stays, including a base the scan found but did not count as ours.
    staying = sorted(n.path for n in nodes if n.key not in deleted and n.path)
    out: dict[str, tuple[str, ...]] = {}
    for node in delete:
        prefix = (node.path or "") + os.sep
        inner = []
        for path in staying[bisect.bisect_left(staying, prefix):]:
            if not path.startswith(prefix):
                break
            inner.append(path)
        if inner:
            out[node.key] = tuple(inner)
    return out


# -- presenting ----------------------------------------------------------------------------------


def describe(node: Node, lineage: Lineage) -> str:
    """A checkpoint as a person finds it: its path under the root (never only a hash), its
    stage, kind and size, and whether it is corrupt."""
    rel = relative_paths(node, lineage)
    where = rel[0] if rel else (node.path or node.id)
    stage = f"stage {node.stage}, " if node.stage else ""
    flag = ", CORRUPT" if node.status == "corrupt" else ""
    return f"{where}  [{stage}{node.kind}, {human_bytes(node.bytes)}{flag}]"



def format_plan(plan: CleanupPlan, lineage: Lineage) -> str:
    """The plan as the text `graftline cleanup` prints."""

    def label(key: str) -> str:
        return describe(lineage.node(key), lineage)

    lines = [f"Cleanup plan for {', '.join(plan.roots)}  (keep: {' '.join(plan.rules)})", ""]
    lines.append(f"Kept, as you asked ({len(plan.keep)}):")
    lines += [f"  {label(k)}  ← kept by {', '.join(why)}" for k, why in plan.keep.items()]
    shipped = {k for k, why in plan.protected.items()
               if lineage.node(k).kind == "export" and why and why[0].endswith(_SHIPPED_TAIL)}
    needed = {k: why for k, why in plan.protected.items() if k not in shipped}
    lines.append(f"Protected, needed by what you keep ({len(needed)}):")
    lines += [f"  {label(k)}  — protected: {'; '.join(why)}" for k, why in needed.items()]
    if shipped:
        lines.append(f"Exports, never deleted unless named with --delete-export ({len(shipped)}):")
        lines += [f"  {label(k)}" for k in sorted(shipped)]
    if plan.refused:
        lines.append(f"Refused ({len(plan.refused)}):")
        lines += [f"  {label(k)}  — {why}" for k, why in plan.refused.items()]
    lines.append(f"Delete ({len(plan.delete)}):")
    for key in plan.delete:
        stays = plan.leave.get(key, ())
        note = f"  (keeps nested {', '.join(os.path.basename(s) for s in stays)})" if stays else ""
        lines.append(f"  {label(key)}{note}")
    broken = [n for n in lineage.broken() if n.key not in plan.delete]
    if broken:
        lines.append("Broken (already unloadable):")
        lines += [f"  {n.id}: {n.broken}" for n in broken]
    for warning in plan.warnings:
        lines.append(f"warning: {warning}")
    lines.append("")
    lines.append(
        f"Reclaims {human_bytes(plan.bytes_reclaimed)}; "
        f"{human_bytes(plan.bytes_remaining)} stays."
    )
    return "\n".join(lines)


# -- executing -----------------------------------------------------------------------------------


def pending_cleanup(root: Path) -> PendingCleanup | None:
    """The cleanup a crash interrupted in `root`, if any (its journal is still there)."""
    return read_journal(Path(os.path.realpath(root)))


def execute(
    plan: CleanupPlan, lineage: Lineage, *, journal_root: Path | None = None,
    own_run: str | None = None,
) -> CleanupResult:
    """Delete `plan.delete`, journaled in `journal_root` (default: the first root).

    Each directory is checked again just before it goes (inside a root, not a symlink, its run
    not running); one that fails is skipped and reported, never forced. Raises CleanupError,
    deleting nothing, when an interrupted cleanup's journal is still in the root.
    """
    root = Path(journal_root or plan.roots[0])
    if read_journal(root) is not None:
        raise CleanupError(
            f"{root}: an interrupted cleanup is not finished; run finish_pending first "
            "(`graftline cleanup` does it with --yes)"
        )
    cleanup_id = f"c-{datetime.now(UTC):%Y%m%d-%H%M%S}-{secrets.token_hex(2)}"
    entries = []
    for key in plan.delete:
        node = lineage.node(key)
        entries.append({"path": node.path, "id": node.id, "kind": node.kind, "bytes": node.bytes,
                        "run_dir": node.run_dir, "leave": list(plan.leave.get(key, ()))})
    return _run(root, plan.roots, cleanup_id, entries, frozenset(), resumed=False,
                own_run=own_run)


def finish_pending(root: Path, *, own_run: str | None = None) -> CleanupResult | None:
    """Finish the cleanup a crash interrupted in `root`; None when there is none.

    The lineage is scanned again first: a directory that something new now needs (a checkpoint
    written since, outside the interrupted plan) is skipped and reported, not deleted.
    """
    root = Path(os.path.realpath(root))
    job = read_journal(root)
    if job is None:
        return None
    lineage = scan([root])
    planned = {e["path"] for e in job.entries}
    skipped: list[tuple[str, str]] = []
    entries = []
    for entry in job.remaining:
        path = entry["path"]
        users = [k for k in lineage.needed_by(path) if k not in planned and k in lineage
                 and lineage.node(k).kind not in ("missing", "external")]
        if users:
            who = lineage.node(users[0]).id
            skipped.append((path, f"{who} now needs it"))
            continue
        entries.append(entry)
    result = _run(root, (str(root),), job.cleanup, entries, job.done, resumed=True,
                  already_skipped=skipped, journal_exists=True, own_run=own_run,
                  begun=job.begun)
    return result


def _run(
    root: Path,
    roots: Sequence[str],
    cleanup_id: str,
    entries: list[dict],
    done: frozenset[str],
    *,
    resumed: bool,
    already_skipped: Sequence[tuple[str, str]] = (),
    journal_exists: bool = False,
    own_run: str | None = None,
    begun: frozenset[str] = frozenset(),
) -> CleanupResult:
    journal = root / cleanup_journal.JOURNAL
    history = root / cleanup_journal.HISTORY
    now = datetime.now(UTC).isoformat(timespec="seconds")
    if not journal_exists:
        cleanup_journal.append_line(journal, {"type": "plan", "cleanup": cleanup_id, "time": now,
                                              "entries": entries})
    removed: list[str] = []
    skipped = list(already_skipped)
    freed = 0
    for entry in entries:
        path = entry["path"]
        if path in done:
            continue
        run_dir = entry.get("run_dir")
        between_own_stages = own_run is not None and run_dir == own_run
        why = _unsafe(path, roots, None if between_own_stages else run_dir)
        # gone, and begun here: this cleanup removed it before a crash cut the history line short
        removed_before_crash = why == "gone" and path in begun
        if why is None:
            cleanup_journal.append_line(journal, {"type": "removing", "path": path})
            freed += _remove_own(path, set(entry.get("leave", ())))
            _prune_empty_parents(path, roots)
        elif not removed_before_crash:
            if why != "gone":  # gone and never begun here: removed some other way, not by us
                skipped.append((path, why))
            cleanup_journal.append_line(journal, {"type": "done", "path": path})
            continue
        removed.append(path)
        cleanup_journal.append_line(history, {
            "cleanup": cleanup_id, "time": now, "path": path, "id": entry["id"],
            "kind": entry["kind"], "bytes": entry["bytes"],
        })
        cleanup_journal.append_line(journal, {"type": "done", "path": path})
    journal.unlink()
    return CleanupResult(cleanup_id, tuple(removed), tuple(skipped), freed, resumed)


def _unsafe(path: str, roots: Sequence[str], run_dir: str | None) -> str | None:
    """Why `path` may not be deleted now, or None; "gone" when it no longer exists."""
    parent = os.path.realpath(os.path.dirname(path))
    real = os.path.join(parent, os.path.basename(path))
    if not any(real.startswith(r + os.sep) for r in roots):
        return "outside the roots"
    try:
        st = os.lstat(real)
    except FileNotFoundError:
        return "gone"
    if stat.S_ISLNK(st.st_mode):
        return "is a symlink (never deleted through)"
    if not stat.S_ISDIR(st.st_mode):
        return "not a directory"
    if run_dir and run_is_active(run_dir):
        return "its run is running"
    return None


def _prune_empty_parents(path: str, roots: Sequence[str]) -> None:
    """Remove folders the deletion left empty (a stage's `trainer/`), never a root itself."""
    parent = os.path.dirname(path)
    while any(parent.startswith(r + os.sep) for r in roots):
        try:
            os.rmdir(parent)  # only ever succeeds on an empty directory
        except OSError:
            return
        parent = os.path.dirname(parent)


def _remove_own(path: str, leave: set[str]) -> int:
    """Remove `path` except the nested directories in `leave`; never follows a symlink."""
    freed = 0
    try:
        it = os.scandir(path)
    except FileNotFoundError:
        return 0
    with it:
        entries = list(it)
    for entry in entries:
        if entry.is_dir(follow_symlinks=False):
            if entry.path in leave:
                continue
            if any(p.startswith(entry.path + os.sep) for p in leave):
                freed += _remove_own(entry.path, leave)
                continue
            freed += _remove_own(entry.path, set())
        else:
            try:
                freed += entry.stat(follow_symlinks=False).st_size
                os.unlink(entry.path)  # a symlink: the link goes, its target stays
            except FileNotFoundError:
                continue
    with contextlib.suppress(OSError):  # something that stays is inside it
        os.rmdir(path)
    return freed

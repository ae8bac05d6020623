"""Which checkpoints a `--keep` word selects, and the refusal when it selects none.

`cleanup.plan_cleanup` keeps what every rule selects (and what that needs); a word that selects
nothing refuses the whole plan with "did you mean" (`nothing_selected`), so a typo never turns
into "delete everything". Pure: reads the lineage only.
"""

from __future__ import annotations

import difflib
import fnmatch
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from graftline.engine.lineage.model import Lineage, Node

if TYPE_CHECKING:
    from graftline.engine.lineage.cleanup import KeepRule

__all__ = ["is_stage_result", "nothing_selected", "relative_paths", "select"]


def select(rule: KeepRule, nodes: Sequence[Node], lineage: Lineage) -> list[str]:
    if rule.kind == "final":
        return _finals(nodes, lineage)
    if rule.kind == "last":
        return _last(rule.count, nodes)
    if rule.kind == "best":
        chosen = []
        sign = 1 if rule.mode == "min" else -1
        usable = (n for n in nodes if rule.value in n.metrics and n.status != "corrupt")
        for group in _by_project(usable):
            chosen.append(min(group, key=lambda n: sign * n.metrics[rule.value]).key)
        return chosen
    if rule.kind == "id":
        return [n.key for n in nodes if n.id == rule.value]
    if rule.kind == "glob":
        return [n.key for n in nodes if any(fnmatch.fnmatchcase(s, rule.value)
                                            for s in _spellings(n, lineage.roots))]
    wanted = {n.key for n in nodes}
    found = [k for k in lineage.find(rule.value) if k in wanted]
    if found:
        return found
    for base in (os.getcwd(), *lineage.roots):
        path = os.path.realpath(os.path.join(base, os.path.expanduser(rule.value)))
        if path in wanted:
            return [path]
    return []


def is_stage_result(node: Node) -> bool:
    """A `final/` folder (notebooks, scripts) or a graftline stage's own output."""
    return node.kind != "trainer" and (
        os.path.basename(node.path or "") == "final" or (node.stage is not None
                                                         and node.step is None))


def _finals(nodes: Sequence[Node], lineage: Lineage) -> list[str]:
    """The last checkpoint of every chain: every stage result and full model or adapter that
    nothing else in the roots was made from (a leaf), plus every `final/` folder. Trainer
    checkpoints are steps on the way, never a chain's end; an export of a checkpoint leaves
    that checkpoint the chain's end."""
    on_disk = {n.key for n in nodes if n.kind != "trainer"}
    made_from: set[str] = set()
    for node in nodes:
        if node.kind in ("trainer", "export"):
            continue  # an export ships a chain's end; it does not continue the chain
        for edge in lineage.parents(node.key):
            if edge.parent in on_disk and edge.parent != node.key:
                made_from.add(edge.parent)
    return [n.key for n in nodes if n.kind != "trainer"
            and (n.key not in made_from or os.path.basename(n.path or "") == "final")]


def _last(count: int, nodes: Sequence[Node]) -> list[str]:
    """The last `count` readable Trainer checkpoints of each folder of `checkpoint-N`s, and the
    stage results beside or above that folder: `last:N` is about Trainer checkpoints, so it
    never deletes a stage's result for not being one (nor keeps a corrupt checkpoint in place
    of a good one)."""
    folders: dict[str, list[Node]] = {}
    for node in nodes:
        if node.kind == "trainer" and node.step is not None and node.path:
            folders.setdefault(os.path.dirname(node.path), []).append(node)
    if not folders:
        return []  # no Trainer checkpoint here: the word means nothing on this tree
    chosen = [
        n.key for group in folders.values()
        for n in sorted((g for g in group if g.status != "corrupt"), key=lambda n: n.step or 0)
        [-count:]
    ]
    if not chosen:
        return []  # every checkpoint-N here is corrupt: nothing readable to keep by step
    holders = set(folders)
    for node in nodes:
        if node.kind == "trainer" or not node.path:
            continue
        inside = any(f == node.path or f.startswith(node.path + os.sep) for f in folders)
        if is_stage_result(node) or inside or os.path.dirname(node.path) in holders:
            chosen.append(node.key)
    return chosen


def nothing_selected(rule: KeepRule, nodes: Sequence[Node], lineage: Lineage) -> str:
    """The refusal for a keep word that selects nothing, with "did you mean" over the metric
    names, stage names and checkpoint names that exist."""
    where = ", ".join(lineage.roots)
    if rule.kind == "best":
        metrics = sorted({m for n in nodes for m in n.metrics})
        guess = difflib.get_close_matches(rule.value, metrics, n=3, cutoff=0.5)
        hint = f"did you mean {' or '.join('best:' + g for g in guess)}? " if guess else ""
        known = ", ".join(metrics[:12]) or "none (no metrics.json, evaluation.json, "\
            "trainer_state.json or manifest metrics found)"
        return (f"--keep {rule.text!r} selects nothing under {where}: no checkpoint has the "
                f"metric {rule.value!r}; {hint}metrics found: {known}. Nothing was deleted")
    if rule.kind == "last":
        return (f"--keep {rule.text!r} selects nothing under {where}: there is no Trainer "
                "checkpoint-N folder here; keep final, a path or best:METRIC instead. "
                "Nothing was deleted")
    if rule.kind == "final":
        return f"--keep final selects nothing under {where}: no checkpoint was found there"
    words = sorted({w for n in nodes for w in (n.id, n.name, n.stage, *relative_paths(n, lineage))
                    if w})
    guess = difflib.get_close_matches(rule.value, words, n=3, cutoff=0.5)
    hint = f"did you mean {' or '.join(guess)}? " if guess else ""
    stages = sorted({n.stage for n in nodes if n.stage})
    known = (f"stages: {', '.join(stages[:12])}" if stages
             else f"checkpoints: {', '.join(sorted(n.id for n in nodes)[:8]) or 'none'}")
    return (f"--keep {rule.text!r} matched no checkpoint under {where}; {hint}{known}. "
            "Nothing was deleted")


def relative_paths(node: Node, lineage: Lineage) -> list[str]:
    """The node's path relative to each root that holds it, with `/`."""
    return [Path(os.path.relpath(node.path, r)).as_posix() for r in lineage.roots
            if node.path and node.path.startswith(r + os.sep)]


def _spellings(node: Node, roots: Iterable[str]) -> list[str]:
    out = [node.id, node.name]
    if node.path:
        out.append(node.path)
        for root in roots:
            if node.path.startswith(root + os.sep):
                out.append(Path(os.path.relpath(node.path, root)).as_posix())
    return out


def _by_project(nodes: Iterable[Node]) -> list[list[Node]]:
    """Groups that `best:` compares within: a graftline run, else the folder that holds the
    checkpoints of one training (`out/checkpoint-N`, `out/final`), whichever folder a scan
    starts from."""
    groups: dict[str, list[Node]] = {}
    for node in nodes:
        key = node.run_dir or node.run or os.path.dirname(node.path or node.key)
        groups.setdefault(key, []).append(node)
    return list(groups.values())

"""The pipeline's `[cleanup]`, applied by the engine between its own stages.

Disk is short on GPU boxes, and the cleanup people run by hand between stages is what deletes the
merged base a later adapter still points to. Here the engine does it with what it alone knows:
the stages still to run. After a stage the policy names, it scans the run, keeps what the keep
words select, what those need to load or export (the planner's rule), and every checkpoint a
later stage reads; the rest goes, journaled like `graftline cleanup --yes`. A cleanup that cannot
be planned is a warning, never a failed run.
"""

from __future__ import annotations

import os
from pathlib import Path

from graftline.engine.common.sink import Sink
from graftline.engine.common.units import human_bytes
from graftline.engine.pipeline import spec
from graftline.engine.pipeline.plan import StepPlan


def needed_dirs(steps: list[StepPlan], run_dir: Path) -> dict[str, dict[Path, str]]:
    """Stage → {checkpoint directory it reads: why}. Pure: what a cleanup must leave for later
    stages (graftline's cleanup protects what *kept* checkpoints need, not what stages that have
    not run yet will read)."""
    from graftline.engine.stages.context import stage_dir

    by_name = {s.name: s for s in steps}
    needs: dict[str, dict[Path, str]] = {}
    for step in steps:
        found: dict[Path, str] = {}

        def need(name: str | None, why: str, found: dict[Path, str] = found) -> None:
            if name is not None and name in by_name:
                found.setdefault(stage_dir(run_dir, name), why)

        if step.action == "continue" or step.kind in ("merge", "generate", "eval", "export"):
            need(step.parent, "the checkpoint it starts from")
            parent = by_name.get(step.parent or "")
            if parent is not None and parent.produces_adapter:
                need(parent.model_stage, f"the base model '{step.parent}' applies to")
        need(step.model_stage if step.kind != "merge" else None, "its base model")
        for name in getattr(step.stage, "adapters", []) or []:
            need(name, "an adapter it combines")
        for attr in ("data", "eval_data", "prompts"):
            value = getattr(step.stage, attr, None)
            # `data` may be a list of sources (docs/datasets.md): each `@stage` in it is needed
            for ref in [value] if isinstance(value, str) else value or []:
                if ref.startswith("@"):
                    need(ref[1:], "its generated data")
        needs[step.name] = found
    return needs


def applies_after(policy: spec.Cleanup, stage: str) -> bool:
    return not policy.after or stage in policy.after


def finish_interrupted(run_dir: Path, sink: Sink) -> None:
    """Finish the cleanup a crash interrupted in this run (its journal is still there) before
    anything else runs; what something now needs is skipped, as `finish_pending` does."""
    from graftline.engine.lineage.cleanup import CleanupError, finish_pending

    own = os.path.realpath(run_dir)
    try:
        result = finish_pending(Path(own), own_run=own)
    except (CleanupError, OSError) as exc:
        sink.emit("warning", None, message=f"an interrupted cleanup in {own} was not finished: "
                  f"{exc}", fix=f"`graftline cleanup {own} --yes` finishes it")
        return
    if result is None:
        return
    sink.emit("info", None, message=f"finished cleanup {result.cleanup}, which was interrupted: "
              f"deleted {len(result.removed)} checkpoint(s), {human_bytes(result.bytes_freed)} "
              "freed", cleanup=result.cleanup,
              removed=[os.path.relpath(p, own) for p in result.removed], freed=result.bytes_freed)
    for path, why in result.skipped:
        sink.emit("warning", None, message=f"the interrupted cleanup left {path}: {why}")


def clean_after(stage: str, policy: spec.Cleanup, steps: list[StepPlan], run_dir: Path,
                sink: Sink) -> None:
    """Run `policy` after `stage` finished; reports through `sink` (`info`, or `warning`)."""
    from graftline.engine.lineage.cleanup import (
        CleanupError,
        KeepRule,
        execute,
        parse_keep,
        plan_cleanup,
    )
    from graftline.engine.lineage.reader import scan

    own = os.path.realpath(run_dir)
    words = ", ".join(policy.keep)
    try:
        lineage = scan([own])
        order = [s.name for s in steps]
        needs = needed_dirs(steps, Path(own))
        later: dict[str, str] = {}  # node key -> why a later stage needs it
        for name in order[order.index(stage) + 1:]:
            for directory, why in needs.get(name, {}).items():
                key = os.path.realpath(directory)
                if key in lineage:
                    later.setdefault(key, f"'{name}' reads it ({why})")
        rules = [parse_keep(word) for word in policy.keep]
        rules += [KeepRule("ref", key, value=key) for key in later]  # a path, never a glob
        plan = plan_cleanup(lineage, rules, own_run=own)
        result = execute(plan, lineage, own_run=own)
    except CleanupError as exc:
        sink.emit("warning", stage, message=f"cleanup after '{stage}' (keep {words}) did not "
                  f"run: {exc}", fix="fix [cleanup] keep; nothing was deleted by it")
        return
    except OSError as exc:
        sink.emit("warning", stage, message=f"cleanup after '{stage}' (keep {words}) stopped: "
                  f"{exc}", fix="its journal in the run directory is finished by the next "
                  "cleanup (or `graftline cleanup RUN --yes`)")
        return
    # What only the later stages kept: the keep words alone would have deleted it.
    kept_for_later = [f"{os.path.relpath(k, own)}: {why}" for k, why in later.items()
                      if plan.keep.get(k) == (k,)]
    message = (f"cleanup after '{stage}' (keep {words}): deleted {len(result.removed)} "
               f"checkpoint(s), {human_bytes(result.bytes_freed)} freed")
    if kept_for_later:
        message += "; kept for later stages: " + "; ".join(kept_for_later)
    sink.emit("info", stage, message=message, cleanup=result.cleanup,
              removed=[os.path.relpath(p, own) for p in result.removed],
              freed=result.bytes_freed)
    for path, why in result.skipped:
        sink.emit("warning", stage, message=f"cleanup after '{stage}' left {path}: {why}")

"""Runs a pipeline's stages in order, in this process.

Each stage writes `<run_dir>/stages/<stage>/` with `graftline.json` (partial → complete,
atomically), `metrics.json` and `evaluation.json`, and reports through the sink. With
`resume=True` complete stages are skipped and the interrupted one continues from its last
Trainer checkpoint (optimizer, scheduler, RNG, global step), so a crash loses at most one
`save_steps` interval; a checkpoint at the stage's last step finishes the stage without another
step (stages/resume.py `final_step`). Global steps in `metrics` events run on across stages.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import time
import traceback
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from graftline.engine.backends.base import Backend, BackendError, select_backend
from graftline.engine.common import atomic
from graftline.engine.common.checkpoint_files import (
    ADAPTER_PICKLE,
    ADAPTER_SAFETENSORS,
    MODEL_PICKLE,
    MODEL_SAFETENSORS,
    TRAINER_STATE,
    checkpoint_dirs,
)
from graftline.engine.common.control import RunControl
from graftline.engine.common.disk_full import is_disk_full, wait_for_space
from graftline.engine.common.event_types import (
    CheckpointSaved,
    ProcessGroupStart,
    RunFinished,
    RunStarted,
    StageFinished,
    StageStarted,
)
from graftline.engine.common.layout import DONE
from graftline.engine.common.private import make_private, umask, user_umask
from graftline.engine.common.safetensors_header import whole_header
from graftline.engine.common.sink import Sink, emit_record
from graftline.engine.lineage import manifest as mf
from graftline.engine.pipeline.file import PipelineFile
from graftline.engine.run import between_stages as stage_cleanup
from graftline.engine.stages import StageContext, StageHooks, StageOutcome, checks, runner_for
from graftline.engine.stages.context import completed_earlier, stage_dir
from graftline.engine.stages.trainer_args import TRAINER_DIR

if TYPE_CHECKING:
    from graftline.engine.pipeline.plan import StepPlan


@dataclass(frozen=True)
class RunResult:
    status: str  # finished | failed | stopped
    message: str
    run_dir: Path
    stages: dict[str, str] = field(default_factory=dict)  # name → complete/skipped/failed/…
    failed_stage: str | None = None


def base_model_path(pf: PipelineFile) -> str:
    """What the run loads as the pipeline's base: the toy base's directory (built on first use),
    a local folder found by the one resolver of a recorded base, or the name as written (a hub
    id)."""
    from graftline.engine.toy.named import built_toy_base

    base = pf.pipeline.pipeline.base
    resolved = built_toy_base(base)
    if resolved != base:
        return resolved
    # The one resolver for a recorded base (lineage/resolve.py): relative to the file's folder
    # and the folders above it, then a hub id.
    from graftline.engine.lineage.resolve import resolve_base

    found = resolve_base(base, pf.directory, use_cwd=False, hub_cache=False)
    return found.path if found.kind == "path" and found.path else base


def one_thread_for_tiny_models(base_path: str) -> None:
    """On CPU a model this small gains nothing from a second thread, and on a busy 2-core box the
    threads' synchronisation made a training step up to 40× slower (measured with the toy model:
    2.3 s vs 0.05 s). Real models keep torch's default."""
    import torch

    from graftline.engine.pipeline.modelinfo import describe

    info = describe(base_path)
    if not torch.cuda.is_available() and info is not None and info.params < 20_000_000:
        torch.set_num_threads(1)


def latest_trainer_checkpoint(directory: Path) -> Path | None:
    """The newest Trainer checkpoint of a stage that is complete and valid. A kill while the
    Trainer writes a checkpoint (or rotates an old one away) leaves a half-written directory;
    resuming from it failed every time (an empty trainer_state.json), although the previous
    checkpoint was intact."""
    return next((p for p in trainer_checkpoints(directory) if checkpoint_problem(p) is None),
                None)


def trainer_checkpoints(directory: Path) -> list[Path]:
    """A stage's Trainer checkpoint directories, newest first (symlinks never followed)."""
    root = directory / TRAINER_DIR
    if not root.is_dir() or root.is_symlink():
        return []
    return [p for _, p in checkpoint_dirs(root)]


WEIGHTS = (ADAPTER_SAFETENSORS, MODEL_SAFETENSORS, ADAPTER_PICKLE, MODEL_PICKLE)
TORCH_FILES = ("optimizer.pt", "scheduler.pt", "rng_state.pth")


def checkpoint_problem(path: Path) -> str | None:
    """Why a Trainer checkpoint cannot be resumed from, or None when it can. The Trainer writes
    trainer_state.json after the weights, optimizer, scheduler and RNG state, so a state file
    that parses with its global step is the main witness; the weights and torch files are read
    just far enough to see they are whole (safetensors header and length, zip directory)."""
    import zipfile

    try:
        state = json.loads((path / TRAINER_STATE).read_text())
    except (OSError, ValueError) as exc:
        return f"trainer_state.json unreadable ({type(exc).__name__})"
    if not isinstance(state, dict) or not isinstance(state.get("global_step"), int):
        return "trainer_state.json has no global_step"
    weights = [path / name for name in WEIGHTS if (path / name).is_file()]
    if not weights:
        return "no weights file"
    for file in weights:
        if file.suffix == ".safetensors" and whole_header(file) is None:
            return f"{file.name} is truncated"
        if file.suffix == ".bin" and not zipfile.is_zipfile(file):
            return f"{file.name} is truncated"
    for name in TORCH_FILES:
        file = path / name
        if file.exists() and not zipfile.is_zipfile(file):
            return f"{name} is truncated"
    return None


def _warn_half_written(sink: Sink, stage: str, directory: Path, chosen: Path | None) -> None:
    for path in trainer_checkpoints(directory):
        if path == chosen:
            return
        problem = checkpoint_problem(path)
        sink.emit("warning", stage, message=f"skipping {path.name}: {problem} (written when the "
                  "engine was killed); resuming from "
                  f"{chosen.name if chosen else 'the start of the stage'}",
                  fix="nothing to do: the next save replaces it")


def _fresh_stage_dir(run_dir: Path, directory: Path, keep_trainer: bool) -> None:
    """Empty a stage directory left by an earlier attempt, inside the run directory only."""
    runs = Path(run_dir).resolve()
    if directory.is_symlink():
        directory.unlink()
    if directory.exists():
        if runs not in directory.resolve().parents:
            raise RuntimeError(f"refusing to clear {directory}: outside {runs}")
        for child in directory.iterdir():
            if keep_trainer and child.name == TRAINER_DIR and not child.is_symlink():
                continue
            if child.is_dir() and not child.is_symlink():
                shutil.rmtree(child)
            else:
                child.unlink()
    directory.mkdir(parents=True, exist_ok=True)


def _max_steps(step: Any) -> int | None:
    train = step.train
    return train.max_steps if train is not None else None


def run_pipeline(pf: PipelineFile, run_dir: Path, sink: Sink, control: RunControl | None = None,
                 *, resume: bool = False, backend: Backend | None = None,
                 hooks: Mapping[str, StageHooks] | None = None,
                 rehearsal: Callable[[], tuple[str, str]] | None = None,
                 judge_quality: bool = True) -> RunResult:
    """Run every stage in file order; a stage's failure goes to the sink and the result, never
    raised. `rehearsal` runs first (run/rehearsal_phase.py): anything but `passed` ends the run
    before stage 1. `judge_quality` False: quality checks report only (a rehearsal's steps)."""
    from graftline.engine.pipeline.plan import resolve

    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    control = control or RunControl()
    pipeline, header = pf.pipeline, pf.pipeline.pipeline
    steps = resolve(pipeline, pf.directory)
    statuses: dict[str, str] = {}

    try:
        backend = backend or select_backend(header.backend)
    except BackendError as exc:
        sink.emit("error", None, message=exc.message, fix=exc.fix)
        return _ended(sink, RunResult("failed", exc.message, run_dir))

    _emit_run_started(sink, run_dir, header.name, steps, backend.name, resume)
    if rehearsal is not None:
        outcome, message = rehearsal()
        if outcome != "passed":
            return _ended(sink, RunResult(outcome, message, run_dir, statuses))
    try:
        base_path = base_model_path(pf)
    except Exception as exc:  # the base could not be built or found
        message = f"cannot resolve the base model '{header.base}': {exc}"
        sink.emit("error", None, message=message, fix="check [pipeline] base")
        return _ended(sink, RunResult("failed", message, run_dir))

    one_thread_for_tiny_models(base_path)
    probes = _probes(pf, sink)
    stage_cleanup.finish_interrupted(run_dir, sink)
    offset = 0
    for index, step in enumerate(steps):
        directory = stage_dir(run_dir, step.name)
        done = completed_earlier(directory) if resume else None
        if done is not None:
            statuses[step.name] = "skipped"
            emit_record(sink, step.name, StageFinished(
                kind=step.kind, status="skipped", seconds=0.0, metrics={}, evaluation={}))
            offset += done["steps"]
            continue
        if control.stop.is_set():
            emit_record(sink, None, RunFinished(
                status="stopped", message=f"stopped before stage '{step.name}'"))
            return RunResult("stopped", "stopped", run_dir, statuses)
        resume_from = _prepare_stage_dir(sink, run_dir, step.name, directory, resume)
        _seed_here(pf, step, run_dir, header.seed + index)
        ctx = StageContext(
            stage=step.stage, step=step, index=index, run_dir=run_dir, run_id=run_dir.name,
            base_path=base_path, backend=backend, sink=sink, control=control,
            quantization=header.quantization, seed=header.seed, probes=probes,
            global_step_offset=offset, resume_from=resume_from, search_dir=pf.directory,
            hooks=(hooks or {}).get(step.name, StageHooks()),
            report_to=tuple(header.report_to),
            pipeline_name=header.name, judge_quality=judge_quality,
        )
        result = _run_one(pf, ctx, directory)
        statuses[step.name] = result.status
        if result.status == "failed":
            return _ended(sink, RunResult("failed", result.message, run_dir, statuses,
                                          step.name))
        if result.status == "stopped":
            return _ended(sink, RunResult("stopped", f"stopped during '{step.name}'; `graftline "
                                          "resume` continues from its last Trainer checkpoint",
                                          run_dir, statuses, step.name))
        offset += result.steps
        if pipeline.cleanup is not None and stage_cleanup.applies_after(pipeline.cleanup,
                                                                         step.name):
            stage_cleanup.clean_after(step.name, pipeline.cleanup, steps, run_dir, sink)
    emit_record(sink, None, RunFinished(status="finished", message=f"{len(steps)} stages done"))
    return RunResult("finished", "finished", run_dir, statuses)


def _seed_here(pf: PipelineFile, step: StepPlan, run_dir: Path, seed: int) -> None:
    """Seed a stage that trains in this process. A process group's ranks seed themselves
    (run/rank_main.py), so an engine that only launches groups never imports transformers' trainer
    stack (its `set_seed` pulls in PEFT and bitsandbytes): the first group starts ~4 s sooner."""
    from graftline.engine.run import distributed

    if distributed.scale_for(pf.pipeline, step.stage, run_dir).distributed_run:
        return
    from transformers import set_seed

    set_seed(seed)


def _ended(sink: Sink, result: RunResult) -> RunResult:
    """The run ends here: its `run_finished` event says what the result says."""
    emit_record(sink, None, RunFinished(status=result.status, message=result.message))
    return result


def _emit_run_started(sink: Sink, run_dir: Path, pipeline: str, steps: Sequence[StepPlan],
                      backend: str, resume: bool) -> None:
    emit_record(sink, None, RunStarted(
        run=run_dir.name, pipeline=pipeline,
        stages=[{"name": s.name, "kind": s.kind, "action": s.action,
                 "lora_r": s.lora.r if s.lora else None,
                 "reference": s.reference,
                 "reference_label": s.reference_label,
                 "max_steps": _max_steps(s)} for s in steps],
        backend=backend, resumed=resume))


def _probes(pf: PipelineFile, sink: Sink) -> tuple[str, ...]:
    """The prompts every stage's samples answer: the file's, else the first stage's first."""
    probes = tuple(pf.pipeline.pipeline.probes)
    if not probes:  # every stage asks the same questions: the first stage's first prompts
        from graftline.engine.pipeline.probes import default_probes

        try:
            probes = tuple(default_probes(pf.pipeline, pf.directory))
        except Exception as exc:  # a data problem is the stage's to report, with its fix
            sink.emit("info", None, message=f"no default probes from the first stage's data "
                                            f"({type(exc).__name__}); each stage asks its own")
    return probes


def _prepare_stage_dir(sink: Sink, run_dir: Path, name: str, directory: Path,
                       resume: bool) -> Path | None:
    """A fresh stage directory; on resume, one that keeps its Trainer checkpoints, the newest
    of which (returned) the stage continues from."""
    resume_from = latest_trainer_checkpoint(directory) if resume else None
    if resume:
        _warn_half_written(sink, name, directory, resume_from)
    _fresh_stage_dir(run_dir, directory, keep_trainer=resume_from is not None)
    return resume_from


def _run_one(pf: PipelineFile, ctx: StageContext, directory: Path) -> StageResult:
    """One stage from `stage_started` to its result, retried after a full-disk pause."""
    step, run_dir, resume_from = ctx.step, ctx.run_dir, ctx.resume_from
    emit_record(ctx.sink, step.name, StageStarted(
        kind=step.kind, index=ctx.index, max_steps=_max_steps(step),
        global_step_offset=ctx.global_step_offset, action=step.action,
        reference=step.reference, reference_label=step.reference_label,
        resumed_from=str(resume_from) if resume_from else None,
        **_scale_fields(pf, step.stage, run_dir)))
    # an export is the user's, written outside the run: the user's umask, not the run's 077
    with umask(user_umask()) if step.kind == "export" else contextlib.nullcontext():
        result = _run_stage_scaled(ctx, pf)
        while result.status == "retry":  # a full disk paused it; space is back
            ctx = replace(ctx, resume_from=latest_trainer_checkpoint(directory)
                          if step.kind in ("sft", "dpo", "grpo") else None)
            result = _run_stage_scaled(ctx, pf)
    if step.kind == "export" and (run_dir.stat().st_mode & 0o077) == 0:
        # its record inside a private run stays private (the export itself is elsewhere)
        for child in directory.iterdir() if directory.is_dir() else ():
            make_private(child)
    return result


@dataclass(frozen=True)
class StageResult:
    status: str
    message: str = ""
    steps: int = 0


def _scale_fields(pf: PipelineFile, stage: Any, run_dir: Path) -> ProcessGroupStart:
    """`world_size` (and this host's `processes` and `machine_rank`, which say the console which
    ranks run here) on a distributed stage's `stage_started`; nothing for one process."""
    from graftline.engine.run import distributed

    scale = distributed.scale_for(pf.pipeline, stage, run_dir)
    if not scale.distributed_run:
        return {}
    return {"world_size": scale.world_size, "processes": scale.processes,
            "machine_rank": scale.machine_rank}


def _run_stage_scaled(ctx: StageContext, pf: PipelineFile) -> StageResult:
    """The one dispatch point for scale-out: a stage with processes > 1 runs on a process group
    (run/distributed.py); every other stage runs here, in this process, as always."""
    from graftline.engine.run import distributed

    scale = distributed.scale_for(pf.pipeline, ctx.stage, ctx.run_dir)
    if not scale.distributed_run:
        return run_stage_here(ctx)
    return StageResult(*distributed.run_stage(ctx, scale, pf.text, pf.path))


def _partial_manifest(ctx: StageContext) -> mf.Manifest | None:
    kinds: dict[str, mf.Kind] = {"sft": "adapter", "dpo": "adapter", "grpo": "adapter",
                                 "merge": "merged", "combine": "combined"}
    kind = kinds.get(ctx.kind)
    if kind is None:
        return None
    found = mf.Manifest(kind=kind, name=ctx.name, stage=ctx.name, stage_kind=ctx.kind,
                        run=ctx.run_id)
    mf.write(ctx.stage_dir, found)
    return found


def run_stage_here(ctx: StageContext) -> StageResult:
    """One stage in this process, start to end: partial manifest, the stage, its save and
    checks, metrics.json, the complete manifest and `stage_finished` (a distributed stage's rank
    0 runs its share through here too)."""
    began = time.perf_counter()
    partial = _partial_manifest(ctx)
    outcome: StageOutcome | None = None
    try:
        outcome = runner_for(ctx.kind)(ctx)
    except checks.StageFailed as exc:
        return _failed(ctx, partial, str(exc), exc.fix, began)
    except Exception as exc:  # a library error: report it whole, with where it happened
        if is_disk_full(exc):
            if wait_for_space(ctx.sink, ctx.control, ctx.name, f"stage '{ctx.name}'", 0, exc,
                              ctx.stage_dir):
                return StageResult("retry")  # the stage runs again (from its last checkpoint)
            if ctx.control is not None and not ctx.control.waits_here \
                    and not ctx.control.stop.is_set():
                # rank 0 of a group: its engine waits for space, then launches the group again
                return StageResult("retry", f"disk full: {exc}")
        traceback.print_exc()
        return _failed(ctx, partial, f"stage '{ctx.name}' failed: {type(exc).__name__}: {exc}",
                       "see engine.log for the traceback", began)
    seconds = time.perf_counter() - began
    if outcome.status == "stopped":
        emit_record(ctx.sink, ctx.name, StageFinished(
            kind=ctx.kind, status="stopped", seconds=seconds, metrics=outcome.metrics,
            evaluation={}))
        return StageResult("stopped", steps=outcome.steps)
    _write_outputs(ctx, outcome, partial, seconds)
    emit_record(ctx.sink, ctx.name, StageFinished(
        kind=ctx.kind, status="complete", seconds=seconds, metrics=outcome.metrics,
        evaluation=outcome.evaluation))
    return StageResult("complete", steps=outcome.steps)


def _failed(ctx: StageContext, partial: mf.Manifest | None, message: str, fix: str,
            began: float) -> StageResult:
    ctx.sink.emit("error", ctx.name, message=message, fix=fix)
    if partial is not None and ctx.stage_dir.is_dir():
        mf.write(ctx.stage_dir, partial.model_copy(update={"status": "failed"}))
    emit_record(ctx.sink, ctx.name, StageFinished(
        kind=ctx.kind, status="failed", seconds=time.perf_counter() - began, metrics={},
        evaluation={}))
    return StageResult("failed", message)


def _write_outputs(ctx: StageContext, outcome: StageOutcome, partial: mf.Manifest | None,
                   seconds: float) -> None:
    directory = ctx.stage_dir
    metrics = {**outcome.metrics, "seconds": seconds, "steps": float(outcome.steps)}
    atomic.write_json(directory / mf.METRICS, {"summary": metrics, "history": outcome.history})
    atomic.write_json(directory / mf.EVALUATION, outcome.evaluation)
    results = outcome.checks.results if outcome.checks else []
    if outcome.kind is None or outcome.kind == "export":
        atomic.write_json(directory / DONE, {"stage": ctx.name, "kind": ctx.kind,
                                             "status": "complete", "steps": outcome.steps,
                                             "seconds": seconds, **outcome.extra})
    if outcome.kind is None:
        return
    target = outcome.out_dir or directory
    fields = dict(kind=outcome.kind, name=ctx.name, stage=ctx.name, stage_kind=ctx.kind,
                  run=ctx.run_id, parents=outcome.parents, base=outcome.base, lora=outcome.lora,
                  metrics={k: float(v) for k, v in metrics.items()},
                  evaluation=outcome.evaluation, checks=results, **outcome.extra)
    found = (partial.model_copy(update=fields) if partial is not None and target == directory
             else mf.Manifest(**fields))
    mf.write(target, found)
    if target != directory:
        atomic.write_json(target / mf.METRICS, {"summary": metrics, "history": outcome.history})
        atomic.write_json(target / mf.EVALUATION, outcome.evaluation)
    done = mf.complete(target, found)
    if outcome.kind == "export" and outcome.parents:
        # where it went, for the lineage (the streaming export records its own)
        from graftline.engine.common import export_index

        export_index.record(target, Path(outcome.parents[0].path), done.id)
    emit_record(ctx.sink, ctx.name, CheckpointSaved(
        path=str(target), kind=outcome.kind, id=done.id, bytes=done.bytes))

"""One rank of a distributed stage: `python -m graftline.engine.run.rank_main REQUEST`, started by
torchrun or accelerate launch (run/distributed.py), never by hand.

Every rank rebuilds the same StageContext from the request and runs the same stage code as the
in-process path. Rank 0 runs it through the runner's `run_stage_here` (partial manifest,
checks, save, metrics.json, the complete manifest, `stage_finished`) with its events going to the
group's event file; every other rank trains silently and leaves once training (and an
evaluation, which is a collective) is over, so the save and the checks after it happen once.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import signal
import sys
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn

from graftline.engine.common import atomic
from graftline.engine.common.checkpoint_files import checkpoint_name, checkpoint_step
from graftline.engine.common.heap import collect_less_often
from graftline.engine.common.quick_exit import exit_now
from graftline.engine.run import group_io

PR_SET_PDEATHSIG = 1


class _RankDone(BaseException):
    """Raised out of `trainer.train` on ranks > 0 once their share of the stage is over."""


def die_with_parent(sig: int = signal.SIGKILL) -> None:
    """A rank whose launcher was killed -9 must not train on alone (Linux; elsewhere a no-op)."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, int(sig))


def accept_indexed_cpu_locations() -> None:
    """Resuming DDP on CPU: transformers 5 loads the optimizer state with `map_location =
    args.device`, which is `cpu:0` in a multi-process CPU run, and torch cannot restore a storage
    tagged `cpu:0` ("don't know how to restore data location"). Teach torch that `cpu:N` is the
    CPU, in the rank processes only."""
    from torch.serialization import register_package

    def tag(_obj: Any) -> None:
        return None

    def restore(obj: Any, location: str) -> Any:
        return obj.cpu() if location.startswith("cpu:") else None

    register_package(11, tag, restore)  # after torch's own cpu/cuda/… handlers


def share_precomputed_reference(work: Path) -> None:
    """DPO with `precompute_ref`: TRL computes the reference log-probs on every rank, rank 0
    alone writes them to `dataset._get_cache_file_path(fingerprint)`, and every rank then reads
    that file. For an in-memory dataset (ours) datasets names that file with a fresh random
    fingerprint in a per-process temporary directory, so rank 1 looks for a file that does not
    exist (measured: FileNotFoundError in rank 1, TRL 1.x). While the reference is precomputed,
    such a dataset's cache file is named by the (broadcast) fingerprint inside the group's work
    directory, which every rank on this machine shares."""
    from datasets import Dataset
    from trl import DPOTrainer

    shared = work / "datasets"
    original_path = Dataset._get_cache_file_path
    original_precompute = DPOTrainer._precompute_ref_logps
    active = [False]

    def cache_file_path(self: Any, fingerprint: str) -> str:
        if active[0] and not self.cache_files:
            shared.mkdir(parents=True, exist_ok=True)
            return str(shared / f"cache-{fingerprint}.arrow")
        return original_path(self, fingerprint)

    def precompute(self: Any, *args: Any, **kwargs: Any) -> Any:
        active[0] = True
        try:
            return original_precompute(self, *args, **kwargs)
        finally:
            active[0] = False

    Dataset._get_cache_file_path = cache_file_path
    DPOTrainer._precompute_ref_logps = precompute  # type: ignore[method-assign]


def _leave_after_training(control: group_io.GroupControl) -> Callable[[Any], None]:
    def before_train(trainer: Any) -> None:
        train = trainer.train

        def train_then_leave(*args: Any, **kwargs: Any) -> Any:
            train(*args, **kwargs)
            # rank 0 evaluates after its save; an evaluation gathers from every rank
            if trainer.eval_dataset is not None and not control.stop.is_set():
                trainer.evaluate()
            raise _RankDone

        trainer.train = train_then_leave
    return before_train


def multi_node() -> bool:
    """Ranks on more than one machine: the launcher's WORLD_SIZE exceeds this host's share."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    return world > int(os.environ.get("LOCAL_WORLD_SIZE", str(world)))


def _each_machine_saves(trainer: Any) -> None:
    """Multi-node: every machine's local rank 0 writes the Trainer checkpoints (weights,
    optimizer, scheduler; each rank writes its own RNG state anyway) into its own run, so
    `graftline resume` on any host finds the step to resume from without a shared volume. The
    adapter, manifest and events stay machine 0's (its rank 0 alone runs the stage's save)."""
    trainer.args.save_on_each_node = True


def agree_on_resume(resume_from: Path | None, sink: Any, stage: str) -> Path | None:
    """Multi-node resume: each host's engine picked its own newest Trainer checkpoint, and a kill
    during a save can leave the hosts one checkpoint apart; ranks resumed at different steps
    would fall out of step. The group resumes from the newest step every host holds (a MIN
    all-reduce; the process group is started here, and the Trainer then uses it), or from the
    start when one host holds none."""
    import torch
    import torch.distributed as dist

    from graftline.engine.run.runner import checkpoint_problem, trainer_checkpoints

    if not dist.is_initialized():
        dist.init_process_group()  # gloo on CPU, nccl beside it on CUDA: what accelerate starts
    stage_dir = resume_from.parent.parent if resume_from is not None else None
    held = {step: p for p in (trainer_checkpoints(stage_dir) if stage_dir is not None else [])
            if (step := checkpoint_step(p.name)) is not None and checkpoint_problem(p) is None}
    newest = torch.tensor([max(held, default=-1)], dtype=torch.int64)
    dist.all_reduce(newest, op=dist.ReduceOp.MIN)
    agreed = int(newest.item())
    chosen = held.get(agreed)
    if agreed >= 0 and chosen is None:
        raise RuntimeError(f"no {checkpoint_name(agreed)} on this host (it holds "
                           f"{sorted(held) or 'none'}); every machine needs the same step")
    if chosen != resume_from:
        sink.emit("warning", stage, message=(
            f"resuming from {chosen.name if chosen else 'the start'}: the newest Trainer "
            f"checkpoint every machine holds (this host's newest: "
            f"{resume_from.name if resume_from else 'none'})"),
            resumed_from=str(chosen) if chosen else None)
    return chosen


def _hooks(rank: int, control: group_io.GroupControl) -> Any:
    from graftline.engine.stages import StageHooks

    steps: list[Callable[[Any], None]] = []
    if multi_node():
        steps.append(_each_machine_saves)
    if rank != 0:
        steps.append(_leave_after_training(control))
    if not steps:
        return StageHooks()

    def before_train(trainer: Any) -> None:
        for step in steps:
            step(trainer)
    return StageHooks(before_train=before_train)


def run(request_path: Path) -> int:
    die_with_parent()
    request = json.loads(Path(request_path).read_text())
    rank = int(os.environ.get("RANK", "0"))
    world = int(os.environ.get("WORLD_SIZE", "1"))

    from graftline.engine.pipeline import file as pipeline_file
    from graftline.engine.pipeline.plan import resolve
    from graftline.engine.run.stack_imports import KEPT_OUT, keep_out_what_the_run_does_not_load

    pf = pipeline_file.parse(request["pipeline_text"], request["pipeline_path"])
    header = pf.pipeline.pipeline
    step = next(s for s in resolve(pf.pipeline, pf.directory) if s.name == request["stage"])
    if keep_out_what_the_run_does_not_load(pf, [step], [request["base_path"]]) and rank == 0:
        print(f"graftline: rank 0: {KEPT_OUT}", file=sys.stderr, flush=True)

    from transformers import set_seed

    from graftline.engine.backends.base import select_backend
    from graftline.engine.run import runner
    from graftline.engine.stages import StageContext, runner_for, trl_compat

    trl_compat.install()  # the Triton log-prob stand-in, in every rank (FINDINGS.md)
    accept_indexed_cpu_locations()
    share_precomputed_reference(Path(request["work_dir"]))
    work = Path(request["work_dir"])
    control = group_io.GroupControl(work / group_io.CONTROL, rank)
    runner.one_thread_for_tiny_models(request["base_path"])
    set_seed(header.seed + int(request["index"]))
    sink = (group_io.FileSink(work / group_io.EVENTS, world) if rank == 0
            else group_io.SilentSink())
    hooks = _hooks(rank, control)
    resume_from = Path(request["resume_from"]) if request.get("resume_from") else None
    if multi_node():
        resume_from = agree_on_resume(resume_from, sink, step.name)
    probes = tuple(header.probes)
    if not probes:  # the same default as the runner's: the first stage's first prompts
        from graftline.engine.pipeline.probes import default_probes

        with contextlib.suppress(Exception):
            probes = tuple(default_probes(pf.pipeline, pf.directory))
    ctx = StageContext(
        stage=step.stage, step=step, index=int(request["index"]),
        run_dir=Path(request["run_dir"]), run_id=Path(request["run_dir"]).name,
        base_path=request["base_path"], backend=select_backend(header.backend), sink=sink,
        control=control,  # type: ignore[arg-type]
        quantization=header.quantization, seed=header.seed, probes=probes,
        global_step_offset=int(request["global_step_offset"]),
        resume_from=resume_from, search_dir=pf.directory,
        hooks=hooks,
        report_to=tuple(header.report_to),
        pipeline_name=header.name,
    )
    if rank != 0:
        with contextlib.suppress(_RankDone):
            runner_for(ctx.kind)(ctx)
        return 0
    result = runner.run_stage_here(ctx)
    atomic.write_json(work / group_io.RESULT, {"status": result.status,
                                              "message": result.message,
                                              "steps": result.steps})
    return 0


def leave(code: int) -> NoReturn:
    """End this rank without C++ static destructors. A rank whose process group is still alive
    when the interpreter tears down (rank 1 leaves while rank 0 saves and checks; torch 2.13,
    gloo) sometimes dies in a destructor with "terminate called without an active exception",
    SIGABRT: measured about one exit in six, with or without `destroy_process_group()`. The
    launcher then ends rank 0 in the middle of its save and a finished stage is reported failed.
    Python's own exit work (atexit: trackers finishing their runs, logging) still runs."""
    exit_now(code, join_threads=False)


def main(argv: list[str] | None = None) -> int:
    collect_less_often()
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m graftline.engine.run.rank_main REQUEST_JSON", file=sys.stderr)
        return 2
    return run(Path(args[0]))


if __name__ == "__main__":
    try:
        code = main()
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    except BaseException:
        traceback.print_exc()  # the launcher's log keeps the rank's error, as before
        code = 1
    leave(code)

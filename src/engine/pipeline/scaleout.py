"""Scale-out: which launcher runs a stage on several processes, its exact command line, and what
`validate` refuses. Pure except `detect_env`, which looks at the machine (docs/distributed.md).

A stage with `processes > 1` is handed to an existing launcher, never a home-made one:

- CPU (gloo), and the Unsloth backend: `torchrun` (`python -m torch.distributed.run`). On CPU
  `accelerate launch --cpu --num_processes 2` started one process in our try (FINDINGS.md);
  torchrun's DDP over gloo works. Unsloth trains multi-GPU as DDP only, which torchrun gives
  without an accelerate config.
- transformers + peft + trl on CUDA: `accelerate launch` with TRL's own presets
  (`trl/accelerate_configs/`: ddp → multi_gpu.yaml, fsdp2, zero2, zero3) or the user's config.
"""

from __future__ import annotations

import importlib.util
import os
import shlex
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from graftline.engine.pipeline import spec
from graftline.engine.pipeline.problems import Problem

RANK_MODULE = "graftline.engine.run.rank_main"
PRESET_FILES = {"ddp": "multi_gpu.yaml", "fsdp2": "fsdp2.yaml", "zero2": "zero2.yaml",
                "zero3": "zero3.yaml"}
# Sharding the base's weights: a bitsandbytes 4-bit base cannot be sharded this way.
SHARDED = frozenset({"fsdp2", "zero3"})
DEEPSPEED = frozenset({"zero2", "zero3"})
UNSLOTH_SUPPORTS = ("ddp",)
DEFAULT_PORT = 29500
REQUEST_PLACEHOLDER = "<run>/dist/<stage>/request.json"


@dataclass(frozen=True)
class Scale:
    """A stage's scale-out settings after `[defaults]` are applied."""

    processes: int = 1  # per machine
    distributed: str = "ddp"
    num_machines: int = 1
    machine_rank: int = 0
    main_process_ip: str = "127.0.0.1"
    main_process_port: int | None = None

    @property
    def world_size(self) -> int:
        return self.processes * self.num_machines

    @property
    def distributed_run(self) -> bool:
        return self.world_size > 1


@dataclass(frozen=True)
class Env:
    """What the machine offers a distributed stage."""

    cuda: bool = False
    gpus: int = 0
    unsloth: bool = False
    deepspeed: bool = False
    cpus: int = 1


def scale_of(pipeline: spec.Pipeline, stage: spec.StageBase,
             machine_rank: int | None = None) -> Scale:
    """The stage's own value, else `[defaults]`, else one process. `machine_rank` overrides the
    file (the per-host `graftline run FILE --machine-rank K`)."""
    if not isinstance(stage, spec.TrainingStage):
        return Scale()
    defaults = pipeline.defaults

    def pick(name: str, fallback: Any) -> Any:  # the spec's field types, checked by pydantic
        value = getattr(stage, name)
        if value is None:
            value = getattr(defaults, name)
        return fallback if value is None else value

    rank = machine_rank if machine_rank is not None else pick("machine_rank", 0)
    port = pick("main_process_port", None)
    return Scale(processes=int(pick("processes", 1)),
                 distributed=str(pick("distributed", "ddp")),
                 num_machines=int(pick("num_machines", 1)),
                 machine_rank=int(rank),
                 main_process_ip=str(pick("main_process_ip", "127.0.0.1")),
                 main_process_port=None if port is None else int(port))


def backend_for(requested: str, env: Env) -> str:
    """Which backend the engine will pick (backends.base.choose_backend, without importing it)."""
    if requested == "auto":
        return "unsloth" if env.cuda and env.unsloth else "hf"
    return requested


def launcher(scale: Scale, backend: str, env: Env) -> str:
    """`torchrun` or `accelerate`: see the module docstring for why."""
    if not env.cuda or backend == "unsloth":
        return "torchrun"
    return "accelerate"


def accelerate_config(choice: str, search_dir: Path | None = None) -> Path:
    """TRL's preset for a named choice, else the user's config path (relative to the file)."""
    if choice in PRESET_FILES:
        found = importlib.util.find_spec("trl")
        roots = list(found.submodule_search_locations or []) if found else []
        root = Path(roots[0]) if roots else Path("trl")
        return root / "accelerate_configs" / PRESET_FILES[choice]
    path = Path(choice).expanduser()
    if not path.is_absolute() and search_dir is not None:
        path = (search_dir / path).resolve()
    return path


def command(scale: Scale, backend: str, env: Env, request: str, *,
            search_dir: Path | None = None, python: str | None = None) -> list[str]:
    """The exact argv that starts this machine's ranks of a stage."""
    python = python or sys.executable
    port = scale.main_process_port
    if launcher(scale, backend, env) == "torchrun":
        argv = [python, "-m", "torch.distributed.run", "--nproc_per_node", str(scale.processes),
                "--nnodes", str(scale.num_machines), "--node_rank", str(scale.machine_rank)]
        if scale.num_machines == 1 and port is None:
            argv.append("--standalone")  # a free port of its own: two runs never collide
        else:
            argv += ["--master_addr", scale.main_process_ip,
                     "--master_port", str(port or DEFAULT_PORT)]
        return [*argv, "-m", RANK_MODULE, request]
    argv = [python, "-m", "accelerate.commands.launch",
            "--config_file", str(accelerate_config(scale.distributed, search_dir)),
            "--num_processes", str(scale.world_size),
            "--num_machines", str(scale.num_machines),
            "--machine_rank", str(scale.machine_rank)]
    if scale.num_machines > 1 or port is not None:
        argv += ["--main_process_ip", scale.main_process_ip,
                 "--main_process_port", str(port or DEFAULT_PORT)]
    return [*argv, "-m", RANK_MODULE, request]


def shell_line(argv: list[str]) -> str:
    return shlex.join(argv)


def visible_gpus() -> int:
    """CUDA GPUs this process may use, through NVML (no torch import: `plan` and `validate` run
    in the console), narrowed by CUDA_VISIBLE_DEVICES."""
    try:
        import pynvml

        pynvml.nvmlInit()
        try:
            count = int(pynvml.nvmlDeviceGetCount())
        finally:
            pynvml.nvmlShutdown()
    except Exception:  # no driver, no library: no GPU
        return 0
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is None:
        return count
    entries = [e.strip() for e in visible.split(",") if e.strip()]
    if entries and entries[0].startswith("-"):
        return 0
    return min(count, len(entries))


def detect_env() -> Env:
    """The machine as a distributed stage sees it."""
    gpus = visible_gpus()
    return Env(cuda=gpus > 0, gpus=gpus,
               unsloth=importlib.util.find_spec("unsloth") is not None,
               deepspeed=importlib.util.find_spec("deepspeed") is not None,
               cpus=os.cpu_count() or 1)


def problems(pipeline: spec.Pipeline, env: Env, *, file: str,
             line_of: object = None, search_dir: Path | None = None) -> list[Problem]:
    """What cannot run as asked, each with a fix. Nothing for a pipeline of one-process stages."""
    found: list[Problem] = []
    header = pipeline.pipeline
    backend = backend_for(header.backend, env)

    def add(stage: spec.StageBase, field: str, message: str, fix: str,
            severity: Literal["error", "warning"] = "error") -> None:
        line = line_of(stage.name, field) if callable(line_of) else None
        found.append(Problem(message, file, line, stage.name, field, fix, severity=severity))

    for stage in pipeline.stage:
        scale = scale_of(pipeline, stage)
        if not isinstance(stage, spec.TrainingStage) or not scale.distributed_run:
            continue
        choice = scale.distributed
        if env.cuda and scale.processes > env.gpus:
            add(stage, "processes", f"processes = {scale.processes} but this machine has "
                f"{env.gpus} visible GPU(s)",
                f"set processes to at most {env.gpus} (one process per GPU), or make more GPUs "
                "visible (CUDA_VISIBLE_DEVICES)")
        if not env.cuda and scale.processes > env.cpus:
            add(stage, "processes", f"processes = {scale.processes} on a CPU-only machine with "
                f"{env.cpus} core(s): the ranks would compete for cores",
                f"use at most {env.cpus} processes", severity="warning")
        preset = choice in spec.DISTRIBUTED_PRESETS
        if not preset:
            path = accelerate_config(choice, search_dir)
            if not path.is_file():
                add(stage, "distributed", f"distributed = '{choice}' is neither a preset "
                    f"({', '.join(spec.DISTRIBUTED_PRESETS)}) nor an existing accelerate config "
                    f"file ({path})", "use ddp, fsdp2, zero2 or zero3, or the path of a file "
                    "written by `accelerate config`")
                continue
        if not env.cuda and choice != "ddp":
            add(stage, "distributed", f"distributed = '{choice}' needs CUDA GPUs; this machine "
                "has none (CPU stages run as DDP over gloo through torchrun)",
                'use distributed = "ddp" on CPU')
        if backend == "unsloth" and choice not in UNSLOTH_SUPPORTS:
            add(stage, "distributed", f"the Unsloth backend cannot run distributed = '{choice}': "
                "Unsloth supports multi-GPU training as DDP only (no FSDP, no DeepSpeed ZeRO)",
                'use distributed = "ddp", or backend = "hf" for FSDP2/ZeRO')
        if header.quantization == "4bit" and choice in SHARDED:
            add(stage, "distributed", f"distributed = '{choice}' shards the base's weights, "
                "which a bitsandbytes 4-bit base cannot be",
                'use distributed = "ddp" or "zero2" with a 4-bit base, or quantization = "none"')
        if env.cuda and choice in DEEPSPEED and not env.deepspeed:
            add(stage, "distributed", f"distributed = '{choice}' needs DeepSpeed, which is not "
                "installed", "pip install deepspeed, or use ddp / fsdp2")
        if scale.num_machines > 1:
            if scale.machine_rank >= scale.num_machines:
                add(stage, "machine_rank", f"machine_rank = {scale.machine_rank} but "
                    f"num_machines = {scale.num_machines}",
                    f"machine ranks run from 0 to {scale.num_machines - 1}")
            if stage.main_process_ip is None and pipeline.defaults.main_process_ip is None:
                add(stage, "main_process_ip", "num_machines > 1 without main_process_ip: the "
                    "other machines cannot find machine 0",
                    "set main_process_ip to machine 0's address (and main_process_port)")
    return found


def launch_lines(pipeline: spec.Pipeline, env: Env, *, search_dir: Path | None = None,
                 machine_rank: int | None = None) -> dict[str, str]:
    """stage name → the command line `plan` shows, for every stage that runs distributed."""
    backend = backend_for(pipeline.pipeline.backend, env)
    lines: dict[str, str] = {}
    for stage in pipeline.stage:
        scale = scale_of(pipeline, stage, machine_rank)
        if scale.distributed_run:
            argv = command(scale, backend, env, REQUEST_PLACEHOLDER.replace(
                "<stage>", stage.name), search_dir=search_dir, python="python")
            lines[stage.name] = shell_line(argv)
    return lines


def any_distributed(pipeline: spec.Pipeline) -> bool:
    return any(scale_of(pipeline, s).distributed_run for s in pipeline.stage)

"""Scale-out fields, `validate`'s refusals and the launch command `plan` shows (pure, no launch)."""

from __future__ import annotations

from pathlib import Path

from graftline.engine.pipeline import file as pipeline_file
from graftline.engine.pipeline import scaleout
from graftline.engine.pipeline.scaleout import Env

GPU4 = Env(cuda=True, gpus=4, deepspeed=True, cpus=32)
CPU2 = Env(cpus=2)


def _pipeline(tmp_path: Path, stage_extra: str = "", header_extra: str = "",
              defaults: str = "") -> pipeline_file.PipelineFile:
    text = f"""
[pipeline]
name = "d"
base = "toy:addition"
{header_extra}

[defaults]
{defaults}

[[stage]]
name = "sft"
kind = "sft"
data = "data.jsonl"
{stage_extra}
[stage.train]
max_steps = 3
"""
    path = tmp_path / "p.toml"
    path.write_text(text)
    return pipeline_file.parse(text, path)


def _problems(pf: pipeline_file.PipelineFile, env: Env) -> list[scaleout.Problem]:
    return scaleout.problems(pf.pipeline, env, file=str(pf.path), line_of=pf.line,
                             search_dir=pf.directory)


def test_one_process_is_the_default_and_has_no_launch(tmp_path: Path) -> None:
    pf = _pipeline(tmp_path)
    scale = scaleout.scale_of(pf.pipeline, pf.pipeline.stage[0])
    assert scale.world_size == 1 and not scale.distributed_run
    assert scaleout.launch_lines(pf.pipeline, GPU4) == {}
    assert _problems(pf, GPU4) == []


def test_defaults_apply_and_the_stage_wins(tmp_path: Path) -> None:
    pf = _pipeline(tmp_path, stage_extra='distributed = "fsdp2"', defaults="processes = 2")
    scale = scaleout.scale_of(pf.pipeline, pf.pipeline.stage[0])
    assert (scale.processes, scale.distributed) == (2, "fsdp2")
    assert scaleout.scale_of(pf.pipeline, pf.pipeline.stage[0], machine_rank=1).machine_rank == 1


def test_cpu_launch_is_torchrun_over_gloo(tmp_path: Path) -> None:
    pf = _pipeline(tmp_path, stage_extra="processes = 2")
    line = scaleout.launch_lines(pf.pipeline, CPU2)["sft"]
    assert line.startswith("python -m torch.distributed.run --nproc_per_node 2 --nnodes 1")
    assert "--standalone" in line and "-m graftline.engine.run.rank_main" in line
    assert _problems(pf, CPU2) == []


def test_gpu_launch_uses_trl_presets_through_accelerate(tmp_path: Path) -> None:
    pf = _pipeline(tmp_path, stage_extra='processes = 4\ndistributed = "zero3"')
    line = scaleout.launch_lines(pf.pipeline, GPU4)["sft"]
    assert line.startswith("python -m accelerate.commands.launch --config_file ")
    assert "accelerate_configs/zero3.yaml --num_processes 4" in line
    assert (Path(line.split("--config_file ")[1].split()[0])).is_file()  # TRL's own preset
    assert _problems(pf, GPU4) == []


def test_multi_node_command_names_the_machine(tmp_path: Path) -> None:
    pf = _pipeline(tmp_path, stage_extra='processes = 2\nnum_machines = 2\n'
                   'main_process_ip = "10.0.0.1"\nmain_process_port = 29511')
    argv = scaleout.command(scaleout.scale_of(pf.pipeline, pf.pipeline.stage[0], 1), "hf",
                            GPU4, "req.json")
    line = " ".join(argv)
    assert "--num_processes 4 --num_machines 2 --machine_rank 1" in line
    assert "--main_process_ip 10.0.0.1 --main_process_port 29511" in line
    cpu = " ".join(scaleout.command(scaleout.scale_of(pf.pipeline, pf.pipeline.stage[0], 1),
                                    "hf", CPU2, "req.json"))
    assert "--nnodes 2 --node_rank 1 --master_addr 10.0.0.1 --master_port 29511" in cpu


def _errors(pf: pipeline_file.PipelineFile, env: Env) -> dict[str, scaleout.Problem]:
    return {p.field: p for p in _problems(pf, env) if p.severity == "error"}  # type: ignore


def test_more_processes_than_gpus_is_an_error_with_a_fix(tmp_path: Path) -> None:
    pf = _pipeline(tmp_path, stage_extra="processes = 8")
    problem = _errors(pf, GPU4)["processes"]
    assert "4 visible GPU" in problem.message and "at most 4" in (problem.fix or "")
    lines = pf.text.splitlines()
    assert lines[problem.line - 1] == "processes = 8"  # points at the field's own line


def test_sharding_a_4bit_base_is_refused(tmp_path: Path) -> None:
    for choice in ("fsdp2", "zero3"):
        pf = _pipeline(tmp_path, stage_extra=f'processes = 2\ndistributed = "{choice}"',
                       header_extra='quantization = "4bit"')
        assert "4-bit" in _errors(pf, GPU4)["distributed"].message
    pf = _pipeline(tmp_path, stage_extra='processes = 2\ndistributed = "zero2"',
                   header_extra='quantization = "4bit"')
    assert _errors(pf, GPU4) == {}


def test_unsloth_runs_ddp_only(tmp_path: Path) -> None:
    pf = _pipeline(tmp_path, stage_extra='processes = 2\ndistributed = "fsdp2"',
                   header_extra='backend = "unsloth"')
    problem = _errors(pf, GPU4)["distributed"]
    assert "DDP only" in problem.message and "backend" in (problem.fix or "")
    ok = _pipeline(tmp_path, stage_extra="processes = 2", header_extra='backend = "unsloth"')
    assert _errors(ok, GPU4) == {}
    assert scaleout.launch_lines(ok.pipeline, GPU4)["sft"].startswith(
        "python -m torch.distributed.run")


def test_gpu_only_choices_on_cpu_and_unknown_configs(tmp_path: Path) -> None:
    pf = _pipeline(tmp_path, stage_extra='processes = 2\ndistributed = "fsdp2"')
    assert "needs CUDA" in _errors(pf, CPU2)["distributed"].message
    pf = _pipeline(tmp_path, stage_extra='processes = 2\ndistributed = "my.yaml"')
    assert "accelerate config" in _errors(pf, GPU4)["distributed"].message
    (tmp_path / "my.yaml").write_text("distributed_type: MULTI_GPU\n")
    assert _errors(pf, GPU4) == {}
    assert str(tmp_path / "my.yaml") in scaleout.launch_lines(pf.pipeline, GPU4,
                                                               search_dir=tmp_path)["sft"]


def test_multi_node_needs_the_main_address(tmp_path: Path) -> None:
    pf = _pipeline(tmp_path, stage_extra="processes = 1\nnum_machines = 2\nmachine_rank = 2")
    errors = _errors(pf, CPU2)
    assert set(errors) == {"machine_rank", "main_process_ip"}


def test_rehearsal_runs_distributed_stages_in_one_process(tmp_path: Path) -> None:
    from graftline.engine.rehearse.rehearsal import derive

    pf = _pipeline(tmp_path, defaults="processes = 2")
    derived = derive(pf, base="toy:addition", scratch=tmp_path / "scratch")
    stage = derived.pipeline.stage[0]
    assert not scaleout.scale_of(derived.pipeline, stage).distributed_run
    assert any("rehearsed in one process" in note for note in derived.notes)


LAUNCH_PROBE = """
import sys
from pathlib import Path
from graftline.engine.common.sink import ListSink
from graftline.engine.pipeline import file as pipeline_file
from graftline.engine.run import distributed, runner

def launch(ctx, scale, text, path):  # the group's launch, where the engine's own work ends
    heavy = ("transformers", "peft", "trl", "datasets", "bitsandbytes")
    print(scale.world_size, " ".join(m for m in heavy if m in sys.modules) or "-")
    return "failed", "not launched here", 0

distributed.run_stage = launch
runner.run_pipeline(pipeline_file.load(Path(sys.argv[1])), Path(sys.argv[2]), ListSink())
"""


def test_an_engine_that_only_launches_groups_imports_no_trainer_stack(
        tmp_path: Path, toy_base: Path) -> None:
    """The engine of a process-group stage hands the training to its ranks, each of which loads
    the stack itself: it reaches the launch without transformers, PEFT or TRL (~4 s of CPU, and
    the group's start, sooner)."""
    import subprocess
    import sys

    pf = _pipeline(tmp_path, header_extra='probes = ["12+34"]', defaults="processes = 2")
    (tmp_path / "data.jsonl").write_text('{"prompt": "1+1=", "completion": "2"}\n')
    out = subprocess.run([sys.executable, "-c", LAUNCH_PROBE, str(pf.path), str(tmp_path / "run")],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    world, heavy = out.stdout.split()
    assert world == "2"
    assert heavy == "-", f"the engine imported {heavy} before launching its group"

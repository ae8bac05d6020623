"""A 2-process SFT stage run by graftline's engine vs a bare `torchrun` TRL script, same config.

Both run as DDP over gloo on the CPU (torchrun, 2 processes, one thread each): the same tiny
model, data, steps, per-device batch, LoRA and learning rate. Runs the two back to back in each
of ROUNDS rounds, the order alternating, so machine load hits both alike, and prints the training
steps/s of each (from rank 0's `train_runtime`, which excludes start-up and model loading on both
sides) and the median of the per-round ratios (target >= 0.95): on a shared machine a round's two
runs see the same neighbours, successive rounds do not. graftline's side goes through the whole
engine: `launch.start_run`, the launcher, rank 0's events relayed, control broadcast each step,
checks and the save.

    .venv/bin/python benchmarks/distributed.py [--steps 150] [--rounds 5] [--batch 8]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")

BARE_SCRIPT = '''
import json, os, sys
from datasets import Dataset
from peft import LoraConfig
from transformers import AutoModelForCausalLM, AutoTokenizer
from trl import SFTConfig, SFTTrainer
from graftline.engine.stages import trl_compat

trl_compat.install()  # TRL on a torch build without Triton cannot train otherwise
base, data, out, steps, batch = sys.argv[1:6]
model = AutoModelForCausalLM.from_pretrained(base)
tokenizer = AutoTokenizer.from_pretrained(base)
rows = Dataset.from_list([json.loads(x) for x in open(data).read().splitlines()])
config = SFTConfig(output_dir=out, max_steps=int(steps), per_device_train_batch_size=int(batch),
                   learning_rate=3e-3, logging_steps=1, logging_first_step=True, report_to=[],
                   use_cpu=True, bf16=False, gradient_checkpointing=False, save_strategy="no",
                   disable_tqdm=True, seed=0, max_length=32, packing=False)
trainer = SFTTrainer(model=model, args=config, train_dataset=rows, processing_class=tokenizer,
                     peft_config=LoraConfig(r=8, lora_alpha=16, target_modules="all-linear",
                                            task_type="CAUSAL_LM"))
result = trainer.train()
if int(os.environ.get("RANK", "0")) == 0:
    trainer.save_model(out)
    with open(os.path.join(out, "rate.json"), "w") as f:
        json.dump({"steps_per_s": int(steps) / result.metrics["train_runtime"]}, f)
'''


ENDED = ("finished", "failed", "stopped")


def write_data(directory: Path, rows: int) -> Path:
    from graftline.engine.toy import tasks

    path = directory / "sft.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in tasks.sft_rows(rows, 1)))
    return path


def bare_torchrun(base: Path, data: Path, out: Path, steps: int, batch: int) -> float:
    out.mkdir(parents=True)
    script = out.parent / "bare_sft.py"
    script.write_text(BARE_SCRIPT)
    subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                    "--nproc_per_node", "2", str(script), str(base), str(data), str(out),
                    str(steps), str(batch)], check=True, stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL)
    return float(json.loads((out / "rate.json").read_text())["steps_per_s"])


def graftline_stage(root: Path, data: Path, name: str, steps: int, batch: int) -> float:
    from graftline.engine.run import launch
    from graftline.engine.run import state as runstate

    path = root / f"{name}.toml"
    path.write_text(f"""
[pipeline]
name = "{name}"
base = "toy:addition"
runs_dir = "runs"
probes = ["12+34", "50+27"]

[[stage]]
name = "sft"
kind = "sft"
data = "{data}"
lora = {{ r = 8 }}
processes = 2
[stage.train]
max_steps = {steps}
batch_size = {batch}
lr = 3e-3
max_length = 32
scheduler = "linear"
""")
    run_dir = launch.start_run(path)
    # wait on state.json, a few hundred bytes: re-reading the growing event log every poll
    # cost this side CPU the bare script's ranks never lose (two ranks already fill 2 cores)
    while (found := runstate.read(run_dir)) is None or found.status not in ENDED:
        time.sleep(1.0)
    if found.status != "finished":
        raise SystemExit(f"graftline run {run_dir} {found.status}; see its engine.log")
    summary = json.loads((run_dir / "stages" / "sft" / "metrics.json").read_text())["summary"]
    return steps / float(summary["train_runtime"])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--batch", type=int, default=8, help="per process")
    args = parser.parse_args()

    from graftline.engine.toy.model import build_base

    base = build_base()
    bare, ours = [], []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        data = write_data(root, 2000)
        for round_ in range(args.rounds):
            began = time.perf_counter()
            order = ("bare", "ours") if round_ % 2 == 0 else ("ours", "bare")
            for which in order:
                if which == "bare":
                    bare.append(bare_torchrun(base, data, root / f"bare{round_}" / "out",
                                              args.steps, args.batch))
                else:
                    ours.append(graftline_stage(root, data, f"r{round_}", args.steps,
                                                args.batch))
            print(f"round {round_ + 1}: bare torchrun TRL {bare[-1]:.2f} steps/s, graftline "
                  f"{ours[-1]:.2f} steps/s, ratio {ours[-1] / bare[-1]:.3f} "
                  f"({time.perf_counter() - began:.0f} s)", flush=True)
    b, o = statistics.median(bare), statistics.median(ours)
    ratios = sorted(x / y for x, y in zip(ours, bare, strict=True))
    print(f"\n2 processes (torchrun, gloo), steps={args.steps} batch={args.batch}/process "
          f"rounds={args.rounds} (medians)")
    print(f"bare torchrun TRL SFTTrainer   {b:.3f} steps/s")
    print(f"graftline 2-process SFT stage  {o:.3f} steps/s")
    print(f"per-round ratios               {', '.join(f'{r:.3f}' for r in ratios)}")
    print(f"ratio graftline/bare           {statistics.median(ratios):.3f}   (median of the "
          "rounds; target >= 0.95)")


if __name__ == "__main__":
    main()

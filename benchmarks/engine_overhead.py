"""graftline's SFT stage vs a bare TRL SFTTrainer script: same tiny model, data, steps, args.

Alternates the two in one process (ROUNDS times each) so machine load hits both alike, and
prints the training steps/s of each (from the trainers' own train_runtime), their ratio
(target ≥ 0.98) and the health checks' share of the graftline stage's wall time (target ≤ 5%).

    .venv/bin/python benchmarks/engine_overhead.py [--steps 60] [--rounds 3]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import torch

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def write_data(directory: Path, rows: int) -> Path:
    from graftline.engine.toy import tasks

    path = directory / "sft.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in tasks.sft_rows(rows, 1)))
    return path


def bare_trl(base: Path, data: Path, out: Path, steps: int, batch: int) -> float:
    """What a user would write by hand with TRL. Returns train steps/s."""
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    from graftline.engine.stages import trl_compat

    trl_compat.install()  # TRL 1.15 on a torch build without Triton cannot train otherwise
    model = AutoModelForCausalLM.from_pretrained(str(base))
    tokenizer = AutoTokenizer.from_pretrained(str(base))
    rows = Dataset.from_list([json.loads(x) for x in data.read_text().splitlines()])
    config = SFTConfig(output_dir=str(out), max_steps=steps, per_device_train_batch_size=batch,
                       learning_rate=3e-3, lr_scheduler_type="cosine", logging_steps=1,
                       report_to=[], use_cpu=True, bf16=False, gradient_checkpointing=False,
                       save_strategy="no", disable_tqdm=True, seed=0, max_length=512)
    trainer = SFTTrainer(model=model, args=config, train_dataset=rows, processing_class=tokenizer,
                         peft_config=LoraConfig(r=8, lora_alpha=16, target_modules="all-linear",
                                                task_type="CAUSAL_LM"))
    result = trainer.train()
    return steps / result.metrics["train_runtime"]


def graftline_stage(data: Path, run_dir: Path, steps: int,
                    batch: int) -> tuple[float, float, float]:
    """(train steps/s, checks seconds, stage seconds) of one graftline SFT stage."""
    from graftline.engine.common.sink import ListSink
    from graftline.engine.pipeline.file import parse
    from graftline.engine.run.runner import run_pipeline

    text = f"""
[pipeline]
name = "bench"
base = "toy:addition"
probes = ["12+34", "50+27", "33+48", "71+19"]

[[stage]]
name = "sft"
kind = "sft"
data = "{data}"
lora = {{ r = 8 }}
train = {{ max_steps = {steps}, batch_size = {batch}, lr = 3e-3, logging_steps = 1 }}
"""
    pf = parse(text, run_dir.parent / "bench.toml")
    sink = ListSink()
    result = run_pipeline(pf, run_dir, sink)
    assert result.status == "finished", result.message
    summary = sink.of_type("stage_finished")[-1]
    metrics = summary["metrics"]
    return (steps / metrics["train_runtime"], metrics["checks_seconds"], summary["seconds"])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--batch", type=int, default=16)
    # one thread: the tiny model gains nothing from two, and a shared box makes two spin
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    from transformers.utils import logging as hf_logging

    from graftline.engine.toy.model import build_base

    hf_logging.set_verbosity_error()
    base = build_base()
    bare, ours, shares = [], [], []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        data = write_data(root, 2000)
        for round_ in range(args.rounds):
            began = time.perf_counter()
            # alternate which goes first, so a load change mid-round hits both alike
            order = ("bare", "ours") if round_ % 2 == 0 else ("ours", "bare")
            for which in order:
                if which == "bare":
                    bare.append(bare_trl(base, data, root / f"bare{round_}", args.steps,
                                         args.batch))
                else:
                    rate, checks, seconds = graftline_stage(data, root / "runs" / f"r{round_}",
                                                            args.steps, args.batch)
                    ours.append(rate)
                    shares.append(checks / seconds)
            print(f"round {round_ + 1}: bare TRL {bare[-1]:.2f} steps/s, graftline "
                  f"{ours[-1]:.2f} steps/s, checks {checks:.2f} s of {seconds:.1f} s "
                  f"({time.perf_counter() - began:.0f} s)", flush=True)
    b, o = statistics.median(bare), statistics.median(ours)
    print(f"\nsteps={args.steps} batch={args.batch} rounds={args.rounds} "
          f"threads={args.threads} (medians)")
    print(f"bare TRL SFTTrainer   {b:.3f} steps/s")
    print(f"graftline SFT stage   {o:.3f} steps/s")
    print(f"ratio graftline/bare  {o / b:.3f}   (target >= 0.98)")
    print(f"checks' share of stage time  {statistics.median(shares):.1%}   (target <= 5%)")


if __name__ == "__main__":
    main()

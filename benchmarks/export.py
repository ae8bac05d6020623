"""Streaming export vs the plain-library merge, and vs copying the base.

A synthetic Llama base (random bf16 weights, >= 1 GB, >= 4 safetensors shards) and an r=64 LoRA
adapter on every linear layer are written to a scratch directory. Then, each in its own fresh
subprocess (so peak RSS is that job's alone):

1. graftline: `plan_export` + `run_export` (bf16, verification off: it reloads the model, which
   the baseline does not do; fsync on, as shipped);
2. PEFT: `AutoModelForCausalLM.from_pretrained(bf16)` + `PeftModel.from_pretrained` +
   `merge_and_unload()` + `save_pretrained()`;
3. a plain `shutil.copytree` of the base directory;
4. the same copy followed by an fsync of every file: durable, as the export is (not a target;
   printed so that the disk's share of the gap to the plain copy can be read).

Prints peak RSS and wall time of each, and the ratios against the targets:
peak RSS graftline/PEFT <= 0.4, wall graftline/PEFT <= 1.0, throughput graftline/copy >= 0.5
(bytes of base processed per second). Wall times are measured inside each subprocess after its
imports, each after an `os.sync()`, in two interleaved rounds: the best wall time and the highest
peak RSS of each are printed. The machine may be shared: the load average is printed.

Run: .venv/bin/python benchmarks/export.py [--layers 8] [--workdir DIR] [--keep]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HIDDEN, INTERMEDIATE, VOCAB, HEADS, RANK = 2048, 5632, 32000, 16, 64
TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
ROUNDS = 2


def build(work: Path, layers: int, shard_bytes: int) -> tuple[Path, Path]:
    import torch
    from peft import LoraConfig
    from safetensors.torch import save_file
    from transformers import AutoModelForCausalLM, LlamaConfig

    from graftline.engine.toy.model import build_base

    base, adapter = work / "base", work / "adapter"
    base.mkdir()
    adapter.mkdir()
    config = LlamaConfig(hidden_size=HIDDEN, intermediate_size=INTERMEDIATE, vocab_size=VOCAB,
                         num_hidden_layers=layers, num_attention_heads=HEADS,
                         num_key_value_heads=HEADS, tie_word_embeddings=False, dtype="bfloat16")
    config.save_pretrained(base)
    toy = build_base()  # its tokenizer files make the directory complete (ids are not used)
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
        shutil.copyfile(toy / name, base / name)
    with torch.device("meta"):
        shapes = {k: tuple(v.shape) for k, v in
                  AutoModelForCausalLM.from_config(config).state_dict().items()}
    generator = torch.Generator().manual_seed(0)
    groups: list[list[str]] = [[]]
    size = 0
    for name, shape in shapes.items():  # pack tensors into shards of at most shard_bytes
        nbytes = 2 * int(torch.Size(shape).numel())
        if groups[-1] and size + nbytes > shard_bytes:
            groups.append([])
            size = 0
        groups[-1].append(name)
        size += nbytes
    weight_map, total = {}, 0
    for i, group in enumerate(groups):  # one shard in memory at a time
        filename = f"model-{i + 1:05d}-of-{len(groups):05d}.safetensors"
        shard = {}
        for name in group:
            std = 1.0 if name.endswith("norm.weight") else 0.02
            shard[name] = (torch.randn(shapes[name], generator=generator) * std).to(torch.bfloat16)
            weight_map[name] = filename
            total += shard[name].numel() * 2
        save_file(shard, str(base / filename), metadata={"format": "pt"})
        del shard
    (base / "model.safetensors.index.json").write_text(json.dumps(
        {"metadata": {"total_size": total}, "weight_map": weight_map}))

    LoraConfig(r=RANK, lora_alpha=2 * RANK, target_modules=list(TARGETS),
               base_model_name_or_path=str(base)).save_pretrained(adapter)
    lora: dict[str, torch.Tensor] = {}
    for name, shape in shapes.items():
        module = name.removesuffix(".weight")
        if module.split(".")[-1] in TARGETS:
            prefix = f"base_model.model.{module}"
            lora[f"{prefix}.lora_A.weight"] = torch.randn(RANK, shape[1], generator=generator) \
                * 0.01
            lora[f"{prefix}.lora_B.weight"] = torch.randn(shape[0], RANK, generator=generator) \
                * 0.01
    save_file(lora, str(adapter / "adapter_model.safetensors"), metadata={"format": "pt"})
    return base, adapter


JOBS = {
    "graftline": """
from graftline.engine.export.writer import plan_export, run_export
from transformers import AutoModelForCausalLM  # imported before t0, as in the PEFT job
t0 = time.perf_counter()
run_export(plan_export(Path(a.adapter), Path(a.out), dtype="bfloat16", verify=False))
""",
    "peft": """
import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM
t0 = time.perf_counter()
model = AutoModelForCausalLM.from_pretrained(a.base, dtype=torch.bfloat16)
model = PeftModel.from_pretrained(model, a.adapter).merge_and_unload()
model.save_pretrained(a.out)
""",
    "copy": """
import shutil
t0 = time.perf_counter()
shutil.copytree(a.base, a.out)
""",
    "copy+fsync": """
import os, shutil
t0 = time.perf_counter()
shutil.copytree(a.base, a.out)
for name in os.listdir(a.out):
    fd = os.open(os.path.join(a.out, name), os.O_RDONLY)
    os.fsync(fd)
    os.close(fd)
""",
}
PRELUDE = """
import argparse, json, sys, time
from pathlib import Path
p = argparse.ArgumentParser()
for arg in ("base", "adapter", "out"):
    p.add_argument(arg)
a = p.parse_args()
"""
EPILOGUE = """
wall = time.perf_counter() - t0
# VmHWM, not ru_maxrss: Linux carries ru_maxrss over fork+exec from the parent.
hwm = next(line for line in open("/proc/self/status") if line.startswith("VmHWM:"))
print(json.dumps({"wall": wall, "rss": int(hwm.split()[1]) * 1024}))
"""


def run_job(name: str, base: Path, adapter: Path, out: Path) -> dict[str, float]:
    code = PRELUDE + JOBS[name] + EPILOGUE
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    done = subprocess.run([sys.executable, "-c", code, str(base), str(adapter), str(out)],
                          capture_output=True, text=True, env=env, check=False)
    if done.returncode != 0:
        raise SystemExit(f"{name} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=8, help="8 layers ≈ 1.08 GB in bf16")
    parser.add_argument("--shard-mb", type=int, default=300)
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--keep", action="store_true", help="keep the scratch directory")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="graftline-export-bench-", dir=args.workdir))
    try:
        started = time.perf_counter()
        base, adapter = build(work, args.layers, args.shard_mb * 10**6)
        from graftline.engine.common.checkpoint_files import directory_bytes

        base_bytes = sum(p.stat().st_size for p in base.glob("*.safetensors"))
        n_shards = len(list(base.glob("*.safetensors")))
        print(f"synthetic base: {args.layers} layers, hidden {HIDDEN}, {base_bytes / 1e9:.2f} GB "
              f"in {n_shards} shards; adapter r={RANK} on {', '.join(TARGETS)} "
              f"({directory_bytes(adapter) / 1e6:.0f} MB); built in "
              f"{time.perf_counter() - started:.0f} s")
        results: dict[str, dict[str, float]] = {}
        for _round in range(ROUNDS):  # the best of each: the first pass after the build is slow
            for name in JOBS:
                # Each job starts with nothing dirty in the page cache: otherwise the kernel
                # writes back the previous job's (or the build's) output during it.
                os.sync()
                got = run_job(name, base, adapter, work / f"out-{name}")
                shutil.rmtree(work / f"out-{name}")  # keep the disk and page cache comparable
                best = results.setdefault(name, got)
                best["wall"] = min(best["wall"], got["wall"])
                best["rss"] = max(best["rss"], got["rss"])
        load = os.getloadavg()
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)

    print(f"\n{'job':<11}{'wall s':>9}{'peak RSS MB':>13}{'GB/s':>8}")
    for name, r in results.items():
        speed = base_bytes / r["wall"] / 1e9
        print(f"{name:<11}{r['wall']:>9.2f}{r['rss'] / 1e6:>13.0f}{speed:>8.2f}")
    g, p, c = results["graftline"], results["peft"], results["copy"]
    rows = [("peak RSS graftline / PEFT", g["rss"] / p["rss"], "<=", 0.4),
            ("wall graftline / PEFT", g["wall"] / p["wall"], "<=", 1.0),
            ("throughput graftline / copy", c["wall"] / g["wall"], ">=", 0.5)]
    print()
    for label, value, op, target in rows:
        met = value <= target if op == "<=" else value >= target
        print(f"{label:<30}{value:>7.3f}  target {op} {target}  {'met' if met else 'MISSED'}")
    # Like for like: the export fsyncs every shard before it calls itself complete, the plain
    # copy leaves its data in the page cache. Not a target; printed so the gap can be read.
    durable = results["copy+fsync"]["wall"] / g["wall"]
    print(f"{'throughput graftline / (copy + fsync)':<38}{durable:>7.3f}  (both durable)")
    print(f"\nload average during the run: {load[0]:.1f} {load[1]:.1f} {load[2]:.1f} on "
          f"{os.cpu_count()} cores (a shared machine makes wall times noisy)")


if __name__ == "__main__":
    main()

"""`graftline init`: write a commented starter pipeline for the base a user names.

The starter follows examples/: one stage per table, each key explained where it is written, the
names that differ from TRL/transformers said once (`lr`, not `learning_rate`). On the offline toy
base it also writes small datasets beside the file, so `graftline validate` passes at once and
`graftline run` trains in minutes; for any other base the data paths are placeholders that
`validate` points at.
"""

from __future__ import annotations

import os
from pathlib import Path

import typer

__all__ = ["FLOWS", "init", "register", "starter", "write_toy_data"]

FLOWS = ("sft", "sft-dpo", "full")
TOY = "toy:addition"

HEAD = """\
# A graftline pipeline: stages run top to bottom, each from the one above it (or `from = …`).
# Check it:   graftline validate {name}    (every problem at once, with line and fix)
# Explain it: graftline plan {name}        (what each stage starts from, writes, and its size)
# Run it:     graftline run {name}         (rehearses on a tiny twin first, then trains in the
#             background; `graftline attach` watches it from any directory)
# Names differ from TRL/transformers in a few places: lr (learning_rate), epochs
# (num_train_epochs), batch_size (per_device_train_batch_size), grad_accum
# (gradient_accumulation_steps), warmup (warmup_steps), max_length (max_seq_length), and LoRA's
# r / alpha (lora_r / lora_alpha).

[pipeline]
name = "{pipeline}"
base = "{base}"{base_note}
backend = "auto"             # unsloth on a CUDA GPU when installed, else transformers + peft + trl
runs_dir = "runs"            # where runs go, relative to this file
seed = 0

[defaults]                   # merged into every training stage; a stage's own keys win
train = {{ batch_size = {batch}, warmup = 10, max_length = {max_length}, logging_steps = 5 }}
lora = {{ dropout = 0.0, target_modules = "all-linear" }}
"""

SFT = """
[[stage]]
name = "sft"
kind = "sft"                 # supervised fine-tuning; columns prompt+completion, messages, or text
data = "{data}/sft.jsonl"
eval_data = "{data}/eval.jsonl"
lora = {{ r = {r}, alpha = {alpha} }}   # a new adapter on the base
train = {{ max_steps = {steps}, lr = {lr} }}
"""

MERGE = """
[[stage]]
name = "merged"
kind = "merge"               # sft's adapter into the base: a new full base, saved to disk

[[stage]]
name = "sft2"
kind = "sft"
adapter = "new"              # a new adapter (any rank) on `merged`
data = "{data}/sft.jsonl"
lora = {{ r = {r2}, alpha = {alpha2} }}
train = {{ max_steps = {steps2}, lr = {lr2} }}
"""

DPO = """
[[stage]]
name = "dpo"
kind = "dpo"                 # preference tuning; columns prompt, chosen, rejected
loss = "sigmoid"             # or "ipo", and the other losses TRL offers
beta = 0.1
adapter = "continue"         # the same adapter; the reference is it as DPO starts
data = "{data}/prefs.jsonl"
train = {{ max_steps = {dpo_steps}, lr = {dpo_lr} }}
"""

GRPO = """
[[stage]]
name = "grpo"
kind = "grpo"                # reinforcement learning from reward functions; column prompt
adapter = "continue"
data = "{data}/grpo.jsonl"
reward = ["exact_match"]     # or "module:function" from a file beside this one
num_generations = 8
train = {{ max_steps = {grpo_steps}, lr = {grpo_lr}, batch_size = 16 }}
"""

EXPORT = """
[[stage]]
name = "export"
kind = "export"              # merge the adapter chain into the original base, then verify it
from = "{last}"
out = "exports/{pipeline}"
dtype = "{dtype}"
"""


def _base_value(base: str, file: Path) -> tuple[str, str]:
    """How `base` is written in the file (a local directory relative to it), and a comment."""
    if base.startswith("toy:"):
        return base, "        # graftline's tiny offline model: trains on a laptop CPU"
    local = Path(base).expanduser()
    if local.exists() or base.startswith((".", "/", "~")):
        target = local.resolve()
        relative = os.path.relpath(target, file.parent.resolve())
        return relative, "  # a local model directory, relative to this file"
    return base, "  # a hub id; download it first where this machine has no network"


def starter(file: Path, base: str, flow: str) -> str:
    """The starter pipeline's text. Pure: writes nothing."""
    toy = base.startswith("toy:")
    value, note = _base_value(base, file)
    name = "".join(c if c.isalnum() or c in "_-" else "-" for c in file.stem) or "pipeline"
    if not name[0].isalpha():
        name = "p-" + name
    sizes = dict(
        pipeline=name, base=value, base_note=note, data="data",
        batch=32 if toy else 8, max_length=32 if toy else 1024,
        r=8 if toy else 16, alpha=16 if toy else 32, steps=300 if toy else 1000,
        lr="3e-3" if toy else "2e-4", r2=16 if toy else 32, alpha2=32 if toy else 64,
        steps2=100 if toy else 500, lr2="2e-3" if toy else "1e-4",
        dpo_steps=60 if toy else 300, dpo_lr="1e-3" if toy else "5e-6",
        grpo_steps=60 if toy else 200, grpo_lr="5e-4" if toy else "1e-6",
        dtype="float32" if toy else "bfloat16",
    )
    text = HEAD.format(name=file.name, **sizes) + SFT.format(**sizes)
    last = "sft"
    if flow == "full":
        text += MERGE.format(**sizes)
        last = "sft2"
    if flow in ("sft-dpo", "full"):
        text += DPO.format(**sizes)
        last = "dpo"
    if flow == "full":
        text += GRPO.format(**sizes)
        last = "grpo"
    return text + EXPORT.format(last=last, **sizes)


def write_toy_data(directory: Path) -> list[Path]:
    """Small toy datasets for a starter on toy:addition; existing files are kept."""
    from graftline.engine.toy import eval_rows, grpo_rows, preference_rows, sft_rows, write_jsonl

    directory.mkdir(parents=True, exist_ok=True)
    wanted = {"sft.jsonl": sft_rows(2000, 1), "eval.jsonl": eval_rows(),
              "prefs.jsonl": preference_rows(1000, 2), "grpo.jsonl": grpo_rows(500, 3)}
    written = []
    for name, rows in wanted.items():
        if not (directory / name).exists():
            written.append(write_jsonl(directory / name, rows))
    return written


def init(
    file: Path = typer.Argument(Path("pipeline.toml"), show_default=False,
                                help="the file to write (default: pipeline.toml)"),
    base: str = typer.Option(TOY, "--base", "-b", metavar="BASE",
                             help="the model to start from: a local directory, a hub id, or "
                                  "toy:addition (offline, trains on a CPU in minutes)"),
    flow: str = typer.Option("sft-dpo", "--flow", metavar="FLOW",
                             help="sft (SFT → export), sft-dpo (SFT → DPO → export), or full "
                                  "(SFT → merge → SFT → DPO → GRPO → export)"),
    force: bool = typer.Option(False, "--force", help="replace FILE if it exists"),
) -> None:
    """Write a commented starter pipeline for the base you name.

    Every key is explained where it is written. On the offline toy base, small datasets are
    written beside it (data/), so `graftline validate` passes at once; for another base, point
    the `data` keys at your files and `validate` says what is missing.
    """
    if flow not in FLOWS:
        typer.echo(f"graftline: unknown flow '{flow}'; choose one of {', '.join(FLOWS)}",
                   err=True)
        raise typer.Exit(2)
    if file.exists() and not force:
        typer.echo(f"graftline: {file} exists; choose another name, or --force to replace it",
                   err=True)
        raise typer.Exit(1)
    file.parent.mkdir(parents=True, exist_ok=True)
    file.write_text(starter(file, base, flow), encoding="utf-8")
    typer.echo(f"wrote {file} ({flow} on {base})")
    if base.startswith("toy:"):
        written = write_toy_data(file.parent / "data")
        if written:
            typer.echo(f"wrote {len(written)} toy dataset(s) under {file.parent / 'data'}")
    else:
        typer.echo("point its `data` keys at your datasets (JSONL, parquet, CSV or a "
                   "save_to_disk directory)")
    typer.echo(f"next:\n  graftline validate {file}\n  graftline plan {file}\n"
               f"  graftline run {file}")


def register(app: typer.Typer) -> None:
    app.command("init")(init)

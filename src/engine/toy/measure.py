"""Measure the toy recipe on this machine, seed by seed, with no self-check and no fallback.

    python -m graftline.engine.toy.measure 0 1 2 3 4 [--steps 800]

One JSON line per seed: held-out plain exact match, mean loss of the last 20 steps, seconds. Run
the seeds one after another (≈ 60 s each on 2 idle cores): in parallel they only slow each other.
Which seeds plateau differs between CPU families; this is how a fallback's need is measured.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace

import torch

from graftline.engine.toy.model import accuracy, pretrain
from graftline.engine.toy.recipe import ToyRecipe


def measure(seed: int, steps: int) -> dict[str, float]:
    losses: list[float] = []
    started = time.monotonic()
    model, tokenizer = pretrain(replace(ToyRecipe(), seed=seed, steps=steps),
                                lambda _step, loss: losses.append(loss))
    tail = losses[-20:]
    return {"seed": seed, "steps": steps,
            "plain_exact_match": round(accuracy(model, tokenizer, chat=False), 4),
            "loss_end": round(sum(tail) / len(tail), 4),
            "seconds": round(time.monotonic() - started, 1)}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("seeds", nargs="+", type=int)
    parser.add_argument("--steps", type=int, default=ToyRecipe.steps)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)  # as the build does
    for seed in args.seeds:
        print(json.dumps(measure(seed, args.steps)), flush=True)


if __name__ == "__main__":
    main()

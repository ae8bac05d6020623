"""Write the toy datasets as JSONL files, the way a user's own data would arrive.

`python -m graftline.engine.toy.files DIR` regenerates examples/data/ byte for byte.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterable
from pathlib import Path

from graftline.engine.toy import tasks


def write_jsonl(path: Path, rows: Iterable[dict]) -> Path:
    with Path(path).open("w", encoding="utf-8") as handle:
        for row in rows:
            handle.write(json.dumps(row) + "\n")
    return Path(path)


def write_datasets(out: Path, *, seed: int = 0) -> dict[str, Path]:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    return {
        "sft": write_jsonl(out / "sft.jsonl", tasks.sft_rows(4000, seed + 1)),
        "prefs": write_jsonl(out / "prefs.jsonl", tasks.preference_rows(2000, seed + 2)),
        "grpo": write_jsonl(out / "grpo.jsonl", tasks.grpo_rows(1000, seed + 3)),
        "eval": write_jsonl(out / "eval.jsonl", tasks.eval_rows()),
        "prompts": write_jsonl(out / "prompts.jsonl", tasks.prompt_rows(400, seed + 4)),
        **write_topics(out / "topics", seed=seed),
        **write_curriculum(out / "curriculum", seed=seed),
    }


def write_topics(out: Path, *, seed: int = 0) -> dict[str, Path]:
    """Per-topic SFT and preference sets for the per-topic workflow."""
    out.mkdir(parents=True, exist_ok=True)
    written = {}
    for topic in ("low", "high"):
        pool = [s for s in tasks.train_sums() if tasks.topic_of(s) == topic]
        written[f"{topic}_sft"] = write_jsonl(
            out / f"{topic}_sft.jsonl", tasks.sft_rows(1500, seed + 11, pool)
        )
        written[f"{topic}_prefs"] = write_jsonl(
            out / f"{topic}_prefs.jsonl", tasks.preference_rows(800, seed + 12, pool=pool)
        )
    return written


def write_curriculum(out: Path, *, seed: int = 0) -> dict[str, Path]:
    """Easy → hard: sums without a carry, then with one, then everything."""
    out.mkdir(parents=True, exist_ok=True)
    pools = {
        "1_no_carry": [s for s in tasks.train_sums() if not tasks.carries(s)],
        "2_carry": [s for s in tasks.train_sums() if tasks.carries(s)],
        "3_all": tasks.train_sums(),
    }
    return {
        name: write_jsonl(out / f"{name}.jsonl", tasks.sft_rows(1500, seed + 21, pool))
        for name, pool in pools.items()
    }


if __name__ == "__main__":
    for name, path in write_datasets(Path(sys.argv[1] if len(sys.argv) > 1 else ".")).items():
        print(f"{name}: {path}")

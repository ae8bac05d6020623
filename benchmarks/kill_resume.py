"""kill -9 at random moments of every training stage kind, then resume: is the export the same?

A small pipeline on the toy base (sft → ipo continuing it → grpo continuing it → export) runs
once uninterrupted; then each trial starts it in a child process, kills the child's whole
process group with SIGKILL at a random moment (or right after a Trainer checkpoint of a chosen
stage is saved), resumes it in another child and compares every tensor of the export (and of each
stage's adapter) with the uninterrupted run's, at zero tolerance.

    .venv/bin/python benchmarks/kill_resume.py [--trials 20] [--seed 0] [--keep DIR]

Prints one line per trial and the share of trials that ended bit-identical; exits 1 if any did
not. `tests/test_kill_resume.py` runs a reduced form (3 trials, one right after an IPO save).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
TRAINING_STAGES = ("sft", "ipo", "grpo")

PIPELINE = """
[pipeline]
name = "killres"
base = "toy:addition"
seed = 0
probes = ["12+34", "50+27"]

[defaults]
train = { batch_size = 8, max_length = 32, logging_steps = 1 }
lora = { dropout = 0.0 }

[[stage]]
name = "sft"
kind = "sft"
data = "sft.jsonl"
lora = { r = 4 }
train = { max_steps = 6, save_steps = 2, lr = 3e-3 }

[[stage]]
name = "ipo"
kind = "dpo"
loss = "ipo"
beta = 0.5
adapter = "continue"
data = "pref.jsonl"
train = { max_steps = 6, save_steps = 2, lr = 1e-3 }

[[stage]]
name = "grpo"
kind = "grpo"
adapter = "continue"
data = "grpo.jsonl"
reward = ["exact_match"]
num_generations = 4
max_completion_length = 4
train = { max_steps = 4, save_steps = 2, lr = 5e-4 }

[[stage]]
name = "export"
kind = "export"
from = "grpo"
out = "exports/OUT"
dtype = "float32"
force = true
"""

CHILD = """
import sys
import torch
torch.set_num_threads(1)
from pathlib import Path
from graftline.engine.run.events import EventWriter
from graftline.engine.pipeline.file import load
from graftline.engine.run.runner import run_pipeline
run_dir = Path(sys.argv[2])
run_dir.mkdir(parents=True, exist_ok=True)
with EventWriter(run_dir) as writer:
    result = run_pipeline(load(sys.argv[1]), run_dir, writer, resume=sys.argv[3] == "1")
print(result.status, result.message)
# the run is on disk; the parent waits for this exit (common/quick_exit.py: no teardown)
from graftline.engine.common.quick_exit import exit_now
exit_now(0 if result.status == "finished" else 1)
"""


@dataclass(frozen=True)
class KillPoint:
    """Kill after `seconds`, or right after `stage` saves a Trainer checkpoint."""
    seconds: float | None = None
    stage: str | None = None

    def describe(self) -> str:
        return f"after {self.stage}'s first checkpoint" if self.stage else \
            f"at {self.seconds:.1f}s"


@dataclass(frozen=True)
class Trial:
    point: KillPoint
    killed_in: str | None  # the stage that was running when the kill landed
    identical: bool
    worst: float
    resumed_from: list[str]
    seconds: float


def write_inputs(root: Path) -> None:
    from graftline.engine.toy import tasks

    root.mkdir(parents=True, exist_ok=True)
    for name, rows in (("sft.jsonl", tasks.sft_rows(200, 1)),
                       ("pref.jsonl", tasks.preference_rows(100, 3)),
                       ("grpo.jsonl", tasks.grpo_rows(100, 4))):
        (root / name).write_text("".join(json.dumps(r) + "\n" for r in rows))


def pipeline_file(root: Path, name: str) -> Path:
    path = root / f"{name}.toml"
    path.write_text(PIPELINE.replace("OUT", name))
    return path


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO / ".gl" / "pkg"),
                                                      env.get("PYTHONPATH", "")]))
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false",
               HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", HF_DATASETS_OFFLINE="1")
    return env


def _start(path: Path, run_dir: Path, resume: bool) -> subprocess.Popen[bytes]:
    run_dir.parent.mkdir(parents=True, exist_ok=True)
    log = (run_dir.parent / f"{run_dir.name}.{'resume' if resume else 'first'}.log").open("ab")
    return subprocess.Popen([sys.executable, "-c", CHILD, str(path), str(run_dir),
                             "1" if resume else "0"], stdout=log, stderr=log,
                            env=_env(), start_new_session=True)


def _events(run_dir: Path) -> list[dict]:
    try:
        lines = (run_dir / "events.jsonl").read_text().splitlines()
    except OSError:
        return []
    out = []
    for line in lines:
        with contextlib.suppress(ValueError):  # a torn last line
            out.append(json.loads(line))
    return out


def _running_stage(run_dir: Path) -> str | None:
    stage = None
    for event in _events(run_dir):
        if event.get("type") == "stage_started":
            stage = event.get("stage")
        elif event.get("type") == "stage_finished" and event.get("stage") == stage:
            stage = None
    return stage


def _checkpoint_of(run_dir: Path, stage: str) -> bool:
    return any(e.get("type") == "checkpoint_saved" and e.get("stage") == stage
               and e.get("data", {}).get("kind") == "trainer" for e in _events(run_dir))


def run_uninterrupted(root: Path, name: str = "straight") -> tuple[Path, float]:
    path = pipeline_file(root, name)
    began = time.monotonic()
    child = _start(path, root / "runs" / name, resume=False)
    if child.wait() != 0:
        raise RuntimeError(f"the uninterrupted run failed; see {root / 'runs'}")
    return root / "exports" / name, time.monotonic() - began


def run_trial(root: Path, name: str, point: KillPoint, limit_s: float = 900.0) -> Trial:
    path = pipeline_file(root, name)
    run_dir = root / "runs" / name
    began = time.monotonic()
    child = _start(path, run_dir, resume=False)
    try:
        while child.poll() is None and time.monotonic() - began < limit_s:
            if point.seconds is not None and time.monotonic() - began >= point.seconds:
                break
            if point.stage is not None and _checkpoint_of(run_dir, point.stage):
                break
            time.sleep(0.02)
    finally:
        killed_in = _running_stage(run_dir) if child.poll() is None else None
        if child.poll() is None:
            os.killpg(child.pid, signal.SIGKILL)
        child.wait()
    again = _start(path, run_dir, resume=True)
    ok = again.wait(timeout=limit_s) == 0
    resumed = [e["data"]["resumed_from"].rsplit("/", 1)[-1] for e in _events(run_dir)
               if e.get("type") == "stage_started" and e.get("data", {}).get("resumed_from")]
    if not ok:
        return Trial(point, killed_in, False, float("inf"), resumed, time.monotonic() - began)
    identical, worst = compare(root / "exports" / "straight", root / "exports" / name)
    for stage in TRAINING_STAGES:
        same, diff = compare(root / "runs/straight/stages" / stage, run_dir / "stages" / stage)
        identical, worst = identical and same, max(worst, diff)
    return Trial(point, killed_in, identical, worst, resumed, time.monotonic() - began)


def compare(want_dir: Path, got_dir: Path) -> tuple[bool, float]:
    """(every tensor of every *.safetensors equal, the largest absolute difference)."""
    import torch
    from safetensors.torch import load_file

    names = sorted(p.name for p in want_dir.glob("*.safetensors"))
    if not names or names != sorted(p.name for p in got_dir.glob("*.safetensors")):
        return False, float("inf")
    equal, worst = True, 0.0
    for name in names:
        want, got = load_file(str(want_dir / name)), load_file(str(got_dir / name))
        if want.keys() != got.keys():
            return False, float("inf")
        for key, tensor in want.items():
            if not torch.equal(tensor, got[key]):
                equal = False
                worst = max(worst, float((tensor.float() - got[key].float()).abs().max()))
    return equal, worst


def kill_points(trials: int, span_s: float, rng: random.Random) -> list[KillPoint]:
    """One kill right after each training stage's first checkpoint (IPO first: the case that
    trained the wrong policy), the rest at uniform random moments of an uninterrupted run."""
    fixed = [KillPoint(stage=s) for s in ("ipo", "sft", "grpo")][:trials]
    return fixed + [KillPoint(seconds=rng.uniform(0.5, span_s))
                    for _ in range(trials - len(fixed))]


def campaign(root: Path, trials: int, seed: int = 0, echo: bool = True) -> list[Trial]:
    from graftline.engine.toy.model import build_base

    build_base()
    write_inputs(root)
    _, span = run_uninterrupted(root)
    if echo:
        print(f"uninterrupted run: {span:.1f}s")
    results = []
    for index, point in enumerate(kill_points(trials, span, random.Random(seed))):
        trial = run_trial(root, f"t{index:02d}", point)
        results.append(trial)
        if echo:
            print(f"trial {index:2d}: kill {point.describe():28s} in {trial.killed_in or '-':6s}"
                  f" resumed_from={','.join(trial.resumed_from) or '-':28s} "
                  f"{'identical' if trial.identical else f'DIFFERS max|Δ| {trial.worst:.3g}'}"
                  f" ({trial.seconds:.0f}s)", flush=True)
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--keep", type=Path, default=None, help="keep the runs in this folder")
    args = parser.parse_args()
    if args.keep is not None:
        results = campaign(args.keep, args.trials, args.seed)
    else:
        with tempfile.TemporaryDirectory(prefix="graftline-kill-") as tmp:
            results = campaign(Path(tmp), args.trials, args.seed)
    same = sum(t.identical for t in results)
    stages = sorted({t.killed_in for t in results if t.killed_in})
    print(f"bit-identical after kill -9 + resume: {same}/{len(results)} "
          f"({same / max(1, len(results)):.0%}); killed inside: {', '.join(stages) or '-'}")
    return 0 if same == len(results) else 1


if __name__ == "__main__":
    sys.exit(main())

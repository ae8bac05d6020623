"""A one-stage GRPO run whose reward function holds the engine at a gate: it scores at once in
the session that launched it (validation there), and anywhere else (the detached engine's
rehearsal) waits until a `gate` file exists, or raises. Tests use it to act while a detached run
is provably mid-rehearsal (test_run_detached.py, test_console_tmux_launch.py)."""

from __future__ import annotations

import time
from pathlib import Path

from graftline.engine.run import client

REWARD = '''
import os
import time
from pathlib import Path

HERE = Path(__file__).parent


def score(prompts, completions, **kwargs):
    """Scores at once in the launching session; elsewhere {mode} until `gate` exists."""
    if os.getsid(0) != int((HERE / "launcher.sid").read_text()):
        (HERE / f"called-in-{{os.getsid(0)}}").touch()
        {body}
    return [0.0 for _ in completions]
'''
WAIT = 'while not (HERE / "gate").exists():\n            time.sleep(0.05)'
RAISE = 'raise ValueError("cannot score this completion")'

PIPELINE = """
[pipeline]
name = "{name}"
base = "toy:addition"
runs_dir = "runs"
[[stage]]
name = "rl"
kind = "grpo"
data = "grpo.jsonl"
reward = ["gate_reward:score"]
num_generations = 2
max_completion_length = 4
train = {{ max_steps = 2, batch_size = 2, logging_steps = 1 }}
"""

EXAMPLES = Path(__file__).resolve().parents[1] / "examples" / "data"


def write_gated_run(folder: Path, *, name: str, body: str = WAIT, mode: str = "waits") -> Path:
    """The pipeline file `p.toml` in `folder`, beside its data and `gate_reward.py`."""
    rows = (EXAMPLES / "grpo.jsonl").read_text().splitlines()[:40]
    (folder / "grpo.jsonl").write_text("\n".join(rows) + "\n")
    (folder / "gate_reward.py").write_text(REWARD.format(body=body, mode=mode))
    path = folder / "p.toml"
    path.write_text(PIPELINE.format(name=name))
    return path


def wait_ended(run_dir: Path, timeout: float = 600) -> client.RunInfo:
    """Until the engine has ended (a guard against a hang, not a measurement)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        info = client.read_state(run_dir)
        if info.status in ("finished", "failed", "stopped", "crashed"):
            return info
        time.sleep(0.1)
    raise AssertionError(f"the run never ended:\n{(run_dir / 'engine.log').read_text()[-3000:]}")

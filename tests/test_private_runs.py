"""Run directories are owner-only by default (0700, files 0600); exports follow the umask.

A real engine is started with `start_run` (its own process under the launcher's rules) and
every path it leaves in the run directory is checked once it has finished.
"""

from __future__ import annotations

import json
import os
import stat
import time
from pathlib import Path

import pytest

from graftline.engine.common.private import umask
from graftline.engine.run import state as runstate
from graftline.engine.run.launch import start_run
from graftline.engine.toy.tasks import sft_rows

PIPELINE = """
[pipeline]
name = "priv"
base = "toy:addition"
runs_dir = "runs"
PRIVATE

[defaults]
train = { batch_size = 8, max_length = 32 }

[[stage]]
name = "one"
kind = "sft"
data = "sft.jsonl"
lora = { r = 4 }
train = { max_steps = 2, lr = 3e-3, save_steps = 1 }

[[stage]]
name = "export"
kind = "export"
from = "one"
out = "exported"
dtype = "float32"
"""


def _finish(run_dir: Path) -> str:
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        found = runstate.read(run_dir)
        if found is not None and found.status in ("finished", "failed", "crashed", "stopped"):
            return found.status
        time.sleep(0.3)
    raise AssertionError("the run did not end")


def _modes(root: Path) -> dict[str, int]:
    out = {".": stat.S_IMODE(root.lstat().st_mode)}
    for path in root.rglob("*"):
        if path.is_symlink() or path.is_socket():
            continue
        out[str(path.relative_to(root))] = stat.S_IMODE(path.lstat().st_mode)
    return out


@pytest.mark.slow
@pytest.mark.parametrize("private", [True, False])
def test_run_directory_modes(tmp_path: Path, toy_base: Path, private: bool) -> None:
    (tmp_path / "sft.jsonl").write_text("".join(json.dumps(r) + "\n" for r in sft_rows(64, 0)))
    (tmp_path / "p.toml").write_text(
        PIPELINE.replace("PRIVATE", "" if private else "private = false"))
    with umask(0o022):
        run_dir = start_run(tmp_path / "p.toml")
    assert _finish(run_dir) == "finished", (run_dir / "engine.log").read_text()[-3000:]

    modes = _modes(run_dir)
    # the engine wrote all of these: checkpoints, the Trainer's, logs, state, manifests
    assert {"engine.log", "events.jsonl", "state.json", "pipeline.toml", "run.json",
            "stages/one/adapter_model.safetensors",
            "stages/one/trainer/checkpoint-2/optimizer.pt"} <= modes.keys()
    if private:
        for name, mode in modes.items():
            assert mode == (0o700 if (run_dir / name).is_dir() else 0o600), (name, oct(mode))
    else:  # the user's umask (022), as before
        assert modes["."] == 0o755
        # (events.jsonl has always been created 0600 by the event writer)
        for name in ("engine.log", "state.json", "pipeline.toml",
                     "run.json"):
            assert modes[name] == 0o644, (name, oct(modes[name]))
    # the export is the user's: it follows the umask either way (022 → 0755 / 0644)
    exported = _modes(tmp_path / "exported")
    assert exported["."] == 0o755
    weights = [m for n, m in exported.items() if n.endswith(".safetensors")]
    assert weights and all(m == 0o644 for m in weights)
    assert os.stat(tmp_path / "runs").st_mode & 0o755 == 0o755  # the runs folder is untouched

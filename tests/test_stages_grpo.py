"""GRPO stage: rewards by name and by `module:function`, weighted, fed the dataset's columns."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from stage_helpers import one_thread, pipeline, write_data  # noqa: F401

from graftline.engine.common.sink import ListSink
from graftline.engine.lineage import manifest as mf
from graftline.engine.run.runner import run_pipeline

REWARD_MODULE = '''
import json, os

def spy(prompts, completions, **kwargs):
    with open(os.environ["SPY_FILE"], "a") as f:
        f.write(json.dumps({"keys": sorted(kwargs), "n": len(completions),
                            "answer": kwargs.get("answer")}) + "\\n")
    return [0.0 for _ in completions]
'''

STAGES = """
[[stage]]
name = "g"
kind = "grpo"
data = "grpo.jsonl"
reward = ["exact_match", "my_reward:spy"]
reward_weights = [1.0, 0.5]
num_generations = 4
max_completion_length = 4
lora = { r = 4 }
train = { max_steps = 2, batch_size = 6, lr = 1e-3 }
"""

pytestmark = pytest.mark.usefixtures("one_thread")


def test_grpo_rewards_get_columns_and_log_per_function(tmp_path: Path, toy_base: Path,
                                                       monkeypatch) -> None:
    root = write_data(tmp_path)
    (root / "my_reward.py").write_text(REWARD_MODULE)
    spy = root / "spy.jsonl"
    monkeypatch.setenv("SPY_FILE", str(spy))
    sink = ListSink()
    result = run_pipeline(pipeline(root, STAGES), root / "runs" / "r", sink)
    assert result.status == "finished", result.message
    # batch 6 is not a whole number of groups of 4: raised to 8, with a warning saying so
    assert any("batch_size 6 → 8" in w["message"] for w in sink.of_type("warning"))
    calls = [json.loads(x) for x in spy.read_text().splitlines()]
    assert calls and all(c["n"] == 8 for c in calls)
    assert {"answer", "completion_ids", "trainer_state"} <= set(calls[0]["keys"])
    assert all(a.isdigit() for a in calls[0]["answer"])
    metrics = sink.of_type("metrics")
    assert [m["step"] for m in metrics] == [1, 2]
    assert "rewards/exact_match/mean" in metrics[0] and "rewards/my_reward.spy/mean" in metrics[0]
    ref = next(c for c in sink.of_type("check_result") if c["name"] == "reference_start")
    assert ref["status"] == "pass" and "beta = 0" in ref["message"]
    adapter = mf.read(root / "runs/r/stages/g")
    assert adapter.status == "complete" and not (root / "runs/r/stages/g/ref").exists()

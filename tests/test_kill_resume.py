"""kill -9 then resume, in every training stage kind: the export is bit-identical to an
uninterrupted run's (the reduced form of benchmarks/kill_resume.py: 3 trials, each killed right
after a Trainer checkpoint of sft, ipo and grpo is saved)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
import kill_resume


@pytest.mark.slow
def test_kill_9_then_resume_ends_bit_identical(tmp_path: Path, toy_base: Path) -> None:
    trials = kill_resume.campaign(tmp_path, trials=3, echo=False)
    assert [t.point.stage for t in trials] == ["ipo", "sft", "grpo"]
    for trial in trials:
        # the kill landed inside the stage, after its checkpoint, and the resume used it
        assert trial.killed_in == trial.point.stage, trial
        assert trial.resumed_from, trial
        assert trial.identical, trial

"""kill -9 then resume: the export is bit-identical to an uninterrupted run's. The reduced form of
benchmarks/kill_resume.py (which kills every training stage kind, 20 trials): one trial, killed
right after an IPO Trainer checkpoint is saved, the case that once resumed the wrong policy."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
import kill_resume


@pytest.mark.slow
def test_kill_9_then_resume_ends_bit_identical(tmp_path: Path, toy_base: Path) -> None:
    trials = kill_resume.campaign(tmp_path, trials=1, echo=False)
    assert [t.point.stage for t in trials] == ["ipo"]
    for trial in trials:
        # the kill landed inside the stage, after its checkpoint, and the resume used it
        assert trial.killed_in == trial.point.stage, trial
        assert trial.resumed_from, trial
        assert trial.identical, trial

"""`[cleanup]` in the pipeline file: the engine cleans between its own stages, and never deletes
what a kept checkpoint or a later stage needs. A real run on the toy base, with the run marked
live in state.json by this very process, as the background engine marks it."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from stage_helpers import one_thread, pipeline, write_data  # noqa: F401
from transformers import AutoModelForCausalLM

from graftline.engine import lineage
from graftline.engine.common.checkpoint_files import directory_bytes
from graftline.engine.run.events import Event, EventWriter, read_events
from graftline.engine.run.runner import run_pipeline

CHAIN = """
[cleanup]
keep = ["final"]

[defaults.train]
batch_size = 8
lr = 3e-3

[[stage]]
name = "sft"
kind = "sft"
data = "sft.jsonl"
lora = { r = 4 }
train = { max_steps = 6, save_steps = 2 }

[[stage]]
name = "merged"
kind = "merge"

[[stage]]
name = "sft_r8"
kind = "sft"
adapter = "new"
data = "sft2.jsonl"
lora = { r = 8 }
train = { max_steps = 4, save_steps = 2 }

[[stage]]
name = "export"
kind = "export"
from = "sft_r8"
out = "runs/exported"
dtype = "float32"
"""

pytestmark = pytest.mark.usefixtures("one_thread")


def _run(root: Path, stages: str, *, live: bool = True, resume: bool = False) -> list[Event]:
    """Run `stages` in root/runs/r1 to the end; its events. `live`: state.json marks the run
    as this process's, as the background engine does."""
    run_dir = root / "runs" / "r1"
    run_dir.mkdir(parents=True, exist_ok=True)
    if live:
        (run_dir / "state.json").write_text(json.dumps({"pid": os.getpid(),
                                                        "status": "running"}))
    with EventWriter(run_dir) as writer:
        result = run_pipeline(pipeline(root, stages), run_dir, writer, resume=resume)
    assert result.status == "finished", result.message
    return read_events(run_dir / "events.jsonl")[0]


def test_the_engine_cleans_between_stages_and_keeps_what_later_stages_need(
    tmp_path: Path, toy_base: Path
) -> None:
    root = write_data(tmp_path)
    events = _run(root, CHAIN)
    run_dir = root / "runs" / "r1"
    stages = run_dir / "stages"

    # Trainer checkpoints are what the policy does not keep: gone, after each training stage.
    assert not list(stages.glob("*/trainer/checkpoint-*"))
    cleanups = [e for e in events if e.type == "info" and "cleanup after" in e.data["message"]]
    assert [e.stage for e in cleanups] == ["sft", "merged", "sft_r8", "export"]
    first = cleanups[0].data
    # (the Trainer itself keeps the newest two)
    assert sorted(first["removed"]) == [f"stages/sft/trainer/checkpoint-{n}" for n in (4, 6)]
    assert first["freed"] > 0
    assert "deleted 0 checkpoint(s)" in cleanups[1].data["message"]  # nothing left to take
    assert not [e for e in events if e.type == "warning" and "cleanup" in e.data["message"]]

    # What must stay, stayed: the adapter still loads on its merged base, the export exists.
    assert (stages / "merged" / "config.json").is_file()
    from peft import PeftModel

    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(stages / "merged"),
                                      stages / "sft_r8")
    assert model(input_ids=__import__("torch").tensor([[1, 2, 3]])).logits.shape[-1] > 0
    assert directory_bytes(root / "runs" / "exported") > 0
    # The lineage remembers which cleanup removed what.
    lin = lineage.scan([run_dir])
    assert not lin.broken()
    gone = run_dir / "stages" / "sft" / "trainer" / "checkpoint-6"
    from graftline.engine.lineage.cleanup import removed_by

    assert (removed_by(gone) or "").startswith(f"cleanup {first['cleanup']}")


SFT_THEN_MERGE = """
[cleanup]
keep = ["last:1"]
after = ["sft"]

[[stage]]
name = "sft"
kind = "sft"
data = "sft.jsonl"
lora = { r = 4 }
train = { max_steps = 4, save_steps = 2, batch_size = 8 }

[[stage]]
name = "merged"
kind = "merge"
"""


def test_a_checkpoint_only_a_later_stage_reads_is_kept_for_it(
    tmp_path: Path, toy_base: Path
) -> None:
    """`last:1` prunes Trainer checkpoints and never deletes a stage's result for not being one
    (issue 15), so the adapter the merge is about to read stays."""
    root = write_data(tmp_path)
    events = _run(root, SFT_THEN_MERGE)
    run_dir = root / "runs" / "r1"
    (cleanup,) = [e for e in events if e.type == "info" and "cleanup after" in e.data["message"]]
    assert (run_dir / "stages" / "sft" / "adapter_config.json").is_file()
    assert cleanup.data["removed"] == ["stages/sft/trainer/checkpoint-2"]
    assert (run_dir / "stages" / "sft" / "trainer" / "checkpoint-4").is_dir()  # last:1
    assert (run_dir / "stages" / "merged" / "config.json").is_file()  # the merge had its input


def test_a_keep_word_that_matches_nothing_deletes_nothing_and_the_run_goes_on(
    tmp_path: Path, toy_base: Path
) -> None:
    root = write_data(tmp_path)
    text = SFT_THEN_MERGE.replace('keep = ["last:1"]', 'keep = ["final", "stages/sft_v2"]')
    events = _run(root, text, live=False)
    run_dir = root / "runs" / "r1"
    (warning,) = [e for e in events if e.type == "warning" and "cleanup" in e.data["message"]]
    assert "'stages/sft_v2' matched no checkpoint" in warning.data["message"]
    assert "nothing was deleted" in warning.data["fix"]
    assert len(list((run_dir / "stages" / "sft" / "trainer").glob("checkpoint-*"))) == 2


def test_a_cleanup_a_crash_interrupted_is_finished_when_the_run_resumes(
    tmp_path: Path, toy_base: Path
) -> None:
    """The state a crash inside `execute` leaves: the plan journaled, nothing marked done. It is
    written here by the same journal writer `execute` uses."""
    from graftline.engine.lineage import cleanup
    from graftline.engine.lineage import journal as cleanup_journal

    root = write_data(tmp_path)
    run_dir = root / "runs" / "r1"
    _run(root, "[[stage]]" + SFT_THEN_MERGE.split("[[stage]]", 1)[1], live=False)
    lin = lineage.scan([run_dir])
    plan = cleanup.plan_cleanup(lin, [cleanup.parse_keep("final")])
    doomed = [lin.node(k).path for k in plan.delete]
    assert doomed and all("/trainer/checkpoint-" in p for p in doomed)
    cleanup_journal.append_line(run_dir / cleanup_journal.JOURNAL, {
        "type": "plan", "cleanup": "c-crashed", "time": "2026-11-22T00:00:00+00:00",
        "entries": [{"path": p, "id": lin.node(k).id, "kind": "trainer", "bytes": 1,
                     "run_dir": lin.node(k).run_dir, "leave": []}
                    for k, p in zip(plan.delete, doomed, strict=True)]})

    events = _run(root, SFT_THEN_MERGE, live=False, resume=True)
    assert not (run_dir / cleanup_journal.JOURNAL).exists()
    assert not any(Path(p).exists() for p in doomed)
    assert any(e.type == "info" and "finished cleanup c-crashed" in e.data["message"]
               for e in events)
    assert cleanup.removed_by(Path(doomed[0])).startswith("cleanup c-crashed")

"""Cleanup on real tiny checkpoints laid out like graftline runs: policies, running runs,
nested Trainer checkpoints, removed-by history, and a cleanup killed half-way."""

from __future__ import annotations

import json
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from lineage_helpers import files_under, forward_with, make_adapter
from peft import PeftModel
from transformers import AutoModelForCausalLM
from typer.testing import CliRunner

from graftline.console.cli import app
from graftline.engine import lineage
from graftline.engine.lineage import cleanup, manifest
from graftline.engine.lineage.manifest import LoraSpec, Manifest, Parent


def _write(directory: Path, created: str, **fields: object) -> None:
    manifest.complete(directory, Manifest(created=created, **fields))


def _state(run: Path, status: str, pid: int) -> None:
    (run / "state.json").write_text(json.dumps(
        {"pid": pid, "host": socket.gethostname(), "status": status, "stage": "dpo"}))


def make_run(runs: Path, name: str, base: Path) -> Path:
    """sft1 → merge1 → sft2 → dpo (continued), with trainer/checkpoint-N under dpo."""
    run = runs / name
    stages = run / "stages"
    sft1 = make_adapter(stages / "sft1", base, seed=1)
    _write(sft1, "2026-01-01T00:00:01", kind="adapter", name="sft1", stage="sft1", run=name,
           parents=[Parent(relation="trained_on", path=str(base))], base=str(base),
           lora=LoraSpec(r=4, alpha=8), metrics={"loss": 1.2})
    merge1 = stages / "merge1"
    PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base), sft1) \
        .merge_and_unload().save_pretrained(merge1)
    _write(merge1, "2026-01-01T00:00:02", kind="merged", name="merge1", stage="merge1", run=name,
           parents=[Parent(relation="merged_from", path=str(sft1)),
                    Parent(relation="merged_from", path=str(base))])
    sft2 = make_adapter(stages / "sft2", merge1, seed=2)
    _write(sft2, "2026-01-01T00:00:03", kind="adapter", name="sft2", stage="sft2", run=name,
           parents=[Parent(relation="trained_on", path=str(merge1))], base=str(merge1),
           lora=LoraSpec(r=4, alpha=8), metrics={"loss": 0.9}, evaluation={"accuracy": 0.5})
    dpo = make_adapter(stages / "dpo", merge1, seed=3)
    for step in (5, 10):
        ckpt = make_adapter(dpo / "trainer" / f"checkpoint-{step}", merge1, seed=step)
        (ckpt / "trainer_state.json").write_text(json.dumps(
            {"global_step": step, "log_history": [{"loss": 1.0 / step, "step": step}]}))
    _write(dpo, "2026-01-01T00:00:04", kind="adapter", name="dpo", stage="dpo", run=name,
           parents=[Parent(relation="continued_from", path=str(sft2)),
                    Parent(relation="trained_on", path=str(merge1))], base=str(merge1),
           lora=LoraSpec(r=4, alpha=8), metrics={"loss": 0.5}, evaluation={"accuracy": 0.7})
    _state(run, "finished", 1)
    return run


@pytest.fixture(scope="module")
def template(toy_base: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    runs = tmp_path_factory.mktemp("template") / "runs"
    make_run(runs, "run1", toy_base)
    return runs


@pytest.fixture
def runs(template: Path, tmp_path: Path) -> Path:
    # Copies keep absolute parent paths valid only if they point outside; rewrite to the copy.
    target = tmp_path / "runs"
    shutil.copytree(template, target, symlinks=True)
    for path in target.rglob("*.json"):
        text = path.read_text()
        if str(template) in text:
            path.write_text(text.replace(str(template), str(target)))
    return target


def test_final_keeps_the_base_chain_and_kept_adapters_still_load(runs: Path) -> None:
    lin = lineage.scan([runs])
    plan = cleanup.plan_cleanup(lin, [cleanup.parse_keep("final")])
    stages = runs.resolve() / "run1" / "stages"
    assert set(plan.keep) == {str(stages / "dpo")}
    assert plan.protected[str(stages / "merge1")] == ("merge1 is the base of dpo, which you keep",)
    assert plan.protected[str(stages / "sft1")] == (
        "sft1 was merged into merge1, which dpo (kept) needs",)
    assert set(plan.delete) == {str(stages / "sft2"), str(stages / "dpo/trainer/checkpoint-5"),
                                str(stages / "dpo/trainer/checkpoint-10")}
    expected = sum(lin.node(k).bytes for k in plan.delete)
    assert plan.bytes_reclaimed == expected > 0

    result = cleanup.execute(plan, lin)
    assert result.bytes_freed == expected
    assert not (stages / "sft2").exists() and not (stages / "dpo" / "trainer").exists()
    forward_with(stages / "merge1", stages / "dpo")
    forward_with(lin.node(str(stages / "sft1")).base_ref and Path(
        lin.node(str(stages / "sft1")).base_ref), stages / "sft1")
    after = lineage.scan([runs])
    dpo = after.node(str(stages / "dpo"))
    assert dpo.broken is None  # continued_from is provenance: dpo still loads and exports
    assert any("continued_from" in w and result.cleanup in w for w in dpo.warnings)


def test_a_kept_nested_checkpoint_survives_its_stage_directory(runs: Path) -> None:
    lin = lineage.scan([runs])
    plan = cleanup.plan_cleanup(lin, [cleanup.parse_keep("run1/stages/dpo/trainer/*-10")])
    stages = runs.resolve() / "run1" / "stages"
    ckpt = stages / "dpo" / "trainer" / "checkpoint-10"
    assert str(stages / "dpo") in plan.delete
    assert plan.leave[str(stages / "dpo")] == (str(ckpt),)
    cleanup.execute(plan, lin)
    assert not (stages / "dpo" / "adapter_model.safetensors").exists()
    assert not (stages / "dpo" / "trainer" / "checkpoint-5").exists()
    forward_with(stages / "merge1", ckpt)


def test_running_run_is_refused_until_its_engine_is_gone(runs: Path, toy_base: Path) -> None:
    live = make_run(runs, "live", toy_base)
    engine = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        _state(live, "running", engine.pid)
        lin = lineage.scan([runs])
        plan = cleanup.plan_cleanup(lin, [cleanup.parse_keep("run1/stages/dpo")])
        live_keys = {n.key for n in lin.nodes if n.run == "live"}
        assert live_keys and live_keys <= set(plan.refused) | set(plan.protected)
        assert not live_keys & set(plan.delete)

        # Planned while stopped, then the run starts before the deletion: skipped, not forced.
        _state(live, "stopped", engine.pid)
        lin = lineage.scan([runs])
        plan = cleanup.plan_cleanup(lin, [cleanup.parse_keep("run1/stages/dpo")])
        assert live_keys & set(plan.delete)
        before = files_under(live)
        _state(live, "running", engine.pid)
        result = cleanup.execute(plan, lin)
        assert {p for p, why in result.skipped if why == "its run is running"} == \
            live_keys & set(plan.delete)
        assert files_under(live) == {**before, "state.json": (live / "state.json").stat().st_size}
    finally:
        engine.kill()
        engine.wait()
    plan = cleanup.plan_cleanup(lineage.scan([runs]), [cleanup.parse_keep("run1/stages/dpo")])
    assert not plan.refused  # the engine is gone (its pid is dead): the run is not running


def test_broken_adapter_says_which_cleanup_removed_its_base(runs: Path, tmp_path: Path) -> None:
    stages = runs / "run1" / "stages"
    elsewhere = tmp_path / "elsewhere"
    make_adapter(elsewhere / "mine", stages / "merge1", seed=9)
    lin = lineage.scan([runs])
    plan = cleanup.plan_cleanup(lin, [cleanup.parse_keep("sft1")])
    assert str(stages.resolve() / "merge1") in plan.delete
    result = cleanup.execute(plan, lin)
    mine = lineage.scan([elsewhere]).nodes
    broken = next(n for n in mine if n.id == "mine").broken
    assert broken is not None and f"removed by cleanup {result.cleanup}" in broken
    assert cleanup.removed_by(stages / "merge1").startswith(f"cleanup {result.cleanup} at ")
    assert cleanup.removed_by(tmp_path / "never-existed") is None


def _many_dirs(root: Path, count: int, files: int) -> None:
    for i in range(count):
        d = root / f"junk-{i:03d}"
        d.mkdir(parents=True)
        (d / "adapter_config.json").write_text(json.dumps(
            {"base_model_name_or_path": "org/model", "r": 4, "lora_alpha": 8}))
        for j in range(files):
            (d / f"shard-{j:04d}.bin").write_bytes(b"0" * 64)


_CHILD = """
import sys
from graftline.engine.lineage import cleanup
from graftline.engine import lineage
lin = lineage.scan([sys.argv[1]])
plan = cleanup.plan_cleanup(lin, [cleanup.parse_keep("keep-me")])
print("planned", flush=True)
cleanup.execute(plan, lin)
"""


# Dies by SIGKILL at the worst moment for the history: the third directory is gone, its history
# line not yet written (the last window a crash can hit between a removal and its record).
_CRASH_BEFORE_HISTORY = """
import os, signal, sys
from graftline.engine import lineage
from graftline.engine.lineage import cleanup, journal
real = journal.append_line
def append_line(path, record):
    if path.name == journal.HISTORY and len(journal.read_history(path.parent)) == 2:
        os.kill(os.getpid(), signal.SIGKILL)
    real(path, record)
journal.append_line = append_line
lin = lineage.scan([sys.argv[1]])
cleanup.execute(cleanup.plan_cleanup(lin, [cleanup.parse_keep("keep-me")]), lin)
"""


def test_a_directory_removed_just_before_a_crash_is_in_the_history(tmp_path: Path) -> None:
    from graftline.engine.lineage.journal import read_history

    root = tmp_path / "runs"
    _many_dirs(root, 5, 2)
    (root / "keep-me").mkdir()
    (root / "keep-me" / "adapter_config.json").write_text('{"base_model_name_or_path": "o/m"}')
    child = subprocess.run([sys.executable, "-c", _CRASH_BEFORE_HISTORY, str(root)], timeout=120)
    assert child.returncode == -signal.SIGKILL
    job = cleanup.pending_cleanup(root)
    assert job is not None and len(job.done) == 2
    (lost,) = job.begun - job.done  # the directory the crash cut short of its record
    assert not Path(lost).exists() and len(read_history(root)) == 2
    # something else removes a planned directory meanwhile: not this cleanup's to record
    other = next(e["path"] for e in job.remaining if e["path"] != lost)
    shutil.rmtree(other)

    result = cleanup.finish_pending(root)
    assert result is not None and result.resumed and lost in result.removed
    history = read_history(root)
    assert lost in history and history[lost].cleanup == job.cleanup
    assert other not in history and other not in result.removed
    assert sorted(history) == sorted(set(e["path"] for e in job.entries) - {other})
    assert sorted(p.name for p in root.iterdir() if not p.name.startswith(".")) == ["keep-me"]


def test_a_killed_cleanup_is_reported_and_finished_next_time(tmp_path: Path) -> None:
    root = tmp_path / "runs"
    journal = root / ".graftline-cleanup.journal.jsonl"
    files = 300
    for _attempt in range(4):  # kill while it deletes; on a very fast disk, give it more to do
        shutil.rmtree(root, ignore_errors=True)
        _many_dirs(root, 40, files)
        # a link out of the root inside what is deleted: the target outside must survive
        canary = tmp_path / "outside" / "canary.txt"
        canary.parent.mkdir(exist_ok=True)
        canary.write_text("keep")
        for i in (0, 39):
            (root / f"junk-{i:03d}" / "escape").symlink_to(canary.parent)
        make_dir = root / "keep-me"
        make_dir.mkdir()
        (make_dir / "adapter_config.json").write_text('{"base_model_name_or_path": "org/m"}')
        child = subprocess.Popen([sys.executable, "-c", _CHILD, str(root)],
                                 stdout=subprocess.PIPE, text=True)
        assert child.stdout is not None and child.stdout.readline().strip() == "planned"
        while child.poll() is None:
            if journal.exists() and '"done"' in journal.read_text():
                child.send_signal(signal.SIGKILL)
                break
            time.sleep(0.001)
        child.wait()
        if child.returncode == -signal.SIGKILL and journal.exists():
            break
        files *= 2
    else:
        pytest.skip("could not interrupt the cleanup on this machine")

    job = cleanup.pending_cleanup(root)
    assert job is not None and job.done and job.remaining
    assert lineage.scan([root]).journals == (str(root.resolve()),)
    with pytest.raises(cleanup.CleanupError, match="interrupted"):
        lin = lineage.scan([root])
        cleanup.execute(cleanup.plan_cleanup(lin, [cleanup.parse_keep("keep-me")]), lin)

    runner = CliRunner()
    dry = runner.invoke(app, ["cleanup", str(root), "--keep", "keep-me"])
    assert dry.exit_code == 0 and "was interrupted" in " ".join(dry.output.split())
    assert cleanup.pending_cleanup(root) is not None
    done = runner.invoke(app, ["cleanup", str(root), "--keep", "keep-me", "--yes"])
    assert done.exit_code == 0, done.output
    assert f"Cleanup {job.cleanup} finished" in " ".join(done.output.split())
    assert cleanup.pending_cleanup(root) is None
    assert sorted(p.name for p in root.iterdir() if not p.name.startswith(".")) == ["keep-me"]
    assert canary.read_text() == "keep" and list(canary.parent.iterdir()) == [canary]
    from graftline.engine.lineage.journal import read_history

    history = read_history(root)
    assert {r.cleanup for r in history.values()} == {job.cleanup}
    assert len(history) == 40

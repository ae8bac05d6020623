"""The dashboard tells the truth about a run's state: paused, crashed, stopped, resumed,
finished with an evaluation, and a live run whose checks panel follows the running stage.

Event logs are written with the engine's own EventWriter in the engine's schema (the shapes
runner.py and daemon.py emit); state.json with the engine's own state module. Where a live
engine is needed, the test process stands in for it (a real, live pid with a fresh heartbeat);
a crashed engine is a real process that has really exited.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
from console_support import screen_text, wait_for

from graftline.console.app import GraftlineApp
from graftline.console.screens.dashboard import DashboardScreen
from graftline.console.widgets.checks_panel import ChecksPanel
from graftline.console.widgets.log_tail import LogTail
from graftline.console.widgets.pipeline_table import PipelineTable
from graftline.engine.run.events import EventWriter
from graftline.engine.run.state import RunState, write

pytestmark = pytest.mark.asyncio
WIDE = (120, 40)
PLAN = [("sft", "sft", 10), ("merged", "merge", None), ("ipo", "dpo", 10), ("grpo", "grpo", 10)]
IPO_CHECKS = ["single_adapter", "trainable_fraction", "lora_config_kept", "reference_start",
              "base_unchanged", "no_stray_ref", "adapter_base", "generation_sanity"]


def writer(run_dir: Path) -> EventWriter:
    run_dir.mkdir(parents=True, exist_ok=True)
    return EventWriter(run_dir)


def start(writer: EventWriter, run: str, *, resumed: bool = False,
          plan: list[tuple[str, str, int | None]] = PLAN) -> None:
    writer.emit("run_started", run=run, pipeline="p.toml", backend="hf", resumed=resumed,
                stages=[{"name": n, "kind": k, "action": "new", "reference": None,
                         "max_steps": m} for n, k, m in plan])
    writer.emit("telemetry", gpus=None, gpu=None,
                gpu_reason="no GPU: NVMLError_LibraryNotFound: NVML Shared Library Not Found",
                proc_gpu_bytes=None, rss=600_000_000, ram_used=2e9, ram_total=8e9,
                cpu_percent=99.0, disk_free=5e10, forecast_bytes=1e6)


def train(writer: EventWriter, stage: str, kind: str, offset: int, steps: range, total: int,
          **extra: float) -> None:
    for step in steps:
        writer.emit("metrics", stage, step=step, global_step=offset + step, max_steps=total,
                    loss=2.0 / step, steps_per_s=2.0, eta_s=(total - step) / 2,
                    tokens_per_s=100.0, **extra)


def stage(writer: EventWriter, name: str, kind: str, index: int, offset: int,
          steps: int | None, *, checks: list[str] = (), resumed_from: str | None = None,
          finish: str | None = "complete", first: int = 1,
          evaluation: dict[str, float] | None = None) -> None:
    writer.emit("stage_started", name, kind=kind, index=index, max_steps=steps,
                global_step_offset=offset, action="new", reference=None,
                resumed_from=resumed_from)
    if steps:
        train(writer, name, kind, offset, range(first, steps + 1 if finish else first + 3),
              steps)
    for check in checks:
        writer.emit("check_result", name, name=check, status="pass",
                    message=f"{check} looks right", data={})
    if finish is None:
        return
    if finish == "complete" and kind != "eval":
        writer.emit("checkpoint_saved", name, path=f"stages/{name}",
                    kind="merged" if kind == "merge" else "adapter", id=name, bytes=100_000)
    writer.emit("stage_finished", name, kind=kind, status=finish, seconds=5.0,
                metrics={}, evaluation=evaluation or {})


def live_state(run_dir: Path, status: str) -> None:
    """state.json for a live engine: this test process is its stand-in."""
    me = psutil.Process()
    write(run_dir, RunState(run_id=run_dir.name, pipeline="p.toml", status=status,
                            pid=me.pid, pid_started=me.create_time(), started=time.time(),
                            heartbeat=time.time()))


def dead_state(run_dir: Path) -> None:
    """state.json as a killed engine leaves it: `running`, the pid of a process that is gone."""
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    write(run_dir, RunState(run_id=run_dir.name, pipeline="p.toml", status="running",
                            pid=gone.pid, pid_started=time.time() - 5, started=time.time() - 60,
                            heartbeat=time.time() - 120))


def row_status(app: GraftlineApp, name: str) -> str:
    table = app.screen.query_one(PipelineTable)
    return str(table.get_cell(name, "status"))


async def attach(pilot) -> DashboardScreen:  # type: ignore[no-untyped-def]
    await wait_for(pilot, lambda: isinstance(pilot.app.screen, DashboardScreen)
                   and pilot.app.screen.loaded, what="the dashboard to load")
    return pilot.app.screen


def mid_ipo(run_dir: Path) -> None:
    with writer(run_dir) as w:
        start(w, run_dir.name)
        stage(w, "sft", "sft", 0, 0, 10, checks=["single_adapter"])
        stage(w, "merged", "merge", 1, 10, None)
        stage(w, "ipo", "dpo", 2, 10, 10, finish=None)


async def test_paused_run_says_paused_on_the_row_and_p_offers_to_continue(
        tmp_path: Path) -> None:
    run = tmp_path / "runs" / "paused-run"
    mid_ipo(run)
    with writer(run) as w:
        w.emit("info", "ipo", message="paused")
    live_state(run, "paused")
    app = GraftlineApp(run, run.parent, ascii_only=False)
    async with app.run_test(size=WIDE) as pilot:
        await attach(pilot)
        await wait_for(pilot, lambda: "paused" in row_status(app, "ipo"), what="paused row")
        text = screen_text(app)
        assert "PAUSED" in text and "p continues" in text
        assert "▶ running" not in text
        # while paused, the engine's CPU and memory are still the truth: shown
        assert "engine CPU" in text
        # no library's error text for the missing GPU
        assert "NVML" not in text and "no NVIDIA driver" in text


async def test_crashed_run_says_so_with_the_way_to_resume(tmp_path: Path) -> None:
    run = tmp_path / "runs" / "crashed-run"
    mid_ipo(run)
    dead_state(run)
    app = GraftlineApp(run, run.parent, ascii_only=False)
    async with app.run_test(size=WIDE) as pilot:
        await attach(pilot)
        await wait_for(pilot, lambda: "crashed" in row_status(app, "ipo"), what="crashed row")
        text = screen_text(app)
        assert "CRASHED" in text and "R resumes" in text
        log = app.screen.query_one(LogTail)
        assert any(line.level == "error" and "graftline resume crashed-run" in line.text
                   for line in log.lines)
        assert "engine not running" in text and "engine CPU" not in text
        await pilot.press("p")
        await wait_for(pilot, lambda: any("nothing to pause" in n.message
                                          for n in app._notifications), what="p's answer")
        assert not any("control socket" in n.message for n in app._notifications)
        await pilot.press("R")  # asks first; "n" leaves the run alone
        await pilot.press("n")
        assert isinstance(app.screen, DashboardScreen)


async def test_stopped_run_is_not_an_error(tmp_path: Path) -> None:
    run = tmp_path / "runs" / "stopped-run"
    mid_ipo(run)
    with writer(run) as w:
        w.emit("info", "ipo", message="stop requested: saving, then stopping")
        w.emit("stage_finished", "ipo", kind="dpo", status="stopped", seconds=3.0, metrics={},
               evaluation={})
        w.emit("run_finished", None, status="stopped", message="stopped during 'ipo'; "
               "`graftline resume` continues from its last Trainer checkpoint")
    write(run, RunState(run_id=run.name, pipeline="p.toml", status="stopped"))
    app = GraftlineApp(run, run.parent, ascii_only=False)
    async with app.run_test(size=WIDE) as pilot:
        await attach(pilot)
        assert "stopped" in row_status(app, "ipo")
        text = screen_text(app)
        assert "STOPPED" in text and "R resumes" in text
        log = app.screen.query_one(LogTail)
        assert not any(line.level == "error" for line in log.lines)
        assert "ERROR" not in text
        await pilot.press("p")
        await wait_for(pilot, lambda: any("nothing to pause" in n.message
                                          for n in app._notifications), what="p's answer")


async def test_resumed_run_keeps_earlier_stages_done(tmp_path: Path) -> None:
    run = tmp_path / "runs" / "resumed-run"
    mid_ipo(run)
    with writer(run) as w:
        w.emit("stage_finished", "ipo", kind="dpo", status="stopped", seconds=3.0, metrics={},
               evaluation={})
        w.emit("run_finished", None, status="stopped", message="stopped during 'ipo'")
        # `graftline resume`: the engine skips the stages it finds complete
        start(w, run.name, resumed=True)
        w.emit("stage_finished", "sft", kind="sft", status="skipped", seconds=0.0, metrics={},
               evaluation={})
        w.emit("stage_finished", "merged", kind="merge", status="skipped", seconds=0.0,
               metrics={}, evaluation={})
        stage(w, "ipo", "dpo", 2, 10, 10, resumed_from="stages/ipo/trainer/checkpoint-3",
              finish=None, first=4)
    live_state(run, "running")
    app = GraftlineApp(run, run.parent, ascii_only=False)
    async with app.run_test(size=WIDE) as pilot:
        await attach(pilot)
        assert "done earlier" in row_status(app, "sft")
        assert "done earlier" in row_status(app, "merged")
        assert "resumed" in row_status(app, "ipo")
        text = screen_text(app)
        assert "skipped" not in text and "RUNNING (resumed)" in text
        model = app.screen.follower.model
        # what sft did before the resume is kept, not replaced by the skip's zeros
        assert model.stages[0].seconds == 5.0 and model.stages[0].checks


async def test_finished_run_with_evaluation_shows_it(tmp_path: Path) -> None:
    run = tmp_path / "runs" / "eval-run"
    plan = [("sft", "sft", 10), ("eval", "eval", None)]
    with writer(run) as w:
        start(w, run.name, plan=plan)
        w.emit("stage_started", "sft", kind="sft", index=0, max_steps=10, global_step_offset=0,
               action="new", reference=None, resumed_from=None)
        for step in range(1, 11):
            train(w, "sft", "sft", 0, range(step, step + 1), 10)
            if step % 5 == 0:  # the trainer's evaluation log: no training rate in it
                w.emit("metrics", "sft", step=step, global_step=step, max_steps=10,
                       eval_loss=1.5 / step, eval_runtime=0.2, eval_samples_per_second=50.0,
                       steps_per_s=None, eta_s=0.0)
        w.emit("checkpoint_saved", "sft", path="stages/sft", kind="adapter", id="a", bytes=1000)
        w.emit("stage_finished", "sft", kind="sft", status="complete", seconds=5.0,
               metrics={}, evaluation={})
        stage(w, "eval", "eval", 1, 10, None,
              evaluation={"rows": 200.0, "loss": 0.4123, "exact_match": 0.79})
        w.emit("run_finished", None, status="finished", message="2 stages done")
    write(run, RunState(run_id=run.name, pipeline="p.toml", status="finished"))
    app = GraftlineApp(run, run.parent, ascii_only=False)
    async with app.run_test(size=WIDE) as pilot:
        screen = await attach(pilot)
        table = app.screen.query_one(PipelineTable)
        assert "exact 79.0%" in str(table.get_cell("eval", "metric"))
        assert "eval 0.1500" in str(table.get_cell("sft", "metric"))
        log = [line.text for line in app.screen.query_one(LogTail).lines]
        assert any("evaluation at step 5: eval_loss 0.3000" in t for t in log)
        assert any("exact_match 79.0%" in t and "200 rows" in t for t in log)
        assert not any("steps_per_s" in t for t in log)
        model = screen.follower.model
        # attach reads the run's summary, which keeps curves as float32
        assert list(model.series["eval_loss"].values) == pytest.approx([0.3, 0.15], rel=1e-6)
        assert "steps_per_s" not in model.series
        assert model.final_result() == "eval: loss 0.4123, exact_match 79.0% (200 rows)"
        # the chart marks evaluation points over the loss curve
        await pilot.press("m")  # "by stage" → loss
        await pilot.pause(0.2)
        assert "◆ eval" in screen_text(app)
        # p on a finished run answers in words, not with a socket error
        await pilot.press("p")
        await wait_for(pilot, lambda: any("has finished" in n.message
                                          for n in app._notifications), what="p's answer")
        assert not any("control socket" in n.message for n in app._notifications)


async def test_checks_panel_follows_a_live_run_until_the_cursor_moves(tmp_path: Path) -> None:
    run = tmp_path / "runs" / "live-run"
    with writer(run) as w:
        start(w, run.name)
        stage(w, "sft", "sft", 0, 0, 10, checks=["single_adapter", "trainable_fraction"])
        stage(w, "merged", "merge", 1, 10, None, checks=["merge_equal"])
    live_state(run, "running")
    app = GraftlineApp(run, run.parent, ascii_only=False)
    async with app.run_test(size=WIDE) as pilot:
        screen = await attach(pilot)
        checks = app.screen.query_one(ChecksPanel)
        # the engine moves on to ipo, whose eight checks come in while we watch
        with writer(run) as w:
            stage(w, "ipo", "dpo", 2, 10, 10, checks=IPO_CHECKS, finish=None)
        await wait_for(pilot, lambda: "ipo" in str(checks.border_title)
                       and len(checks.lines) == 8, what="the panel to follow ipo")
        assert screen.selected_stage == "ipo"
        assert all("looks right" in line.plain for line in checks.lines)
        # eight checks do not fit: the panel scrolls to the last one
        assert checks.max_scroll_y > 0
        checks.scroll_end(animate=False)
        await pilot.pause()
        assert "generation_sanity" in screen_text(app)
        # the user looks at sft: the panel stays there while the run moves on
        await pilot.press("up", "up")
        assert screen.selected_stage == "sft" and "sft" in str(checks.border_title)
        with writer(run) as w:
            w.emit("stage_finished", "ipo", kind="dpo", status="complete", seconds=5.0,
                   metrics={}, evaluation={})
            stage(w, "grpo", "grpo", 3, 20, 10, checks=["single_adapter"], finish=None)
        await wait_for(pilot, lambda: "running" in row_status(app, "grpo"),
                       what="grpo running")
        assert screen.selected_stage == "sft" and "checks · sft" in str(checks.border_title)
        await pilot.press("f")
        await wait_for(pilot, lambda: screen.selected_stage == "grpo", what="following grpo")

"""The console under Textual's Pilot, on a run recorded by the real engine (tests/fixtures)."""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from console_support import (
    export_workers,
    install_recorded_run,
    recorded_meta,
    screen_text,
    unreaped,
    wait_for,
)
from textual.widgets import Checkbox, Input, Select, Tree

from graftline.console.app import GraftlineApp
from graftline.console.screens.confirm import ConfirmModal
from graftline.console.screens.dashboard import DashboardScreen
from graftline.console.screens.export import ExportedModel, ExportModal
from graftline.console.screens.help import HelpScreen
from graftline.console.screens.launch import LaunchScreen
from graftline.console.screens.lineage import LineageScreen
from graftline.console.screens.runs import RunsScreen
from graftline.console.widgets.chart import MetricChart
from graftline.console.widgets.checks_panel import ChecksPanel

sys.path.insert(0, str(Path(__file__).parent / "fixtures"))
from synthetic_run import write_synthetic_run

pytestmark = pytest.mark.asyncio
WIDE = (120, 40)
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture()
def recorded(tmp_path: Path, toy_base: Path) -> Path:
    return install_recorded_run(tmp_path / "runs", toy_base)


def make_app(run_dir: Path | None, runs_dir: Path, **kw) -> GraftlineApp:  # type: ignore[no-untyped-def]
    return GraftlineApp(run_dir, runs_dir, ascii_only=kw.pop("ascii_only", False), **kw)


async def loaded_dashboard(pilot) -> DashboardScreen:  # type: ignore[no-untyped-def]
    await wait_for(pilot, lambda: isinstance(pilot.app.screen, DashboardScreen)
                   and pilot.app.screen.loaded, what="the dashboard to load")
    return pilot.app.screen


async def test_dashboard_shows_the_recorded_run(recorded: Path) -> None:
    app = make_app(recorded, recorded.parent)
    async with app.run_test(size=WIDE) as pilot:
        screen = await loaded_dashboard(pilot)
        text = screen_text(app)
        assert recorded_meta()["run_id"] in text and "FINISHED" in text
        for stage in ("sft", "merged", "sft_r8", "ipo"):
            assert stage in text
        assert "complete" in text and "continue" in text
        assert "loss" in text and "run finished" in text
        # the engine has exited: no stale CPU or memory figures
        assert "engine not running" in text and "CPU" not in text
        model = screen.follower.model
        assert [s.status for s in model.stages] == ["complete"] * 4
        assert len(model.series["loss"]) >= 10


async def test_navigate_stages_updates_the_checks_panel(recorded: Path) -> None:
    app = make_app(recorded, recorded.parent)
    async with app.run_test(size=WIDE) as pilot:
        screen = await loaded_dashboard(pilot)
        # a finished run: the cursor starts on the stage holding the final model
        assert screen.selected_stage == "ipo" and screen.following
        await pilot.press("up")
        assert screen.selected_stage == "sft_r8" and not screen.following
        checks = app.screen.query_one(ChecksPanel)
        assert "sft_r8" in str(checks.border_title)
        # each check with its message, not a bare name
        assert any("continues 'sft'" in line.plain for line in checks.lines)
        await pilot.press("up")
        assert screen.selected_stage == "merged"
        await pilot.press("f")
        await wait_for(pilot, lambda: screen.selected_stage == "ipo", what="following again")


async def test_switch_chart_metric(recorded: Path) -> None:
    app = make_app(recorded, recorded.parent)
    async with app.run_test(size=WIDE) as pilot:
        await loaded_dashboard(pilot)
        chart = app.screen.query_one(MetricChart)
        first = chart.shown_metric
        # by default each training stage shows its kind's metric on its own scale, named
        assert first == "by stage" and len(chart.metrics) >= 3
        assert [(s.name, s.metric) for s in chart.segments] == [
            ("sft", "loss"), ("sft_r8", "loss"), ("ipo", "rewards/margins")]
        text = screen_text(app)
        assert "sft loss" in text and "ipo margin" in text
        await pilot.press("m")
        second = chart.shown_metric
        assert second == chart.metrics[0] and second in screen_text(app)
        for _ in range(len(chart.metrics)):
            await pilot.press("m")
        assert chart.shown_metric == first


async def test_ascii_fallback_draws_no_braille(recorded: Path) -> None:
    app = make_app(recorded, recorded.parent, ascii_only=True)
    async with app.run_test(size=(80, 24)) as pilot:
        await loaded_dashboard(pilot)
        chart_text = app.screen.query_one(MetricChart).render().plain
        assert "*" in chart_text
        assert not any(0x2800 <= ord(c) <= 0x28FF for c in chart_text)


async def test_help_theme_cycle_and_detach(recorded: Path) -> None:
    app = make_app(recorded, recorded.parent)
    async with app.run_test(size=(80, 24)) as pilot:
        await loaded_dashboard(pilot)
        await pilot.press("question_mark")
        assert isinstance(app.screen, HelpScreen)
        assert "Detach" in screen_text(app) and "keeps running" in screen_text(app)
        await pilot.press("escape")
        assert isinstance(app.screen, DashboardScreen)
        assert app.theme == "graftline-dark"
        await pilot.press("t")
        assert app.theme == "graftline-light"
        await pilot.press("t", "t")
        assert app.theme == "graftline-dark"
        await pilot.press("q")
    assert app.return_value is not None and "not running" in app.return_value


async def test_stop_needs_a_confirmation(tmp_path: Path) -> None:
    run = write_synthetic_run(tmp_path / "runs" / "live", stop_in="ipo", finish=False)
    app = make_app(run, run.parent)
    async with app.run_test(size=WIDE) as pilot:
        await loaded_dashboard(pilot)
        await pilot.press("s")
        assert isinstance(app.screen, ConfirmModal)
        await pilot.press("n")
        assert isinstance(app.screen, DashboardScreen)
        assert any("Not stopped" in n.message for n in app._notifications)
        await pilot.press("s")
        await pilot.press("y")
        # No engine behind this run: the command is really sent and really fails, loudly.
        await wait_for(pilot, lambda: any("stop failed" in n.message
                                          for n in app._notifications), what="stop reply")


async def test_user_theme_file_and_bad_theme(tmp_path: Path, monkeypatch, recorded: Path) -> None:  # type: ignore[no-untyped-def]
    themes = tmp_path / "themes"
    themes.mkdir()
    (themes / "ocean.toml").write_text('primary = "#0087af"\nbackground = "#001f2f"\n')
    (themes / "broken.toml").write_text('primary = "#0087af"\ncolour = "red"\n')
    monkeypatch.setenv("GRAFTLINE_THEMES", str(themes))
    app = make_app(recorded, recorded.parent, theme="ocean")
    async with app.run_test(size=(80, 24)) as pilot:
        await loaded_dashboard(pilot)
        assert app.theme == "ocean" and "ocean" in app.cycle
        assert any("broken.toml" in p and "colour" in p for p in app.theme_problems)
    app = make_app(recorded, recorded.parent, theme="nope")
    async with app.run_test(size=(80, 24)) as pilot:
        await loaded_dashboard(pilot)
        assert app.theme == "graftline-dark"
        assert any("'nope' not found" in p for p in app.theme_problems)


async def wait_lineage(pilot) -> LineageScreen:  # type: ignore[no-untyped-def]
    await wait_for(pilot, lambda: isinstance(pilot.app.screen, LineageScreen)
                   and pilot.app.screen.scans > 0, what="the lineage scan")
    return pilot.app.screen


def select_node(screen: LineageScreen, name: str) -> None:
    tree = screen.query_one(Tree)
    stack = list(tree.root.children)
    while stack:
        node = stack.pop()
        if screen.lineage.node(node.data).name == name:
            tree.move_cursor(node)
            return
        stack.extend(node.children)
    raise AssertionError(f"{name} not in the tree")


async def test_lineage_plan_cleanup_cancel_then_confirm(recorded: Path) -> None:
    app = make_app(recorded, recorded.parent)
    async with app.run_test(size=WIDE) as pilot:
        await loaded_dashboard(pilot)
        await pilot.press("l")
        screen = await wait_lineage(pilot)
        names = {n.name: n for n in screen.lineage.nodes}
        assert {"sft", "merged", "sft_r8", "ipo"} <= set(names)
        select_node(screen, "merged")
        await pilot.pause()
        detail = screen_text(app)
        assert "needed by" in detail and "ipo" in detail
        await pilot.press("c")
        select_node(screen, "ipo")
        await pilot.pause()
        await pilot.press("k", "x")
        plan = screen.plan
        assert plan is not None
        merged = names["merged"].key
        assert merged in plan.protected  # the kept adapter's base is never deleted
        doomed = [screen.lineage.node(k).name for k in plan.delete]
        assert "sft_r8" in doomed and "merged" not in doomed
        assert "reclaim" in screen_text(app)
        sft_r8 = Path(names["sft_r8"].path)
        await pilot.press("D")
        assert isinstance(app.screen, ConfirmModal)
        await pilot.press("n")
        assert sft_r8.exists()  # cancelled: nothing deleted
        await pilot.press("D")
        await pilot.press("y")
        await wait_for(pilot, lambda: screen.deleted == 1 and screen.scans >= 2,
                       what="the cleanup and rescan")
        assert not sft_r8.exists()
        assert Path(names["merged"].path).exists() and Path(names["ipo"].path).exists()
        await pilot.press("escape", "escape")
        assert isinstance(app.screen, DashboardScreen)


async def _open_export(pilot: Any) -> ExportModal:
    """`e`, and the export dialog once it has planned, in the one worker process it started."""
    await pilot.press("e")
    await wait_for(pilot, lambda: isinstance(pilot.app.screen, ExportModal)
                   and pilot.app.screen.planned > 0, timeout=60, what="the export plan")
    modal = pilot.app.screen
    assert modal.process is not None and modal.process.pid in export_workers()
    return modal


async def _replan(pilot: Any, modal: ExportModal, out: Path) -> None:
    modal.query_one("#out", Input).value = str(out)
    await wait_for(pilot, lambda: modal.plan is not None and modal.plan["out"] == str(out),
                   timeout=60, what="the re-plan")


async def _run_export(pilot: Any, modal: ExportModal, out: Path, timeout: float = 150) -> None:
    """Point the dialog at `out`, wait for the re-plan, export, and wait for the verified result,
    which the dialog's one worker process wrote (the one that planned) while reporting
    progress."""
    worker = modal.process
    assert worker is not None
    await _replan(pilot, modal, out)
    await pilot.press("ctrl+e")
    await wait_for(pilot, lambda: modal.finished > 0, timeout=timeout, what="the export")
    assert modal.result is not None and modal.result["ok"], screen_text(pilot.app)
    assert modal.progress_events > 0
    assert modal.process is worker and worker.poll() is None  # it serves on
    assert export_workers() == {worker.pid}


async def _close_export(pilot: Any, modal: ExportModal) -> None:
    """Close the dialog: its worker ends and is reaped (no `<defunct>` left under the console)."""
    workers = export_workers()
    assert modal.process is not None and workers == {modal.process.pid}
    await pilot.press("escape")
    await wait_for(pilot, lambda: not unreaped(workers), timeout=30,
                   what="the export worker to end and be reaped")
    assert not isinstance(pilot.app.screen, ExportModal)


async def test_export_from_lineage_plans_the_selected_checkpoint(recorded: Path) -> None:
    """`e` on a lineage node plans that checkpoint's export with the chain it merges (the export
    itself is run by the attach and GGUF tests below, through the same dialog)."""
    app = make_app(recorded, recorded.parent)
    async with app.run_test(size=WIDE) as pilot:
        await loaded_dashboard(pilot)
        await pilot.press("l")
        screen = await wait_lineage(pilot)
        select_node(screen, "ipo")
        await pilot.pause()
        modal = await _open_export(pilot)
        assert modal.checkpoint == recorded / "stages" / "ipo"
        assert modal.plan is not None, screen_text(app)
        text = screen_text(app)
        assert "merged" in text and "ipo" in text  # the chain that will be applied
        await _close_export(pilot, modal)
        assert isinstance(app.screen, LineageScreen)


async def test_export_dialog_replans_in_one_worker_and_leaves_none_behind(
        recorded: Path, tmp_path: Path) -> None:
    """`e` on the stage under the cursor. Every re-plan (target, dtype, a refused target) goes
    to the one worker process the dialog started; a worker that dies is said so and replaced by
    the next plan; closing the dialog ends the worker and reaps it."""
    app = make_app(recorded, recorded.parent)
    async with app.run_test(size=WIDE) as pilot:
        screen = await loaded_dashboard(pilot)
        await pilot.press("down", "down", "down")
        assert screen.selected_stage == "ipo"
        modal = await _open_export(pilot)
        assert modal.checkpoint.name == "ipo"
        worker = modal.process
        assert worker is not None and "serve" in worker.args
        assert export_workers() == {worker.pid}
        for n in (1, 2):
            await _replan(pilot, modal, tmp_path / f"out-{n}")
            assert export_workers() == {worker.pid}
        planned = modal.planned
        modal.query_one("#dtype", Select).value = "float32"
        await wait_for(pilot, lambda: modal.planned > planned, what="the dtype's plan")
        planned = modal.planned
        modal.query_one("#out", Input).value = str(modal.checkpoint)  # the checkpoint itself
        await wait_for(pilot, lambda: modal.planned > planned and modal.plan is None,
                       what="the refusal")
        assert modal.query_one("#start").disabled
        assert export_workers() == {worker.pid}  # a refusal is an answer, not a crash

        os.kill(worker.pid, signal.SIGKILL)
        await wait_for(pilot, lambda: "export worker stopped" in screen_text(app),
                       what="the dialog to say its worker died")
        assert "SIGKILL" in screen_text(app) and modal.plan is None
        assert not unreaped({worker.pid}) and not export_workers()
        await _replan(pilot, modal, tmp_path / "out-3")  # the next plan starts a fresh worker
        assert modal.process is not None and modal.process is not worker
        assert export_workers() == {modal.process.pid}

        await _close_export(pilot, modal)
        assert isinstance(app.screen, DashboardScreen)
        assert not any((tmp_path / f"out-{n}").exists() for n in (1, 2, 3))  # plans write nothing


async def test_export_key_on_attach_exports_the_final_model(recorded: Path,
                                                            tmp_path: Path) -> None:
    """Freshly attached, cursor untouched: `e` takes the pipeline's final model (the last
    adapter of the chain), shows the chain that will be merged and the absolute target; the
    export runs in the dialog's worker process, which reports progress. Closed while it runs,
    the dialog lets the export finish in the background: the console is told, the worker ends
    and is reaped, and the export is verified."""
    app = make_app(recorded, recorded.parent)
    async with app.run_test(size=WIDE) as pilot:
        await loaded_dashboard(pilot)
        modal = await _open_export(pilot)
        assert modal.checkpoint == recorded / "stages" / "ipo"
        assert modal.plan is not None, screen_text(app)
        text = screen_text(app)
        assert "final model" in text
        assert "merged → ipo" in text.replace("\n", " ") or "merged" in modal.plan["chain"]
        target = modal.query_one("#out", Input).value
        assert Path(target).is_absolute() and target == str(recorded.parent / "exports" / "ipo")
        assert modal.plan["out"] == target
        out = tmp_path / "exported"
        await _replan(pilot, modal, out)
        await pilot.press("ctrl+e")
        await wait_for(pilot, lambda: modal.progress_events > 0, timeout=60,
                       what="the export's first progress")
        workers = export_workers()
        await pilot.press("escape")
        assert not isinstance(app.screen, ExportModal) and modal.running
        notes = lambda: [n.message for n in app._notifications]  # noqa: E731
        assert any("keeps running in the background" in n for n in notes())
        await wait_for(pilot, lambda: f"export finished: {out}" in notes(), timeout=150,
                       what="the console to be told the export finished")
        await wait_for(pilot, lambda: not unreaped(workers), timeout=30,
                       what="the export worker to end and be reaped")
    assert (out / "config.json").is_file() and list(out.glob("*.safetensors"))
    exported = ExportedModel.read(out)
    assert exported is not None and exported.verified is True, exported


async def test_export_dialog_offers_gguf_when_it_can_and_says_why_when_not(
        recorded: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The dialog's formats come from the engine's look-up: with the converter installed a
    q8_0 GGUF is written and verified tensor by tensor in the child process; without it the
    box is off and the dialog names the reason."""
    app = make_app(recorded, recorded.parent)
    async with app.run_test(size=WIDE) as pilot:
        await loaded_dashboard(pilot)
        modal = await _open_export(pilot)
        gguf = modal.query_one("#fmt-gguf", Checkbox)
        assert not gguf.disabled, screen_text(app)
        gguf.value = True
        modal.query_one("#gguf-type", Select).value = "q8_0"
        assert modal.options()["gguf_type"] == "q8_0"
        out = tmp_path / "exported"
        await _run_export(pilot, modal, out, timeout=200)
        assert "verified" in screen_text(app)
        written = list(out.glob("*.gguf"))
        assert [p.name for p in written] == ["model-q8_0.gguf"]
        assert json.loads((out / "gguf_verification.json").read_text())["passed"]
        workers = export_workers()

    monkeypatch.setenv("GRAFTLINE_GGUF_CONVERTER", str(tmp_path / "no-converter"))
    app = make_app(recorded, recorded.parent)
    async with app.run_test(size=WIDE) as pilot:
        await loaded_dashboard(pilot)
        modal = await _open_export(pilot)
        assert modal.query_one("#fmt-gguf", Checkbox).disabled
        assert "gguf: unavailable" in screen_text(app)
        workers |= export_workers()
    # the console quit twice with the dialog open: each worker ended with it, reaped
    deadline = time.monotonic() + 30
    while unreaped(workers) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not unreaped(workers) and not export_workers()


async def test_runs_screen_lists_and_attaches(recorded: Path) -> None:
    app = make_app(None, recorded.parent)
    async with app.run_test(size=WIDE) as pilot:
        await wait_for(pilot, lambda: isinstance(app.screen, RunsScreen)
                       and app.screen.listed > 0, what="the runs list")
        assert recorded.name in screen_text(app) and "finished" in screen_text(app)
        await pilot.press("enter")
        screen = await loaded_dashboard(pilot)
        assert screen.run_dir == recorded


async def test_launch_screen_validates_plans_and_refuses_errors(tmp_path: Path) -> None:
    folder = tmp_path / "work"
    (folder / "examples").mkdir(parents=True)
    good = (Path(__file__).parent / "fixtures" / "recorded.toml").read_text()
    good = good.replace("../../examples/data", str(Path(__file__).parents[1] / "examples/data"))
    (folder / "examples" / "good.toml").write_text(good)
    (folder / "bad.toml").write_text(good.replace('kind = "dpo"', 'kind = "dpoo"'))
    app = make_app(None, tmp_path / "empty-runs", launch_dir=folder)
    async with app.run_test(size=WIDE) as pilot:
        await wait_for(pilot, lambda: isinstance(app.screen, LaunchScreen)
                       and app.screen.checks > 0, what="the first check")
        screen = app.screen
        assert [p.name for p in screen.files] == ["bad.toml", "good.toml"]
        assert screen.report.file.name == "bad.toml" and not screen.report.ok
        assert "error" in screen_text(app) and "dpoo" in screen_text(app)
        await pilot.press("L")
        assert any("has errors" in n.message for n in app._notifications)
        await pilot.press("down")
        await wait_for(pilot, lambda: screen.report.file.name == "good.toml", what="good")
        assert screen.report.ok
        assert "plan" in screen_text(app) and "sft_r8" in screen_text(app)


async def test_launch_starts_at_once_and_the_engine_rehearses_and_refuses_what_it_catches(
    tmp_path: Path,
) -> None:
    """Validation calls a reward on real rows (where the answer stands in for the completion),
    so it cannot see a reward that breaks on what a model really writes; the rehearsal samples
    from a twin and catches it. L starts the run the way `graftline run -d` does and attaches at
    once: the rehearsal is the engine's first phase (no wait on the launch screen), and its
    failure ends the run before stage 1, on the dashboard's rehearsal row, with the fix."""
    from graftline.console.widgets.pipeline_table import PipelineTable

    folder = tmp_path / "work"
    (folder / "data").mkdir(parents=True)
    rows = (REPO / "examples" / "data" / "grpo.jsonl").read_text().splitlines()[:40]
    (folder / "data" / "grpo.jsonl").write_text("\n".join(rows) + "\n")
    (folder / "strict_rewards.py").write_text(
        "def as_number(prompts, completions, answer, **kwargs):\n"
        "    # fine on the data's answers, breaks on any output that is not a number\n"
        "    texts = [c if isinstance(c, str) else c[0]['content'] for c in completions]\n"
        "    return [float(int(t) == int(a)) for t, a in zip(texts, answer)]\n")
    (folder / "prefs.toml").write_text(
        '[pipeline]\nname = "prefs"\nbase = "toy:addition"\nruns_dir = "../runs"\n\n'
        '[[stage]]\nname = "grpo"\nkind = "grpo"\ndata = "data/grpo.jsonl"\n'
        'reward = ["strict_rewards:as_number"]\nnum_generations = 2\n'
        "max_completion_length = 6\nlora = { r = 4 }\n"
        "train = { max_steps = 20, batch_size = 4, max_length = 32 }\n")
    runs = tmp_path / "runs"
    app = make_app(None, runs, launch_dir=folder)
    async with app.run_test(size=WIDE) as pilot:
        await wait_for(pilot, lambda: isinstance(app.screen, LaunchScreen)
                       and app.screen.report is not None, what="the check")
        screen = app.screen
        assert screen.report.ok, screen_text(app)  # validation passes: the fault is in the data
        assert screen.rehearse_first
        await pilot.press("L")
        # attached at once: nothing slow happens on the launch screen
        await wait_for(pilot, lambda: isinstance(app.screen, DashboardScreen)
                       and app.screen.loaded, timeout=30, what="the dashboard")
        dashboard = app.screen
        await wait_for(pilot, lambda: dashboard.follower.model.status == "failed",
                       timeout=240, what="the rehearsal's verdict")
        model = dashboard.follower.model
        assert model.rehearsal is not None and model.rehearsal.get("status") == "failed"
        assert "rehearsal failed" in (model.message or "")
        table = dashboard.query_one(PipelineTable)
        await wait_for(pilot, lambda: str(table.get_row_at(0)[0]) == "rehearsal"
                       and "failed" in str(table.get_row_at(0)[2]), what="the rehearsal row")
        text = " ".join(screen_text(app).split())
        assert "strict_rewards:as_number" in text or "as_number" in text, text
    (run_dir,) = [p for p in runs.iterdir() if not p.name.startswith(".")]
    events = [json.loads(line) for line in (run_dir / "events.jsonl").read_text().splitlines()]
    assert not [e for e in events if e["type"] == "stage_started"]  # stage 1 never began
    error = next(e for e in events if e["type"] == "error")
    assert "as_number" in error["data"]["message"] and error["data"].get("fix")

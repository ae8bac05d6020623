"""Helpers for the console tests: install the recorded run anywhere, wait on the UI, read it."""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable
from pathlib import Path

from textual.app import App
from textual.pilot import Pilot

FIXTURES = Path(__file__).resolve().parent / "fixtures"
RECORDED = FIXTURES / "recorded_runs"
TEXT_SUFFIXES = {".json", ".jsonl", ".toml", ".md", ".txt", ".log", ".sha256", ".jinja"}


def recorded_meta() -> dict[str, str]:
    return json.loads((RECORDED / "RECORDED.json").read_text())


def install_recorded_run(runs_dir: Path, toy_base: Path) -> Path:
    """Copy the recorded run into `runs_dir`, rewriting the absolute paths it recorded.

    Manifests and adapter configs name their bases by absolute path (that is the contract), so
    a run moved to another folder is relocated the way a user would: every recorded prefix is
    replaced by the new one, and the toy base by this machine's cached build of it.
    """
    meta = recorded_meta()
    source = RECORDED / meta["run_id"]
    runs_dir.mkdir(parents=True, exist_ok=True)
    target = runs_dir / meta["run_id"]
    shutil.copytree(source, target)
    swaps = [(meta["run_dir"], str(target)), (str(Path(meta["run_dir"]).parent), str(runs_dir)),
             (meta["toy_base"], str(toy_base))]
    for path in target.rglob("*"):
        if path.is_file() and (path.suffix in TEXT_SUFFIXES or path.name == "README.md"):
            text = path.read_text(encoding="utf-8")
            new = text
            for old, replacement in swaps:
                new = new.replace(old, replacement)
            if new != text:
                path.write_text(new, encoding="utf-8")
    return target


async def wait_for(pilot: Pilot, condition: Callable[[], bool], timeout: float = 30.0,
                   what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await pilot.pause(0.05)
    await pilot.pause()


def screen_text(app: App) -> str:
    """What the terminal shows, as plain text (the current screen, modals included)."""
    return "\n".join(strip.text for strip in app.screen._compositor.render_strips())


def finished_run(folder: Path, pipeline: str, sft_rows: int = 40) -> Path:
    """A real run of `pipeline` (its data `sft.jsonl`: toy SFT rows), started the way `graftline
    run` starts one and waited for to the end; fails with the engine's log unless it finished."""
    from graftline.engine.run import client
    from graftline.engine.run.launch import start_run
    from graftline.engine.toy import tasks

    (folder / "sft.jsonl").write_text(
        "".join(json.dumps(r) + "\n" for r in tasks.sft_rows(sft_rows, 1)))
    path = folder / "p.toml"
    path.write_text(pipeline)
    run_dir = start_run(path)
    deadline = time.monotonic() + 600
    while client.read_state(run_dir).live:
        assert time.monotonic() < deadline, (run_dir / "engine.log").read_text()[-3000:]
        time.sleep(0.1)
    assert client.read_state(run_dir).status == "finished", \
        (run_dir / "engine.log").read_text()[-3000:]
    return run_dir


EXPORT_WORKER = "graftline.engine.export.worker"


def export_workers() -> set[int]:
    """Pids of the export worker processes running under this process, which is the console's
    under Pilot (a zombie's command line cannot be read: see `unreaped`)."""
    import psutil

    found: set[int] = set()
    for child in psutil.Process().children():
        try:
            if child.status() != psutil.STATUS_ZOMBIE \
                    and EXPORT_WORKER in " ".join(child.cmdline()):
                found.add(child.pid)
        except psutil.Error:
            continue
    return found


def unreaped(pids: set[int]) -> set[int]:
    """Those of `pids` still this process's children: running, or exited and not waited for
    (`<defunct>`)."""
    import psutil

    return pids & {child.pid for child in psutil.Process().children()}

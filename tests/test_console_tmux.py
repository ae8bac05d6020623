"""End to end in a real terminal: `graftline demo` in tmux, read the screen, detach, and check the
engine keeps training and finishes on its own."""

from __future__ import annotations

import contextlib
import itertools
import json
import sys
import time
from pathlib import Path

import pytest
from data_support import copy_example_data
from tmux_support import NO_TMUX, TMUX, Tmux, tmux

from graftline.engine.pipeline.file import load

REPO = Path(__file__).resolve().parents[1]
__all__ = ["tmux"]  # the fixture, used by name

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(TMUX is None, reason=NO_TMUX),
]

# The CLI with `demo` registered; works before and after cli.py wires the command in.
CLI = (
    "import typer\n"
    "from graftline.console import cli\n"
    "from graftline.console.commands import demo\n"
    "names = {c.name or c.callback.__name__ for c in cli.app.registered_commands}\n"
    "None if 'demo' in names else demo.register(cli.app)\n"
    "cli.main()\n"
)


def small_demo(tmp_path: Path) -> Path:
    """examples/demo.toml with fewer steps, its data (cut to what those steps reach), runs and
    export under tmp_path."""
    text = (REPO / "examples" / "demo.toml").read_text()
    for old, new in (("max_steps = 300", "max_steps = 30"), ("max_steps = 100", "max_steps = 12"),
                     ("max_steps = 60", "max_steps = 6"), ("max_steps = 120", "max_steps = 4"),
                     ('runs_dir = "../runs"', f'runs_dir = "{tmp_path / "runs"}"'),
                     ('out = "../runs/exports/demo"', f'out = "{tmp_path / "export"}"')):
        assert old in text, old
        text = text.replace(old, new)
    path = tmp_path / "demo.toml"
    path.write_text(text)
    copy_example_data(load(path), tmp_path)
    return path


def test_demo_in_tmux_detach_keeps_training(tmp_path: Path, toy_base: Path,
                                             tmux: Tmux) -> None:
    from graftline.engine.run import client

    pipeline = small_demo(tmp_path)
    script = tmp_path / "cli.py"
    script.write_text(CLI)
    session, env = "demo", "env TERM=screen-256color GRAFTLINE_ASCII=0"
    tmux.start(session, f"{env} {sys.executable} {script} demo --pipeline {pipeline} --theme low;"
               " echo CONSOLE-EXITED; sleep 600", tmp_path)
    try:
        screen = tmux.wait(session, r"loss\s+(latest\s+)?\d+\.\d+", timeout=240)
        for stage in ("sft", "merged", "sft_r16", "ipo", "grpo", "export"):
            assert stage in screen
        assert "RUNNING" in screen
        runs = list((tmp_path / "runs").iterdir())
        assert len(runs) == 1
        run_dir = runs[0]
        tmux("send-keys", "-t", session, "q")
        screen = tmux.wait(session, "CONSOLE-EXITED", timeout=30)
        assert "training keeps running" in screen
        info = client.read_state(run_dir)
        assert info.live, f"the engine stopped when the console quit: {info}"
        deadline = time.monotonic() + 600
        while client.read_state(run_dir).live and time.monotonic() < deadline:
            time.sleep(0.2)
        info = client.read_state(run_dir)
        assert info.status == "finished", (run_dir / "engine.log").read_text()[-3000:]
        assert (tmp_path / "export" / "config.json").is_file()

        # back on the finished run: the Samples view (`a`) and the export key (`e`), as a
        # terminal shows them. The new session opens before the old one closes: tmux's server
        # exits with its last session, and a session asked for while it exits is refused
        # ("server exited unexpectedly", met once in a full run).
        tmux.start("finished", f"{env} {sys.executable} {script} attach {run_dir.name} "
                   f"--runs-dir {run_dir.parent} --theme low; sleep 600", tmp_path)
        tmux("kill-session", "-t", session)
        session = "finished"
        tmux.wait(session, "FINISHED", timeout=90)
        tmux("send-keys", "-t", session, "a")
        screen = tmux.wait(session, "samples: what the model answers", timeout=30)
        header = next(line.split() for line in screen.splitlines()
                      if line.split()[:1] == ["probe"])
        # probes down; before the first stage, then each training stage across
        assert header[-5:] == ["before", "sft", "sft_r16", "ipo", "grpo"], screen
        # each answer as the log has it, `*` where it differs from the column before
        said: dict[tuple[str, str], dict[str, str]] = {}
        for line in (run_dir / "events.jsonl").read_text().splitlines():
            event = json.loads(line)
            if event["type"] == "samples":
                said[event["stage"], event["data"]["when"]] = {
                    r["prompt"]: r["answer"] for r in event["data"]["samples"]}
        columns = [said["sft", "start"]] + [said[stage, "end"]
                                            for stage in ("sft", "sft_r16", "ipo", "grpo")]
        for probe in ("12+34", "55+27", "90+19"):
            row = next(line for line in screen.splitlines() if line.split()[:1] == [probe])
            answers = [column[probe] for column in columns]
            for before, after in itertools.pairwise(answers):
                if after != before:
                    assert f"* {after}" in row, (probe, answers, row)
            if len(set(answers)) == 1:
                assert "*" not in row, (probe, answers, row)
        tmux("send-keys", "-t", session, "Escape")
        tmux.wait(session, "FINISHED", timeout=30)
        # `e` shows what the export stage shipped and offers a new directory, never a refusal
        tmux("send-keys", "-t", session, "e")
        screen = tmux.wait(session, "already exported", timeout=120)
        text = " ".join(screen.split())
        assert "verified" in text and "float32" in text, screen
        assert "export-2" in text, screen  # the new directory it offers
        assert "would contain" not in text and "overwrite" not in text, screen
        tmux("send-keys", "-t", session, "Escape")
        tmux("send-keys", "-t", session, "q")
    finally:
        for run_dir in (tmp_path / "runs").glob("demo-*"):
            if client.read_state(run_dir).live:  # a failed assertion must not leave it training
                with contextlib.suppress(Exception):
                    client.send_command(run_dir, "stop")

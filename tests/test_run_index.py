"""The per-user run index: runs are found by name or prefix from any directory, `ls` lists them
all with where they live, and every printed hint works from where the user stands."""

from __future__ import annotations

import os
import shutil
import stat
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from graftline.console.cli import app
from graftline.engine.pipeline import file as pipeline_file
from graftline.engine.run import EVENTS, client, index, read_raw
from graftline.engine.run import state as runstate
from graftline.engine.run.launch import create_run

sys.path.insert(0, str(Path(__file__).parent / "fixtures"))
from synthetic_run import write_synthetic_run

PIPELINE = """\
[pipeline]
name = "{name}"
base = "toy:addition"
runs_dir = "../runs"

[[stage]]
name = "sft"
kind = "sft"
data = "data.jsonl"
train = {{ max_steps = 5 }}
"""


@pytest.fixture()
def state_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    directory = tmp_path / "state"
    monkeypatch.setenv(index.STATE_DIR_ENV, str(directory))
    monkeypatch.delenv(client.RUNS_DIR_ENV, raising=False)
    return directory


def _project(root: Path, name: str = "demo") -> Path:
    """A pipeline file in root/project whose runs go to root/runs (as examples/demo.toml)."""
    project = root / "project"
    project.mkdir(parents=True, exist_ok=True)
    (project / "data.jsonl").write_text('{"prompt": "1+1=", "completion": "2"}\n')
    path = project / f"{name}.toml"
    path.write_text(PIPELINE.format(name=name))
    return path


def _finished_run(pipeline: Path) -> Path:
    """A run made by the launcher (so it is registered), then given a finished history."""
    pf = pipeline_file.load(pipeline)
    run_dir = create_run(pf, pf.resolve(pf.pipeline.pipeline.runs_dir))
    write_synthetic_run(run_dir, steps_per_stage=6)
    state = runstate.read(run_dir)
    assert state is not None
    runstate.write(run_dir, runstate.RunState(state.run_id, state.pipeline, status="finished",
                                              started=1000.0, heartbeat=1000.0 + 3725))
    return run_dir


def test_index_is_owner_only_atomic_and_pruned(tmp_path: Path, state_dir: Path) -> None:
    runs = tmp_path / "runs"
    a, b = runs / "a-1", runs / "b-1"
    for run_dir in (a, b):
        run_dir.mkdir(parents=True)
        runstate.write(run_dir, runstate.RunState(run_dir.name, "p", status="finished"))
    assert index.register(a, b)
    assert stat.S_IMODE(state_dir.stat().st_mode) == 0o700
    assert stat.S_IMODE(index.index_path().stat().st_mode) == 0o600
    assert index.known() == [a.resolve(), b.resolve()]
    # no temporary file is left beside the index
    assert sorted(p.name for p in state_dir.iterdir()) == ["runs.json", "runs.lock"]

    shutil.rmtree(a)
    assert index.known() == [b.resolve()]
    assert str(a) not in index.index_path().read_text()  # pruned on disk too
    # registering twice keeps one entry; a directory that is not a run is never added
    index.register(b, tmp_path)
    assert index.known() == [b.resolve()]


def test_xdg_state_home_is_the_default(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(index.STATE_DIR_ENV, raising=False)
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "xdg"))
    assert index.state_dir() == tmp_path / "xdg" / "graftline"
    monkeypatch.delenv("XDG_STATE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert index.state_dir() == tmp_path / "home" / ".local" / "state" / "graftline"


def test_a_run_is_found_by_name_or_prefix_from_any_directory(
        tmp_path: Path, state_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    run_dir = _finished_run(_project(tmp_path / "work"))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    assert client.find_run(run_dir.name) == run_dir.resolve()
    assert client.find_run("dem") == run_dir.resolve()
    assert client.find_run(None) == run_dir.resolve()  # the latest
    with pytest.raises(LookupError, match=r"no run 'nope'.*graftline ls"):
        client.find_run("nope")
    # --runs-dir narrows: the run is not under `elsewhere`
    with pytest.raises(LookupError, match="no run"):
        client.find_run(run_dir.name, elsewhere)


def test_an_ambiguous_prefix_names_every_candidate(tmp_path: Path, state_dir: Path) -> None:
    first = _finished_run(_project(tmp_path / "one", "demo"))
    second = _finished_run(_project(tmp_path / "two", "demo"))
    with pytest.raises(LookupError) as caught:
        client.find_run("demo")
    assert str(first.resolve()) in str(caught.value)
    assert str(second.resolve()) in str(caught.value)


def test_ls_lists_every_known_run_with_location_duration_metric_and_disk(
        tmp_path: Path, state_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    run_a = _finished_run(_project(tmp_path / "one", "alpha"))
    run_b = _finished_run(_project(tmp_path / "two", "beta"))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    result = CliRunner().invoke(app, ["ls"])
    assert result.exit_code == 0, result.output
    header, *rows = result.output.splitlines()
    for column in ("RUN", "STATUS", "DURATION", "METRIC", "DISK", "LOCATION"):
        assert column in header
    assert len(rows) == 2
    by_id = {row.split()[0]: row for row in rows}
    row = by_id[run_a.name]
    assert row.endswith(str(run_a.resolve()))
    assert "1h02m" in row  # started 1000.0, last heartbeat 3725 s later
    assert "finished" in row
    rows, _ = read_raw(run_a / EVENTS)
    last = [row for row in rows if row["type"] == "metrics"][-1]["data"]
    key = "reward" if "reward" in last else "loss"
    assert f"{key} {last[key]:.4g}" in row
    assert client.disk_usage(run_a) > 0

    narrowed = CliRunner().invoke(app, ["ls", "--runs-dir", str(run_b.parent)])
    assert run_b.name in narrowed.output and run_a.name not in narrowed.output


def test_ls_with_no_runs_says_how_to_start_one(tmp_path: Path, state_dir: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(app, ["ls"])
    assert result.exit_code == 0
    assert "graftline demo" in result.output and "--runs-dir" in result.output


def test_runs_under_a_named_directory_are_remembered(tmp_path: Path, state_dir: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """A run the index never saw (made before it existed) is adopted by `ls --runs-dir`."""
    runs = tmp_path / "old" / "runs"
    run_dir = runs / "legacy-20250101-000000"
    write_synthetic_run(run_dir, steps_per_stage=4)
    monkeypatch.chdir(tmp_path)
    assert CliRunner().invoke(app, ["logs", "legacy"]).exit_code == 2
    assert run_dir.name in CliRunner().invoke(app, ["ls", "--runs-dir", str(runs)]).output
    monkeypatch.chdir(tmp_path / "old")
    result = CliRunner().invoke(app, ["logs", "legacy"])
    assert result.exit_code == 0, result.output
    assert "run_started" in result.output or "started" in result.output


def test_printed_hints_work_from_another_directory(tmp_path: Path, state_dir: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    from graftline.console.commands.runs import _attach_hint

    run_dir = _finished_run(_project(tmp_path / "work"))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    hints = [line.split(":", 1)[1].split() for line in _attach_hint(run_dir).splitlines()
             if line.strip().startswith(("logs", "stop"))]
    assert hints
    for words in hints:
        assert words[0] == "graftline"
        args = [w for w in words[1:] if w != "-f"]  # following a finished run returns at once
        result = CliRunner().invoke(app, args)
        assert result.exit_code == 0, (args, result.output)
    assert str(run_dir.resolve()) in _attach_hint(run_dir)


@pytest.mark.parametrize("command", ["stop", "pause", "resume", "logs", "attach"])
def test_every_run_command_defaults_to_the_latest_run(command: str, tmp_path: Path,
                                                      state_dir: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    run_dir = _finished_run(_project(tmp_path / "work"))
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(app, [command])
    # a finished run: stop says it is not running, pause cannot reach it, resume refuses; each
    # of them names the run it found, none asks for a RUN argument
    assert "Missing argument" not in result.output
    assert run_dir.name in result.output or command in ("logs", "attach"), result.output
    if command in ("logs", "attach"):
        assert result.exit_code == 0, result.output


def test_the_index_file_of_another_user_is_ignored(state_dir: Path) -> None:
    if os.getuid() != 0:
        pytest.skip("needs root to chown")
    state_dir.mkdir(parents=True)
    index.index_path().write_text('{"runs": [{"path": "/tmp"}]}')
    os.chown(index.index_path(), 12345, 12345)
    assert index.known() == []


def test_concurrent_launches_all_land_in_the_index(tmp_path: Path, state_dir: Path) -> None:
    """Four processes registering at once (launches in parallel): the lock keeps every entry."""
    import subprocess

    runs = tmp_path / "runs"
    groups = []
    for group in range(4):
        paths = []
        for i in range(10):
            run_dir = runs / f"g{group}-{i}"
            run_dir.mkdir(parents=True)
            runstate.write(run_dir, runstate.RunState(run_dir.name, "p", status="finished"))
            paths.append(str(run_dir))
        groups.append(paths)
    code = ("import sys\nfrom pathlib import Path\nfrom graftline.engine.run import index\n"
            "for p in sys.argv[1:]:\n    assert index.register(Path(p))\n")
    procs = [subprocess.Popen([sys.executable, "-c", code, *paths],
                              env={**os.environ, index.STATE_DIR_ENV: str(state_dir)})
             for paths in groups]
    assert [proc.wait() for proc in procs] == [0, 0, 0, 0]
    assert len(index.known()) == 40


def test_without_a_run_the_newest_live_run_is_chosen(tmp_path: Path, state_dir: Path) -> None:
    """Like `tmux attach`: a run still going wins over a newer one that has finished."""
    older = _finished_run(_project(tmp_path / "one", "older"))
    newer = _finished_run(_project(tmp_path / "two", "newer"))
    runstate.write(newer, runstate.RunState(newer.name, "newer", status="finished",
                                            started=5000.0, heartbeat=5100.0))
    assert client.find_run(None) == newer.resolve()
    me, my_start = runstate.this_process()
    import time

    runstate.write(older, runstate.RunState(older.name, "older", status="running", pid=me,
                                            pid_started=my_start, started=10.0,
                                            heartbeat=time.time()))
    assert client.find_run(None) == older.resolve()

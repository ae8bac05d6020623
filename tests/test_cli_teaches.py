"""The CLI teaches: help without type noise, argument names in capitals, an Examples section per
command, summaries that are whole sentences, `graftline init` for a starter pipeline, and the
training libraries' chatter kept out of the CLI's output."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from graftline.console.cli import app

REPO = Path(__file__).resolve().parent.parent
COMMANDS = sorted({info.name for info in app.registered_commands if info.name} | {"demo"})


def _help(*args: str) -> str:
    result = CliRunner().invoke(app, [*args, "--help"], env={"COLUMNS": "100"})
    assert result.exit_code == 0, result.output
    return result.output


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_has_examples_and_no_type_noise(command: str) -> None:
    text = _help(command)
    assert "Examples" in text
    assert f"graftline {command}" in text.split("Examples", 1)[1]
    assert "<bool>" not in text
    usage = next(line for line in text.splitlines() if "Usage:" in line)
    assert "{" not in usage, usage
    assert str(REPO) not in text  # no path of this machine as a default


def test_the_command_list_gives_one_sentence_per_command() -> None:
    for info in app.registered_commands:
        assert info.short_help and "\n" not in info.short_help, info.name
        assert info.short_help.endswith((".", ")")), (info.name, info.short_help)
    text = _help()
    assert "<bool>" not in text
    assert "GRAFTLINE_THEME" in text and "GRAFTLINE_ASCII" in text


def test_run_commands_take_run_as_an_optional_argument() -> None:
    for command in ("stop", "pause", "resume", "logs", "attach"):
        usage = next(line for line in _help(command).splitlines() if "Usage:" in line)
        assert "[RUN]" in usage, usage
    assert "--theme" in _help("attach") and "--theme" in _help()


def test_init_writes_a_starter_that_validates(tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(app, ["init"])
    assert result.exit_code == 0, result.output
    text = (tmp_path / "pipeline.toml").read_text()
    assert 'base = "toy:addition"' in text and "# " in text
    assert "graftline validate pipeline.toml" in result.output
    checked = CliRunner().invoke(app, ["validate", "pipeline.toml"])
    assert checked.exit_code == 0, checked.output
    # an existing file is never replaced without --force
    again = CliRunner().invoke(app, ["init"])
    assert again.exit_code == 1 and "--force" in again.output
    assert (tmp_path / "pipeline.toml").read_text() == text


@pytest.mark.parametrize("flow", ["sft", "sft-dpo", "full"])
def test_init_for_a_named_base_says_what_is_missing(tmp_path: Path, flow: str) -> None:
    model = tmp_path / "models" / "mine"
    model.mkdir(parents=True)
    (model / "config.json").write_text('{"model_type": "llama", "hidden_size": 64, '
                                       '"num_hidden_layers": 2, "num_attention_heads": 4, '
                                       '"intermediate_size": 128, "vocab_size": 100}')
    file = tmp_path / "work" / "mine.toml"
    result = CliRunner().invoke(app, ["init", str(file), "--base", str(model), "--flow", flow])
    assert result.exit_code == 0, result.output
    assert 'base = "../models/mine"' in file.read_text()  # relative to the file
    checked = CliRunner().invoke(app, ["validate", str(file)])
    assert checked.exit_code == 1
    assert "dataset not found" in checked.output and "fix:" in checked.output
    assert "unknown key" not in checked.output and "Traceback" not in checked.output


def test_library_chatter_is_silenced_in_process_and_restored_after() -> None:
    probe = """
import os, logging
from graftline.console.quiet import libraries_quiet
before = os.environ.get("TRANSFORMERS_VERBOSITY")
with libraries_quiet():
    import transformers.utils.logging as tl
    bars, level = tl.is_progress_bar_enabled(), tl.get_verbosity()
print(bars, level == logging.ERROR, os.environ.get("TRANSFORMERS_VERBOSITY") == before)
"""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("TRANSFORMERS_", "HF_HUB_DISABLE", "HF_DATASETS_DISABLE"))}
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                         env=env, check=True).stdout.split()
    assert out == ["False", "True", "True"]


def test_the_readme_command_table_names_every_command_and_flag() -> None:
    readme = (REPO / "README.md").read_text()
    table = readme.split("## Command line", 1)[1].split("## Examples", 1)[0]
    for command in COMMANDS:
        assert f"`graftline {command}" in table or f"`{command} " in table or \
            f", `{command}" in table, command
    for flag in ("--runs-dir", "--theme", "--base", "--flow", "--json", "--no-rehearse"):
        assert flag in table, flag
    for variable in ("GRAFTLINE_THEME", "GRAFTLINE_ASCII", "GRAFTLINE_STATE_DIR"):
        assert variable in table, variable

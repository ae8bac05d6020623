"""A `GraftlineError` that reaches a command is printed as an error with its fix, never as a
traceback: first the way a user meets it (a plain directory as `data`), then every command of
the real CLI with an error of every kind raised inside it."""

from __future__ import annotations

import functools
import importlib
import pkgutil
from pathlib import Path
from typing import Any

import pytest
import typer
from typer.testing import CliRunner

import graftline.engine
from graftline.console.cli import app
from graftline.engine.common.errors import GraftlineError

runner = CliRunner()

PIPELINE = """
[pipeline]
name = "plain"
base = "toy:addition"
runs_dir = "runs"
[[stage]]
name = "one"
kind = "sft"
data = "folder"
train = { max_steps = 5 }
"""


@pytest.mark.parametrize("command", [["validate"], ["plan"], ["run", "-d"], ["rehearse"]])
def test_a_plain_directory_as_data_is_a_problem_with_line_and_fix(
        tmp_path: Path, command: list[str]) -> None:
    (tmp_path / "folder").mkdir()
    (tmp_path / "folder" / "notes.txt").write_text("not a dataset\n")
    path = tmp_path / "p.toml"
    path.write_text(PIPELINE)
    result = runner.invoke(app, [*command, str(path)])
    assert result.exit_code == 1, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
    assert "Traceback" not in result.output
    assert "plain directory" in result.output and "p.toml:9" in result.output
    assert "save_to_disk" in result.output and "fix" in result.output
    assert not (tmp_path / "runs").exists() or not list((tmp_path / "runs").glob("plain-*"))


def _error_kinds() -> list[type[GraftlineError]]:
    """Every GraftlineError subclass the engine defines (its modules imported, lazily named)."""
    for module in pkgutil.walk_packages(graftline.engine.__path__, "graftline.engine."):
        if module.name.endswith(("__main__", ".inside", ".daemon", ".rank_main", ".worker")):
            continue
        try:
            importlib.import_module(module.name)
        except Exception:  # an optional backend's module (unsloth, NVML) without its package
            continue
    found: list[type[GraftlineError]] = []
    todo: list[type[GraftlineError]] = [GraftlineError]
    while todo:
        cls = todo.pop()
        if cls not in found:
            found.append(cls)
            todo.extend(cls.__subclasses__())
    return sorted(found, key=lambda c: (c.__module__, c.__qualname__))


def _an_error(cls: type[GraftlineError]) -> GraftlineError:
    """An instance however the subclass's own __init__ is shaped; the root's fields set."""
    exc = cls.__new__(cls)
    GraftlineError.__init__(exc, f"{cls.__name__} went wrong", f"the fix for {cls.__name__}")
    if not hasattr(exc, "problems"):
        with_problems: Any = exc
        with_problems.problems = []
    return exc


def _arguments(command: Any) -> list[str]:
    """Values for a command's required parameters, so that its own code runs."""
    values: list[str] = []
    for param in command.params:
        if not param.required:
            continue
        value = "1" if getattr(getattr(param, "type", None), "name", "") == "integer" else "x"
        if param.param_type_name == "option":
            values += [param.opts[0], value]
        else:
            values.append(value)
    return values


def test_every_command_prints_every_kind_of_error_with_its_fix(
        monkeypatch: pytest.MonkeyPatch) -> None:
    kinds = _error_kinds()
    assert len(kinds) > 10  # the walk found the engine's errors (datasets, launch, export, …)
    group: Any = typer.main.get_command(app)
    names = sorted(group.commands)
    assert {"run", "validate", "export", "lineage", "cleanup", "resume", "logs"} <= set(names)
    for info in app.registered_commands:
        name = info.name or (info.callback.__name__ if info.callback else "")
        original = info.callback
        assert original is not None
        arguments = _arguments(group.commands[name])
        for kind in kinds:
            error = _an_error(kind)

            @functools.wraps(original)
            def raising(*_args: Any, _error: GraftlineError = error, **_kwargs: Any) -> None:
                raise _error

            monkeypatch.setattr(info, "callback", raising)
            result = runner.invoke(app, [name, *arguments])
            where = f"`graftline {name}` with {kind.__name__}"
            assert result.exit_code == 1, f"{where}: {result.output}{result.exception!r}"
            assert isinstance(result.exception, SystemExit), where
            assert f"graftline: error: {kind.__name__} went wrong" in result.output, where
            assert f"fix: the fix for {kind.__name__}" in result.output, where
            assert "Traceback" not in result.output, where
        monkeypatch.setattr(info, "callback", original)

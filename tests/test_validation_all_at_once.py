"""Validation reports everything at once, in file order, with a fix for each problem: a stage
without its kind still has its other typos reported, a [defaults] typo once at its own line, the
names users bring from other tools mapped to ours, TOML shapes that parse but mean something else,
and `plan` on an invalid file prints the errors and no plan."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from graftline.console.cli import app
from graftline.engine.pipeline.problems import Problem
from graftline.engine.pipeline.validate import validate_file
from graftline.engine.toy import tasks
from graftline.engine.toy.files import write_jsonl

HEADER = """\
[pipeline]
name = "t"
base = "toy:addition"
runs_dir = "runs"
"""


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    (tmp_path / "data").mkdir()
    write_jsonl(tmp_path / "data" / "sft.jsonl", tasks.sft_rows(10, 0))
    write_jsonl(tmp_path / "data" / "prefs_no_rejected.jsonl",
                ({k: v for k, v in r.items() if k != "rejected"}
                 for r in tasks.preference_rows(5, 0)))
    return tmp_path


def _problems(workdir: Path, text: str) -> list[Problem]:
    path = workdir / "p.toml"
    path.write_text(text)
    _pf, problems = validate_file(path)
    return problems


def _line(text: str, needle: str) -> int:
    return next(n for n, line in enumerate(text.splitlines(), 1) if needle in line)


def _find(problems: list[Problem], *words: str) -> Problem:
    for problem in problems:
        if all(w in f"{problem.message} {problem.fix or ''}" for w in words):
            return problem
    raise AssertionError(f"no problem with {words} in:\n" + "\n".join(map(str, problems)))


def test_a_stage_without_kind_still_reports_its_other_typos(workdir: Path) -> None:
    text = HEADER + """
[[stage]]
name = "sft"
kidn = "sft"
data = "data/sft.jsonl"
lora = { r = 8, alpah = 16 }
train = { max_step = 10, learning_rate = 1e-4 }
"""
    problems = _problems(workdir, text)
    no_kind = _find(problems, "has no kind", "did you mean 'kind'")
    assert no_kind.line == _line(text, "kidn")
    assert _find(problems, "unknown key 'alpah'", "did you mean 'alpha'").line == \
        _line(text, "lora =")
    _find(problems, "unknown key 'max_step'", "did you mean 'max_steps'")
    _find(problems, "unknown key 'learning_rate'", "did you mean 'lr'")
    assert not any("kidn" in p.message for p in problems)  # said once, as the missing kind


def test_an_unknown_kind_does_not_hide_the_stage_s_other_typos(workdir: Path) -> None:
    text = HEADER + '\n[[stage]]\nname = "a"\nkind = "sfft"\ndata = "data/sft.jsonl"\n' \
        'train = { max_steps = 5 }\nepochz = 3\n'
    problems = _problems(workdir, text)
    _find(problems, "unknown stage kind 'sfft'", "did you mean 'sft'")
    _find(problems, "unknown key 'epochz'", "did you mean 'epochs' in train")


def test_a_defaults_typo_is_reported_once_at_its_own_line_and_all_in_file_order(
        workdir: Path) -> None:
    text = HEADER + """
[defaults]
train = { max_steps = 5, batch_sise = 8 }

[[stage]]
name = "a"
kind = "sft"
data = "data/sft.jsonl"
lora = { rank = 8 }

[[stage]]
name = "b"
kind = "sft"
data = "data/missing.jsonl"
train = { lr = -1 }
"""
    problems = _problems(workdir, text)
    typos = [p for p in problems if "batch_sise" in p.message]
    assert len(typos) == 1
    assert typos[0].line == _line(text, "batch_sise")
    assert "did you mean 'batch_size'" in (typos[0].fix or "")
    lines = [p.line or 0 for p in problems]
    assert lines == sorted(lines), [str(p) for p in problems]
    assert len(problems) >= 3


@pytest.mark.parametrize(("theirs", "ours", "table"), [
    ("learning_rate", "lr", "train"),
    ("num_train_epochs", "epochs", "train"),
    ("per_device_train_batch_size", "batch_size", "train"),
    ("gradient_accumulation_steps", "grad_accum", "train"),
    ("warmup_steps", "warmup", "train"),
    ("max_seq_length", "max_length", "train"),
    ("lr_scheduler_type", "scheduler", "train"),
    ("lora_r", "r", "lora"),
    ("lora_alpha", "alpha", "lora"),
    ("lora_dropout", "dropout", "lora"),
    ("lora_target_modules", "target_modules", "lora"),
])
def test_names_from_other_tools_get_our_name(workdir: Path, theirs: str, ours: str,
                                             table: str) -> None:
    # written where the user would (in its table) and where they often do (at the stage level)
    inside = HEADER + f'\n[[stage]]\nname = "a"\nkind = "sft"\ndata = "data/sft.jsonl"\n' \
        f'train = {{ max_steps = 5 }}\n{table} = {{ {theirs} = 1 }}\n'
    if table == "train":
        inside = inside.replace("train = { max_steps = 5 }\ntrain = {",
                                "train = { max_steps = 5,")
    assert f"did you mean '{ours}'" in (_find(_problems(workdir, inside), theirs).fix or "")
    outside = HEADER + f'\n[[stage]]\nname = "a"\nkind = "sft"\ndata = "data/sft.jsonl"\n' \
        f'train = {{ max_steps = 5 }}\n{theirs} = 1\n'
    fix = _find(_problems(workdir, outside), theirs).fix or ""
    assert f"did you mean '{ours}' in {table}" in fix


def test_a_dpo_dataset_without_rejected_says_missing_rejected(workdir: Path) -> None:
    text = HEADER + '\n[[stage]]\nname = "d"\nkind = "dpo"\n' \
        'data = "data/prefs_no_rejected.jsonl"\ntrain = { max_steps = 5 }\n'
    problem = _find(_problems(workdir, text), "missing: rejected")
    assert problem.line == _line(text, "prefs_no_rejected")
    # the columns are named once, in the fix
    assert f"{problem.message} {problem.fix}".count("chosen") <= 2


def test_plan_on_an_invalid_file_prints_the_errors_and_no_table(workdir: Path) -> None:
    text = HEADER + '\n[[stage]]\nname = "a"\nkind = "sft"\ndata = "data/sft.jsonl"\n' \
        'train = { max_steps = 5, learning_rate = 1e-4 }\n'
    path = workdir / "p.toml"
    path.write_text(text)
    result = CliRunner().invoke(app, ["plan", str(path)])
    assert result.exit_code == 1
    out = result.output
    assert "learning_rate" in out and "fix:" in out and "did you mean 'lr'" in out
    assert "starts from" not in out and ": plan" not in out and "disk:" not in out


SHAPES = [
    ("foreach-single-brackets",
     HEADER + '\n[foreach]  # <-\nas = "t"\nvalues = ["a"]\n',
     ["single brackets", "[[foreach]]"]),
    ("stage-single-brackets",
     HEADER + '\n[stage]  # <-\nname = "a"\nkind = "merge"\n',
     ["single brackets", "[[stage]]"]),
    ("stages-inline",
     'stage = [{ name = "a", kind = "merge" }]  # <-\n' + HEADER,
     ["inline", "[[stage]]"]),
    ("stages-inline-below-a-header",
     HEADER + '\nstage = [{ name = "a", kind = "merge" }]  # <-\n',
     ["unknown key 'stage'", "[[stage]]"]),
    ("train-not-a-table",
     HEADER + '\n[[stage]]\nname = "a"\nkind = "sft"\ndata = "data/sft.jsonl"\n'
     'train = 5  # <-\n',
     ["valid dictionary", "write a table"]),
    ("defaults-train-a-string",
     HEADER + '\n[defaults]\ntrain = "fast"  # <-\n\n[[stage]]\nname = "a"\nkind = "sft"\n'
     'data = "data/sft.jsonl"\ntrain = { max_steps = 5 }\n',
     ["valid dictionary", "write a table"]),
    ("negative-lr",
     HEADER + '\n[[stage]]\nname = "a"\nkind = "sft"\ndata = "data/sft.jsonl"\n'
     'train = { max_steps = 5, lr = -1 }  # <-\n', ["greater than 0", "use a lr > 0"]),
    ("quoted-number",
     HEADER + '\n[[stage]]\nname = "a"\nkind = "sft"\ndata = "data/sft.jsonl"\n'
     'train = { max_steps = "ten" }  # <-\n', ["whole number"]),
    ("rank-zero",
     HEADER + '\n[[stage]]\nname = "a"\nkind = "sft"\ndata = "data/sft.jsonl"\n'
     'train = { max_steps = 5 }\nlora = { r = 0 }  # <-\n', ["use a r ≥ 1"]),
    ("loss-typo",
     HEADER + '\n[[stage]]\nname = "a"\nkind = "dpo"\ndata = "data/sft.jsonl"\n'
     'train = { max_steps = 5 }\nloss = "ipoo"  # <-\n', ["did you mean 'ipo'"]),
    ("bad-stage-name",
     HEADER + '\n[[stage]]\nname = "1st stage"  # <-\nkind = "merge"\n',
     ["starting with a letter"]),
    ("bool-as-string",
     HEADER + '\n[[stage]]\nname = "a"\nkind = "dpo"\ndata = "data/sft.jsonl"\n'
     'train = { max_steps = 5 }\nprecompute_ref = "maybe"  # <-\n', ["true", "false"]),
]


@pytest.mark.parametrize(("text", "words"), [c[1:] for c in SHAPES], ids=[c[0] for c in SHAPES])
def test_toml_shapes_and_type_errors_are_reported_with_a_fix(workdir: Path, text: str,
                                                             words: list[str]) -> None:
    problems = _problems(workdir, text)
    problem = _find(problems, *words)
    assert problem.fix
    marked = next((n for n, line in enumerate(text.splitlines(), 1) if line.endswith("# <-")),
                  None)
    if marked is not None:
        assert problem.line == marked, str(problem)
    path = workdir / "p.toml"
    result = CliRunner().invoke(app, ["validate", str(path)])
    assert result.exit_code == 1 and "Traceback" not in result.output


def test_every_error_has_a_fix(workdir: Path) -> None:
    for _name, text, _words in SHAPES:
        for problem in _problems(workdir, text):
            assert problem.fix, str(problem)


def test_a_quoted_stage_header_is_read_at_its_own_lines(workdir: Path) -> None:
    text = HEADER + '\n[["stage"]]\nname = "a"\nkind = "sft"\ndata = "data/nope.jsonl"\n' \
        'train = { max_steps = 5 }\n'
    problem = _find(_problems(workdir, text), "dataset not found")
    assert problem.line == _line(text, "nope.jsonl")

"""Bad data and bad names caught by validate, before anything is created or trained (issue 23).

Each case is launched with `start_run` as `graftline run` does: it must be refused with a clean
problem naming the file and line or row, with a fix, and the runs directory must not exist.
"""

from __future__ import annotations

import fcntl
import json
import os
from pathlib import Path

import pytest

from graftline.engine.pipeline.datasets import check_rows, load_rows
from graftline.engine.run.launch import LaunchError, start_run
from graftline.engine.toy import tasks

HEADER = """\
[pipeline]
name = "t"
base = "toy:addition"
runs_dir = "runs"

[defaults]
train = { max_steps = 5, batch_size = 8 }
"""


def _sft(data: str = "sft.jsonl", extra: str = "") -> str:
    return f'\n[[stage]]\nname = "sft"\nkind = "sft"\ndata = "{data}"\nlora = {{ r = 4 }}\n{extra}'


def _grpo(reward: str, data: str = "grpo.jsonl") -> str:
    return (f'\n[[stage]]\nname = "g"\nkind = "grpo"\ndata = "{data}"\nreward = [{reward}]\n'
            'num_generations = 4\nlora = { r = 4 }\n')


def _jsonl(path: Path, rows: list) -> None:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))


def _refused(tmp_path: Path, text: str) -> list:
    (tmp_path / "p.toml").write_text(HEADER + text)
    with pytest.raises(LaunchError) as info:
        start_run(tmp_path / "p.toml")
    assert not (tmp_path / "runs").exists()  # nothing written before the refusal
    problems = info.value.problems
    assert problems and all(p.fix for p in problems), problems
    assert all(p.file == str(tmp_path / "p.toml") for p in problems)
    return problems


def _good_sft(n: int = 40) -> list[dict]:
    return list(tasks.sft_rows(n, 1))


def test_a_bad_json_line_in_the_middle_names_its_line(tmp_path: Path) -> None:
    rows: list = _good_sft()
    rows[20] = '{"prompt": "1+1", "completion": '  # torn
    _jsonl(tmp_path / "sft.jsonl", rows)
    [problem] = _refused(tmp_path, _sft())
    assert f"{tmp_path / 'sft.jsonl'}:21" in problem.message and "not valid JSON" in problem.message
    assert problem.line is not None and problem.stage == "sft"


def test_later_rows_lacking_completion_and_integer_values(tmp_path: Path) -> None:
    rows: list = _good_sft(300)
    rows[250] = {"prompt": rows[250]["prompt"]}
    rows[270] = {"prompt": rows[270]["prompt"], "completion": 7}
    _jsonl(tmp_path / "sft.jsonl", rows)
    problems = _refused(tmp_path, _sft())
    text = " | ".join(p.message for p in problems)
    assert "sft.jsonl:251" in text and "no `completion`" in text
    assert "sft.jsonl:271" in text and "int 7" in text
    assert any('"7"' in p.fix for p in problems)


def test_all_completions_empty(tmp_path: Path) -> None:
    _jsonl(tmp_path / "sft.jsonl", [{"prompt": r["prompt"], "completion": " "}
                                    for r in _good_sft()])
    [problem] = _refused(tmp_path, _sft())
    assert "every `completion` is empty" in problem.message


def test_parquet_with_numeric_text_columns(tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"prompt": [1, 2, 3], "completion": [1.5, 2.5, 3.5]}),
                   tmp_path / "sft.parquet")
    problems = _refused(tmp_path, _sft("sft.parquet"))
    assert [p.message.split(": ", 1)[1] for p in problems] == [
        "column `prompt` is int64, not text", "column `completion` is double, not text"]
    assert "astype(str)" in problems[0].fix


def test_a_csv_with_numeric_cells_is_read_as_text(tmp_path: Path) -> None:
    """CSV has no types: `load_rows` keeps what was written (pandas made 42 an int64)."""
    (tmp_path / "g.csv").write_text("prompt,answer\n12+30,42\n1+1,2\n")
    rows = load_rows(tmp_path / "g.csv")
    assert rows["answer"] == ["42", "2"] and rows["prompt"] == ["12+30", "1+1"]
    assert check_rows(tmp_path / "g.csv", "grpo") == []


def test_exact_match_without_an_answer_column(tmp_path: Path) -> None:
    _jsonl(tmp_path / "grpo.jsonl", [{"prompt": r["prompt"]} for r in tasks.grpo_rows(8, 1)])
    [problem] = _refused(tmp_path, _grpo('"exact_match"'))
    assert "`answer` column" in problem.message and problem.field == "reward"


@pytest.mark.parametrize(("body", "said"), [
    ("def r(prompts, completions, **kw):\n    raise KeyError('score')\n", "raised KeyError"),
    ("def r(prompts, completions, **kw):\n    return ['1.0' for _ in completions]\n",
     "returned str '1.0'"),
    ("def r(prompts, completions, **kw):\n    return 1.0\n", "returned 1.0"),
    ("import argparse\nargparse.ArgumentParser().parse_args(['--nope'])\n"
     "def r(prompts, completions, **kw):\n    return [0.0] * len(completions)\n",
     "called sys.exit(2)"),
])
def test_a_reward_that_fails_on_real_rows(tmp_path: Path, body: str, said: str) -> None:
    _jsonl(tmp_path / "grpo.jsonl", list(tasks.grpo_rows(8, 1)))
    module = f"badreward_{abs(hash(body))}"  # a fresh module: sys.modules caches imports
    (tmp_path / f"{module}.py").write_text(body)
    [problem] = _refused(tmp_path, _grpo(f'"{module}:r"'))
    assert said in problem.message, problem.message
    assert problem.field == "reward" and problem.line is not None


def test_empty_target_modules(tmp_path: Path) -> None:
    _jsonl(tmp_path / "sft.jsonl", _good_sft())
    text = _sft().replace("lora = { r = 4 }", "lora = { r = 4, target_modules = [] }")
    [problem] = _refused(tmp_path, text)
    assert "target_modules is empty" in problem.message and "all-linear" in problem.fix


@pytest.mark.parametrize("where", ["pipeline", "stage"])
def test_a_300_character_name_is_refused_before_runs_is_created(tmp_path: Path,
                                                               where: str) -> None:
    _jsonl(tmp_path / "sft.jsonl", _good_sft())
    long = "n" * 300
    text = _sft().replace('name = "sft"', f'name = "{long}"') if where == "stage" else _sft()
    if where == "pipeline":
        text = text + ""  # the header is patched below
        (tmp_path / "p.toml").write_text(HEADER.replace('name = "t"', f'name = "{long}"') + text)
        with pytest.raises(LaunchError) as info:
            start_run(tmp_path / "p.toml")
        assert not (tmp_path / "runs").exists()
        problems = info.value.problems
    else:
        problems = _refused(tmp_path, text)
    [problem] = problems
    assert "300 characters" in problem.message and "at most 100" in problem.fix


def test_an_export_inside_a_live_run_is_refused(tmp_path: Path) -> None:
    _jsonl(tmp_path / "sft.jsonl", _good_sft())
    live = tmp_path / "elsewhere" / "run-1"
    live.mkdir(parents=True)
    (live / "run.json").write_text("{}")
    fd = os.open(live / "engine.lock", os.O_RDWR | os.O_CREAT)
    fcntl.flock(fd, fcntl.LOCK_EX)  # an engine holds it
    try:
        text = _sft() + ('\n[[stage]]\nname = "e"\nkind = "export"\nfrom = "sft"\n'
                         'out = "elsewhere/run-1/exported"\n')
        [problem] = _refused(tmp_path, text)
    finally:
        os.close(fd)
    assert "inside the run directory" in problem.message and problem.field == "out"
    assert not (live / "exported").exists()


def test_a_large_jsonl_is_sampled_within_validates_budget_and_load_names_the_line(
        tmp_path: Path) -> None:
    """Past FULL_SCAN_BYTES validate samples (head, spread windows, tail) and says where, by
    byte; loading for training parses every line and names the line of a bad one."""
    from graftline.engine.pipeline.datasets import (
        FULL_SCAN_BYTES,
        DatasetError,
        check_rows,
        load_rows,
    )

    good = json.dumps({"prompt": "1+1=", "completion": "2"}) + "\n"
    path = tmp_path / "big.jsonl"
    count = FULL_SCAN_BYTES // len(good) + 1000
    with path.open("w") as handle:
        handle.write(good * count)
        handle.write("{not json\n")  # in the tail window
        handle.write(good * 10)
    problems = check_rows(path, "sft")
    assert len(problems) == 1 and "not valid JSON" in problems[0].message
    assert problems[0].row is None and "at byte" in problems[0].message
    with pytest.raises(DatasetError, match=rf"big.jsonl:{count + 1}: not valid JSON"):
        load_rows(path)


# ------------------------------------------------- issue 19: mapped columns, several files


def test_a_mapped_column_the_data_lacks_refuses_the_launch(tmp_path: Path) -> None:
    rows = [{"question": r["prompt"], "answer": r["completion"]} for r in _good_sft(10)]
    _jsonl(tmp_path / "sft.jsonl", rows)
    [problem] = _refused(tmp_path, _sft(extra='columns = { prompt = "quest", completion = '
                                              '"answer" }\n'))
    assert "no column 'quest'" in problem.message and "did you mean 'question'" in problem.message
    assert "it has: question, answer" in problem.message and problem.field == "columns"


def test_a_bad_line_in_the_second_file_of_a_glob_names_that_file(tmp_path: Path) -> None:
    (tmp_path / "shards").mkdir()
    _jsonl(tmp_path / "shards/a.jsonl", _good_sft(10))
    rows: list = _good_sft(10)
    rows[2] = "[1, 2]"
    _jsonl(tmp_path / "shards/b.jsonl", rows)
    [problem] = _refused(tmp_path, _sft(data="shards/*.jsonl"))
    assert f"{tmp_path / 'shards/b.jsonl'}:3: a JSON list, not an object" in problem.message
    assert 'on_bad_rows = "skip"' in problem.fix


def test_a_mapped_numeric_parquet_column_is_named_by_its_stage_name(tmp_path: Path) -> None:
    import datasets

    datasets.Dataset.from_list([{"q": f"{i}+1=", "a": i + 1} for i in range(8)]).to_parquet(
        str(tmp_path / "qa.parquet"))
    [problem] = _refused(tmp_path, _sft(data="qa.parquet", extra='columns = { prompt = "q", '
                                                                  'completion = "a" }\n'))
    assert "column `completion` is int64, not text" in problem.message

"""Loading stage data from every supported format, and the column checks the validator uses."""

from __future__ import annotations

import json
from pathlib import Path

import datasets
import pytest

from graftline.engine.pipeline.datasets import (
    DatasetError,
    columns_of,
    load_rows,
    resolve_data,
)
from graftline.engine.pipeline.peek import missing_columns
from graftline.engine.toy import tasks


def _jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_jsonl_parquet_csv_and_saved_directory_load_the_same_rows(tmp_path: Path) -> None:
    rows = list(tasks.grpo_rows(5, seed=1))
    flat = [{"prompt": r["prompt"][0]["content"], "answer": r["answer"]} for r in rows]
    jsonl = _jsonl(tmp_path / "d.jsonl", rows)
    datasets.Dataset.from_list(flat).to_parquet(str(tmp_path / "d.parquet"))
    datasets.Dataset.from_list(flat).to_csv(str(tmp_path / "d.csv"), index=False)
    datasets.Dataset.from_list(rows).save_to_disk(str(tmp_path / "saved"))
    datasets.DatasetDict({"train": datasets.Dataset.from_list(rows)}).save_to_disk(
        str(tmp_path / "dd"))

    assert columns_of(jsonl) == ["prompt", "answer"]
    for name in ("d.parquet", "d.csv", "saved", "dd"):
        assert sorted(columns_of(tmp_path / name)) == ["answer", "prompt"], name
    assert load_rows(jsonl)["prompt"][0] == rows[0]["prompt"]  # chat messages stay nested
    assert load_rows(tmp_path / "d.parquet")["answer"] == [r["answer"] for r in flat]
    assert [str(a) for a in load_rows(tmp_path / "d.csv")["answer"]] == [r["answer"] for r in flat]
    assert len(load_rows(tmp_path / "saved")) == 5
    assert len(load_rows(tmp_path / "dd")) == 5


@pytest.mark.parametrize(("kind", "columns", "ok"), [
    ("sft", ["prompt", "completion"], True),
    ("sft", ["messages"], True),
    ("sft", ["text"], True),
    ("sft", ["prompt"], False),
    ("dpo", ["prompt", "chosen", "rejected"], True),
    ("dpo", ["prompt", "chosen"], False),
    ("grpo", ["prompt", "answer"], True),
    ("grpo", ["question"], False),
    ("eval", ["messages"], True),
])
def test_missing_columns(kind: str, columns: list[str], ok: bool) -> None:
    problem = missing_columns(kind, columns)
    assert (problem is None) == ok
    if not ok:
        assert problem is not None and kind in str(problem) and problem.missing
        assert not set(problem.missing) & set(columns)


def test_bad_inputs_name_the_file_and_a_fix(tmp_path: Path) -> None:
    with pytest.raises(DatasetError) as missing:
        columns_of(tmp_path / "nope.jsonl")
    assert "nope.jsonl" in missing.value.message and missing.value.fix
    (tmp_path / "empty.jsonl").write_text("\n")
    with pytest.raises(DatasetError, match="empty"):
        columns_of(tmp_path / "empty.jsonl")
    (tmp_path / "list.jsonl").write_text("[1, 2]\n")
    with pytest.raises(DatasetError, match="not a JSON object"):
        columns_of(tmp_path / "list.jsonl")
    (tmp_path / "x.txt").write_text("hi")
    with pytest.raises(DatasetError, match="unknown data format"):
        columns_of(tmp_path / "x.txt")


def test_at_stage_resolves_to_the_generate_stage_output(tmp_path: Path) -> None:
    expected = tmp_path / "run/stages/gen/data.jsonl"
    assert resolve_data("@gen", tmp_path, tmp_path / "run") == expected
    assert resolve_data("d.jsonl", tmp_path) == (tmp_path / "d.jsonl").resolve()
    with pytest.raises(DatasetError):
        resolve_data("@gen", tmp_path, None)


def test_csv_rows_through_a_mapping_stay_text(tmp_path: Path) -> None:
    from graftline.engine.pipeline.stage_rows import load_stage_rows

    (tmp_path / "qa.csv").write_text("question,answer\n12+34=,46\n1+1=,02\n3+4=,7,oops\n")
    loaded = load_stage_rows("qa.csv", "sft", base_dir=tmp_path, on_bad_rows="skip",
                             columns={"prompt": "question", "completion": "answer"})
    [extra] = loaded.skipped
    assert extra.where == f"{tmp_path / 'qa.csv'}:4" and "1 more cell(s)" in extra.message
    assert loaded.rows.to_list() == [{"prompt": "12+34=", "completion": "46"},
                                     {"prompt": "1+1=", "completion": "02"}]  # "02", not 2


def test_a_malformed_hf_id_is_refused_before_any_lookup(tmp_path: Path) -> None:
    from graftline.engine.pipeline.stage_rows import load_stage_rows

    with pytest.raises(DatasetError) as info:
        load_stage_rows("hf:not a/valid/id", "sft", base_dir=tmp_path)
    assert "is not a Hugging Face dataset id" in info.value.message
    assert "hf:org/name" in info.value.fix

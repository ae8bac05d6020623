"""Datasets as they come (issue 19, docs/datasets.md): every TRL format, several files, globs,
`hf:` datasets from a local Hugging Face cache (built here, offline), `columns` mappings, and
bad rows refused or skipped. Each form is loaded AND trained for a few steps on the toy base
through the real runner; a trained adapter is told from an untrained one by its LoRA B
matrices (zero at initialisation, so nonzero only if the rows produced gradients).
"""

from __future__ import annotations

import json
import os
import random
from pathlib import Path

import datasets
import pytest
from safetensors.torch import load_file
from stage_helpers import one_thread, pipeline, write_jsonl  # noqa: F401

from graftline.engine.pipeline.datasets import DatasetError
from graftline.engine.pipeline.file import load
from graftline.engine.pipeline.stage_rows import load_for_stage, load_stage_rows
from graftline.engine.pipeline.validate import validate
from graftline.engine.run.events import EventWriter, read_events
from graftline.engine.run.runner import run_pipeline
from graftline.engine.stages.stage_data import to_trl
from graftline.engine.toy import tasks

pytestmark = pytest.mark.usefixtures("one_thread")
ROWS = 16
TRAIN = "train = { max_steps = 2, batch_size = 2, lr = 3e-3 }\nlora = { r = 2 }\n"


def _sums(seed: int = 1) -> list[tasks.Sum]:
    return tasks.sample(tasks.train_sums(), ROWS, seed)


def _wrong(s: tasks.Sum, rng: random.Random) -> str:
    return tasks.wrong_answer(s, rng)


# Each form: (kind, rows, extra stage lines). Standard = plain strings; conversational = chat
# message lists; the implicit-prompt pair carries the question inside chosen and rejected.
def _forms() -> dict[str, tuple[str, list[dict], str]]:
    rng = random.Random(0)
    sums = _sums()
    return {
        "standard_text": ("sft", [{"text": f"{s.question}={s.answer}"} for s in sums], ""),
        "standard_prompt_completion": (
            "sft", [{"prompt": f"{s.question}=", "completion": s.answer} for s in sums], ""),
        "conversational_messages": (
            "sft", [{"messages": tasks.user(s.question) + tasks.assistant(s.answer)}
                    for s in sums], ""),
        "conversational_prompt_completion": ("sft", list(tasks.sft_rows(ROWS, 1)), ""),
        "standard_preference": (
            "dpo", [{"prompt": f"{s.question}=", "chosen": s.answer, "rejected": _wrong(s, rng)}
                    for s in sums], ""),
        "conversational_preference": ("dpo", list(tasks.preference_rows(ROWS, 3)), ""),
        "conversational_implicit_prompt": (
            "dpo", [{"chosen": tasks.user(s.question) + tasks.assistant(s.answer),
                     "rejected": tasks.user(s.question) + tasks.assistant(_wrong(s, rng))}
                    for s in sums], ""),
        "columns_mapping": (
            "sft", [{"question": tasks.user(s.question), "answer": tasks.assistant(s.answer),
                     "prompt": "ignored: the mapping says `question` is the prompt"}
                    for s in sums],
            'columns = { prompt = "question", completion = "answer" }\n'),
    }


def _stage(kind: str, data: str, extra: str = "") -> str:
    return f'\n[[stage]]\nname = "s"\nkind = "{kind}"\ndata = {data}\n{extra}{TRAIN}'


def _problems(root: Path, severity: str = "error") -> list:
    return [p for p in validate(load(root / "pipeline.toml")) if p.severity == severity]


def _train(root: Path, stages: str) -> tuple[list, Path]:
    """Validate and run the pipeline in-process; (events, run_dir)."""
    pf = pipeline(root, stages)
    errors = _problems(root)
    assert not errors, [str(p) for p in errors]
    run_dir = root / "runs" / "r"
    run_dir.mkdir(parents=True)
    with EventWriter(run_dir) as writer:
        result = run_pipeline(pf, run_dir, writer)
    assert result.status == "finished", result.message
    events, _ = read_events(run_dir / "events.jsonl")
    return events, run_dir


def _lora_b_moved(stage_dir: Path) -> bool:
    weights = load_file(str(stage_dir / "adapter_model.safetensors"))
    return any(float(t.abs().max()) > 0 for name, t in weights.items() if "lora_B" in name)


@pytest.mark.parametrize("form", list(_forms()))
def test_each_trl_form_loads_and_trains(tmp_path: Path, toy_base: Path, form: str) -> None:
    kind, rows, extra = _forms()[form]
    write_jsonl(tmp_path / "d.jsonl", rows)
    events, run_dir = _train(tmp_path, _stage(kind, '"d.jsonl"', extra))
    metrics = [e.data for e in events if e.type == "metrics"]
    assert [m["step"] for m in metrics] == [1, 2] and all(m["loss"] == m["loss"] for m in metrics)
    assert _lora_b_moved(run_dir / "stages/s")
    checks = {e.data["name"]: e.data["status"] for e in events if e.type == "check_result"}
    assert "fail" not in checks.values() and "bad_rows" not in checks


def test_implicit_prompt_is_extracted_with_trl_and_mapping_renames(tmp_path: Path) -> None:
    forms = _forms()
    write_jsonl(tmp_path / "pair.jsonl", forms["conversational_implicit_prompt"][1])
    loaded = load_stage_rows("pair.jsonl", "dpo", base_dir=tmp_path,
                             convert=lambda rows: to_trl(rows, "dpo")).rows
    first = loaded[0]
    assert first["prompt"] == tasks.user(_sums()[0].question)  # the shared beginning
    assert first["chosen"] == tasks.assistant(_sums()[0].answer)
    assert [m["role"] for m in first["rejected"]] == ["assistant"]

    write_jsonl(tmp_path / "qa.jsonl", forms["columns_mapping"][1])
    mapped = load_stage_rows("qa.jsonl", "sft", base_dir=tmp_path,
                             columns={"prompt": "question", "completion": "answer"}).rows
    assert mapped[0]["prompt"] == tasks.user(_sums()[0].question)  # not the shadowed `prompt`
    assert mapped[0]["completion"] == tasks.assistant(_sums()[0].answer)


def test_an_unknown_mapped_column_names_the_columns_that_exist(tmp_path: Path) -> None:
    write_jsonl(tmp_path / "qa.jsonl", _forms()["columns_mapping"][1])
    with pytest.raises(DatasetError) as info:
        load_stage_rows("qa.jsonl", "sft", base_dir=tmp_path,
                        columns={"prompt": "questoin", "completion": "answer"})
    assert "did you mean 'question'" in info.value.message
    assert "question, answer, prompt" in info.value.message

    pipeline(tmp_path, _stage("sft", '"qa.jsonl"',
                              'columns = { prompt = "questoin", completion = "answer" }\n'))
    [problem] = _problems(tmp_path)
    assert "questoin" in problem.message and "did you mean 'question'" in problem.message
    assert problem.stage == "s" and problem.field == "columns" and problem.fix


def test_a_misspelt_mapping_target_says_which_name_it_meant(tmp_path: Path) -> None:
    write_jsonl(tmp_path / "qa.jsonl", _forms()["columns_mapping"][1])
    pipeline(tmp_path, _stage("sft", '"qa.jsonl"',
                              'columns = { promt = "question", completion = "answer" }\n'))
    problems = _problems(tmp_path)
    typo = next(p for p in problems if p.field == "columns")
    assert "did you mean 'prompt'?" in typo.message
    assert typo.fix == 'write columns.prompt = "question"'


# ------------------------------------------------------------------ several files and globs


def test_a_list_of_files_and_a_glob_train_on_every_row(tmp_path: Path, toy_base: Path) -> None:
    rows = list(tasks.sft_rows(3 * ROWS, 5))
    write_jsonl(tmp_path / "one.jsonl", rows[:ROWS])
    (tmp_path / "shards").mkdir()
    write_jsonl(tmp_path / "shards/a.jsonl", rows[ROWS:2 * ROWS])
    datasets.Dataset.from_list(rows[2 * ROWS:]).to_parquet(str(tmp_path / "shards/b.parquet"))
    data = '["one.jsonl", "shards/*"]'
    pf = pipeline(tmp_path, _stage("sft", data))
    loaded = load_for_stage(pf.pipeline.stage[0], "data", "sft", base_dir=tmp_path)
    assert [p.name for p in loaded.sources] == ["one.jsonl", "a.jsonl", "b.parquet"]
    assert loaded.rows.to_list() == rows and loaded.total == 3 * ROWS
    _events, run_dir = _train(tmp_path, _stage("sft", data))
    assert _lora_b_moved(run_dir / "stages/s")


def test_a_glob_that_matches_nothing_is_a_validate_error(tmp_path: Path) -> None:
    pipeline(tmp_path, _stage("sft", '"shards/*.jsonl"'))
    [problem] = _problems(tmp_path)
    assert "'shards/*.jsonl' matches no data file" in problem.message and problem.field == "data"


# ------------------------------------------------------------------ hf: from the local cache


def _hub_cache(root: Path) -> Path:
    """A hub-style dataset snapshot as `huggingface-cli download --repo-type dataset` leaves it:
    datasets--org--qa/{refs/main, snapshots/<rev>/…}, with two subsets declared in README.md."""
    cache = root / "hf" / "hub"
    repo = cache / "datasets--org--qa"
    snap = repo / "snapshots" / "0123abcd"
    for sub in ("easy", "hard"):
        (snap / sub).mkdir(parents=True)
    sums = _sums(7)
    qa = [{"question": f"{s.question}=", "answer": s.answer} for s in sums]
    datasets.Dataset.from_list(qa[:12]).to_parquet(str(snap / "easy/train.parquet"))
    datasets.Dataset.from_list(qa[12:]).to_parquet(str(snap / "easy/test.parquet"))
    write_jsonl(snap / "hard/train.jsonl", [{"question": f"{s.question}=", "answer": s.answer}
                                            for s in _sums(8)])
    (snap / "README.md").write_text(
        "---\nconfigs:\n"
        "- config_name: easy\n  data_files:\n"
        "  - split: train\n    path: easy/train.parquet\n"
        "  - split: test\n    path: easy/test.parquet\n"
        "- config_name: hard\n  data_files:\n"
        "  - split: train\n    path: hard/train.jsonl\n---\n# qa\n")
    # as huggingface_hub stores them: each snapshot file a relative link to a content blob
    (repo / "blobs").mkdir()
    for number, file in enumerate(sorted(p for p in snap.rglob("*") if p.is_file())):
        blob = repo / "blobs" / f"{number:040x}"
        file.rename(blob)
        file.symlink_to(os.path.relpath(blob, file.parent))
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0123abcd")
    return cache


@pytest.fixture
def hub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    cache = _hub_cache(tmp_path)
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "hf" / "datasets"))
    return cache


MAPPING = 'columns = { prompt = "question", completion = "answer" }\n'


def test_hf_dataset_from_the_cache_with_split_and_subset(tmp_path: Path, hub: Path,
                                                         toy_base: Path) -> None:
    sums = _sums(7)
    test = load_stage_rows("hf:org/qa", "sft", base_dir=tmp_path, split="test", subset="easy",
                           columns={"prompt": "question", "completion": "answer"})
    assert test.rows["prompt"] == [f"{s.question}=" for s in sums[12:]]
    hard = load_stage_rows("hf:org/qa", "sft", base_dir=tmp_path, subset="hard",
                           columns={"prompt": "question", "completion": "answer"})
    assert hard.rows["completion"] == [s.answer for s in _sums(8)]  # split defaults to train

    extra = 'subset = "easy"\nsplit = "train"\neval_data = "hf:org/qa"\neval_split = "test"\n'
    held_out = ('\n[[stage]]\nname = "e"\nkind = "eval"\nfrom = "s"\ndata = "hf:org/qa"\n'
                'subset = "hard"\n' + MAPPING)
    events, run_dir = _train(tmp_path, _stage("sft", '"hf:org/qa"', extra + MAPPING) + held_out)
    assert _lora_b_moved(run_dir / "stages/s")
    finished = {e.stage: e.data for e in events if e.type == "stage_finished"}
    assert finished["s"]["status"] == "complete" and "eval_loss" in finished["s"]["evaluation"]
    evaluation = finished["e"]["evaluation"]  # the eval stage read hard/train.jsonl, mapped
    assert evaluation["rows"] == ROWS and "exact_match" in evaluation


@pytest.mark.parametrize(("extra", "said", "fix"), [
    ('subset = "medium"\n', "no subset 'medium'; it has easy, hard", "subset"),
    ('subset = "hrad"\n', "no subset 'hrad'", "did you mean 'hard'?"),
    ('subset = "easy"\nsplit = "validation"\n', "no split 'validation'; it has train, test",
     "split"),
    ("", "has 2 subsets (easy, hard) and the stage names none", "subset"),
])
def test_hf_wrong_split_or_subset_names_what_exists(tmp_path: Path, hub: Path, extra: str,
                                                    said: str, fix: str) -> None:
    pipeline(tmp_path, _stage("sft", '"hf:org/qa"', extra + MAPPING))
    [problem] = _problems(tmp_path)
    assert said in problem.message and fix in problem.fix and problem.field == "data"


def test_hf_dataset_not_in_the_cache_says_how_to_get_it(tmp_path: Path, hub: Path) -> None:
    pipeline(tmp_path, _stage("sft", '"hf:someone/absent"', MAPPING))
    [problem] = _problems(tmp_path)
    assert "'someone/absent' is not in the local Hugging Face cache" in problem.message
    assert str(hub) in problem.message
    assert "huggingface-cli download --repo-type dataset someone/absent" in problem.fix
    assert not (hub / "datasets--someone--absent").exists()  # nothing was fetched


# ------------------------------------------------------------------ bad rows


def _with_bad_rows(path: Path) -> list[dict]:
    rows: list = list(tasks.sft_rows(ROWS, 1))
    lines = [json.dumps(r) for r in rows]
    lines[3] = '{"prompt": [{"role": "user", "content": "1+1"}], "completion": '  # torn
    lines[9] = json.dumps({"prompt": rows[9]["prompt"]})  # no completion
    path.write_text("\n".join(lines) + "\n")
    return [r for i, r in enumerate(rows) if i not in (3, 9)]


def test_bad_rows_refuse_with_file_and_line(tmp_path: Path) -> None:
    _with_bad_rows(tmp_path / "d.jsonl")
    with pytest.raises(DatasetError) as info:
        load_stage_rows("d.jsonl", "sft", base_dir=tmp_path)
    where = str(tmp_path / "d.jsonl")
    assert "2 bad row(s)" in info.value.message
    assert f"{where}:4: not valid JSON" in info.value.message
    assert f"{where}:10: no `completion`" in info.value.message
    assert 'on_bad_rows = "skip"' in info.value.fix
    pipeline(tmp_path, _stage("sft", '"d.jsonl"'))
    errors = _problems(tmp_path)
    assert [e.message.split(": ")[0] for e in errors] == [f"{where}:4", f"{where}:10"]


def test_bad_rows_skipped_train_on_the_rest_and_say_how_many(tmp_path: Path,
                                                             toy_base: Path) -> None:
    good = _with_bad_rows(tmp_path / "d.jsonl")
    loaded = load_stage_rows("d.jsonl", "sft", base_dir=tmp_path, on_bad_rows="skip")
    assert loaded.rows.to_list() == good and loaded.total == ROWS
    assert [p.row for p in loaded.skipped] == [4, 10]

    stages = _stage("sft", '"d.jsonl"', 'on_bad_rows = "skip"\n')
    pipeline(tmp_path, stages)
    assert not _problems(tmp_path) and len(_problems(tmp_path, "warning")) == 2
    events, run_dir = _train(tmp_path, stages)
    [check] = [e.data for e in events if e.type == "check_result" and e.data["name"] == "bad_rows"]
    assert check["status"] == "warn" and check["data"]["skipped"] == 2
    assert check["data"]["total"] == ROWS and "skipped 2 bad row(s) of 16" in check["message"]
    assert f"{tmp_path / 'd.jsonl'}:4" in check["message"]
    assert _lora_b_moved(run_dir / "stages/s")
    # what the console makes of the same events: the check on the stage, a warning in the log
    from graftline.console.run_view import fold

    view = fold(events)
    [stage] = view.stages
    assert [(c.name, c.status) for c in stage.checks if c.name == "bad_rows"] == [("bad_rows",
                                                                                  "warn")]
    assert any(line.level == "warning" and "skipped 2 bad row(s) of 16" in line.text
               for line in view.log)


def test_a_rehearsal_reads_lists_globs_and_mapped_columns(tmp_path: Path, toy_base: Path) -> None:
    from graftline.engine.rehearse.rehearsal import PASSED, rehearse

    qa = _forms()["columns_mapping"][1]
    # a plain file is sampled (its torn line left out of the sample); the glob is read whole
    (tmp_path / "one.jsonl").write_text("".join(json.dumps(r) + "\n" for r in qa[:8]) + "{\n")
    (tmp_path / "shards").mkdir()
    lines = [json.dumps(r) for r in qa[8:]]
    lines[1] = '{"question": '  # torn
    lines[4] = json.dumps({"question": qa[12]["question"]})  # no answer
    (tmp_path / "shards/a.jsonl").write_text("\n".join(lines) + "\n")
    pipeline(tmp_path, _stage("sft", '["one.jsonl", "shards/*.jsonl"]',
                              'columns = { prompt = "question", completion = "answer" }\n'
                              'on_bad_rows = "skip"\n'))
    report = rehearse(tmp_path / "pipeline.toml", steps=2, scratch_parent=tmp_path / "scratch")
    assert report.ok, report
    [stage] = report.stages
    assert stage.status == PASSED
    # the glob is read whole by the rehearsal run: both bad rows skipped, and said
    assert any("skipped 2 bad row(s) of 16" in w for w in stage.warnings), stage.warnings


def test_a_generated_source_in_a_list_is_kept_for_the_stage_that_reads_it(tmp_path: Path) -> None:
    from graftline.engine.pipeline.validate import plan_of
    from graftline.engine.run.between_stages import needed_dirs

    write_jsonl(tmp_path / "d.jsonl", list(tasks.sft_rows(ROWS, 1)))
    write_jsonl(tmp_path / "prompts.jsonl", list(tasks.prompt_rows(4, 5)))
    pf = pipeline(tmp_path, '\n[[stage]]\nname = "gen"\nkind = "generate"\nfrom = "base"\n'
                            'prompts = "prompts.jsonl"\n' + _stage("sft", '["d.jsonl", "@gen"]'))
    assert not _problems(tmp_path)
    needs = needed_dirs(plan_of(pf).steps, tmp_path / "runs" / "r")
    assert needs["s"] == {tmp_path / "runs/r/stages/gen": "its generated data"}


def test_split_without_an_hf_source_is_a_warning_and_a_list_checks_its_generated_refs(
        tmp_path: Path) -> None:
    write_jsonl(tmp_path / "d.jsonl", list(tasks.sft_rows(ROWS, 1)))
    pipeline(tmp_path, _stage("sft", '["d.jsonl", "@nowhere"]', 'split = "test"\n'))
    [error] = _problems(tmp_path)
    assert "'@nowhere' names no earlier generate stage" in error.message
    [warning] = _problems(tmp_path, "warning")
    assert warning.field == "split" and "names no hf: dataset" in warning.message


def test_a_dpo_stage_eval_data_needs_preference_columns(tmp_path: Path) -> None:
    write_jsonl(tmp_path / "pairs.jsonl", list(tasks.preference_rows(ROWS, 3)))
    write_jsonl(tmp_path / "eval.jsonl", list(tasks.eval_rows())[:8])
    pipeline(tmp_path, _stage("dpo", '"pairs.jsonl"', 'eval_data = "eval.jsonl"\n'))
    [problem] = _problems(tmp_path)
    assert problem.field == "eval_data" and "missing: chosen, rejected" in problem.message
    with pytest.raises(DatasetError, match="missing: chosen, rejected"):
        load_stage_rows("eval.jsonl", "dpo", base_dir=tmp_path)

"""Malformed pipeline files: each gives the right clear error (file, line, stage, field, fix) and no
traceback; a good one validates and plans."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from graftline.console.cli import app
from graftline.engine.pipeline.file import load
from graftline.engine.pipeline.validate import validate_file
from graftline.engine.toy import tasks
from graftline.engine.toy.files import write_jsonl

HEADER = """\
[pipeline]
name = "t"
base = "toy:addition"
runs_dir = "runs"

[defaults]
train = { max_steps = 5, batch_size = 8 }
"""
SFT = """
[[stage]]
name = "sft"
kind = "sft"
data = "data/sft.jsonl"
lora = { r = 8 }
"""
MERGE = """
[[stage]]
name = "merged"
kind = "merge"
"""


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    data = tmp_path / "data"
    data.mkdir()
    write_jsonl(data / "sft.jsonl", tasks.sft_rows(20, 0))
    write_jsonl(data / "prefs.jsonl", tasks.preference_rows(20, 0))
    write_jsonl(data / "grpo.jsonl", tasks.grpo_rows(20, 0))
    write_jsonl(data / "prompts.jsonl", tasks.prompt_rows(20, 0))
    write_jsonl(
        data / "prefs_no_rejected.jsonl",
        ({k: v for k, v in r.items() if k != "rejected"} for r in tasks.preference_rows(5, 0)),
    )
    write_jsonl(data / "wrong_cols.jsonl", [{"question": "1+1", "reply": "2"}])
    write_jsonl(data / "no_prompt.jsonl", [{"query": "1+1", "answer": "2"}])
    (tmp_path / "rewards_bad.py").write_text("def score(x):\n    return [0.0]\n")
    (tmp_path / "export_full").mkdir()
    (tmp_path / "export_full" / "old.bin").write_text("x")
    (tmp_path / "huge").mkdir()
    (tmp_path / "huge" / "config.json").write_text(
        json.dumps(
            {
                "model_type": "llama",
                "hidden_size": 65536,
                "intermediate_size": 262144,
                "num_hidden_layers": 512,
                "num_attention_heads": 64,
                "vocab_size": 256000,
                "torch_dtype": "float32",
            }
        )
    )
    return tmp_path


# (id, file text, words the message must contain, field, marked line?) — a line ending in
# "# <-" marks where the error must point.
CASES: list[tuple[str, str, list[str], str | None]] = [
    (
        "toml-syntax",
        HEADER + '\n[[stage]]\nname = "sft  # <-\nkind = "sft"\n',
        ["TOML syntax error"],
        None,
    ),
    ("no-pipeline-table", SFT, ["missing [pipeline] table"], None),
    (
        "no-base",
        '[pipeline]  # <-\nname = "t"\n' + SFT,
        ["missing required field 'base'"],
        "pipeline.base",
    ),
    (
        "unknown-top-level",
        HEADER + '\n[[stages]]  # <-\nname = "x"\n',
        ["unknown top-level table 'stages'", "did you mean 'stage'"],
        None,
    ),
    (
        "unknown-header-key",
        HEADER.replace('runs_dir = "runs"', 'bakend = "hf"  # <-'),
        ["unknown key 'bakend'", "did you mean 'backend'"],
        "pipeline.bakend",
    ),
    (
        "bad-backend",
        HEADER.replace('runs_dir = "runs"', 'backend = "cuda"  # <-') + SFT,
        ["'auto', 'hf' or 'unsloth'"],
        "pipeline.backend",
    ),
    ("no-stages", HEADER, ["no stages"], None),
    (
        "unknown-kind",
        HEADER + '\n[[stage]]\nname = "a"\nkind = "sfft"  # <-\ndata = "x"\n',
        ["unknown stage kind 'sfft'", "did you mean 'sft'"],
        "kind",
    ),
    ("missing-kind", HEADER + '\n[[stage]]  # <-\nname = "a"\n', ["has no kind"], "kind"),
    (
        "train-typo",
        HEADER + SFT.replace("lora = { r = 8 }", "train = { max_step = 10 }  # <-"),
        ["unknown key 'max_step'", "did you mean 'max_steps'"],
        "train.max_step",
    ),
    (
        "lora-unknown-key",
        HEADER + SFT.replace("lora = { r = 8 }", "lora = { rank = 8 }  # <-"),
        ["unknown key 'rank'"],
        "lora.rank",
    ),
    (
        "stage-typo-key",
        HEADER + SFT + "lerning_rate = 1e-3  # <-\n",
        ["unknown key 'lerning_rate'"],
        "lerning_rate",
    ),
    (
        "sft-without-data",
        HEADER + '\n[[stage]]  # <-\nname = "a"\nkind = "sft"\n',
        ["missing required field 'data'"],
        "data",
    ),
    (
        "duplicate-name",
        HEADER + SFT + SFT.replace('name = "sft"', 'name = "sft"  # <-'),
        ["used twice"],
        "name",
    ),
    (
        "dangling-from",
        HEADER + SFT + MERGE + 'from = "sfft"  # <-\n',
        ["no stage named 'sfft'", "did you mean 'sft'"],
        "from",
    ),
    (
        "from-later-stage",
        HEADER
        + SFT.replace("data =", 'from = "b"  # <-\ndata =')
        + SFT.replace('"sft"\nkind', '"b"\nkind'),
        ["comes later", "cycle"],
        "from",
    ),
    (
        "from-itself",
        HEADER + SFT.replace("data =", 'from = "sft"  # <-\ndata ='),
        ["starts from itself"],
        "from",
    ),
    (
        "continue-rank-change",
        HEADER
        + SFT
        + SFT.replace('"sft"\nkind', '"sft2"\nkind').replace(
            "lora = { r = 8 }", 'adapter = "continue"\nlora = { r = 16 }  # <-'
        ),
        ["rank 8 → 16", "merge"],
        "lora",
    ),
    (
        "new-on-adapter-stacks",
        HEADER
        + SFT
        + SFT.replace('"sft"\nkind', '"sft2"\nkind').replace(
            "lora = { r = 8 }", 'adapter = "new"  # <-'
        ),
        ["stack"],
        "adapter",
    ),
    (
        "continue-from-base",
        HEADER + SFT.replace("lora = { r = 8 }", 'adapter = "continue"  # <-'),
        ["no adapter to continue"],
        "adapter",
    ),
    (
        "merge-from-base",
        HEADER + '\n[[stage]]\nname = "m"\nkind = "merge"\nfrom = "base"  # <-\n',
        ["merge needs an adapter"],
        "from",
    ),
    (
        "dataset-missing",
        HEADER
        + SFT.replace("data/sft.jsonl", "data/nope.jsonl  # <-").replace(
            'nope.jsonl  # <-"', 'nope.jsonl"  # <-'
        ),
        ["dataset not found"],
        "data",
    ),
    (
        "dpo-without-rejected",
        HEADER + SFT + '\n[[stage]]\nname = "d"\nkind = "dpo"\n'
        'data = "data/prefs_no_rejected.jsonl"  # <-\n',
        ["rejected"],
        "data",
    ),
    (
        "sft-wrong-columns",
        HEADER
        + SFT.replace("data/sft.jsonl", "data/wrong_cols.jsonl").replace(
            'wrong_cols.jsonl"', 'wrong_cols.jsonl"  # <-'
        ),
        ["prompt+completion"],
        "data",
    ),
    (
        "grpo-without-prompt",
        HEADER + SFT + '\n[[stage]]\nname = "g"\nkind = "grpo"\n'
        'data = "data/no_prompt.jsonl"  # <-\ntrain = { batch_size = 8 }\nnum_generations = 4\n',
        ["grpo stage needs columns prompt"],
        "data",
    ),
    (
        "reward-not-importable",
        HEADER + SFT + '\n[[stage]]\nname = "g"\nkind = "grpo"\n'
        'data = "data/grpo.jsonl"\nreward = ["nosuchmod:score"]  # <-\nnum_generations = 4\n',
        ["cannot import 'nosuchmod'"],
        "reward",
    ),
    (
        "reward-wrong-signature",
        HEADER + SFT + '\n[[stage]]\nname = "g"\nkind = "grpo"\n'
        'data = "data/grpo.jsonl"\nreward = ["rewards_bad:score"]  # <-\nnum_generations = 4\n',
        ["prompts, completions"],
        "reward",
    ),
    (
        "reward-unknown-builtin",
        HEADER + SFT + '\n[[stage]]\nname = "g"\nkind = "grpo"\n'
        'data = "data/grpo.jsonl"\nreward = ["exact_mach"]  # <-\nnum_generations = 4\n',
        ["unknown reward 'exact_mach'"],
        "reward",
    ),
    (
        "grpo-batch-not-multiple",
        HEADER + SFT + '\n[[stage]]\nname = "g"\nkind = "grpo"\n'
        'data = "data/grpo.jsonl"\nnum_generations = 3  # <-\n',
        ["not a multiple"],
        "num_generations",
    ),
    (
        "combine-linear-unequal-ranks",
        HEADER
        + SFT
        + SFT.replace('"sft"\nkind', '"b"\nkind')
        .replace("r = 8", "r = 16")
        .replace("data =", 'from = "base"\ndata =')
        + '\n[[stage]]\nname = "c"\nkind = "combine"\nadapters = ["sft", "b"]\n'
        'weights = [1.0, 0.25]\nmethod = "linear"  # <-\n',
        ["needs equal ranks"],
        "method",
    ),
    (
        "combine-weights-count",
        HEADER
        + SFT
        + SFT.replace('"sft"\nkind', '"b"\nkind').replace("data =", 'from = "base"\ndata =')
        + '\n[[stage]]\nname = "c"\nkind = "combine"\nadapters = ["sft", "b"]\n'
        "weights = [1.0]  # <-\n",
        ["1 weights for 2 adapters"],
        "weights",
    ),
    (
        "export-target-not-empty",
        HEADER + SFT + '\n[[stage]]\nname = "e"\nkind = "export"\nout = "export_full"  # <-\n',
        ["exists and is not empty"],
        "out",
    ),
    (
        "runs-dir-not-writable",
        HEADER.replace('runs_dir = "runs"', 'runs_dir = "/proc/graftline"') + SFT,
        ["not writable"],
        "pipeline.runs_dir",
    ),
    (
        "disk-forecast",
        HEADER.replace('base = "toy:addition"', 'base = "huge"') + SFT + MERGE,
        ["free on the runs volume"],
        "pipeline.runs_dir",
    ),
    (
        "negative-lr",
        HEADER + SFT.replace("lora = { r = 8 }", "train = { lr = -1e-3 }  # <-"),
        ["greater than 0"],
        "train.lr",
    ),
    (
        "dpo-unknown-loss",
        HEADER + SFT + '\n[[stage]]\nname = "d"\nkind = "dpo"\n'
        'data = "data/prefs.jsonl"\nloss = "ipoo"  # <-\n',
        ["'sigmoid'", "'ipo'"],
        "loss",
    ),
    (
        "foreach-without-values",
        HEADER + '\n[[foreach]]  # <-\nas = "t"\n[[foreach.stage]]\n'
        'name = "s_{t}"\nkind = "sft"\ndata = "data/sft.jsonl"\n',
        ["non-empty list `values`"],
        "values",
    ),
    (
        "at-ref-without-generate",
        HEADER + SFT.replace("data/sft.jsonl", "@gen").replace('"@gen"', '"@gen"  # <-'),
        ["names no earlier generate stage"],
        "data",
    ),
    (
        "bad-stage-name",
        HEADER + SFT.replace('name = "sft"', 'name = "my stage"  # <-'),
        ["should match pattern"],
        "name",
    ),
    (
        "wrong-type",
        HEADER + SFT.replace("lora = { r = 8 }", 'train = { max_steps = "ten" }  # <-'),
        ["valid integer"],
        "train.max_steps",
    ),
    (
        "base-dir-missing",
        HEADER.replace('base = "toy:addition"', 'base = "./models/nope"') + SFT,
        ["base model not found"],
        "pipeline.base",
    ),
    (
        "cleanup-bad-keep-word",
        HEADER + SFT + '\n[cleanup]\nkeep = ["final", "last:0"]  # <-\n',
        ["keep 'last:0'", "whole number"],
        "cleanup.keep",
    ),
    (
        "cleanup-after-unknown-stage",
        HEADER + SFT + MERGE + '\n[cleanup]\nkeep = ["final"]\nafter = ["sft2"]  # <-\n',
        ["after names 'sft2'", "did you mean 'sft'"],
        "cleanup.after",
    ),
    (
        "cleanup-unknown-key",
        HEADER + SFT + '\n[cleanup]\nkeep = ["final"]\nwhen = "always"  # <-\n',
        ["unknown key 'when'", "keep, after"],
        "cleanup.when",
    ),
    (
        "cleanup-keeps-nothing",
        HEADER + SFT + '\n[cleanup]\nkeep = []  # <-\n',
        ["at least 1 item"],
        "cleanup.keep",
    ),
]


def _marked_line(text: str) -> int | None:
    for number, line in enumerate(text.splitlines(), start=1):
        if line.rstrip().endswith("# <-"):
            return number
    return None


def test_there_are_at_least_thirty_cases() -> None:
    assert len(CASES) >= 30


@pytest.mark.parametrize(
    ("text", "words", "field"), [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_malformed_file_gives_clear_error(
    workdir: Path, text: str, words: list[str], field: str | None
) -> None:
    path = workdir / "bad.toml"
    path.write_text(text)
    before = sorted(p.name for p in workdir.rglob("*"))

    _pf, problems = validate_file(path)
    errors = [p for p in problems if p.severity == "error"]
    assert errors, f"no error for:\n{text}"
    matching = [p for p in errors if all(w in p.message + " " + (p.fix or "") for w in words)]
    assert matching, f"expected {words} in {[str(p) for p in errors]}"
    problem = matching[0]
    assert problem.file == str(path)
    if field is not None:
        assert problem.field == field
    marked = _marked_line(text)
    if marked is not None:
        assert problem.line == marked, str(problem)

    result = CliRunner().invoke(app, ["validate", str(path)])
    assert result.exit_code == 1
    assert "Traceback" not in result.output
    assert words[0].split("'")[0] in result.output
    # a bad file changes nothing: no runs directory, no files written
    assert sorted(p.name for p in workdir.rglob("*")) == before


def test_all_problems_are_reported_at_once(workdir: Path) -> None:
    text = (
        HEADER
        + SFT.replace("lora = { r = 8 }", "train = { max_step = 10 }")
        + SFT.replace('"sft"\nkind', '"b"\nkind').replace('kind = "sft"', 'kind = "sfft"')
    )
    path = workdir / "two.toml"
    path.write_text(text)
    _pf, problems = validate_file(path)
    messages = " | ".join(p.message for p in problems)
    assert "max_step" in messages and "sfft" in messages


def test_linear_combine_with_equal_ranks_is_a_warning(workdir: Path) -> None:
    text = (
        HEADER
        + SFT
        + SFT.replace('"sft"\nkind', '"b"\nkind').replace("data =", 'from = "base"\ndata =')
        + '\n[[stage]]\nname = "c"\nkind = "combine"\nadapters = ["sft", "b"]\n'
        'weights = [1.0, 0.25]\nmethod = "linear"\n'
    )
    path = workdir / "linear.toml"
    path.write_text(text)
    _pf, problems = validate_file(path)
    assert [p.severity for p in problems] == ["warning"]
    assert "cat" in (problems[0].fix or "")
    assert CliRunner().invoke(app, ["validate", str(path)]).exit_code == 0


def test_foreach_expands_in_place_and_shows_in_plan(workdir: Path) -> None:
    text = (
        HEADER
        + SFT
        + MERGE
        + """
[[foreach]]
as = "topic"
values = ["alpha", "beta"]

  [[foreach.stage]]
  name = "sft_{topic}"
  kind = "sft"
  data = "data/sft.jsonl"
  lora = { r = 4 }

  [[foreach.stage]]
  name = "merge_{topic}"
  kind = "merge"
"""
    )
    path = workdir / "loop.toml"
    path.write_text(text)
    pf = load(path)
    assert [s.name for s in pf.pipeline.stage] == [
        "sft",
        "merged",
        "sft_alpha",
        "merge_alpha",
        "sft_beta",
        "merge_beta",
    ]
    assert pf.origins["sft_beta"] == "sft_{topic}"
    _pf, problems = validate_file(path)
    assert problems == []
    result = CliRunner().invoke(app, ["plan", str(path)], env={"COLUMNS": "160"})
    assert result.exit_code == 0, result.output
    assert "sft_beta" in result.output and "foreach sft_{topic}" in result.output


def test_demo_validates_and_plans() -> None:
    demo = Path(__file__).resolve().parent.parent / "examples" / "demo.toml"
    result = CliRunner().invoke(app, ["validate", str(demo)])
    assert result.exit_code == 0, result.output
    result = CliRunner().invoke(app, ["plan", str(demo), "--json"])
    assert result.exit_code == 0, result.output
    plan = json.loads(result.output)
    steps = {s["name"]: s for s in plan["steps"]}
    assert [s["action"] for s in plan["steps"]][:5] == [
        "new",
        "merge",
        "new",
        "continue",
        "continue",
    ]
    assert steps["ipo"]["reference"].startswith("the 'sft_r16' adapter as it is when 'ipo' starts")
    assert steps["sft_r16"]["starts_from"] == "the merged model from 'merged'"
    assert steps["sft_r16"]["lora"]["r"] == 16 and steps["ipo"]["lora"]["r"] == 16
    assert plan["total_bytes"] > 0 and plan["free_bytes"] > 0

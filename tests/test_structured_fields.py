"""Code that reacts to a problem reads its `code`, never its English (a reworded message must
not silently change what the rehearsal does)."""

from __future__ import annotations

import json
from pathlib import Path

from graftline.engine.pipeline import validate_file
from graftline.engine.pipeline.validate import DISK_FORECAST
from graftline.engine.toy import tasks
from graftline.engine.toy.files import write_jsonl


def test_a_disk_forecast_problem_carries_its_code(tmp_path: Path) -> None:
    (tmp_path / "huge").mkdir()
    # A config whose weights cannot fit on any disk this test runs on.
    (tmp_path / "huge" / "config.json").write_text(json.dumps({
        "model_type": "llama", "hidden_size": 65536, "intermediate_size": 262144,
        "num_hidden_layers": 512, "num_attention_heads": 64, "vocab_size": 256000,
        "torch_dtype": "float32",
    }))
    (tmp_path / "data").mkdir()
    write_jsonl(tmp_path / "data" / "sft.jsonl", tasks.sft_rows(20, 0))
    (tmp_path / "p.toml").write_text(
        '[pipeline]\nname = "t"\nbase = "huge"\nruns_dir = "runs"\n\n'
        '[[stage]]\nname = "sft"\nkind = "sft"\ndata = "data/sft.jsonl"\nlora = { r = 8 }\n\n'
        '[[stage]]\nname = "merged"\nkind = "merge"\n'
    )
    _pf, problems = validate_file(tmp_path / "p.toml")
    forecast = [p for p in problems if p.code == DISK_FORECAST]
    assert len(forecast) == 1 and forecast[0].field == "pipeline.runs_dir"
    assert all(p.code != DISK_FORECAST for p in problems if p is not forecast[0])


def test_the_plan_states_each_reference_as_a_label_too(tmp_path: Path) -> None:
    (tmp_path / "data").mkdir()
    write_jsonl(tmp_path / "data" / "sft.jsonl", tasks.sft_rows(20, 0))
    write_jsonl(tmp_path / "data" / "prefs.jsonl", tasks.preference_rows(20, 0))
    (tmp_path / "p.toml").write_text(
        '[pipeline]\nname = "t"\nbase = "toy:addition"\nruns_dir = "runs"\n\n'
        '[defaults]\ntrain = { max_steps = 5 }\n\n'
        '[[stage]]\nname = "sft"\nkind = "sft"\ndata = "data/sft.jsonl"\nlora = { r = 8 }\n\n'
        '[[stage]]\nname = "ipo"\nkind = "dpo"\nloss = "ipo"\ndata = "data/prefs.jsonl"\n'
        'adapter = "continue"\n\n'
        '[[stage]]\nname = "fresh"\nkind = "dpo"\nfrom = "base"\ndata = "data/prefs.jsonl"\n'
        'lora = { r = 4 }\n'
    )
    from graftline.engine.pipeline import plan_of

    pf, problems = validate_file(tmp_path / "p.toml")
    assert pf is not None and not [p for p in problems if p.severity == "error"], problems
    plan = plan_of(pf)
    labels = {step.name: step.reference_label for step in plan.steps}
    assert labels == {"sft": None, "ipo": "sft (frozen)", "fresh": "base (adapter off)"}


def test_the_console_shows_the_engines_reference_label_without_parsing_it() -> None:
    from graftline.console.run_view import fold
    from graftline.engine.run.events import Event

    def run_started(**stage: object) -> Event:
        data = {"run": "r", "pipeline": "p", "backend": "hf", "resumed": False,
                "stages": [{"name": "ipo", "kind": "dpo", "action": "continue", **stage}]}
        return Event(seq=1, time=0.0, type="run_started", stage=None, data=data)

    sentence = "the 'sft' adapter as it is when 'ipo' starts (frozen copy)"
    labelled = fold([run_started(reference=sentence, reference_label="a label the engine chose")])
    assert labelled.stages[0].reference_label == "a label the engine chose"
    # A log from before the engine wrote labels: the whole sentence, cut by the table, not guessed.
    older = fold([run_started(reference=sentence)])
    assert older.stages[0].reference_label == sentence

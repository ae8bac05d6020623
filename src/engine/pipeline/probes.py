"""The probes when the pipeline file names none: the first few prompts of the first training
stage's data, so that every stage answers the same questions (the Samples view, the collapse
check). `plan` says so; the runner loads them once (`default_probes`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from graftline.engine.pipeline import spec

DEFAULT_PROBES = 4
TRAINING = ("sft", "dpo", "grpo")


def default_probe_source(pipeline: spec.Pipeline) -> tuple[str, str] | None:
    """(stage, data) the default probes come from: the first training stage whose `data` is one
    plain file; None when the file names probes, or no such stage exists (each stage then asks
    its own data's first prompts)."""
    if pipeline.pipeline.probes:
        return None
    for stage in pipeline.stage:
        if stage.kind not in TRAINING:
            continue
        data = getattr(stage, "data", None)
        if isinstance(data, str) and not data.startswith(("@", "hf:")) \
                and not any(c in data for c in "*?["):
            return stage.name, data
        return None
    return None


def describe_default(pipeline: spec.Pipeline) -> str | None:
    source = default_probe_source(pipeline)
    if source is None:
        return None
    return (f"probes: none named; the first {DEFAULT_PROBES} prompts of {source[1]} (the data "
            f"of stage '{source[0]}') are asked at the start and end of every training stage "
            "(`probes = [...]` in [pipeline] names your own)")


def prompt_text(prompt: Any) -> str:
    """A row's prompt as the probe asks it: a conversation's last user turn, or the text."""
    if isinstance(prompt, list):
        users = [m.get("content", "") for m in prompt
                 if isinstance(m, dict) and m.get("role") == "user"]
        return str(users[-1]) if users else ""
    return "" if prompt is None else str(prompt)


def default_probes(pipeline: spec.Pipeline, directory: Path) -> list[str]:
    """The default probes themselves (reads the data file); [] when there are none."""
    source = default_probe_source(pipeline)
    if source is None:
        return []
    from graftline.engine.pipeline.datasets import load_rows

    rows = load_rows(Path(directory) / source[1])
    if "prompt" not in rows.column_names:
        return []
    found = [prompt_text(p) for p in rows.select(range(min(DEFAULT_PROBES, len(rows))))["prompt"]]
    return [p for p in found if p]

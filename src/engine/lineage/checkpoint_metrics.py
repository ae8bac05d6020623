"""The numbers kept with a checkpoint, wherever people keep them: a Trainer's
`trainer_state.json`, and metrics files beside it or in the usual folders (training_logs/,
eval/, …). The lineage shows them on each node; `best:METRIC` keeps by them.
"""

from __future__ import annotations

import os
from typing import Any

from graftline.engine.lineage.cached_reads import is_number, read_json

__all__ = ["metrics_beside", "trainer_metrics"]

# Where people keep a checkpoint's numbers: files beside it, and these folders beside or in it.
_METRIC_FILES = {"metrics.json": "", "evaluation.json": "eval/", "eval_results.json": "",
                 "all_results.json": "", "results.json": ""}
_METRIC_FOLDERS = ("training_logs", "test_results", "eval_results", "logs", "results", "eval")


def trainer_metrics(state: dict[str, Any]) -> dict[str, float]:
    """The numbers of a Trainer's `trainer_state.json`: its step, best metric, and the latest
    value of every key its log history holds."""
    out: dict[str, float] = {}
    if is_number(state.get("global_step")):
        out["global_step"] = float(state["global_step"])
    if is_number(state.get("best_metric")):
        out["best_metric"] = float(state["best_metric"])
    # The latest value of each; the newest records are enough (a log can hold thousands).
    history = state.get("log_history")
    for record in (history if isinstance(history, list) else [])[-200:][::-1]:
        if not isinstance(record, dict):
            continue
        for key, value in record.items():
            if key not in out and key not in ("step", "epoch") and is_number(value):
                out[key] = float(value)
    return out


def _flat_numbers(data: Any, prefix: str) -> dict[str, float]:
    """Numbers of a metrics file: top level, and one level down ({"summary": {...}})."""
    out: dict[str, float] = {}
    if not isinstance(data, dict):
        return out
    for key, value in data.items():
        if is_number(value):
            out[f"{prefix}{key}"] = float(value)
    for value in data.values():
        if isinstance(value, dict):
            for key, inner in value.items():
                if is_number(inner):
                    out.setdefault(f"{prefix}{key}", float(inner))
    return out


def metrics_beside(path: str, kind: str) -> dict[str, float]:
    """Metrics kept in files beside a checkpoint: in its folder, in the usual sub-folders of it
    (training_logs/, test_results/, …), and, for a stage result (not a Trainer checkpoint), in
    those sub-folders of the folder that holds it (`sft/final` + `sft/training_logs/`)."""
    folders = [path, *(os.path.join(path, f) for f in _METRIC_FOLDERS)]
    if kind != "trainer":
        parent = os.path.dirname(path)
        folders += [os.path.join(parent, f) for f in _METRIC_FOLDERS]
    out: dict[str, float] = {}
    for folder in folders:
        for name, prefix in _METRIC_FILES.items():
            for key, value in _flat_numbers(read_json(os.path.join(folder, name)), prefix).items():
                out.setdefault(key, value)
    return out

"""A stage's data as the stage reads it: the one loader, and the `bad_rows` check when rows were
skipped (`on_bad_rows = "skip"`), so the console shows how many and the first one's file:line."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from graftline.engine.lineage.manifest import CheckResult
from graftline.engine.pipeline.stage_rows import load_for_stage
from graftline.engine.stages.checks import CheckLog
from graftline.engine.stages.context import StageContext

BAD_ROWS = "bad_rows"


def implicit_prompt(row: Mapping[str, Any]) -> bool:
    return "prompt" not in row and "chosen" in row and "rejected" in row


def to_trl(rows: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    """Rows in the form the stage's TRL trainer reads: preference rows with an implicit prompt
    get it extracted with TRL's `maybe_extract_prompt` (DPOTrainer 1.15 does not call it);
    every other TRL format is read as it is."""
    if kind != "dpo" or not any(implicit_prompt(r) for r in rows):
        return rows
    from trl.data_utils import maybe_extract_prompt

    return [{**r, **maybe_extract_prompt(r)} if implicit_prompt(r) else r for r in rows]


def stage_rows(ctx: StageContext, stage: Any, fieldname: str, kind: str,
               log: CheckLog | None) -> Any:
    """The stage's rows (a datasets.Dataset) from its `fieldname` (data or eval_data)."""
    loaded = load_for_stage(stage, fieldname, kind, base_dir=ctx.search_dir, run_dir=ctx.run_dir,
                            convert=lambda rows: to_trl(rows, kind))
    if loaded.skipped and log is not None:
        log.record(CheckResult(
            name=BAD_ROWS, status="warn", message=loaded.skipped_message(f"`{fieldname}`"),
            data={"field": fieldname, "skipped": len(loaded.skipped), "total": loaded.total,
                  "rows": [f"{p.where}: {p.message}" for p in loaded.skipped[:20]],
                  "fix": loaded.skipped[0].fix}))
    return loaded.rows

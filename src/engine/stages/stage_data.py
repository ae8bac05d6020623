"""A stage's data as the stage reads it: the one loader, and the `bad_rows` check when rows were
skipped (`on_bad_rows = "skip"`), so the console shows how many and the first one's file:line."""

from __future__ import annotations

from typing import Any

from graftline.engine.lineage.manifest import CheckResult
from graftline.engine.pipeline.stage_rows import load_for_stage
from graftline.engine.stages.checks import CheckLog
from graftline.engine.stages.common import StageContext

BAD_ROWS = "bad_rows"


def stage_rows(ctx: StageContext, stage: Any, fieldname: str, kind: str,
               log: CheckLog | None) -> Any:
    """The stage's rows (a datasets.Dataset) from its `fieldname` (data or eval_data)."""
    loaded = load_for_stage(stage, fieldname, kind, base_dir=ctx.search_dir, run_dir=ctx.run_dir)
    if loaded.skipped and log is not None:
        log.record(CheckResult(
            name=BAD_ROWS, status="warn", message=loaded.skipped_message(f"`{fieldname}`"),
            data={"field": fieldname, "skipped": len(loaded.skipped), "total": loaded.total,
                  "rows": [f"{p.where}: {p.message}" for p in loaded.skipped[:20]],
                  "fix": loaded.skipped[0].fix}))
    return loaded.rows

"""One module per stage kind; each exposes `run(ctx) -> StageOutcome`."""

from __future__ import annotations

from collections.abc import Callable

from graftline.engine.stages.context import StageContext, StageHooks, StageOutcome


def runner_for(kind: str) -> Callable[[StageContext], StageOutcome]:
    from graftline.engine.stages import combine, dpo, eval, export, generate, grpo, merge, sft

    return {"sft": sft.run, "dpo": dpo.run, "grpo": grpo.run, "merge": merge.run,
            "combine": combine.run, "generate": generate.run, "eval": eval.run,
            "export": export.run}[kind]


__all__ = ["StageContext", "StageHooks", "StageOutcome", "runner_for"]

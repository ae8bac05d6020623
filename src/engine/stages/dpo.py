"""Preference optimisation with TRL's DPOTrainer: sigmoid, ipo and TRL's other losses.

On a continued adapter with ref_model=None TRL copies the adapter into a frozen `ref` adapter,
so the reference is the policy as it was when the stage started (FINDINGS.md); with
`precompute_ref` its log-probs are computed once up front.
"""

from __future__ import annotations

from typing import Any

from graftline.engine.pipeline import spec
from graftline.engine.stages.callbacks import StageCallback
from graftline.engine.stages.context import StageContext, StageOutcome
from graftline.engine.stages.tracking import line_up
from graftline.engine.stages.trainer_args import common_args, config_args, max_prompt_args
from graftline.engine.stages.training import run_training


def build_trainer(ctx: StageContext, model: Any, tokenizer: Any, peft_config: Any, rows: Any,
                  eval_rows: Any, callback: StageCallback) -> Any:
    from trl import DPOConfig, DPOTrainer

    stage = ctx.spec_as(spec.DPOStage)
    train = ctx.step.train
    args = {**common_args(ctx, train), "max_length": train.max_length,
            "loss_type": [stage.loss], "beta": stage.beta,
            "precompute_ref_log_probs": stage.precompute_ref, **max_prompt_args(train)}
    config = DPOConfig(**config_args(DPOConfig, ctx, args))
    return line_up(DPOTrainer(model=model, ref_model=None, args=config, train_dataset=rows,
                              eval_dataset=eval_rows, processing_class=tokenizer,
                              peft_config=peft_config, callbacks=[callback]), ctx)


def run(ctx: StageContext) -> StageOutcome:
    return run_training(ctx, lambda *a: build_trainer(ctx, *a))

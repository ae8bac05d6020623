"""Supervised fine-tuning with TRL's SFTTrainer."""

from __future__ import annotations

from typing import Any

from graftline.engine.pipeline import spec
from graftline.engine.stages.callbacks import StageCallback
from graftline.engine.stages.context import StageContext, StageOutcome
from graftline.engine.stages.tracking import line_up
from graftline.engine.stages.trainer_args import common_args, config_args
from graftline.engine.stages.training import run_training


def build_trainer(ctx: StageContext, model: Any, tokenizer: Any, peft_config: Any, rows: Any,
                  eval_rows: Any, callback: StageCallback) -> Any:
    from trl import SFTConfig, SFTTrainer

    train = ctx.step.train
    args = {**common_args(ctx, train), "max_length": train.max_length,
            "assistant_only_loss": ctx.spec_as(spec.SFTStage).assistant_only_loss,
            "packing": train.packing}
    config = SFTConfig(**config_args(SFTConfig, ctx, args))
    return line_up(SFTTrainer(model=model, args=config, train_dataset=rows,
                              eval_dataset=eval_rows, processing_class=tokenizer,
                              peft_config=peft_config, callbacks=[callback]), ctx)


def run(ctx: StageContext) -> StageOutcome:
    return run_training(ctx, lambda *a: build_trainer(ctx, *a))

"""TrainingArguments shared by every TRL stage, with defaults that are right on CPU and GPU.

TRL 1.15's configs assume a bf16 GPU (bf16=True, gradient_checkpointing=True); the backend says
what the device needs, and nothing reports to wandb or tensorboard unless asked.
"""

from __future__ import annotations

from typing import Any

from graftline.engine.common.layout import KEEP_CHECKPOINTS, TRAINER_DIR
from graftline.engine.pipeline import spec
from graftline.engine.stages.common import StageContext


def common_args(ctx: StageContext, train: spec.Train) -> dict[str, Any]:
    args: dict[str, Any] = {
        "output_dir": str(ctx.stage_dir / TRAINER_DIR),
        "per_device_train_batch_size": train.batch_size,
        "per_device_eval_batch_size": train.batch_size,
        "gradient_accumulation_steps": train.grad_accum,
        "learning_rate": train.lr,  # the plan has already applied lr_multiplier
        "warmup_steps": train.warmup,
        "lr_scheduler_type": train.scheduler,
        "weight_decay": train.weight_decay,
        "logging_steps": train.logging_steps,
        # The reference and loss-continuity checks read the first log: it must be step 1's,
        # taken before any update, whatever logging_steps the user chose.
        "logging_first_step": True,
        "gradient_checkpointing": train.gradient_checkpointing,
        "report_to": [],
        "disable_tqdm": True,
        "seed": ctx.seed,
        "data_seed": ctx.seed,
        "dataloader_num_workers": 0,
        "save_strategy": "steps" if train.save_steps else "no",
        "save_total_limit": KEEP_CHECKPOINTS,
        "remove_unused_columns": True,
    }
    if train.save_steps:
        args["save_steps"] = train.save_steps
    if train.max_steps:
        args["max_steps"] = train.max_steps
    else:
        args["num_train_epochs"] = train.epochs or 1.0
    args.update(ctx.backend.trainer_defaults())
    return args

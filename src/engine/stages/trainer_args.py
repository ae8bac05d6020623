"""TrainingArguments shared by every TRL stage, with defaults that are right on CPU and GPU.

TRL 1.15's configs assume a bf16 GPU (bf16=True, gradient_checkpointing=True); the backend says
what the device needs unless the stage forces a precision, and nothing reports to a tracker
unless `[pipeline] report_to` asks (docs/trackers.md).
"""

from __future__ import annotations

import dataclasses
from typing import Any

from graftline.engine.common.layout import KEEP_CHECKPOINTS, TRAINER_DIR
from graftline.engine.pipeline import spec
from graftline.engine.stages.checks import StageFailed
from graftline.engine.stages.context import StageContext


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
        # trackers through transformers' integrations, grouped under the run's id
        # (stages/tracking.py lines their steps up across stages)
        "report_to": list(dict.fromkeys(ctx.report_to)),
        "run_name": ctx.run_id,
        # trackio groups runs by project (TrainingArguments' default: "huggingface"); every
        # stage in the pipeline's, or a second stage would start a run in another project
        "project": ctx.pipeline_name or "graftline",
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
    if train.eval_steps and getattr(ctx.stage, "eval_data", None):
        # evaluations during training; the probes are sampled at each (callbacks.ProbeSamples)
        args["eval_strategy"] = "steps"
        args["eval_steps"] = train.eval_steps
    if train.max_steps:
        args["max_steps"] = train.max_steps
    else:
        args["num_train_epochs"] = train.epochs or 1.0
    args.update(precision_args(train.precision, ctx.backend.trainer_defaults()))
    args.update(knob_args(train))
    return args


def precision_args(precision: str, device: dict[str, Any]) -> dict[str, Any]:
    """The backend's device arguments with the stage's precision applied; `auto` leaves the
    backend's choice (fp32 on CPU, bf16 or fp16 on a GPU)."""
    out = dict(device)
    if precision == "bf16":
        out.update(bf16=True, fp16=False)
    elif precision == "fp16":
        out.update(bf16=False, fp16=True)
    elif precision == "fp32":
        out.update(bf16=False, fp16=False)
    return out


def knob_args(train: spec.Train) -> dict[str, Any]:
    """The TRL knobs the stage set; an unset one keeps TRL's own default. `packing` and
    `max_prompt_length` belong to single kinds and are passed by those stages."""
    args: dict[str, Any] = {}
    if train.optim is not None:
        args["optim"] = train.optim
    if train.max_grad_norm is not None:
        args["max_grad_norm"] = train.max_grad_norm
    if train.neftune_noise_alpha is not None:
        args["neftune_noise_alpha"] = train.neftune_noise_alpha
    if train.lr_scheduler_kwargs is not None:
        args["lr_scheduler_kwargs"] = dict(train.lr_scheduler_kwargs)
    if train.use_liger_kernel:
        args["use_liger_kernel"] = True
    return args


def max_prompt_args(train: spec.Train) -> dict[str, Any]:
    return {} if train.max_prompt_length is None else {"max_prompt_length": train.max_prompt_length}


def config_args(config_cls: type, ctx: StageContext, args: dict[str, Any]) -> dict[str, Any]:
    """`args` with the stage's `trl = { … }` on top, every key checked against the config
    class. `validate` has said the same before the run; this stops a run started anyway before
    the trainer sees a key it would reject with a traceback."""
    from graftline.engine.pipeline.trl_knobs import OWNED

    extra = dict(getattr(ctx.stage, "trl", None) or {})
    owned = sorted(k for k in extra if k in OWNED)
    if owned:
        raise StageFailed(ctx.name, f"trl.{owned[0]} is set by graftline",
                          fix=f"use {OWNED[owned[0]]} instead")
    merged = {**args, **extra}
    fields = {f.name for f in dataclasses.fields(config_cls) if f.init}
    unknown = sorted(k for k in merged if k not in fields)
    if unknown:
        raise StageFailed(ctx.name, f"{config_cls.__name__} has no field "
                          f"{', '.join(repr(k) for k in unknown)}",
                          fix="run `graftline validate` on the pipeline file: it names the fix")
    return merged

"""GRPO with TRL's GRPOTrainer, generating with the policy itself (no vLLM; runs on CPU).

Reward functions come by name or `module:function` (engine/rewards.py) and receive
`prompts, completions, completion_ids, trainer_state` and every dataset column.
"""

from __future__ import annotations

from typing import Any

from graftline.engine.pipeline import spec
from graftline.engine.pipeline.rewards import named, resolve_reward
from graftline.engine.stages.callbacks import StageCallback
from graftline.engine.stages.context import StageContext, StageOutcome
from graftline.engine.stages.tracking import line_up
from graftline.engine.stages.trainer_args import common_args, config_args, max_prompt_args
from graftline.engine.stages.training import run_training


def batch_for(batch_size: int, num_generations: int) -> int:
    """The smallest batch ≥ the asked one that holds whole groups of generations."""
    return max(num_generations, -(-batch_size // num_generations) * num_generations)


def build_trainer(ctx: StageContext, model: Any, tokenizer: Any, peft_config: Any, rows: Any,
                  eval_rows: Any, callback: StageCallback) -> Any:
    from trl import GRPOConfig, GRPOTrainer

    stage = ctx.spec_as(spec.GRPOStage)
    train = ctx.step.train
    args = common_args(ctx, train)
    batch = batch_for(train.batch_size, stage.num_generations)
    if batch != train.batch_size:
        ctx.sink.emit("warning", ctx.name,
                      message=f"batch_size {train.batch_size} → {batch}: GRPO needs whole groups "
                              f"of num_generations = {stage.num_generations}",
                      fix="set batch_size to a multiple of num_generations")
    args["per_device_train_batch_size"] = batch
    args["per_device_eval_batch_size"] = batch
    # reward functions read dataset columns (e.g. `answer`): keep them in the batches
    args["remove_unused_columns"] = False
    rewards = [named(resolve_reward(n, ctx.search_dir), n) for n in stage.reward]
    args.update(
        num_generations=stage.num_generations,
        max_completion_length=stage.max_completion_length,
        temperature=stage.temperature,
        beta=stage.beta,
        reward_weights=stage.reward_weights,
        log_completions=False,
        **max_prompt_args(train),
    )
    config = GRPOConfig(**config_args(GRPOConfig, ctx, args))
    # TRL's type wants list[float | None] back; ours return list[float], which it accepts
    return line_up(GRPOTrainer(model=model, reward_funcs=rewards,  # type: ignore[arg-type]
                               args=config, train_dataset=rows,
                               eval_dataset=eval_rows, processing_class=tokenizer,
                               peft_config=peft_config, callbacks=[callback]), ctx)


def run(ctx: StageContext) -> StageOutcome:
    return run_training(ctx, lambda *a: build_trainer(ctx, *a))

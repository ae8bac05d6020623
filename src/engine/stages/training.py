"""The part every training stage (sft, dpo, grpo) shares: start model and adapter, checks around
the trainer, the save that leaves exactly one `default` adapter on disk.

Adapter flow (FINDINGS.md): `new` → a plain model plus a LoraConfig that TRL applies; `continue`
→ the parent adapter loaded with is_trainable=True as `default` and NO peft_config (a PeftModel
plus a peft_config is a ValueError, or a silent second adapter). After DPO/GRPO TRL's frozen
`ref` copy is deleted before saving.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import datasets
from transformers.trainer_callback import PrinterCallback, ProgressCallback

from graftline.engine.common.checkpoint_files import REFERENCE_ADAPTER
from graftline.engine.common.tokenizer_files import save_tokenizer
from graftline.engine.lineage import manifest as mf
from graftline.engine.pipeline import spec
from graftline.engine.stages import checks, resume, trl_compat
from graftline.engine.stages.callbacks import StageCallback, summarize
from graftline.engine.stages.checkpoint_guard import guard_checkpoint_saves, save_when_space
from graftline.engine.stages.common import (
    StageContext,
    StageOutcome,
    emit_samples,
    lora_spec_from_config,
    probe_prompts,
    stage_dir,
    training_parents,
)
from graftline.engine.stages.stage_data import stage_rows

BuildTrainer = Callable[[Any, Any, Any, Any, Any, StageCallback], Any]
PROBE_TOKENS = 12


def start_model(ctx: StageContext) -> tuple[Any, Any, Any]:
    """(model, tokenizer, peft_config for TRL or None)."""
    if ctx.hooks.prepare_model is not None:
        return ctx.hooks.prepare_model(ctx)
    model, tokenizer = ctx.backend.load_model(ctx.model_path(), quantization=ctx.quantization,
                                              max_length=ctx.step.train.max_length)
    if ctx.step.action == "continue":
        model = ctx.backend.load_adapter(model, ctx.parent_dir(), trainable=True)
        return model, tokenizer, None
    model, peft_config = ctx.backend.new_adapter(model, ctx.step.lora, seed=ctx.seed)
    return model, tokenizer, peft_config


def _previous_sft_loss(ctx: StageContext) -> tuple[str, float | None] | None:
    """The last loss of the SFT stage this SFT stage picks up from (continued, or merged)."""
    if ctx.kind != "sft" or ctx.step.parent is None:
        return None
    parent = ctx.step.parent
    found = mf.read(stage_dir(ctx.run_dir, parent))
    if found is not None and found.kind == "merged" and found.parents:
        parent = found.parents[0].path.rsplit("/", 1)[-1]
        found = mf.read(stage_dir(ctx.run_dir, parent))
    if found is None or found.stage_kind != "sft":
        return None
    return parent, found.metrics.get("loss_last")


def run_training(ctx: StageContext, build: BuildTrainer) -> StageOutcome:
    stage, step = ctx.spec_as(spec.TrainingStage), ctx.step
    log = checks.CheckLog(ctx.name, ctx.sink)
    spent = 0.0
    rows = stage_rows(ctx, stage, "data", ctx.kind, log)
    eval_rows = stage_rows(ctx, stage, "eval_data", ctx.kind, log) if stage.eval_data else None
    trl_compat.install()
    # progress reaches the console through the sink; bars would only fill engine.log
    datasets.disable_progress_bars()
    model, tokenizer, peft_config = start_model(ctx)
    previous = _previous_sft_loss(ctx)

    def first_log(logs: dict[str, Any]) -> None:
        nonlocal spent
        began = time.perf_counter()
        if ctx.kind in ("dpo", "grpo") and ctx.resume_from is None:
            log.record(checks.reference_start(ctx.kind, logs, step.reference))
        if previous is not None and ctx.resume_from is None:
            log.record(checks.loss_continuity(previous[0], previous[1], logs.get("loss")))
        spent += time.perf_counter() - began

    def resumed() -> None:
        # after the Trainer's own checkpoint load, before the first step: a resume that would
        # train from anything but the checkpoint's weights stops here
        if ctx.resume_from is not None:
            log.record(resume.resumed_weights(policy, ctx.resume_from))

    callback = StageCallback(ctx.name, ctx.sink, ctx.control, ctx.global_step_offset,
                             on_first_log=first_log, on_begin=resumed)
    trainer = build(model, tokenizer, peft_config, rows, eval_rows, callback)
    # progress goes through the sink; the Trainer's own printer would flood engine.log
    trainer.remove_callback(PrinterCallback)
    trainer.remove_callback(ProgressCallback)
    guard_checkpoint_saves(trainer, ctx)  # a full disk pauses the save, never fails the stage
    policy = trainer.accelerator.unwrap_model(trainer.model)

    began = time.perf_counter()
    allowed = (REFERENCE_ADAPTER,) if ctx.kind in ("dpo", "grpo") else ()
    before = checks.fingerprint(policy)
    log.record(checks.adapters(policy, allowed_frozen=allowed))
    log.record(checks.trainable_fraction(policy))
    if step.action == "continue":
        parent = mf.read(ctx.parent_dir())
        if parent is not None and parent.lora is not None:
            log.record(checks.lora_config_kept(parent.lora, policy))
        elif step.foreign is not None and step.foreign.lora is not None:
            kept = step.foreign.lora  # a foreign adapter: the shape its adapter_config records
            log.record(checks.lora_config_kept(mf.LoraSpec(
                r=kept.r, alpha=kept.lora_alpha, dropout=kept.dropout,
                target_modules=kept.target_modules, use_rslora=kept.use_rslora,
                use_dora=kept.use_dora), policy))
    probes = probe_prompts(ctx, rows, count=checks.MIN_PROBES, at_least=True)
    said_before = checks.generate(policy, tokenizer, probes, PROBE_TOKENS)
    emit_samples(ctx, "start", probes, said_before)
    spent += time.perf_counter() - began

    final = resume.final_step(ctx.resume_from)
    if final is not None and ctx.resume_from is not None:
        # saved at the last step, then the engine died before the adapter save: training is
        # over, and the Trainer resumed there would still train a step past max_steps. Set
        # before the hooks, so a distributed rank's wrapper around `train` wraps this one.
        checkpoint = ctx.resume_from

        def finished() -> None:
            resumed()
            ctx.sink.emit("info", ctx.name, message=(
                f"{checkpoint.name} holds step {final.global_step} of {final.max_steps}, the "
                "stage's last: its training was complete when the engine stopped, so no step "
                "is trained; its adapter goes on to the stage's save and checks"),
                resumed_from=str(checkpoint), steps_trained=0, step=final.global_step,
                max_steps=final.max_steps)

        trainer.train = resume.no_step(trainer, checkpoint, after=finished)
    if ctx.hooks.before_train is not None:
        ctx.hooks.before_train(trainer)
    if ctx.resume_from is not None:
        # the Trainer skips the root adapter when the checkpoint has a ref/ subfolder
        resume.restore_policy(policy, ctx.resume_from)
    trainer.train(resume_from_checkpoint=str(ctx.resume_from) if ctx.resume_from else None)

    history = callback.history
    if final is not None and ctx.resume_from is not None:
        history = resume.logged_history(ctx.resume_from, ctx.global_step_offset)
    outcome = StageOutcome(kind="adapter", checks=log, history=history)
    outcome.metrics = summarize(history, callback.summary)
    outcome.steps = int(trainer.state.global_step)
    # a stop that lands on the last step has cut off nothing: the stage is complete (a resume
    # from that final checkpoint would train a step past max_steps)
    if callback.stopped and trainer.state.global_step < trainer.state.max_steps:
        outcome.status = "stopped"
        return outcome

    began = time.perf_counter()
    log.record(checks.base_unchanged(before, checks.fingerprint(policy)))
    log.record(checks.adapters(policy, allowed_frozen=allowed))
    if REFERENCE_ADAPTER in getattr(policy, "peft_config", {}):
        policy.delete_adapter(REFERENCE_ADAPTER)
    spent += time.perf_counter() - began

    out = ctx.stage_dir

    def save() -> None:
        policy.save_pretrained(str(out), selected_adapters=[checks.ADAPTER])
        save_tokenizer(tokenizer, out)

    adapter_bytes = sum(p.numel() * p.element_size() for p in policy.parameters()
                        if p.requires_grad)
    save_when_space(ctx, "the stage's adapter", out, adapter_bytes, save)
    ctx.sink.emit("info", ctx.name, message=f"adapter saved to {out}")

    began = time.perf_counter()
    log.record(checks.no_stray_ref(out))
    log.record(checks.adapter_base(out, ctx.model_path()))
    said_after = checks.generate(policy, tokenizer, probes, PROBE_TOKENS)
    emit_samples(ctx, "end", probes, said_after, outcome.steps)
    log.record(checks.generation_sanity(said_before, said_after, probes, PROBE_TOKENS,
                                        gate=not checks.random_weights(ctx.base_path)))
    spent += time.perf_counter() - began

    if eval_rows is not None:
        outcome.evaluation = {k: float(v) for k, v in trainer.evaluate().items()
                              if isinstance(v, int | float)}
    outcome.lora = lora_spec_from_config(policy.peft_config[checks.ADAPTER])
    outcome.base = ctx.model_path()
    outcome.parents = training_parents(ctx)
    outcome.metrics["checks_seconds"] = spent
    outcome.extra = {"action": step.action, "reference": step.reference}
    return outcome

"""The part every training stage (sft, dpo, grpo) shares: start model and adapter, checks around
the trainer, the save that leaves exactly one `default` adapter on disk.

Adapter flow (FINDINGS.md): `new` → a plain model plus a LoraConfig that TRL applies; `continue`
→ the parent adapter loaded with is_trainable=True as `default` and NO peft_config (a PeftModel
plus a peft_config is a ValueError, or a silent second adapter). After DPO/GRPO TRL's frozen
`ref` copy is deleted before saving.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable
from typing import Any

import datasets
from transformers.trainer_callback import PrinterCallback, ProgressCallback

from graftline.engine.common.checkpoint_files import REFERENCE_ADAPTER
from graftline.engine.common.heap import freeze_imported_heap
from graftline.engine.common.tokenizer_files import save_tokenizer
from graftline.engine.lineage import manifest as mf
from graftline.engine.pipeline import spec
from graftline.engine.stages import checks, resume, trl_compat
from graftline.engine.stages.callbacks import ProbeSamples, StageCallback, summarize
from graftline.engine.stages.checkpoint_guard import guard_checkpoint_saves, save_when_space
from graftline.engine.stages.context import StageContext, StageOutcome, stage_dir
from graftline.engine.stages.eval import (
    answered_rows,
    end_of_turn_probability,
    end_of_turn_targets,
)
from graftline.engine.stages.parents import lora_spec_from_config, training_parents
from graftline.engine.stages.samples import emit_samples, expected_answers, probe_prompts
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
    model, peft_config = ctx.backend.new_adapter(model, ctx.step.lora, seed=ctx.seed,
                                                 tokenizer=tokenizer)
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


class _EndOfTurn:
    """The end-of-turn measure of one stage: the same ≤ 8 rows of its data at start and end."""

    def __init__(self, rows: Any, tokenizer: Any) -> None:
        head = rows.select(range(min(len(rows), 8 * checks.END_OF_TURN_ROWS)))
        self.rows, self.answers = answered_rows(head, checks.END_OF_TURN_ROWS)
        self.tokenizer = tokenizer
        # tokenized once: the rows and the tokenizer are the same at the start and the end
        self.targets = end_of_turn_targets(tokenizer, self.rows, self.answers)
        ends = self.targets[1]
        self.token_id = Counter(ends).most_common(1)[0][0] if ends else None

    def measure(self, model: Any) -> float | None:
        if self.token_id is None:
            return None
        was_training = model.training
        try:
            return end_of_turn_probability(model, self.tokenizer, self.rows, self.answers,
                                           targets=self.targets)
        finally:
            if was_training:
                model.train()

    def check(self, before: float | None, after: float | None, model: Any, *, judge: bool
              ) -> mf.CheckResult:
        token = str(self.tokenizer.convert_ids_to_tokens(self.token_id)) \
            if self.token_id is not None else "end of turn"
        config = getattr(model, "peft_config", {}).get(checks.ADAPTER)
        trained = self.token_id in checks.token_ids_of(config) if config is not None else False
        return checks.end_of_turn(before, after, token, trained=trained, judge=judge,
                                  rows=len(self.rows))


class _ChecksClock:
    """The seconds the stage spends in its own checks (`checks_seconds` in its metrics): `with
    clock:` around each stretch of checking."""

    def __init__(self) -> None:
        self.seconds = 0.0
        self._began = 0.0

    def __enter__(self) -> _ChecksClock:
        self._began = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        self.seconds += time.perf_counter() - self._began


class _Probes:
    """The stage's probe prompts and what the policy answers them: at the start (kept for the
    collapse check), at every evaluation, and at the end, each as a `samples` event."""

    def __init__(self, ctx: StageContext, rows: Any, policy: Any, tokenizer: Any) -> None:
        self.ctx, self.policy, self.tokenizer = ctx, policy, tokenizer
        self.prompts = probe_prompts(ctx, rows, count=checks.MIN_PROBES, at_least=True)
        self.expected = expected_answers(rows, self.prompts)
        self.said_before = self.answers()
        self.send("start", self.said_before)

    def answers(self) -> Any:
        return checks.generate(self.policy, self.tokenizer, self.prompts, PROBE_TOKENS)

    def send(self, when: str, said: Any, step: int | None = None) -> None:
        emit_samples(self.ctx, when, self.prompts, said, step, expected=self.expected)

    def at_eval(self, step: int) -> None:
        self.send("eval", self.answers(), step)


def _checks_before_training(ctx: StageContext, policy: Any, log: checks.CheckLog,
                            allowed: tuple[str, ...]) -> Any:
    """The adapter checks on the wrapped policy before its first step; the base's fingerprint,
    for `base_unchanged` after training."""
    before = checks.fingerprint(policy)
    log.record(checks.adapters(policy, allowed_frozen=allowed))
    log.record(checks.trainable_fraction(policy))
    if ctx.step.action == "continue":
        parent = mf.read(ctx.parent_dir())
        if parent is not None and parent.lora is not None:
            log.record(checks.lora_config_kept(parent.lora, policy))
        elif ctx.step.foreign is not None and ctx.step.foreign.lora is not None:
            kept = ctx.step.foreign.lora  # a foreign adapter: the shape its adapter_config records
            log.record(checks.lora_config_kept(mf.LoraSpec(
                r=kept.r, alpha=kept.lora_alpha, dropout=kept.dropout,
                target_modules=kept.target_modules, use_rslora=kept.use_rslora,
                use_dora=kept.use_dora), policy))
    return before


def _train(ctx: StageContext, trainer: Any, policy: Any, resumed: Callable[[], None]
           ) -> resume.CheckpointSteps | None:
    """`trainer.train`, resumed from the stage's Trainer checkpoint when there is one. Returns
    that checkpoint's steps when it was saved at the stage's last step (no step is trained)."""
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
    return final if ctx.resume_from is not None else None


def _save_adapter(ctx: StageContext, policy: Any, tokenizer: Any) -> None:
    """The `default` adapter and the tokenizer into the stage's folder, waiting out a full
    disk."""
    out = ctx.stage_dir

    def save() -> None:
        policy.save_pretrained(str(out), selected_adapters=[checks.ADAPTER])
        save_tokenizer(tokenizer, out)

    adapter_bytes = sum(p.numel() * p.element_size() for p in policy.parameters()
                        if p.requires_grad)
    save_when_space(ctx, "the stage's adapter", out, adapter_bytes, save)
    ctx.sink.emit("info", ctx.name, message=f"adapter saved to {out}")


def _build_trainer(ctx: StageContext, build: BuildTrainer, args: tuple[Any, Any, Any, Any, Any,
                   StageCallback]) -> tuple[Any, Any]:
    """The stage's Trainer from `build(*args)`, quiet and guarded, and the policy it trains."""
    model = args[0]
    # a continued adapter is a PeftModel already: TRL may use its head (and add `ref`) in __init__
    trl_compat.token_rows_for_trl(model)
    trl_compat.ref_copies_token_rows(model)
    trainer = build(*args)
    # progress goes through the sink; the Trainer's own printer would flood engine.log
    trainer.remove_callback(PrinterCallback)
    trainer.remove_callback(ProgressCallback)
    guard_checkpoint_saves(trainer, ctx)  # a full disk pauses the save, never fails the stage
    policy = trainer.accelerator.unwrap_model(trainer.model)
    trl_compat.token_rows_for_trl(policy)  # a new adapter: TRL wrapped the model just now
    return trainer, policy


def run_training(ctx: StageContext, build: BuildTrainer) -> StageOutcome:
    stage, step = ctx.spec_as(spec.TrainingStage), ctx.step
    trl_compat.install()
    # progress reaches the console through the sink; bars would only fill engine.log
    datasets.disable_progress_bars()
    freeze_imported_heap()  # after trl's import, before the stage's rows and model
    log = checks.CheckLog(ctx.name, ctx.sink)
    clock = _ChecksClock()
    rows = stage_rows(ctx, stage, "data", ctx.kind, log)
    eval_rows = stage_rows(ctx, stage, "eval_data", ctx.kind, log) if stage.eval_data else None
    model, tokenizer, peft_config = start_model(ctx)
    previous = _previous_sft_loss(ctx)

    def first_log(logs: dict[str, Any]) -> None:
        with clock:
            if ctx.kind in ("dpo", "grpo") and ctx.resume_from is None:
                log.record(checks.reference_start(ctx.kind, logs, step.reference))
            if previous is not None and ctx.resume_from is None:
                log.record(checks.loss_continuity(previous[0], previous[1], logs.get("loss")))

    def resumed() -> None:
        # after the Trainer's own checkpoint load, before the first step: a resume that would
        # train from anything but the checkpoint's weights stops here
        if ctx.resume_from is not None:
            log.record(resume.resumed_weights(policy, ctx.resume_from))

    callback = StageCallback(ctx.name, ctx.sink, ctx.control, ctx.global_step_offset,
                             on_first_log=first_log, on_begin=resumed)
    trainer, policy = _build_trainer(ctx, build, (model, tokenizer, peft_config, rows,
                                                  eval_rows, callback))

    allowed = (REFERENCE_ADAPTER,) if ctx.kind in ("dpo", "grpo") else ()
    with clock:
        before = _checks_before_training(ctx, policy, log, allowed)
        probes = _Probes(ctx, rows, policy, tokenizer)
        trainer.add_callback(ProbeSamples(stage.train.eval_steps, probes.at_eval))
        end_of_turn = _EndOfTurn(rows, tokenizer)
        ended_before = end_of_turn.measure(policy)

    final = _train(ctx, trainer, policy, resumed)
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

    with clock:
        log.record(checks.base_unchanged(before, checks.fingerprint(policy)))
        log.record(checks.adapters(policy, allowed_frozen=allowed))
        if REFERENCE_ADAPTER in getattr(policy, "peft_config", {}):
            policy.delete_adapter(REFERENCE_ADAPTER)
    _save_adapter(ctx, policy, tokenizer)
    with clock:
        log.record(checks.no_stray_ref(ctx.stage_dir))
        log.record(checks.adapter_base(ctx.stage_dir, ctx.model_path()))
        said_after = probes.answers()
        probes.send("end", said_after, outcome.steps)
        log.record(checks.generation_sanity(probes.said_before, said_after, probes.prompts,
                                            PROBE_TOKENS, gate=ctx.judge_quality))
        log.record(end_of_turn.check(ended_before, end_of_turn.measure(policy), policy,
                                     judge=ctx.judge_quality))

    if eval_rows is not None:
        outcome.evaluation = {k: float(v) for k, v in trainer.evaluate().items()
                              if isinstance(v, int | float)}
    outcome.lora = lora_spec_from_config(policy.peft_config[checks.ADAPTER])
    outcome.base = ctx.model_path()
    outcome.parents = training_parents(ctx)
    outcome.metrics["checks_seconds"] = clock.seconds
    outcome.extra = {"action": step.action, "reference": step.reference}
    return outcome

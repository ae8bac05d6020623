"""Everything that can be checked before a single step runs, reported all at once.

Structure and types come from `pipeline_file.parse`; this module adds what needs the outside
world: datasets on disk and their columns, reward functions, the adapter flow (from `plan`),
export targets, the runs directory, and the disk forecast.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Iterator
from pathlib import Path

from graftline.engine.common.checkpoint_files import MODEL_CONFIG
from graftline.engine.common.disk import nearest_existing
from graftline.engine.common.units import human_bytes
from graftline.engine.pipeline import limits, spec
from graftline.engine.pipeline.file import CLEANUP_BLOCK, HEADER_BLOCK, PipelineFile, load
from graftline.engine.pipeline.plan import Plan, build_plan
from graftline.engine.pipeline.problems import (
    InStage,
    PipelineError,
    Problem,
    Where,
    did_you_mean,
)

DISK_FORECAST = "disk_forecast"  # Problem.code: the run will not fit on the runs volume


def runs_dir(pf: PipelineFile) -> Path:
    return pf.resolve(pf.pipeline.pipeline.runs_dir)


def plan_of(pf: PipelineFile, runs: Path | None = None) -> Plan:
    """`runs`: where the run will really be created (`--runs-dir`), when not the file's."""
    return build_plan(
        pf.pipeline,
        file=str(pf.path),
        search_dir=pf.directory,
        runs_dir=runs if runs is not None else runs_dir(pf),
        origins=pf.origins,
        line_of=pf.line,
    )


def _data_problems(pf: PipelineFile, plan: Plan) -> Iterator[Problem]:
    from graftline.engine.pipeline.data_checks import data_field_problems

    earlier: dict[str, str] = {}
    for step in plan.steps:
        stage = step.stage
        fields = [
            ("data", getattr(stage, "data", None)),
            ("eval_data", getattr(stage, "eval_data", None)),
        ]
        if isinstance(stage, spec.GenerateStage):
            fields = [("prompts", stage.prompts)]
        for fieldname, value in fields:
            if value is None:
                continue
            line = pf.line(stage.name, fieldname)
            at = Where(file=str(pf.path), line=line, stage=stage.name, field=fieldname)
            # `data` may be a list of sources (docs/datasets.md); each `@stage` is checked here
            generated = [r for r in ([value] if isinstance(value, str) else value)
                         if r.startswith("@")]
            for ref in generated:
                if earlier.get(ref[1:]) != "generate":
                    yield Problem(
                        f"'{ref}' names no earlier generate stage",
                        **at,
                        fix="put a generate stage with that name above this one",
                    )
            if isinstance(value, str) and generated:
                continue
            # eval_data is what the stage's own trainer evaluates on: its kind's columns (a
            # dpo stage's held-out pairs), as the stage loader checks them (stages/stage_data)
            kind = "generate" if fieldname == "prompts" else step.kind
            # sources (files, globs, hf:), column mapping, columns and rows: pipeline/data_checks
            yield from data_field_problems(pf.directory, stage, fieldname, value, kind, at)
        earlier[stage.name] = step.kind


def _reward_problems(pf: PipelineFile) -> Iterator[Problem]:
    from graftline.engine.pipeline.rewards import (
        RewardError,
        resolve_reward,
        reward_data_problems,
    )

    for stage in pf.pipeline.stage:
        if not isinstance(stage, spec.GRPOStage):
            continue
        resolved = {}
        for name in stage.reward:
            try:
                resolved[name] = resolve_reward(name, search_path=pf.directory)
            except RewardError as exc:
                yield Problem(
                    f"reward '{name}': {exc.message}",
                    str(pf.path),
                    pf.line(stage.name, "reward"),
                    stage.name,
                    "reward",
                    exc.fix,
                )
        yield from reward_data_problems(pf, stage, resolved)
        if stage.reward_weights is not None and len(stage.reward_weights) != len(stage.reward):
            yield Problem(
                f"{len(stage.reward_weights)} reward_weights for {len(stage.reward)} rewards",
                str(pf.path),
                pf.line(stage.name, "reward_weights"),
                stage.name,
                "reward_weights",
                "give one weight per reward function",
            )
        per_step = stage.train.batch_size * stage.train.grad_accum
        if per_step % stage.num_generations:
            yield Problem(
                f"batch_size × grad_accum = {per_step} is not a multiple of num_generations "
                f"= {stage.num_generations}",
                str(pf.path),
                pf.line(stage.name, "num_generations"),
                stage.name,
                "num_generations",
                "GRPO groups completions per prompt: make the batch a multiple of num_generations",
            )


def _stage_problems(pf: PipelineFile) -> Iterator[Problem]:
    for stage in pf.pipeline.stage:
        at = InStage(file=str(pf.path), stage=stage.name)
        if isinstance(stage, spec.CombineStage) and stage.method == "linear":
            yield Problem(
                "PEFT's 'linear' scales A and B by √w separately: the result is not the weighted "
                "sum of the adapters' deltas",
                line=pf.line(stage.name, "method"),
                field="method",
                severity="warning",
                fix='use method = "cat" for the exact weighted sum',
                **at,
            )
        if isinstance(stage, spec.ExportStage):
            out = pf.resolve(stage.out)
            if out.exists() and (not out.is_dir() or any(out.iterdir())) and not stage.force:
                yield Problem(
                    f"export target {out} exists and is not empty",
                    line=pf.line(stage.name, "out"),
                    field="out",
                    fix="choose an empty directory, or set force = true to overwrite it",
                    **at,
                )
        train = getattr(stage, "train", None)
        if train is not None and train.max_steps is None and train.epochs is None:
            yield Problem(
                "neither max_steps nor epochs is set",
                line=pf.line(stage.name, "train"),
                field="train",
                fix="set train.max_steps (or train.epochs) here or in [defaults]",
                **at,
            )


def _template_token_problems(pf: PipelineFile, plan: Plan) -> Iterator[Problem]:
    """Chat-template tokens the base never learned (their embedding/lm_head rows untrained):
    a LoRA on linear layers cannot learn them, and the model answers and never stops — unless
    the stages train those rows (`lora.trainable_tokens`), whose tokens are checked here too."""
    from graftline.engine.pipeline import template_tokens as tt
    from graftline.engine.pipeline.modelinfo import config_path

    yield from tt.trainable_token_problems(pf, plan)
    base = pf.pipeline.pipeline.base
    if base.startswith("toy:"):
        return
    found = config_path(base, pf.directory)
    if found is None:
        return
    try:
        untrained = tt.untrained_template_tokens(found.parent)
        if not untrained or tt.covered(untrained, plan, tt.trainable_token_ids(pf, plan)):
            return
    except Exception:  # unreadable files: the other checks say what is wrong with them
        return
    names = ", ".join(f"{t.token} (id {t.id}, {t.where} row at {t.ratio:.0%} of the trained "
                      "rows' scale)" for t in untrained[:4])
    tokens = ", ".join(json.dumps(t.token) for t in untrained)
    yield Problem(
        f"the chat template uses token(s) the base never learned: {names}. A LoRA on the "
        "linear layers cannot train their embedding and lm_head rows: the model will answer "
        "and never stop (or never start a turn)",
        str(pf.path), pf.line(HEADER_BLOCK, "base"), None, "pipeline.base",
        f"train those rows: lora = {{ ..., trainable_tokens = [{tokens}] }} in [defaults] (or "
        "in each stage that starts from the base; PEFT's trainable_token_indices = "
        f"{[t.id for t in untrained]} underneath), or start from the instruct model, whose "
        "template tokens are trained",
        severity="warning", code="untrained_template_tokens")


def _environment_problems(pf: PipelineFile, plan: Plan, runs: Path | None = None
                          ) -> Iterator[Problem]:
    header = pf.pipeline.pipeline
    base = header.base
    line = pf.line(HEADER_BLOCK, "base")
    if not base.startswith("toy:"):
        local = pf.resolve(base)
        looks_local = base.startswith((".", "/", "~")) or local.exists()
        if looks_local and not (local / MODEL_CONFIG).is_file():
            yield Problem(
                f"base model directory {local} has no {MODEL_CONFIG}"
                if local.exists()
                else f"base model not found: {local}",
                str(pf.path),
                line,
                None,
                "pipeline.base",
                f"point base at a model directory ({MODEL_CONFIG} + weights) or a hub id",
            )
        elif not looks_local and plan.model is None:
            yield Problem(
                f"'{base}' is not in the local Hugging Face cache; sizes are unknown and the run "
                "will download it",
                str(pf.path),
                line,
                None,
                "pipeline.base",
                "download it first (huggingface-cli download) on a machine with access",
                severity="warning",
            )
    runs = runs if runs is not None else runs_dir(pf)
    if not _writable(runs):
        yield Problem(
            f"runs directory {runs} is not writable",
            str(pf.path),
            pf.line(HEADER_BLOCK, "runs_dir"),
            None,
            "pipeline.runs_dir",
            "set runs_dir to a directory you can write to",
        )
        return
    total, free = plan.total_bytes, plan.free_bytes
    if total is not None and free is not None and total > free:
        yield Problem(
            f"the run will write about {human_bytes(total)} but only {human_bytes(free)} is free "
            "on the runs volume",
            str(pf.path),
            pf.line(HEADER_BLOCK, "runs_dir"),
            None,
            "pipeline.runs_dir",
            "free disk (graftline cleanup), or point runs_dir at a larger volume",
            code=DISK_FORECAST,
        )
    if header.quantization != "none" and not _has_cuda():
        yield Problem(
            f"quantization = {header.quantization} without a CUDA GPU: bitsandbytes runs "
            "on CPU but slowly, and 4-bit ruins tiny models' accuracy",
            str(pf.path),
            pf.line(HEADER_BLOCK, "quantization"),
            None,
            "pipeline.quantization",
            'use quantization = "none" on CPU',
            severity="warning",
        )


def _has_cuda() -> bool:
    """Whether a CUDA device is visible, asked of NVML (the console validates in its own
    process, which never imports torch)."""
    from graftline.engine.pipeline.scaleout import visible_gpus

    return visible_gpus() > 0


def _writable(path: Path) -> bool:
    """Try it rather than trust permission bits (root passes os.access on read-only mounts)."""
    probe = nearest_existing(path)
    if not probe.is_dir():
        return False
    try:
        with tempfile.TemporaryFile(dir=probe):
            return True
    except OSError:
        return False


def _cleanup_problems(pf: PipelineFile) -> list[Problem]:
    """[cleanup]: each keep word parses as `graftline cleanup --keep` would, each `after` names a
    stage; and a policy that would delete the run's own result is called out."""
    from graftline.engine.lineage.cleanup import CleanupError, parse_keep

    policy = pf.pipeline.cleanup
    if policy is None:
        return []
    file = str(pf.path)
    problems: list[Problem] = []
    for word in policy.keep:
        try:
            parse_keep(word)
        except CleanupError as exc:
            problems.append(Problem(str(exc).replace("--keep ", "keep "), file,
                                    pf.line(CLEANUP_BLOCK, "keep"), field="cleanup.keep",
                                    fix="final, last:N, best:METRIC[:min|max], id:ID, a stage's "
                                        "path under the run, or a glob"))
    names = [s.name for s in pf.pipeline.stage]
    for name in policy.after:
        if name not in names:
            problems.append(Problem(f"[cleanup] after names '{name}', which is not a stage", file,
                                    pf.line(CLEANUP_BLOCK, "after"), field="cleanup.after",
                                    fix=did_you_mean(name, names)))
    if "final" not in policy.keep and (not policy.after or names[-1] in policy.after):
        problems.append(Problem(
            "[cleanup] keep has no 'final' and it runs after the last stage: the run's newest "
            "checkpoint would be deleted unless another word keeps it", file,
            pf.line(CLEANUP_BLOCK, "keep"), field="cleanup.keep", severity="warning",
            fix='add "final" to keep'))
    return problems


def _scaleout_problems(pf: PipelineFile) -> list[Problem]:
    """Stages with processes > 1 (pipeline/scaleout.py); looks at the machine only for those."""
    from graftline.engine.pipeline import scaleout

    if not scaleout.any_distributed(pf.pipeline):
        return []
    return scaleout.problems(pf.pipeline, scaleout.detect_env(), file=str(pf.path),
                             line_of=pf.line, search_dir=pf.directory)


def _foreign_problems(pf: PipelineFile, plan: Plan) -> Iterator[Problem]:
    """Stages whose `from` names a checkpoint made elsewhere (pipeline/foreign_checks.py)."""
    from graftline.engine.pipeline.foreign_checks import foreign_problems

    return foreign_problems(pf, plan)


def _combine_problems(pf: PipelineFile, plan: Plan) -> Iterator[Problem]:
    """A combine's adapter folders made elsewhere (pipeline/combine_checks.py)."""
    from graftline.engine.pipeline.combine_checks import combine_problems

    return combine_problems(pf, plan)


def _tracker_and_knob_problems(pf: PipelineFile) -> list[Problem]:
    """`[pipeline] report_to` and the TRL knobs (docs/trackers.md); reads no training library."""
    from graftline.engine.pipeline import trackers, trl_knobs

    return [*trackers.problems(pf), *trl_knobs.problems(pf)]


def validate(pf: PipelineFile, runs: Path | None = None) -> list[Problem]:
    """Every problem in a parsed pipeline file (errors and warnings), in stage order. `runs`:
    the runs directory the run will use when it is not the file's (`--runs-dir`): the disk
    forecast and the writability check are about that volume."""
    plan = plan_of(pf, runs)
    problems = [
        *plan.problems,
        *_stage_problems(pf),
        *_data_problems(pf, plan),
        *_reward_problems(pf),
        *_environment_problems(pf, plan, runs),
        *_template_token_problems(pf, plan),
        *_cleanup_problems(pf),
        *limits.name_problems(pf),
        *limits.lora_problems(pf),
        *limits.export_problems(pf),
        *_scaleout_problems(pf),
        *_foreign_problems(pf, plan),
        *_combine_problems(pf, plan),
        *_tracker_and_knob_problems(pf),
    ]
    # file order, as a reader fixes them; a problem without a line sits at its stage's header
    def line(problem: Problem) -> int:
        if problem.line:
            return problem.line
        block = pf.blocks.get(problem.stage or "")
        return block.header if block else 0

    return sorted(problems, key=line)


def validate_file(path: Path | str) -> tuple[PipelineFile | None, list[Problem]]:
    """Parse and validate; never raises for a bad file."""
    try:
        pf = load(path)
    except PipelineError as exc:
        return None, exc.problems
    return pf, validate(pf)

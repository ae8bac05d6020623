"""Rehearse a pipeline: every stage, a handful of steps, on a tiny twin of the base, on CPU.

The rehearsal pipeline is derived from the real one by a pure function (`derive`): the same
stages, adapter flow, references, reward functions, chat template, export and cleanup policy,
with `max_steps` a handful, small batches, GRPO groups of 2, each dataset sampled to a few dozen
rows in a scratch directory (paths rewritten, `@generate` references kept), generate stages on a
few prompts, the export written into the scratch directory, and `runs_dir` = the scratch
directory. Then (`rehearse`) the twin is built, the samples written, each stage's data, chat
template and reward functions checked, and the pipeline run through the real runner with all its
health checks. The report says, per stage, passed or failed with the error and the fix, the
time, and what this machine cannot rehearse. The scratch directory is removed unless kept.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from graftline.engine.common.event_types import EventType
from graftline.engine.pipeline import foreign, spec
from graftline.engine.pipeline.file import PipelineFile
from graftline.engine.pipeline.plan import StepPlan, build_plan
from graftline.engine.pipeline.problems import Problem
from graftline.engine.pipeline.validate import DISK_FORECAST
from graftline.engine.rehearse.preflight import Finding
from graftline.engine.run.between_stages import needed_dirs

DEFAULT_STEPS = 3
SAMPLE_ROWS = 32
GENERATE_PROMPTS = 8
EVAL_ROWS = 8
MAX_BATCH = 4
MAX_LENGTH = 512
MAX_NEW_TOKENS = 16
NUM_GENERATIONS = 2
RANDOM_LR_SCALE = 0.01
SCRATCH = ".rehearsals"  # inside the pipeline's runs directory
RUN_NAME = "rehearsal"

PASSED, FAILED, NOT_RUN = "passed", "failed", "not run"


@dataclass(frozen=True)
class CleanupPolicy:
    """The cleanup a user means to run between stages (`graftline cleanup --keep …`):
    after each stage named in `after` (every stage when empty), keep what `keep` selects."""

    keep: tuple[str, ...]
    after: tuple[str, ...] = ()

    def applies_after(self, stage: str) -> bool:
        return not self.after or stage in self.after


@dataclass(frozen=True)
class Sample:
    """One dataset of the real pipeline and where its rehearsal sample goes."""

    source: Path
    target: Path
    rows: int
    uses: tuple[tuple[str, str, str], ...]  # (stage, field, kind reading it)


@dataclass(frozen=True)
class Derived:
    pipeline: spec.Pipeline
    samples: tuple[Sample, ...]
    notes: tuple[str, ...]  # what is not rehearsed as it will run, and why


@dataclass(frozen=True)
class StageReport:
    name: str
    kind: str
    status: str = NOT_RUN  # passed | failed | not run
    seconds: float = 0.0
    error: str = ""
    fix: str = ""
    checks: tuple[tuple[str, str], ...] = ()  # (check, pass|warn|fail)
    warnings: tuple[str, ...] = ()


@dataclass(frozen=True)
class RehearsalReport:
    file: str
    stages: tuple[StageReport, ...]
    problems: tuple[Problem, ...] = ()  # the validator's errors: nothing ran
    twin: str = ""
    notes: tuple[str, ...] = ()
    seconds: float = 0.0
    scratch: str | None = None  # kept scratch directory, if asked to keep it

    @property
    def ok(self) -> bool:
        return not self.problems and all(s.status == PASSED for s in self.stages)

    @property
    def failures(self) -> list[StageReport]:
        return [s for s in self.stages if s.status == FAILED]


# ---------------------------------------------------------------- the pure part

def _sample_name(index: int, source: Path) -> str:
    stem = "".join(c if c.isalnum() or c in "-_" else "_" for c in source.stem)[:40]
    return f"{index:02d}-{stem}.jsonl"


def _train(train: spec.Train, steps: int, *, multiple_of: int = 1, lr_scale: float = 1.0
           ) -> spec.Train:
    batch = min(train.batch_size, MAX_BATCH)
    batch = max(multiple_of, batch - batch % multiple_of)
    return train.model_copy(update={
        "max_steps": steps, "epochs": None, "batch_size": batch, "grad_accum": 1,
        "lr": train.lr * lr_scale,
        "warmup": min(train.warmup, 1), "logging_steps": 1,
        "max_length": min(train.max_length, MAX_LENGTH),
        "save_steps": steps if train.save_steps else None,
    })


def _processes(model: Any) -> int:
    value = getattr(model, "processes", None)
    return int(value) if isinstance(value, int) else 1


def derive(pf: PipelineFile, *, base: str, scratch: Path, steps: int = DEFAULT_STEPS,
           cuda: bool = False, random_twin: bool = False) -> Derived:
    """The rehearsal pipeline for `pf`, with every path inside `scratch`. Pure: reads nothing.

    On a randomly initialised twin the learning rates are scaled by `RANDOM_LR_SCALE`: a random
    model's logits are nearly uniform, so a few full-size steps flip its greedy output to the end
    token, which the collapse check rightly reads as a collapse — of a model nobody will use."""
    pipeline = pf.pipeline
    header = pipeline.pipeline
    notes: list[str] = []
    samples: dict[Path, Sample] = {}
    data_dir = scratch / "data"

    def sampled(value: str | list[str] | None, stage: str, fieldname: str, kind: str, rows: int
                ) -> Any:
        if isinstance(value, list):  # several sources (docs/datasets.md): each sampled alike
            return [sampled(v, stage, fieldname, kind, rows) for v in value]
        if value is None or value.startswith("@"):
            return value  # a generate stage's output: made in the rehearsal run itself
        if value.startswith("hf:"):
            return value  # the local HF cache, read by the rehearsal run as the real run would
        if any(c in value for c in "*?["):
            return str(pf.resolve(value))  # a glob: its files, read by the rehearsal run
        source = pf.resolve(value)
        known = samples.get(source)
        target = known.target if known else data_dir / _sample_name(len(samples), source)
        uses = (*(known.uses if known else ()), (stage, fieldname, kind))
        samples[source] = Sample(source, target, max(rows, known.rows if known else 0), uses)
        return str(target)

    stages: list[spec.StageBase] = []
    for stage in pipeline.stage:
        kind = stage.kind
        update: dict[str, Any] = {}
        if isinstance(stage, spec.TrainingStage):
            group = NUM_GENERATIONS if isinstance(stage, spec.GRPOStage) else 1
            update["train"] = _train(stage.train, steps, multiple_of=group,
                                     lr_scale=RANDOM_LR_SCALE if random_twin else 1.0)
            update["data"] = sampled(stage.data, stage.name, "data", kind, SAMPLE_ROWS)
            update["eval_data"] = sampled(stage.eval_data, stage.name, "eval_data", "eval",
                                          EVAL_ROWS)
            if isinstance(stage, spec.GRPOStage):
                update["num_generations"] = NUM_GENERATIONS
                update["max_completion_length"] = min(stage.max_completion_length,
                                                      MAX_NEW_TOKENS)
        elif isinstance(stage, spec.GenerateStage):
            update["prompts"] = sampled(stage.prompts, stage.name, "prompts", "generate",
                                        GENERATE_PROMPTS)
            update["max_new_tokens"] = min(stage.max_new_tokens, MAX_NEW_TOKENS)
            update["num_samples"] = 1
            if stage.keep == "correct":
                update["keep"] = "all"
                notes.append(f"'{stage.name}': keep = \"correct\" is rehearsed as \"all\" (a "
                             "random twin is never correct, and the next stage needs rows)")
        elif isinstance(stage, spec.EvalStage):
            update["data"] = sampled(stage.data, stage.name, "data", "eval", EVAL_ROWS)
            update["limit"] = min(stage.limit or EVAL_ROWS, EVAL_ROWS)
        elif isinstance(stage, spec.ExportStage):
            update["out"] = str(scratch / "exports" / stage.name)
            update["force"] = True
        if foreign.is_reference(stage.from_) and base != header.base:
            update.update(_foreign_start(stage, notes))
        if isinstance(stage, spec.CombineStage) and base != header.base:
            update.update(_combine_on_the_twin(stage, notes))
        if _processes(stage) > 1:
            update["processes"] = 1
            notes.append(f"'{stage.name}': processes = {_processes(stage)} (multi-GPU) is "
                         "rehearsed in one process; the DDP/FSDP/DeepSpeed launch is not")
        stages.append(stage.model_copy(update=update))

    head = _rehearsal_header(header, base, scratch, cuda, random_twin, notes)
    defaults = pipeline.defaults
    if _processes(defaults) > 1:  # [defaults] processes: every stage that inherits it
        notes.append(f"[defaults] processes = {_processes(defaults)} is rehearsed in one process")
        defaults = defaults.model_copy(update={"processes": 1})
    derived = pipeline.model_copy(update={
        "pipeline": header.model_copy(update=head), "stage": stages, "defaults": defaults,
    })
    return Derived(derived, tuple(samples.values()), tuple(notes))


def _rehearsal_header(header: spec.Header, base: str, scratch: Path, cuda: bool,
                      random_twin: bool, notes: list[str]) -> dict[str, Any]:
    """What the rehearsal changes in `[pipeline]` (the twin, the scratch runs folder, what this
    machine cannot rehearse), each change with its note."""
    if random_twin:
        notes.append(f"learning rates × {RANDOM_LR_SCALE} on the twin's random weights, so the "
                     "collapse check sees plumbing faults, not a random model tipping over")
    head: dict[str, Any] = {"base": base, "runs_dir": str(scratch / "runs")}
    if header.quantization != "none" and not cuda:
        head["quantization"] = "none"
        notes.append(f"quantization = \"{header.quantization}\" needs a CUDA GPU: rehearsed in "
                     "full precision, so the bitsandbytes load is not rehearsed")
    if header.backend == "unsloth" and not cuda:
        head["backend"] = "hf"
        notes.append("backend = \"unsloth\" needs CUDA: rehearsed with transformers + peft + "
                     "trl, so Unsloth's loading and patching are not rehearsed")
    elif header.backend == "auto" and not cuda:
        notes.append("backend = \"auto\" picks transformers + peft + trl on this machine (no "
                     "CUDA); on a GPU box with unsloth installed it picks Unsloth, whose path "
                     "is not rehearsed here")
    if header.report_to:  # a rehearsal is not an experiment: keep it out of the user's trackers
        head["report_to"] = []
        notes.append(f"report_to = {header.report_to}: a rehearsal reports to no tracker "
                     "(validate has checked their packages and credentials)")
    if _processes(header) > 1:
        head["processes"] = 1
        notes.append(f"processes = {_processes(header)} (multi-GPU) is rehearsed in one process")
    return head


def _foreign_start(stage: spec.StageBase, notes: list[str]) -> dict[str, Any]:
    """A stage that starts from a checkpoint made elsewhere (docs/bring-your-own.md) starts, on
    a twin that is not the base itself, from the twin: the checkpoint's weights fit the real
    base, not the twin. Validate has checked the checkpoint; the rehearsal checks the stage and
    what follows it. (On the toy base, its own twin, the checkpoint is rehearsed as it is.)"""
    if isinstance(stage, spec.MergeStage):
        notes.append(f"'{stage.name}': merging {stage.from_} (made outside graftline) is not "
                     "rehearsed: its weights fit the real base, not the twin")
        return {}
    update: dict[str, Any] = {"from_": "base"}
    if isinstance(stage, spec.TrainingStage):
        update.update(adapter="new", base_from=None)
    notes.append(f"'{stage.name}' starts from {stage.from_} (made outside graftline): rehearsed "
                 "from the twin" + (" with a fresh adapter" if "adapter" in update else "")
                 + "; the checkpoint itself is checked by validate, not loaded here")
    return update


def _combine_on_the_twin(stage: spec.CombineStage, notes: list[str]) -> dict[str, Any]:
    """A combine's adapter folders made elsewhere fit the real base, not the twin the rehearsed
    stages train on: each is stood in for by the first stage adapter of the list, so the
    combine's loading, weighting and save are rehearsed on the twin. With folders only, the
    combine is left as written (like a merge of a foreign adapter) and noted."""
    entries = list(stage.adapters)
    folders = [e for e in entries if foreign.is_reference(e)]
    if not folders:
        return {}
    staged = [e for e in entries if not foreign.is_reference(e)]
    if not staged:
        notes.append(f"'{stage.name}': combining only adapters made outside graftline "
                     f"({', '.join(folders)}) is not rehearsed: their weights fit the real base, "
                     "not the twin")
        return {}
    notes.append(f"'{stage.name}': the adapters made outside graftline ({', '.join(folders)}) "
                 f"fit the real base, not the twin: '{staged[0]}' stands in for them, so the "
                 "combine is rehearsed but not their weights (validate has checked the folders)")
    return {"adapters": [staged[0] if foreign.is_reference(e) else e for e in entries]}


# ---------------------------------------------------------------- the side effects

class RehearsalSink:
    """Records each stage's outcome from the runner's events; runs the cleanup policy between
    stages on the scratch run, as a user's `graftline cleanup` would."""

    def __init__(self, steps: list[StepPlan], run_dir: Path, cleanup: CleanupPolicy | None,
                 on_event: Callable[[str, str | None, dict[str, Any]], None] | None = None
                 ) -> None:
        self.run_dir, self.cleanup, self.on_event = run_dir, cleanup, on_event
        self.order = [s.name for s in steps]
        self.needs = needed_dirs(steps, run_dir)
        self.stages: dict[str, dict[str, Any]] = {s.name: {"kind": s.kind} for s in steps}
        self.cleanup_breaks: dict[str, tuple[str, str]] = {}  # stage → (message, fix)
        self.errors: list[tuple[str, str]] = []  # run-level errors (no stage)

    def emit(self, type: EventType, stage: str | None = None, **data: Any) -> None:
        record = self.stages.get(stage or "")
        if type == "error":
            if record is None:
                self.errors.append((str(data.get("message", "")), str(data.get("fix", ""))))
            else:
                record["error"], record["fix"] = data.get("message", ""), data.get("fix", "")
        elif record is not None and type == "check_result":
            record.setdefault("checks", []).append((data.get("name"), data.get("status")))
        elif record is not None and type == "warning":
            record.setdefault("warnings", []).append(str(data.get("message", "")))
        elif record is not None and type == "stage_finished":
            record["status"] = data.get("status")
            record["seconds"] = float(data.get("seconds") or 0.0)
        if self.on_event is not None:
            self.on_event(type, stage, data)
        if type == "stage_finished" and data.get("status") == "complete" and stage is not None \
                and self.cleanup is not None and self.cleanup.applies_after(stage):
            self._clean_after(stage)

    def _clean_after(self, stage: str) -> None:
        from graftline.engine.lineage.cleanup import CleanupError, execute, parse_keep, plan_cleanup
        from graftline.engine.lineage.reader import scan

        assert self.cleanup is not None
        rules = "keep " + ", ".join(self.cleanup.keep)
        record = self.stages[stage]
        try:
            lineage = scan([self.run_dir])
            plan = plan_cleanup(lineage, [parse_keep(k) for k in self.cleanup.keep])
        except CleanupError as exc:
            record.setdefault("warnings", []).append(f"cleanup after '{stage}' ({rules}): {exc}")
            return
        doomed = {Path(lineage.node(k).path or "").resolve(): k for k in plan.delete}
        later = self.order[self.order.index(stage) + 1:]
        for name in later:
            lost = [(d, why) for d, why in self.needs.get(name, {}).items()
                    if d.resolve() in doomed]
            if lost and name not in self.cleanup_breaks:
                what = " and ".join(f"{d.relative_to(self.run_dir)} ({why})" for d, why in lost)
                keep = ", ".join(f"'{d.name}'" for d, _ in lost)
                self.cleanup_breaks[name] = (
                    f"the cleanup after '{stage}' ({rules}) deletes {what}, which '{name}' "
                    "needs",
                    f"keep {keep} (add to the keep rules, or keep 'final'), or run this cleanup "
                    "only after the last stage; graftline's cleanup protects what kept "
                    "checkpoints need, not what later stages will read")
        execute(plan, lineage)
        if self.on_event is not None:
            self.on_event("cleanup", stage, {"deleted": len(plan.delete), "rules": rules})


def _scratch(pf: PipelineFile, parent: Path | None) -> Path:
    from graftline.engine.pipeline.validate import runs_dir

    root = Path(parent) if parent is not None else runs_dir(pf) / SCRATCH
    root.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=f"{pf.pipeline.pipeline.name}-", dir=root)).resolve()


def _remove(scratch: Path) -> None:
    """Only the directory this rehearsal made, never through a symlink."""
    if scratch.is_symlink() or not scratch.is_dir():
        return
    shutil.rmtree(scratch)


def write_samples(derived: Derived) -> list[Finding]:
    """Write each sample; scan every row of the full datasets for empty required fields."""
    from graftline.engine.pipeline.data_formats import rename_row
    from graftline.engine.pipeline.datasets import DatasetError, write_jsonl
    from graftline.engine.pipeline.stage_rows import read_rows
    from graftline.engine.rehearse.preflight import data_finding

    # a stage's `columns` and `on_bad_rows` (docs/datasets.md): the sample keeps the data's own
    # column names (the rehearsal stage maps them) and, for a stage that skips bad rows, its bad
    # rows too (the rehearsal stage skips them and says so, as the real one will)
    stages = {s.name: s for s in derived.pipeline.stage}
    findings: list[Finding] = []
    for sample in derived.samples:
        try:
            rows, bad = read_rows(sample.source)
        except DatasetError as exc:
            findings += [Finding(stage, fieldname, exc.message, fix=exc.fix)
                         for stage, fieldname, _kind in sample.uses]
            continue
        for stage, fieldname, kind in sample.uses:
            if getattr(stages.get(stage), "on_bad_rows", "refuse") == "skip":
                continue
            if bad:
                findings.append(Finding(stage, fieldname, f"{bad[0].where}: {bad[0].message}",
                                        fix=bad[0].fix))
                continue
            mapping = getattr(stages.get(stage), "columns", None) or {}
            found = data_finding(stage, fieldname, sample.source.name, kind,
                                 [rename_row(r, mapping) for r in rows])
            if found is not None:
                findings.append(found)
        stride = max(1, len(rows) // sample.rows)  # spread over the file, not just its head
        sample.target.parent.mkdir(parents=True, exist_ok=True)
        write_jsonl(sample.target, rows[::stride][:sample.rows])
    return findings


def _rows(path: str | list[str] | None) -> list[dict[str, Any]]:
    # a list, glob or hf: source (docs/datasets.md) is checked by the rehearsal run itself
    if not isinstance(path, str) or path.startswith(("@", "hf:")) \
            or any(c in path for c in "*?["):
        return []
    from graftline.engine.pipeline.datasets import load_rows

    return load_rows(Path(path)).to_list()


def preflight(pf: PipelineFile, derived: Derived, tokenizer: Any) -> list[Finding]:
    """Chat template and reward checks on each stage's sampled data."""
    from graftline.engine.pipeline.rewards import RewardError, resolve_reward
    from graftline.engine.rehearse.preflight import reward_finding, template_finding

    findings: list[Finding] = []
    for stage in derived.pipeline.stage:
        kind = stage.kind
        fields = [("prompts", "generate")] if kind == "generate" else \
            [("data", "eval" if kind == "eval" else kind), ("eval_data", "eval")]
        for fieldname, reading in fields:
            rows = _rows(getattr(stage, fieldname, None))
            if not rows or kind in ("merge", "combine", "export"):
                continue
            found = template_finding(stage.name, fieldname, reading, tokenizer, rows,
                                     assistant_only_loss=getattr(stage, "assistant_only_loss",
                                                                 False))
            if found is not None:
                findings.append(found)
                break
        if isinstance(stage, spec.GRPOStage):
            rows = _rows(stage.data)
            for name in stage.reward:
                try:
                    fn = resolve_reward(name, search_path=pf.directory)
                except RewardError as exc:
                    findings.append(Finding(stage.name, "reward", exc.message, fix=exc.fix))
                    continue
                found = reward_finding(stage.name, name, fn, tokenizer, rows)
                if found is not None:
                    findings.append(found)
    return findings


def _load_tokenizer(base: str) -> Any:
    from transformers import AutoTokenizer

    from graftline.engine.toy.named import built_toy_base

    tokenizer = AutoTokenizer.from_pretrained(built_toy_base(base), local_files_only=True)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def _problems_report(path: str, pf: PipelineFile | None, errors: list[Problem],
                     began: float) -> RehearsalReport:
    stages = []
    for stage in pf.pipeline.stage if pf is not None else []:
        mine = [p for p in errors if p.stage == stage.name]
        if mine:
            stages.append(StageReport(stage.name, stage.kind, FAILED,
                                      error=f"{mine[0].where}: {mine[0].message}",
                                      fix=mine[0].fix or ""))
        else:
            stages.append(StageReport(stage.name, stage.kind))
    return RehearsalReport(path, tuple(stages), tuple(errors),
                           seconds=time.perf_counter() - began,
                           notes=("the validator found errors: nothing was rehearsed",))


def rehearse(path: Path | str | PipelineFile, *, steps: int = DEFAULT_STEPS, keep: bool = False,
             scratch_parent: Path | None = None, cleanup: CleanupPolicy | None = None,
             on_event: Callable[[str, str | None, dict[str, Any]], None] | None = None
             ) -> RehearsalReport:
    """Validate, build the twin, sample the data, check each stage's data, template and rewards,
    run every stage for `steps` steps, and report. Never raises for a fault in the pipeline.
    `path` may be a parsed file (a run's copy, parsed under its original path: run/launch.py)."""
    from graftline.engine.backends.base import cuda_available
    from graftline.engine.pipeline.validate import validate, validate_file
    from graftline.engine.rehearse.twin import build_twin
    from graftline.engine.run.runner import run_pipeline

    began = time.perf_counter()
    pf: PipelineFile | None
    if isinstance(path, PipelineFile):
        pf, problems = path, validate(path)
        path = path.path
    else:
        pf, problems = validate_file(path)
    errors = [p for p in problems if p.severity == "error"]
    # The disk forecast is the real run's, not the rehearsal's: report it, rehearse anyway.
    disk = [p for p in errors if _disk_forecast(p)]
    if pf is None or len(errors) > len(disk):
        return _problems_report(str(path), pf, errors, began)
    scratch = _scratch(pf, scratch_parent)
    try:
        twin = build_twin(pf.pipeline.pipeline.base, scratch / "twin", search_dir=pf.directory,
                          seed=pf.pipeline.pipeline.seed)
        if on_event is not None:
            on_event("twin", None, {"describe": twin.describe, "notes": list(twin.notes)})
        derived = derive(pf, base=twin.base, scratch=scratch, steps=steps,
                         cuda=cuda_available(), random_twin=twin.source == "config")
        notes = [*twin.notes, *derived.notes,
                 f"each dataset sampled to at most {SAMPLE_ROWS} rows (every row of the full "
                 "file scanned for empty required fields); "
                 f"{steps} steps per training stage",
                 ("the twin's weights are random: " if twin.source == "config" else
                  f"{steps} steps a stage say nothing about quality: ")
                 + "the checks test the plumbing (adapters, references, merges, saves); the "
                 "quality checks (collapse, end of turn) report without failing a stage"]
        twin_pf = PipelineFile(path=pf.path, text=pf.text, pipeline=derived.pipeline,
                               origins=pf.origins, blocks=pf.blocks)
        (scratch / "rehearsal.json").write_text(
            json.dumps(derived.pipeline.model_dump(mode="json", by_alias=True), indent=2))
        findings = write_samples(derived)
        own = [p for p in validate(twin_pf) if p.severity == "error"]
        findings += preflight(pf, derived, _load_tokenizer(twin.base))
        for problem in own:  # the derivation itself must be valid; say so if it is not
            findings.append(Finding(problem.stage or derived.pipeline.stage[0].name,
                                    problem.field or "", f"rehearsal derivation: "
                                    f"{problem.message}", fix=problem.fix or ""))
        report = _run(twin_pf, scratch, findings, cleanup, on_event, run_pipeline)
        return RehearsalReport(str(path), report, tuple(disk), twin.describe, tuple(notes),
                               time.perf_counter() - began, str(scratch) if keep else None)
    finally:
        if not keep:
            _remove(scratch)


def _disk_forecast(problem: Problem) -> bool:
    return problem.code == DISK_FORECAST


def _run(pf: PipelineFile, scratch: Path, findings: list[Finding],
         cleanup: CleanupPolicy | None,
         on_event: Callable[[str, str | None, dict[str, Any]], None] | None,
         run_pipeline: Callable[..., Any]) -> tuple[StageReport, ...]:
    """Run the stages before the first one a preflight finding stops; report every stage."""
    pipeline = pf.pipeline
    names = [s.name for s in pipeline.stage]
    first_bad = min((names.index(f.stage) for f in findings if f.stage in names),
                    default=len(names))
    steps = list(build_plan(pipeline).steps)
    sink = RehearsalSink(steps, scratch / "runs" / RUN_NAME, cleanup, on_event)
    run_errors: list[tuple[str, str]] = []
    if first_bad > 0:
        runnable = pf.__class__(path=pf.path, text=pf.text, origins=pf.origins,
                                blocks=pf.blocks, pipeline=pipeline.model_copy(
                                    update={"stage": list(pipeline.stage[:first_bad])}))
        # a few steps a stage: the plumbing checks gate, the quality checks only report
        run_pipeline(runnable, sink.run_dir, sink, judge_quality=False)
        run_errors = sink.errors
    reports = []
    for step in steps:
        record = sink.stages[step.name]
        mine = [f for f in findings if f.stage == step.name]
        broke = sink.cleanup_breaks.get(step.name)
        checks = tuple(record.get("checks", ()))
        warnings = tuple(record.get("warnings", ()))
        seconds = record.get("seconds", 0.0)
        if mine:
            first = mine[0]
            error = "; ".join(f.message for f in mine)
            cause = f" (likely cause: {first.cause})" if first.cause else ""
            reports.append(StageReport(step.name, step.kind, FAILED, 0.0, error + cause,
                                       first.fix, checks, warnings))
        elif broke is not None:
            detail = record.get("error")
            error = broke[0] + (f"; the stage then failed: {detail}" if detail else "")
            reports.append(StageReport(step.name, step.kind, FAILED, seconds, error, broke[1],
                                       checks, warnings))
        elif record.get("status") == "complete":
            reports.append(StageReport(step.name, step.kind, PASSED, seconds, checks=checks,
                                       warnings=warnings))
        elif record.get("status") == "failed" or record.get("error"):
            reports.append(StageReport(step.name, step.kind, FAILED, seconds,
                                       str(record.get("error", "")), str(record.get("fix", "")),
                                       checks, warnings))
        elif run_errors and not any(r.status == FAILED for r in reports):
            message, fix = run_errors[0]
            reports.append(StageReport(step.name, step.kind, FAILED, 0.0, message, fix))
        else:
            reports.append(StageReport(step.name, step.kind, NOT_RUN, seconds, checks=checks,
                                       warnings=warnings))
    return tuple(reports)

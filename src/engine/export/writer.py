"""Streaming export: merge a checkpoint's adapter into its full-precision base, write a complete
model directory, and verify it against base + adapter.

`plan_export` is the pure half: it resolves the chain (adapter → base, from manifests or
`adapter_config.json`), reads only headers and configs, and refuses bad targets and anything it
cannot merge exactly, before a byte is written. `run_export` does the work tensor by tensor
(see streaming_merge), then writes config, generation config, tokenizer and chat template, the
safetensors index, a model card, `verification.json` and the export's own `graftline.json`.

Out-directory rules: never inside a checkpoint (or an earlier export), never around the
checkpoint or its base, never a symlink; an existing non-empty directory only with `force`, and
then only a previous export's own files are replaced.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from graftline.engine.common import export_index
from graftline.engine.common.checkpoint_files import (
    MODEL_CONFIG,
    MODEL_SAFETENSORS_INDEX,
    MODEL_SHARDS_GLOB,
    directory_bytes,
)
from graftline.engine.common.sink import Sink
from graftline.engine.common.tokenizer_files import TOKENIZER_FILES
from graftline.engine.export.adapter_plan import (
    AdapterPlan,
    analyse_adapter,
    base_headers,
    model_layout,
    must_untie,
)
from graftline.engine.export.chain import (
    Chain,
    ExportRefused,
    LineageNode,
    is_adapter_dir,
    is_model_dir,
    resolve_chain,
)
from graftline.engine.export.merge import (
    EXPORT_DTYPES,
    OutShard,
    plan_tensors,
    write_shards,
)
from graftline.engine.lineage import manifest as manifest_io

FORMATS = ("safetensors", "gguf", "ollama")
GGUF_VERIFICATION = "gguf_verification.json"
GENERATION_CONFIG = "generation_config.json"
MODEL_CARD = "README.md"
MODELFILE = "Modelfile"
# Files a previous export wrote; with `force` these (and only these) are replaced.
_OWN_PATTERNS = (MODEL_SHARDS_GLOB, MODEL_SAFETENSORS_INDEX, "*.gguf", "verification.json",
                 MODELFILE, GGUF_VERIFICATION,
                 MODEL_CARD, MODEL_CONFIG, GENERATION_CONFIG, manifest_io.MANIFEST,
                 *TOKENIZER_FILES)
# a GGUF not run for want of llama.cpp is a warning: its tensor verification still stands
_RUNTIME_STATUS: dict[str, Literal["pass", "warn", "fail"]] = {
    "passed": "pass", "not_run": "warn", "failed": "fail"}
_SIZE_UNITS = {"KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12,
               "KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40, "B": 1}



@dataclass(frozen=True)
class ExportPlan:
    checkpoint: Path
    out: Path
    kind: Literal["adapter", "model"]
    base: Path
    adapter: Path | None
    dtype: str
    formats: tuple[str, ...]
    force: bool
    verify: bool
    shards: tuple[OutShard, ...]
    untie: bool
    lineage: tuple[LineageNode, ...]
    adapter_plan: AdapterPlan | None = field(repr=False)
    tokenizer_source: Path
    generation_source: Path | None
    gguf_converter: Any | None  # gguf_convert.Converter
    checkpoint_manifest: manifest_io.Manifest | None = field(repr=False)
    gguf_type: str | None = None
    # the lineage's first folder with tokenizer files (the original base): the export's
    # tokenizer must encode like it
    tokenizer_reference: Path | None = None
    # what the export must say before it writes (the in-memory-merge doubt, a data check's
    # answer); recorded in the export's manifest too
    warnings: tuple[str, ...] = ()

    @property
    def total_bytes(self) -> int:
        return sum(shard.bytes for shard in self.shards)

    @property
    def merged_tensors(self) -> int:
        return sum(1 for shard in self.shards for job in shard.jobs if job.delta is not None)

    def describe(self) -> list[str]:
        """Human lines: what will be read, merged and written."""
        lines = [f"checkpoint  {self.checkpoint} ({self.kind})", f"base        {self.base}"]
        if self.adapter_plan is not None:
            config = self.adapter_plan.config
            lines.append(
                f"adapter     r={config.get('r')} alpha={config.get('lora_alpha')}"
                f"{' rslora' if config.get('use_rslora') else ''}: {self.merged_tensors} tensors "
                f"merged, {len(self.adapter_plan.replacements)} replaced")
        lines.append(f"output      {self.out} ({self.dtype}, {len(self.shards)} file(s), "
                     f"{self.total_bytes / 1e6:.1f} MB, formats {', '.join(self.formats)})")
        if self.gguf_type is not None and self.gguf_converter is not None:
            lines.append(f"gguf        {self.gguf_type} via {self.gguf_converter.describe()}, "
                         "verified tensor by tensor and run in llama.cpp")
        if self.untie:
            lines.append("note        tied embeddings are untied: the adapter changes one side")
        lines += [f"warning     {w}" for w in self.warnings]
        return lines


@dataclass(frozen=True)
class ExportProgress:
    phase: Literal["merge", "files", "verify", "formats", "done"]
    done_bytes: int
    total_bytes: int
    shard: str | None = None
    tensor: str | None = None
    message: str = ""

    @property
    def fraction(self) -> float:
        return self.done_bytes / self.total_bytes if self.total_bytes else 1.0


@dataclass(frozen=True)
class ExportResult:
    out: Path
    manifest: manifest_io.Manifest
    verification: dict[str, Any] | None
    files: tuple[str, ...]
    bytes: int
    seconds: float
    problems: tuple[str, ...] = ()
    gguf_verification: dict[str, Any] | None = None

    @property
    def ok(self) -> bool:
        return self.manifest.status == "complete" and not self.problems


def parse_size(size: int | str | None) -> int | None:
    """`200KB`, `5GB`, `2GiB` or a byte count."""
    if size is None or isinstance(size, int):
        return size
    text = size.strip().upper().replace(" ", "")
    for unit in sorted(_SIZE_UNITS, key=len, reverse=True):
        if text.endswith(unit):
            try:
                return int(float(text[: -len(unit)]) * _SIZE_UNITS[unit])
            except ValueError:
                break
    try:
        return int(text)
    except ValueError:
        raise ExportRefused(f"shard size {size!r} is not a size",
                            fix="write it like 5GB, 500MB or 2GiB") from None


def _is_checkpoint(path: Path) -> bool:
    return (path / manifest_io.MANIFEST).is_file() or is_adapter_dir(path) or is_model_dir(path)


def _previous_export(path: Path) -> bool:
    try:
        found = manifest_io.read(path)
    except ValueError:
        return False
    return found is not None and found.kind == "export"


def _check_target(out: Path, chain: Chain, force: bool) -> None:
    """Refuse output directories that would damage a checkpoint or mix with other files."""
    if out.is_symlink():
        raise ExportRefused("the output directory is a symlink", path=out,
                            fix="pass the real directory")
    real = out.resolve()
    protected = {chain.checkpoint.resolve(), chain.base.resolve()}
    for kept in protected:
        if real == kept or real in kept.parents:
            raise ExportRefused(
                f"the output directory would contain or overwrite {kept}", path=out,
                fix="export to a new directory outside the checkpoint and its base")
    for parent in real.parents:
        if _is_checkpoint(parent):
            raise ExportRefused(f"the output directory is inside the checkpoint {parent}",
                                path=out, fix="export to a directory outside any checkpoint")
    if real.exists() and not real.is_dir():
        raise ExportRefused("the output path exists and is not a directory", path=out)
    if real.is_dir() and any(real.iterdir()):
        if not force:
            raise ExportRefused("the output directory is not empty", path=out,
                                fix="choose an empty or new directory, or pass --force")
        if _is_checkpoint(real) and not _previous_export(real):
            raise ExportRefused("the output directory is a checkpoint; --force only replaces an "
                                "earlier export", path=out, fix="choose another directory")


def _check_disk(out: Path, needed: int, force: bool) -> None:
    probe = out
    while not probe.exists():
        probe = probe.parent
    stat = os.statvfs(probe)
    free = stat.f_bavail * stat.f_frsize
    if force and out.is_dir():
        free += directory_bytes(out)
    if needed > free:
        raise ExportRefused(f"not enough disk: the export needs {needed / 1e9:.2f} GB, "
                            f"{free / 1e9:.2f} GB free", path=out,
                            fix="free space (graftline cleanup) or export elsewhere")


def _has_tokenizer(path: Path) -> bool:
    return (path / "tokenizer_config.json").is_file() or (path / "tokenizer.json").is_file()


def _first_with(paths: list[Path], test: Callable[[Path], bool]) -> Path | None:
    for path in paths:
        if path.is_dir() and test(path):
            return path
    return None


def plan_export(checkpoint: Path, out: Path, *, dtype: str = "bfloat16",
                formats: tuple[str, ...] | list[str] = ("safetensors",), force: bool = False,
                shard_size: int | str | None = None, verify: bool = True,
                gguf_type: str | None = None, check_data: Path | None = None) -> ExportPlan:
    """See `_plan_export`; a corrupt weights file is a refusal naming it, not a traceback."""
    from graftline.engine.export.safetensors import SafetensorsError

    try:
        return _plan_export(checkpoint, out, dtype=dtype, formats=formats, force=force,
                            shard_size=shard_size, verify=verify, gguf_type=gguf_type,
                            check_data=check_data)
    except SafetensorsError as exc:
        raise ExportRefused(exc.message, fix="the file is damaged or truncated: restore it, or "
                            "export another checkpoint") from None


def _plan_export(checkpoint: Path, out: Path, *, dtype: str = "bfloat16",
                 formats: tuple[str, ...] | list[str] = ("safetensors",), force: bool = False,
                 shard_size: int | str | None = None, verify: bool = True,
                 gguf_type: str | None = None, check_data: Path | None = None) -> ExportPlan:
    """Everything the export will do, decided from headers and configs; writes nothing.

    `shard_size` (bytes or e.g. "5GB") repacks the output into files of at most that size;
    without it the output mirrors the base's shards. `gguf_type` (f32, f16, bf16, q8_0, or a
    llama-quantize type) implies the gguf format; without it GGUF follows `dtype`.
    """
    if dtype not in EXPORT_DTYPES:
        raise ExportRefused(f"dtype {dtype!r} is not one of {', '.join(EXPORT_DTYPES)}",
                            fix="pass --dtype bfloat16, float16 or float32")
    wanted = tuple(dict.fromkeys(("safetensors", *formats, *(("gguf",) if gguf_type else ()))))
    unknown = [f for f in wanted if f not in FORMATS]
    if unknown:
        raise ExportRefused(f"unknown format {unknown[0]!r}",
                            fix=f"use one of {', '.join(FORMATS)}")
    converter = None
    if "gguf" in wanted:
        from graftline.engine.export import gguf_convert

        gguf_type = (gguf_type or gguf_convert.DTYPE_TO_GGUF[dtype]).lower()
        reason = gguf_convert.unavailable_reason(gguf_type)
        if reason is not None:
            raise ExportRefused(f"GGUF export unavailable: {reason}",
                                fix=f"types the converter writes: "
                                    f"{', '.join(gguf_convert.CONVERTER_TYPES)}; set-up: "
                                    f"pip install 'graftline[gguf]' && "
                                    f"{gguf_convert.INSTALL_COMMAND}; or export without gguf")
        converter = gguf_convert.find_converter()
    else:
        gguf_type = None

    chain = resolve_chain(Path(checkpoint))
    # refused before anything loads a model: an export never loads quantized weights, so its
    # worker imports no bitsandbytes (worker.py)
    config = json.loads((chain.base / MODEL_CONFIG).read_text(encoding="utf-8"))
    if config.get("quantization_config"):
        raise ExportRefused(
            f"the base {chain.base} stores quantized weights; merging into them would bake the "
            "quantization error into the export", path=chain.checkpoint,
            fix="point the adapter (base_model_name_or_path / manifest base) at the original "
                "full-precision model")
    from graftline.engine.export.provenance import in_memory_merge

    warnings = in_memory_merge(Path(checkpoint), chain.base, check_data)
    out = Path(out).expanduser().absolute()
    _check_target(out, chain, force)
    tensors = base_headers(chain.base)
    layout = model_layout(chain.base, config)
    adapter = analyse_adapter(chain.adapter, tensors, layout) if chain.adapter else None
    shards = plan_tensors(tensors, adapter, layout, dtype, parse_size(shard_size))
    total = sum(shard.bytes for shard in shards)
    _check_disk(out, int(total * 1.05) + 10**6, force)

    ancestors = [chain.checkpoint] + [Path(node.path) for node in reversed(chain.lineage)]
    tokenizer_source = _first_with(ancestors, _has_tokenizer)
    if tokenizer_source is None:
        raise ExportRefused("no tokenizer files in the checkpoint or any ancestor",
                            path=chain.checkpoint,
                            fix="save the tokenizer next to the checkpoint or its base "
                                "(tokenizer.save_pretrained)")
    generation_source = _first_with(ancestors, lambda p: (p / GENERATION_CONFIG).is_file())
    tokenizer_reference = _first_with(list(reversed(ancestors)), _has_tokenizer)
    return ExportPlan(
        checkpoint=chain.checkpoint, out=out, kind=chain.kind, base=chain.base,
        adapter=chain.adapter, dtype=dtype, formats=wanted, force=force, verify=verify,
        shards=shards, untie=must_untie(layout, adapter), lineage=chain.lineage,
        adapter_plan=adapter, tokenizer_source=tokenizer_source,
        generation_source=generation_source, gguf_converter=converter,
        checkpoint_manifest=chain.manifest, gguf_type=gguf_type,
        tokenizer_reference=tokenizer_reference, warnings=warnings)


def _clear_previous(out: Path) -> None:
    """With force: remove a previous export's own files (regular files at the top level only),
    so no stale shard is left beside the new index."""
    for pattern in _OWN_PATTERNS:
        for path in out.glob(pattern):
            if path.is_file() or path.is_symlink():
                path.unlink()


def _write_config(plan: ExportPlan) -> None:
    config = json.loads((plan.base / MODEL_CONFIG).read_text(encoding="utf-8"))
    config["dtype"] = plan.dtype
    if "torch_dtype" in config:
        config["torch_dtype"] = plan.dtype
    if plan.untie:
        config["tie_word_embeddings"] = False
        if isinstance(config.get("text_config"), dict):
            config["text_config"]["tie_word_embeddings"] = False
    (plan.out / MODEL_CONFIG).write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")


def _copy_side_files(plan: ExportPlan) -> None:
    for name in TOKENIZER_FILES:
        source = plan.tokenizer_source / name
        if source.is_file():
            shutil.copyfile(source, plan.out / name)
    if plan.generation_source is not None:
        shutil.copyfile(plan.generation_source / GENERATION_CONFIG, plan.out / GENERATION_CONFIG)
    else:  # derived from config.json, as transformers does when it is missing
        config = json.loads((plan.base / MODEL_CONFIG).read_text(encoding="utf-8"))
        keys = ("bos_token_id", "eos_token_id", "pad_token_id", "decoder_start_token_id")
        derived = {k: config[k] for k in keys if config.get(k) is not None}
        (plan.out / GENERATION_CONFIG).write_text(json.dumps(derived, indent=2) + "\n",
                                                  encoding="utf-8")


def _write_index(plan: ExportPlan, weight_map: dict[str, str]) -> None:
    if len(plan.shards) < 2:
        return
    index = {"metadata": {"total_size": plan.total_bytes}, "weight_map": dict(sorted(
        weight_map.items()))}
    (plan.out / MODEL_SAFETENSORS_INDEX).write_text(json.dumps(index, indent=2) + "\n",
                                                    encoding="utf-8")


def _manifest(plan: ExportPlan) -> manifest_io.Manifest:
    source = plan.checkpoint_manifest
    return manifest_io.Manifest(
        kind="export", name=plan.out.name,
        parents=[manifest_io.Parent(relation="exported_from", path=str(plan.checkpoint),
                                    id=source.id if source else None)],
        stage=source.stage if source else None, run=source.run if source else None,
        lora=source.lora if source else None,
        metrics=dict(source.metrics) if source else {},
        evaluation=dict(source.evaluation) if source else {},
        dtype=plan.dtype, formats=list(plan.formats), source_base=str(plan.base),
        untied_embeddings=plan.untie, warnings=list(plan.warnings))


class _Reporter:
    """Fans progress out to the callback (every tensor) and the sink (throttled)."""

    def __init__(self, plan: ExportPlan, progress: Callable[[ExportProgress], None] | None,
                 sink: Sink | None, stage: str | None) -> None:
        self.plan, self.progress, self.sink, self.stage = plan, progress, sink, stage
        self.last_event = 0.0

    def __call__(self, update: ExportProgress, *, force_event: bool = False) -> None:
        if self.progress is not None:
            self.progress(update)
        now = time.monotonic()
        if self.sink is not None and (force_event or now - self.last_event >= 0.5):
            self.last_event = now
            self.sink.emit("progress", self.stage, task="export", phase=update.phase,
                           done=update.done_bytes, total=update.total_bytes, shard=update.shard,
                           fraction=round(update.fraction, 4), message=update.message,
                           path=str(self.plan.out))


def run_export(plan: ExportPlan, progress: Callable[[ExportProgress], None] | None = None,
               sink: Sink | None = None, *, stage: str | None = None,
               fsync: bool = True) -> ExportResult:
    """Write and verify the export. A verification failure is recorded (manifest status
    `failed`, an `error` event) and returned, not raised; other failures raise."""
    started = time.monotonic()
    chain_now = resolve_chain(plan.checkpoint)  # the checkpoint or base may have gone since
    _check_target(plan.out, chain_now, plan.force)
    out, total = plan.out, plan.total_bytes
    report = _Reporter(plan, progress, sink, stage)
    out.mkdir(parents=True, exist_ok=True)
    if plan.force:
        _clear_previous(out)
    record = _manifest(plan)
    manifest_io.write(out, record)
    problems: list[str] = []
    verification: dict[str, Any] | None = None
    gguf_check: dict[str, Any] | None = None
    try:
        report(ExportProgress("merge", 0, total, message="merging"), force_event=True)
        weight_map = write_shards(
            plan.shards, out, plan.adapter_plan,
            lambda shard, job, done: report(ExportProgress("merge", done, total, shard.filename,
                                                           job.name)), fsync=fsync)
        report(ExportProgress("files", total, total, message="config, tokenizer, index"),
               force_event=True)
        _write_index(plan, weight_map)
        _write_config(plan)
        _copy_side_files(plan)

        if plan.verify:
            verification = _verify(plan, report, sink, stage)
            if not verification["passed"]:
                problems.append(verification["message"])
        if not problems:
            format_problems, gguf_check = _write_formats(plan, report, sink, stage)
            problems += format_problems
        _write_card(plan, verification)
    except BaseException as exc:
        failed = record.model_copy(update={"status": "failed", "error": str(exc)[:2000]})
        manifest_io.write(out, failed)
        if sink is not None:
            sink.emit("error", stage, message=f"export to {out} failed: {exc}")
        raise
    checks = _check_records(verification, gguf_check, stage)
    record = record.model_copy(update={"checks": checks, "verification": verification,
                                       "problems": problems})
    if verification is not None and not verification["passed"]:
        record = record.model_copy(update={"status": "failed",
                                           "bytes": directory_bytes(out)})
        manifest_io.write(out, record)
        if sink is not None:
            sink.emit("error", stage, message=f"export verification failed: {problems[0]}",
                      fix="do not ship this export; report the adapter and base to graftline")
    else:
        record = manifest_io.complete(out, record)
        if sink is not None:
            sink.emit("checkpoint_saved", stage, path=str(out), kind="export", id=record.id,
                      bytes=record.bytes)
            for problem in problems:
                sink.emit("warning", stage, message=problem)
    # where it went, so `graftline lineage` shows it under its source wherever `out` is
    export_index.record(out, plan.checkpoint, record.id)
    report(ExportProgress("done", total, total, message="done"), force_event=True)
    files = tuple(sorted(p.name for p in out.iterdir() if p.is_file()))
    return ExportResult(out, record, verification, files, record.bytes,
                        time.monotonic() - started, tuple(problems), gguf_check)


def _check_records(verification: dict[str, Any] | None, gguf_check: dict[str, Any] | None,
                   stage: str | None) -> list[manifest_io.CheckResult]:
    """The export's checks as the manifest keeps them: logits, and the GGUF's tensors and run."""
    checks = [] if verification is None else [manifest_io.CheckResult(
        name="export_logits", status="pass" if verification["passed"] else "fail",
        message=verification["message"], stage=stage,
        data={k: verification[k] for k in ("max_abs_diff", "tolerance", "top1_agreement",
                                           "generation_matches")})]
    if gguf_check is not None:
        checks.append(manifest_io.CheckResult(
            name="gguf_tensors", status="pass" if gguf_check["tensors_passed"] else "fail",
            message=gguf_check["tensors_message"], stage=stage,
            data={"gguf_type": gguf_check["gguf_type"], "worst": gguf_check["worst"]}))
        runtime = gguf_check["runtime"]
        checks.append(manifest_io.CheckResult(
            name="gguf_runtime", status=_RUNTIME_STATUS[runtime["status"]],
            message=runtime["message"], stage=stage,
            data={k: runtime[k] for k in ("gguf_type", "runtime", "max_abs_diff", "bound",
                                          "differences")}))
    return checks


def _verify(plan: ExportPlan, report: _Reporter, sink: Sink | None,
            stage: str | None) -> dict[str, Any]:
    from graftline.engine.common import atomic
    from graftline.engine.export.verify import VERIFICATION, verify

    total = plan.total_bytes
    report(ExportProgress("verify", total, total, message="reloading and comparing logits"),
           force_event=True)
    result = verify(plan.out, plan.base, plan.adapter, plan.dtype,
                    tokenizer_reference=plan.tokenizer_reference).to_dict()
    atomic.write_json(plan.out / VERIFICATION, result)
    if sink is not None:
        sink.emit("check_result", stage, name="export_logits",
                  status="pass" if result["passed"] else "fail", message=result["message"],
                  data={k: result[k] for k in ("max_abs_diff", "tolerance", "top1_agreement",
                                               "generation_matches")})
    return result


def _write_formats(plan: ExportPlan, report: _Reporter, sink: Sink | None,
                   stage: str | None) -> tuple[list[str], dict[str, Any] | None]:
    """GGUF (converted, then verified tensor by tensor) and the Ollama Modelfile."""
    from graftline.engine.common import atomic
    from graftline.engine.common.errors import GraftlineError

    problems: list[str] = []
    total = plan.total_bytes
    source = "."
    gguf_check: dict[str, Any] | None = None
    adds_bos: bool | None = None
    if "gguf" in plan.formats and plan.gguf_converter is not None and plan.gguf_type:
        from graftline.engine.export.gguf_convert import write_gguf

        report(ExportProgress("formats", total, total,
                              message=f"converting to GGUF {plan.gguf_type}"), force_event=True)
        try:
            written = write_gguf(plan.out, plan.gguf_type, converter=plan.gguf_converter,
                                 name=plan.out.name)
        except (GraftlineError, OSError) as exc:
            problems.append(str(exc))
            written = None
        if written is not None and plan.verify:
            from graftline.engine.export.gguf_run import gguf_report, run_gguf
            from graftline.engine.export.gguf_verify import verify_gguf

            report(ExportProgress("formats", total, total,
                                  message="verifying GGUF tensor by tensor"), force_event=True)
            checked = verify_gguf(written, plan.out, plan.gguf_type)
            adds_bos = checked.metadata.get("add_bos_token")
            if sink is not None:
                sink.emit("check_result", stage, name="gguf_tensors",
                          status="pass" if checked.passed else "fail",
                          message=checked.message, data={"gguf_type": plan.gguf_type})
            if not checked.passed:
                problems.append(f"GGUF verification failed: {checked.message}")
            report(ExportProgress("formats", total, total,
                                  message="running the GGUF in llama.cpp"), force_event=True)
            ran = run_gguf(written, plan.out, plan.gguf_type)
            if sink is not None:
                sink.emit("check_result", stage, name="gguf_runtime",
                          status=_RUNTIME_STATUS[ran.status], message=ran.message,
                          data={"gguf_type": plan.gguf_type, "differences": [
                              d.what for d in ran.differences]})
            if ran.status == "failed":
                problems.append(f"GGUF failed in llama.cpp: {ran.message}")
            full = gguf_report(checked, ran)
            atomic.write_json(plan.out / GGUF_VERIFICATION, full)
            gguf_check = {k: v for k, v in full.items() if k != "tensors"}
            gguf_check["tensor_count"] = len(checked.tensors)
        if written is not None and (gguf_check is None or gguf_check["passed"]):
            source = f"./{written.name}"
    if "ollama" in plan.formats:
        from transformers import AutoTokenizer

        from graftline.engine.export.ollama import modelfile

        if "gguf" in plan.formats and source == ".":
            problems.append("Modelfile not written: the GGUF it would load failed")
        else:
            tokenizer = AutoTokenizer.from_pretrained(plan.out)
            generation = json.loads((plan.out / GENERATION_CONFIG).read_text(encoding="utf-8"))
            (plan.out / MODELFILE).write_text(
                modelfile(tokenizer, generation, source, adds_bos=adds_bos), encoding="utf-8")
    return problems, gguf_check


def _write_card(plan: ExportPlan, verification: dict[str, Any] | None) -> None:
    from graftline.engine.export.card import render

    files = [*(p.name for p in plan.out.iterdir() if p.is_file()), MODEL_CARD]
    text = render(name=plan.out.name, checkpoint=plan.checkpoint, lineage=plan.lineage,
                  dtype=plan.dtype, verification=verification, untied=plan.untie,
                  files=sorted(set(files)))
    (plan.out / MODEL_CARD).write_text(text, encoding="utf-8")


__all__ = ["FORMATS", "ExportPlan", "ExportProgress", "ExportRefused", "ExportResult",
           "parse_size", "plan_export", "run_export"]

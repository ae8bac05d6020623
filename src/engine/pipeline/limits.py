"""Checks on names, LoRA targets and export targets that the file's types cannot express.

A 300-character pipeline or stage name passed parsing and failed with `File name too long` after
`runs/…` had been created; an empty `target_modules` trained nothing; an export `out` inside a
live run's directory wrote the deliverable where the run (and its cleanup) owns the files.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from graftline.engine.common.layout import RUN_META
from graftline.engine.pipeline import spec
from graftline.engine.pipeline.file import DEFAULTS_BLOCK, HEADER_BLOCK, PipelineFile
from graftline.engine.pipeline.problems import Problem

# A run id is `<name>-YYYYmmdd-HHMMSS[-n]`, one path component; most file systems allow 255 bytes.
MAX_NAME = 100


def name_problems(pf: PipelineFile) -> Iterator[Problem]:
    header = pf.pipeline.pipeline
    if len(header.name.encode("utf-8")) > MAX_NAME:
        yield Problem(f"the pipeline name is {len(header.name)} characters long; run directories "
                      f"are named after it and allow {MAX_NAME}", str(pf.path),
                      pf.line(HEADER_BLOCK, "name"), None, "pipeline.name",
                      f"use a name of at most {MAX_NAME} characters")
    for stage in pf.pipeline.stage:
        if len(stage.name.encode("utf-8")) > MAX_NAME:
            yield Problem(f"the stage name is {len(stage.name)} characters long; its directory "
                          f"is named after it and allows {MAX_NAME}", str(pf.path),
                          pf.line(stage.name, "name"), stage.name[:40] + "…", "name",
                          f"use a name of at most {MAX_NAME} characters")


def lora_problems(pf: PipelineFile) -> Iterator[Problem]:
    defaults = pf.pipeline.defaults.lora
    if defaults.target_modules == []:
        yield Problem("[defaults] lora.target_modules is empty: the LoRA would wrap no layer",
                      str(pf.path), pf.line(DEFAULTS_BLOCK, "lora"), None, "defaults.lora",
                      'list module names (e.g. ["q_proj", "v_proj"]) or use "all-linear"')
    for stage in pf.pipeline.stage:
        lora = getattr(stage, "lora", None)
        if lora is not None and lora.target_modules == []:
            yield Problem("lora.target_modules is empty: the LoRA would wrap no layer",
                          str(pf.path), pf.line(stage.name, "lora"), stage.name, "lora",
                          'list module names (e.g. ["q_proj", "v_proj"]) or use "all-linear"')
        if lora is not None and lora.target_parameters and lora.dropout > 0:
            yield Problem(f"lora.target_parameters with dropout {lora.dropout}: PEFT cannot "
                          "apply dropout to a LoRA on parameters (it refuses at the stage's start)",
                          str(pf.path), pf.line(stage.name, "lora"), stage.name, "lora",
                          "set lora.dropout = 0 for this stage")


def enclosing_run(path: Path) -> Path | None:
    """The run directory (one holding run.json) that `path` lies in, if any."""
    for parent in [path, *path.parents]:
        if (parent / RUN_META).is_file():
            return parent
    return None


def export_problems(pf: PipelineFile) -> Iterator[Problem]:
    from graftline.engine.common.liveness import is_live

    for stage in pf.pipeline.stage:
        if not isinstance(stage, spec.ExportStage):
            continue
        out = pf.resolve(stage.out)
        run = enclosing_run(out)
        if run is None:
            continue
        live = is_live(run)
        yield Problem(f"export target {out} is inside the run directory {run}"
                      + (", whose engine is running" if live else ""),
                      str(pf.path), pf.line(stage.name, "out"), stage.name, "out",
                      "export outside any run directory (e.g. out = \"exports/NAME\"): a run's "
                      "files belong to its engine and its cleanup",
                      severity="error" if live else "warning")

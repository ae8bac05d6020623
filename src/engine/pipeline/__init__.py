"""graftline.engine.pipeline: the pipeline file, read, validated and planned before anything trains.

Modules: spec (pydantic models), file (TOML, foreach, defaults, line numbers), validate, plan,
plan_words (the plan in words), modelinfo (sizes from config.json), datasets, rewards, problems
(Problem, did_you_mean).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from graftline.engine.common.lazy import lazy_exports

if TYPE_CHECKING:  # what mypy sees through the lazy surface (lazy_exports at run time)
    from graftline.engine.pipeline import datasets as datasets
    from graftline.engine.pipeline import file as file
    from graftline.engine.pipeline import modelinfo as modelinfo
    from graftline.engine.pipeline import plan as plan
    from graftline.engine.pipeline import probes as probes
    from graftline.engine.pipeline import problems as problems
    from graftline.engine.pipeline import rewards as rewards
    from graftline.engine.pipeline import scaleout as scaleout
    from graftline.engine.pipeline import spec as spec
    from graftline.engine.pipeline import validate as validate
    from graftline.engine.pipeline.file import (
        PipelineFile as PipelineFile,
    )
    from graftline.engine.pipeline.file import (
        load as load,
    )
    from graftline.engine.pipeline.file import (
        parse as parse,
    )
    from graftline.engine.pipeline.plan import Plan as Plan
    from graftline.engine.pipeline.plan import build_plan as build_plan
    from graftline.engine.pipeline.probes import describe_default as describe_default
    from graftline.engine.pipeline.problems import (
        PipelineError as PipelineError,
    )
    from graftline.engine.pipeline.problems import (
        Problem as Problem,
    )
    from graftline.engine.pipeline.problems import (
        did_you_mean as did_you_mean,
    )
    from graftline.engine.pipeline.scaleout import any_distributed as any_distributed
    from graftline.engine.pipeline.scaleout import detect_env as detect_env
    from graftline.engine.pipeline.scaleout import launch_lines as launch_lines
    from graftline.engine.pipeline.validate import (
        plan_of as plan_of,
    )
    from graftline.engine.pipeline.validate import (
        validate_file as validate_file,
    )


_EXPORTS = {
    "file": "file",
    "PipelineFile": "file",
    "load": "file",
    "parse": "file",
    "spec": "spec",
    "validate": "validate",
    "validate_file": "validate",
    "plan_of": "validate",
    "probes": "probes",
    "describe_default": "probes",
    "plan": "plan",
    "Plan": "plan",
    "build_plan": "plan",
    "problems": "problems",
    "Problem": "problems",
    "PipelineError": "problems",
    "did_you_mean": "problems",
    "datasets": "datasets",
    "rewards": "rewards",
    "modelinfo": "modelinfo",
    "scaleout": "scaleout",
    "any_distributed": "scaleout",
    "detect_env": "scaleout",
    "launch_lines": "scaleout",
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)

"""graftline.engine.pipeline: the pipeline file, read, validated and planned before anything trains.

Modules: spec (pydantic models), file (TOML, foreach, defaults, line numbers), validate, plan,
modelinfo (sizes from config.json), datasets, rewards, problems (Problem, did_you_mean).
"""

from __future__ import annotations

from graftline.engine.common.lazy import lazy_exports

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
    "FixableError": "problems",
    "did_you_mean": "problems",
    "datasets": "datasets",
    "rewards": "rewards",
    "modelinfo": "modelinfo",
    "scaleout": "scaleout",
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)

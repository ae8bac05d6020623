"""graftline.engine.rehearse: every stage for a few steps on a tiny twin of the base, before the
real run spends GPU hours.

Modules: rehearsal (rehearse, the report), preflight (checks on the sampled data), twin (the
randomly initialised twin built from the base's config.json).
"""

from __future__ import annotations

from graftline.engine.common.lazy import lazy_exports

_EXPORTS = {
    "rehearsal": "rehearsal",
    "rehearse": "rehearsal",
    "RehearsalReport": "rehearsal",
    "CleanupPolicy": "rehearsal",
    "DEFAULT_STEPS": "rehearsal",
    "FAILED": "rehearsal",
    "NOT_RUN": "rehearsal",
    "PASSED": "rehearsal",
    "preflight": "preflight",
    "twin": "twin",
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)

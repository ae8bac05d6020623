"""graftline.engine.rehearse: every stage for a few steps on a tiny twin of the base, before the
real run spends GPU hours.

Modules: rehearsal (rehearse, the report), preflight (checks on the sampled data), twin (the
randomly initialised twin built from the base's config.json).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from graftline.engine.common.lazy import lazy_exports

if TYPE_CHECKING:  # what mypy sees through the lazy surface (lazy_exports at run time)
    from graftline.engine.rehearse import preflight as preflight
    from graftline.engine.rehearse import rehearsal as rehearsal
    from graftline.engine.rehearse import twin as twin
    from graftline.engine.rehearse.rehearsal import (
        DEFAULT_STEPS as DEFAULT_STEPS,
    )
    from graftline.engine.rehearse.rehearsal import (
        FAILED as FAILED,
    )
    from graftline.engine.rehearse.rehearsal import (
        NOT_RUN as NOT_RUN,
    )
    from graftline.engine.rehearse.rehearsal import (
        PASSED as PASSED,
    )
    from graftline.engine.rehearse.rehearsal import (
        CleanupPolicy as CleanupPolicy,
    )
    from graftline.engine.rehearse.rehearsal import (
        RehearsalReport as RehearsalReport,
    )
    from graftline.engine.rehearse.rehearsal import (
        rehearse as rehearse,
    )


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

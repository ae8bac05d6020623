"""How the console writes numbers, times and paths: one module, so the dashboard, the screens,
the widgets and the CLI say the same thing about the same value.

Sizes come from the engine's one formatter (`common.units.human_bytes`: decimal units, as disks
are sold); this module only picks the console's mark for "unknown" (`—` on screen). Pure: no
Textual, no I/O beyond the current directory for `shorten_paths`.
"""

from __future__ import annotations

import functools
import os
import re
from pathlib import Path
from typing import Any

from graftline.engine.common import human_bytes as _human_bytes

__all__ = [
    "age",
    "ago",
    "duration",
    "evaluation_text",
    "format_metric",
    "gpu_reason_label",
    "human_bytes",
    "human_seconds",
    "log_stamp",
    "short_metric",
    "shorten_paths",
]

_AGE_UNITS = (("d", 86400), ("h", 3600), ("m", 60))


def human_bytes(value: float | None, unknown: str = "—") -> str:
    """A size in decimal units: `1.5 MB`; `unknown` when there is none."""
    return _human_bytes(value, unknown=unknown)


def human_seconds(value: float | None) -> str:
    """A clock-style length: `1:02:05`, `1:05` (no hours when there are none); `—` for none."""
    if value is None:
        return "—"
    total = round(value)
    hours, rest = divmod(total, 3600)
    minutes, seconds = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{seconds:02d}" if hours else f"{minutes}:{seconds:02d}"


def log_stamp(value: float) -> str:
    """A log line's time since the run started, always with hours: `+0:01:05 `."""
    minutes, seconds = divmod(int(value), 60)
    hours, minutes = divmod(minutes, 60)
    return f"+{hours}:{minutes:02d}:{seconds:02d} "


def duration(seconds: float | None, unknown: str = "-") -> str:
    """A run's length, compact: 45s, 12m05s, 3h12m, 2d04h."""
    if seconds is None:
        return unknown
    seconds = int(seconds)
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    if seconds < 86400:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    return f"{seconds // 86400}d{seconds % 86400 // 3600:02d}h"


def age(seconds: float | None) -> str:
    """A compact age: 45s, 12m, 3h, 2d."""
    if seconds is None:
        return "-"
    for unit, size in _AGE_UNITS:
        if seconds >= size:
            return f"{seconds / size:.0f}{unit}"
    return f"{seconds:.0f}s"


def ago(seconds: float | None) -> str:
    """An age in words for a table cell: `12m ago`, `just now` under a minute; `—` for none."""
    if seconds is None:
        return "—"
    return "just now" if seconds < 60 else f"{age(seconds)} ago"


def format_metric(value: float | None) -> str:
    if value is None:
        return "—"
    magnitude = abs(value)
    if magnitude != 0 and (magnitude < 1e-3 or magnitude >= 1e5):
        return f"{value:.2e}"
    return f"{value:.4f}" if magnitude < 10 else f"{value:.2f}"


def short_metric(metric: str) -> str:
    return {"rewards/margins": "margin", "rewards/accuracies": "acc"}.get(metric, metric)


_EVAL_TIMING = ("runtime", "samples_per_second", "steps_per_second")  # the Trainer's bookkeeping


def evaluation_text(evaluation: dict[str, Any] | None, *, short: bool = False) -> str:
    """An evaluation as words: "exact_match 79.0%, loss 0.4123 (200 rows)". Empty when there
    is none. `short` drops the row count and abbreviates, for a table cell."""
    if not evaluation:
        return ""
    parts: list[str] = []
    rows = evaluation.get("rows")
    for key, value in evaluation.items():
        if key == "rows" or not isinstance(value, int | float) or isinstance(value, bool):
            continue
        if key.removeprefix("eval_") in _EVAL_TIMING or key == "epoch":
            continue  # how long the evaluation took is not what it found
        name = key.removeprefix("eval_")
        if short:
            name = {"exact_match": "exact", "accuracy": "acc"}.get(name, name)
        shown = f"{value:.1%}" if name in ("exact_match", "exact", "accuracy", "acc") \
            and 0 <= value <= 1 else format_metric(float(value))
        parts.append(f"{name} {shown}")
    if not parts:
        return ""
    if short:  # a table cell may keep only its first part: the headline (exact, acc) first
        parts.sort(key=lambda part: not part.startswith(("exact ", "acc ")))
        return "eval " + ", ".join(parts)
    text = ", ".join(parts)
    return text + (f" ({int(rows)} rows)" if isinstance(rows, int | float) else "")


def gpu_reason_label(reason: str | None) -> str:
    """Why there is no GPU, in a user's words (never a library's exception text)."""
    text = (reason or "").lower()
    if not text or "nvml" in text or "driver" in text or "librarynotfound" in text:
        return "no NVIDIA driver"
    if "cuda" in text:
        return "CUDA not available"
    if "bench" in text or len(text) > 40:
        return "not detected"
    return reason.split(": ")[-1] if reason else "not detected"


@functools.lru_cache(maxsize=8)
def _root_prefix(root: str, cwd: str) -> tuple[re.Pattern[str], str] | None:
    resolved = (Path(cwd) / root).resolve()
    if str(resolved) in ("", "/"):
        return None
    # only a whole path prefix: a path that merely contains the folder's name stays as it is
    return re.compile(r"(?<![\w./-])" + re.escape(str(resolved).rstrip("/")) + r"/"), \
        resolved.name + "/"


def shorten_paths(text: str, root: Path | None) -> str:
    """Absolute paths under `root` (the runs folder) shown as `<runs>/<run>/…`."""
    found = _root_prefix(str(root), "" if root.is_absolute() else os.getcwd()) \
        if root is not None else None
    return text if found is None else found[0].sub(found[1], text)

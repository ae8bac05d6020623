"""Sizes as people read them. One formatter, so `plan`, `cleanup`, the engine's warnings and the
console all say "1.4 GB" about the same bytes (decimal units, as disks are sold and `df -H`
prints)."""

from __future__ import annotations


def human_bytes(value: float | None, unknown: str = "unknown") -> str:
    if value is None:
        return unknown
    size = float(value)
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if abs(size) < 1000 or unit == "TB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1000
    return f"{size:.1f} TB"

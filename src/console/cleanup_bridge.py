"""The console's words for the engine's cleanup planner: plan from marks, describe, execute.

Only presentation lives here; what is deleted and what is protected is decided by the engine's
planner alone (`graftline.engine.lineage.plan_cleanup`, the one `graftline cleanup` uses).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from rich.text import Text

from graftline.console.formats import human_bytes

if TYPE_CHECKING:
    from graftline.engine.lineage import CleanupPlan, Lineage


def plan(lineage: Lineage, keep_keys: list[str]) -> CleanupPlan:
    """Keep exactly the marked checkpoints (and, by the planner's rule, all they need)."""
    from graftline.engine.lineage import KeepRule, plan_cleanup

    rules = [KeepRule("ref", key, value=key) for key in keep_keys]
    return plan_cleanup(lineage, rules)


def verdict(plan: CleanupPlan, key: str) -> str:
    if key in plan.delete:
        return "delete"
    if key in plan.protected:
        return "protect"
    if key in plan.keep:
        return "keep"
    if key in plan.refused:
        return "refused"
    return ""


def deletions(plan: CleanupPlan) -> list[str]:
    return list(plan.delete)


def _name(lineage: Lineage, key: str) -> str:
    node = lineage.get(key)
    return node.name if node is not None else Path(key).name


def summary(plan: CleanupPlan, lineage: Lineage) -> str:
    return (f"delete {len(plan.delete)} checkpoint(s), reclaim {human_bytes(plan.bytes_reclaimed)}"
            f"; keep {len(plan.keep)}, protect {len(plan.protected)}"
            + (f", refuse {len(plan.refused)}" if plan.refused else ""))


def describe_plan(plan: CleanupPlan, lineage: Lineage, root: Path) -> Text:
    text = Text("cleanup plan\n", style="bold")
    text.append(summary(plan, lineage) + "\n")
    from graftline.engine.lineage import describe

    for key in plan.delete:
        text.append("  delete  ", style="bold red")
        text.append(f"{describe(lineage.node(key), lineage)}\n")
    for key in plan.keep:
        text.append("  keep    ", style="bold")
        text.append(f"{describe(lineage.node(key), lineage)}: kept, as you marked\n")
    for key, why in plan.protected.items():
        text.append("  protect ", style="bold green")
        text.append(f"{describe(lineage.node(key), lineage)}: protected, "
                    f"{'; '.join(why)}\n")
    for key, reason in plan.refused.items():
        text.append("  refuse  ", style="yellow")
        text.append(f"{_name(lineage, key)}: {reason}\n")
    for warning in plan.warnings:
        text.append(f"  warning: {warning}\n", style="yellow")
    return text


def execute(plan: CleanupPlan, lineage: Lineage) -> str:
    """Run the engine's executor (it re-checks every directory just before it goes)."""
    from graftline.engine import lineage as lineage_api

    result = lineage_api.execute(plan, lineage)
    skipped = f"; skipped {len(result.skipped)}: {result.skipped[0][1]}" if result.skipped else ""
    return (f"cleanup {result.cleanup}: removed {len(result.removed)} checkpoint(s), "
            f"freed {human_bytes(result.bytes_freed)}{skipped}")

"""Lineage: the checkpoint DAG as a tree, a detail panel, and the cleanup planner.

The scan and the cleanup are the engine's (`graftline.engine.lineage`,
`graftline.engine.lineage.cleanup`); this screen only shows them. Cleanup mode: mark what to
keep (k), see the plan (what is deleted, what is protected and why, bytes reclaimed), then
confirm in a modal before the engine's executor deletes anything. Everything that touches the
disk runs in a worker thread.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, ClassVar

from rich.text import Text
from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, VerticalScroll
from textual.screen import Screen
from textual.widgets import Footer, Static, Tree
from textual.widgets.tree import TreeNode

from graftline.console import cleanup_bridge
from graftline.console.formats import format_metric, human_bytes
from graftline.console.messages import CleanupFinished, LineageScanned, WorkerFailures
from graftline.console.screens.confirm import ConfirmModal
from graftline.engine.common import GraftlineError

KIND_STYLE = {"base": "bold", "merged": "cyan", "adapter": "green", "combined": "magenta",
              "export": "bold blue", "trainer": "dim", "external": "dim italic",
              "missing": "bold red"}
STATUS_MARK = {"complete": "", "partial": " partial", "failed": " FAILED", "unknown": ""}


def short_path(path: str | None, root: Path) -> str:
    if not path:
        return "—"
    for base in (str(root.resolve()), str(root)):
        if path == base:
            return "."
        if path.startswith(base.rstrip("/") + "/"):
            return path[len(base.rstrip("/")) + 1:]
    home = os.path.expanduser("~")
    if home not in ("", "/") and path.startswith(home + "/"):
        return "~/" + path[len(home) + 1:]
    return path


class LineageScreen(WorkerFailures, Screen[None]):
    BINDINGS: ClassVar = [
        Binding("escape", "back", "Back"),
        Binding("e", "export", "Export"),
        Binding("c", "cleanup_mode", "Cleanup"),
        Binding("k", "toggle_keep", "Keep", show=False),
        Binding("x", "plan", "Plan", show=False),
        Binding("D", "delete", "Delete…", show=False),
        Binding("g", "rescan", "Rescan"),
    ]
    DEFAULT_CSS = """
    LineageScreen #lineage-body { height: 1fr; }
    LineageScreen #tree { width: 1fr; min-width: 30; border: round $panel-lighten-2; }
    LineageScreen #detail-box { width: 1fr; border: round $panel-lighten-2; padding: 0 1; }
    LineageScreen #lineage-title { height: 1; background: $panel; padding: 0 1; }
    LineageScreen.-narrow #detail-box { width: 1fr; }
    LineageScreen.-cleanup #tree { border: round $warning; }
    """
    HORIZONTAL_BREAKPOINTS = [(0, "-narrow"), (110, "-wide")]  # noqa: RUF012 (Textual's own)

    def __init__(self, root: Path, *, ascii_only: bool = False) -> None:
        super().__init__()
        self.root = Path(root)
        self.ascii_only = ascii_only
        self.lineage: Any = None
        self.problem: str | None = None
        self.cleanup = False
        self.keep: set[str] = set()
        self.plan: Any = None
        self.scans = 0  # finished scans (tests wait on this)
        self.deleted = 0  # finished cleanups
        self.highlighted: str | None = None

    def compose(self) -> ComposeResult:
        yield Static(self._title(), id="lineage-title")
        with Horizontal(id="lineage-body"):
            yield Tree("checkpoints", id="tree")
            with VerticalScroll(id="detail-box"):
                yield Static("scanning…", id="detail")
        yield Footer()

    def on_mount(self) -> None:
        self.query_one("#tree").border_title = "lineage"
        self.query_one("#detail-box").border_title = "details"
        self.query_one(Tree).focus()
        self.action_rescan()

    def _title(self) -> Text:
        text = Text(f"lineage of {self.root.name}/", style="bold")
        if self.cleanup:
            text.append("  CLEANUP: k keeps, x plans, D deletes (asks first)", style="yellow")
        return text

    # -- scanning ----------------------------------------------------------------------------

    @work(thread=True, exclusive=True, group="scan", exit_on_error=False)
    def action_rescan(self) -> None:
        from graftline.engine import lineage as lineage_api

        try:
            result, problem = lineage_api.scan([self.root]), None
        except (GraftlineError, OSError) as exc:
            result, problem = None, f"cannot scan {self.root.name}: {exc}"
        self.post_message(LineageScanned(result, problem))

    @on(LineageScanned)
    def _scanned(self, message: LineageScanned) -> None:
        self._show_lineage(message.lineage, message.problem)

    def _show_lineage(self, lineage: Any, problem: str | None) -> None:
        self.lineage, self.problem = lineage, problem
        tree = self.query_one(Tree)
        tree.clear()
        if lineage is None:
            self.query_one("#detail", Static).update(Text(problem or "no lineage", style="red"))
            self.scans += 1
            return
        from graftline.engine.lineage import primary_parent

        children: dict[str | None, list[Any]] = {}
        for node in lineage.nodes:
            edge = primary_parent(lineage, node.key)
            children.setdefault(edge.parent if edge else None, []).append(node)
        for siblings in children.values():
            siblings.sort(key=lambda n: (n.created or "", n.written, n.name))
        tree.root.expand()
        seen: set[str] = set()

        def add(parent: TreeNode[str], key: str | None) -> None:
            for node in children.get(key, []):
                if node.key in seen:
                    continue
                seen.add(node.key)
                branch = parent.add(self._label(node), data=node.key, expand=True)
                add(branch, node.key)
                if not branch.children:
                    branch.allow_expand = False

        add(tree.root, None)
        tree.root.set_label(Text(f"{self.root.name}/ — {len(lineage.nodes)} checkpoints, "
                                 f"{human_bytes(sum(n.bytes for n in lineage.nodes))}"))
        broken = lineage.broken()
        if broken:
            self.notify(f"{len(broken)} broken checkpoint(s): their base is gone.",
                        severity="error", timeout=6)
        first = tree.root.children[0] if tree.root.children else None
        if first is not None:
            tree.move_cursor(first)
        self._show_detail(self.highlighted or (first.data if first else None))
        self.scans += 1

    def _label(self, node: Any) -> Text:
        mark = ""
        if self.cleanup:
            mark = "[K] " if node.key in self.keep else "[ ] "
            if self.plan is not None:
                verdict = cleanup_bridge.verdict(self.plan, node.key)
                mark = {"delete": "DEL ", "protect": "KEEP", "keep": "KEEP"}.get(verdict, mark)
                mark = mark.ljust(4) + " "
        text = Text(mark)
        text.append(node.name or Path(node.path or node.key).name,
                    style=KIND_STYLE.get(node.kind, ""))
        text.append(f"  {node.kind}", style="dim")
        if node.bytes:
            text.append(f"  {human_bytes(node.bytes)}")
        text.append(STATUS_MARK.get(node.status, f" {node.status}"),
                    style="red" if node.status in ("partial", "failed") else "")
        if node.export is not None:  # a leaf: where the model went, and whether it checked out
            verified = node.export.verified
            text.append("  verified" if verified else "  NOT verified" if verified is False
                        else "  unverified",
                        style="green" if verified else "bold red" if verified is False
                        else "yellow")
            if not node.in_roots:
                text.append(f"  → {short_path(node.path, self.root)}", style="dim")
        if node.running:
            text.append("  running", style="yellow")
        if node.broken:
            text.append("  BROKEN", style="bold red reverse")
        return text

    def on_tree_node_highlighted(self, event: Tree.NodeHighlighted[str]) -> None:
        self.highlighted = event.node.data
        self._show_detail(event.node.data)

    def _show_detail(self, key: str | None) -> None:
        detail = self.query_one("#detail", Static)
        if self.lineage is None or key is None or key not in self.lineage:
            detail.update(Text("select a checkpoint", style="dim"))
            return
        node = self.lineage.node(key)
        text = Text()
        text.append(f"{node.name}\n", style="bold")
        rows = [("kind", f"{node.kind} ({node.source})"), ("path", short_path(node.path,
                                                                                  self.root)),
                ("status", node.status), ("size", human_bytes(node.bytes))]
        if node.stage:
            rows.append(("stage", f"{node.stage}" + (f" of run {node.run}" if node.run else "")))
        if node.created:
            rows.append(("created", node.created))
        if node.lora is not None:
            lora = node.lora
            targets = lora.target_modules
            if isinstance(targets, tuple):
                targets = ",".join(targets)
            rows.append(("LoRA", f"r={lora.r} alpha={lora.alpha} targets={targets}"))
        if node.base_ref:
            rows.append(("base", short_path(node.base_ref, self.root)))
        if node.export is not None:
            rows.append(("export", node.export.describe()))
        for label, value in rows:
            text.append(f"{label:>9} ", style="dim")
            text.append(f"{value}\n")
        if node.metrics and node.export is None:  # an export's are its source's
            text.append("  metrics ", style="dim")
            text.append(", ".join(f"{k} {format_metric(float(v))}"
                                  for k, v in sorted(node.metrics.items())[:8]) + "\n")
        needs = [self.lineage.node(k).name for k in self.lineage.needs(key) if k in self.lineage]
        needed = [self.lineage.node(k).name for k in self.lineage.needed_by(key)
                  if k in self.lineage]
        text.append("    needs ", style="dim")
        text.append((", ".join(needs) or "nothing") + "\n")
        text.append("needed by ", style="dim")
        text.append((", ".join(needed) or "nothing") + "\n")
        if node.broken:
            text.append(f"\nBROKEN: {node.broken}\n", style="bold red")
        if node.removed_by:
            text.append(f"removed by {node.removed_by}\n", style="red")
        for warning in node.warnings:
            text.append(f"warning: {warning}\n", style="yellow")
        for warning in node.export.warnings if node.export is not None else ():
            text.append(f"warning (when exported): {warning}\n", style="yellow")
        if self.cleanup and self.plan is not None:
            text.append("\n")
            text.append_text(cleanup_bridge.describe_plan(self.plan, self.lineage, self.root))
        detail.update(text)

    def _relabel(self) -> None:
        if self.lineage is None:
            return
        tree = self.query_one(Tree)
        stack = list(tree.root.children)
        while stack:
            branch = stack.pop()
            if branch.data in self.lineage:
                branch.set_label(self._label(self.lineage.node(branch.data)))
            stack.extend(branch.children)
        self.query_one("#lineage-title", Static).update(self._title())
        self._show_detail(self.highlighted)

    # -- actions -----------------------------------------------------------------------------

    def action_back(self) -> None:
        if self.cleanup:
            self.action_cleanup_mode()
            return
        if len(self.app.screen_stack) > 2:
            self.app.pop_screen()

    def action_export(self) -> None:
        from graftline.console.screens.export import ExportModal

        if self.lineage is None or self.highlighted not in self.lineage:
            self.notify("Select a checkpoint first.", severity="warning")
            return
        node = self.lineage.node(self.highlighted)
        if node.kind in ("missing", "external", "trainer") or not node.path:
            self.notify(f"{node.name} cannot be exported ({node.kind}).", severity="warning")
            return
        self.app.push_screen(ExportModal(Path(node.path), root=self.root))

    def action_cleanup_mode(self) -> None:
        self.cleanup = not self.cleanup
        self.set_class(self.cleanup, "-cleanup")
        self.plan = None
        if self.cleanup:
            self.notify("Cleanup: mark checkpoints to keep with k, then x to plan.")
        self._relabel()

    def action_toggle_keep(self) -> None:
        if not self.cleanup or self.highlighted is None:
            return
        self.keep.symmetric_difference_update({self.highlighted})
        self.plan = None
        self._relabel()

    def action_plan(self) -> None:
        if not self.cleanup:
            self.action_cleanup_mode()
        if self.lineage is None:
            return
        if not self.keep:
            self.notify("Mark at least one checkpoint to keep (k) before planning.",
                        severity="warning")
            return
        try:
            self.plan = cleanup_bridge.plan(self.lineage, sorted(self.keep))
        except GraftlineError as exc:  # a keep set that selects nothing is refused, with why
            self.plan = None
            self.notify(f"cannot plan: {exc}", severity="error", timeout=8)
            return
        self._relabel()
        self.notify(cleanup_bridge.summary(self.plan, self.lineage))

    def action_delete(self) -> None:
        if self.plan is None:
            self.notify("Plan first (x): nothing is deleted without a plan.", severity="warning")
            return
        doomed = cleanup_bridge.deletions(self.plan)
        if not doomed:
            self.notify("The plan deletes nothing.")
            return

        def answered(yes: bool | None) -> None:
            if yes:
                self._execute(self.plan, self.lineage)
            else:
                self.notify("Cleanup cancelled: nothing deleted.")

        self.app.push_screen(ConfirmModal(
            "Delete these checkpoints?", cleanup_bridge.summary(self.plan, self.lineage) +
            "\n\n" + "\n".join(f"  {short_path(p, self.root)}" for p in doomed[:12]) +
            ("\n  …" if len(doomed) > 12 else ""), confirm_label="Delete"), answered)

    @work(thread=True, exclusive=True, group="cleanup", exit_on_error=False)
    def _execute(self, plan: Any, lineage: Any) -> None:
        try:
            self.post_message(CleanupFinished(cleanup_bridge.execute(plan, lineage), False))
        except (GraftlineError, OSError) as exc:  # told, then the tree rescanned: it changed
            self.post_message(CleanupFinished(f"cleanup failed: {exc}", True))

    @on(CleanupFinished)
    def _after_cleanup(self, message: CleanupFinished) -> None:
        self.notify(message.message, severity="error" if message.failed else "information",
                    timeout=8)
        self.plan = None
        self.keep = set()
        self.deleted += 1
        self.action_rescan()

"""`graftline lineage` and `graftline cleanup`: the checkpoint DAG, and freeing disk safely."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.tree import Tree

from graftline.engine import lineage as lineage_api
from graftline.engine.common import human_bytes
from graftline.engine.lineage import Lineage, Node

_KIND_STYLE = {
    "base": "bold blue", "merged": "bold magenta", "adapter": "green", "combined": "green",
    "export": "bold cyan", "trainer": "dim", "external": "cyan", "missing": "bold red",
}


def _default_root() -> Path:
    return Path("runs") if Path("runs").is_dir() else Path(".")


def _key_metrics(node: Node, limit: int = 3) -> str:
    order = sorted(node.metrics, key=lambda k: (not k.startswith("eval/"), k != "loss", k))
    return " ".join(f"{k}={node.metrics[k]:.4g}" for k in order[:limit])


def node_label(node: Node, lineage: Lineage, relation: str | None = None) -> str:
    """One node as a line of rich markup: kind, size, status, stage/run, LoRA, metrics, needs."""
    style = _KIND_STYLE.get(node.kind, "")
    via = f"[dim]{relation} →[/] " if relation else ""
    if node.kind == "external":
        return f"{via}[{style}]{escape(node.name)}[/] [dim](hub id, not on this machine)[/]"
    if node.kind == "missing":
        if node.removed_by:  # the cleanup history knows it: deleted, not a new root
            return (f"{via}[{style}]DELETED {escape(node.path or node.key)}[/] — by "
                    f"{escape(node.removed_by)}")
        return f"{via}[{style}]MISSING {escape(node.path or node.key)}[/]"
    parts = [f"{via}[{style}]{escape(node.id)}[/]", f"[dim]{node.kind}[/]",
             human_bytes(node.bytes)]
    if node.status not in ("complete", "unknown"):
        parts.append(f"[yellow]{node.status}[/]")
    if node.stage or node.run:
        parts.append(f"[dim]{escape(node.run or '')}/{escape(node.stage or '')}[/]")
    if node.export is not None:  # what it is, not the numbers of the checkpoint it came from
        verdict = node.export.describe()
        style = "green" if node.export.verified else "bold red" \
            if node.export.verified is False else "yellow"
        parts.append(f"[{style}]{escape(verdict)}[/]")
        if node.path:
            parts.append(f"[dim]{escape(node.path)}[/]")
    else:
        if node.lora is not None:
            parts.append(f"r={node.lora.r} α={node.lora.alpha}")
        if metrics := _key_metrics(node):
            parts.append(escape(metrics))
    if not node.in_roots and not any(
            (node.path or "").startswith(r + os.sep) for r in lineage.roots):
        parts.append("[dim](outside the roots)[/]")
    elif not node.in_roots:
        parts.append("[dim](not a checkpoint the scan recognised: never deleted)[/]")
    if node.running:
        parts.append("[bold yellow]RUNNING[/]")
    users = lineage.needed_by(node.key)
    if users:
        parts.append(f"[dim]needed by {len(users)}[/]")
    line = "  ".join(parts)
    if node.broken:
        line += f"\n[bold red]{escape(node.broken)}[/]"
    for warning in node.export.warnings if node.export is not None else ():
        line += f"\n[yellow]⚠ (when exported) {escape(warning)}[/]"
    for warning in node.warnings:
        line += f"\n[yellow]⚠ {escape(warning)}[/]"
    return line


def render_tree(lineage: Lineage) -> Tree:
    """The DAG as a rich Tree: each node under its primary parent, other parents as "also"."""
    tree = Tree(f"[bold]lineage[/] of {escape(', '.join(lineage.roots))}")
    children: dict[str | None, list[tuple[str, str]]] = {}
    for node in lineage.nodes:
        edge = lineage_api.primary_parent(lineage, node.key)
        parent = edge.parent if edge else None
        children.setdefault(parent, []).append((node.key, edge.relation if edge else ""))

    def add(branch: Tree, key: str, relation: str, seen: frozenset[str]) -> None:
        node = lineage.node(key)
        label = node_label(node, lineage, relation or None)
        primary = lineage_api.primary_parent(lineage, key)
        others = [e for e in lineage.parents(key) if e != primary]
        if others:
            also = ", ".join(f"{e.relation} {lineage.node(e.parent).id}" for e in others)
            label += f"\n[dim]also: {escape(also)}[/]"
        sub = branch.add(label)
        for child, rel in sorted(children.get(key, []), key=lambda c: lineage.node(c[0]).id):
            if child not in seen:
                add(sub, child, rel, seen | {child})

    for key, _ in sorted(children.get(None, []), key=lambda c: lineage.node(c[0]).id):
        add(tree, key, "", frozenset({key}))
    if lineage.symlinks:
        links = tree.add("[bold]symlinks[/] (never followed)")
        for link in lineage.symlinks:
            where = "[red]outside the roots[/]" if link.outside else "inside"
            links.add(f"{escape(link.path)} → {escape(link.target)}  {where}")
    for root in lineage.journals:
        tree.add(f"[bold yellow]an interrupted cleanup left a journal in {escape(root)}[/]: "
                 "`graftline cleanup ROOT --keep … --yes` finishes it")
    return tree


def _scan_or_exit(roots: list[Path]) -> Lineage:
    try:
        return lineage_api.scan(roots)
    except lineage_api.ScanError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from exc


def lineage_command(
    root: Path | None = typer.Argument(None, help="A runs directory, a run, or any folder "
                                       "(default: ./runs, else the current folder)."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON for scripts."),
    check_data: Path | None = typer.Option(
        None, "--check-data",
        help="JSON lines an adapter was trained on: decides, from its loss, whether it was "
             "trained on its recorded base or on an in-memory merge of the hand-made adapters "
             "written before it (the CANNOT BE PROVEN warning)."),
    adapter: str | None = typer.Option(
        None, "--adapter", help="Which flagged adapter --check-data is for (an id, name or "
                                "path), when there are several."),
) -> None:
    """Show the checkpoint lineage: what each checkpoint was made from and what needs it."""
    lineage = _scan_or_exit([root or _default_root()])
    verdict = _check_data(lineage, check_data, adapter) if check_data is not None else None
    if as_json:
        data = lineage_api.to_json(lineage)
        if verdict is not None:
            data["data_check"] = verdict.to_dict()
        sys.stdout.write(json.dumps(data, indent=2) + "\n")
        return
    Console().print(render_tree(lineage))
    if verdict is not None:
        style = {"chain": "bold red", "base": "green"}.get(verdict.verdict, "yellow")
        Console().print(f"[bold]data check[/] ({escape(str(check_data))}): "
                        f"[{style}]{escape(verdict.describe())}[/]", highlight=False)
    broken = lineage.broken()
    if broken:
        Console(stderr=True).print(f"[bold red]{len(broken)} broken checkpoint(s)[/]: their base "
                                   "no longer exists; they cannot be loaded or exported.")


def _check_data(lineage: Lineage, data: Path, word: str | None) -> Any:
    """Run the data check (`export.provenance`) on the flagged adapter `word` names (or the
    only one); a refusal with the fix when there is none or it is ambiguous."""
    from graftline.engine.common import GraftlineError

    flagged = [n for n in lineage.nodes if n.in_memory_merge is not None
               and n.in_memory_merge.certainty == "unproven" and n.in_memory_merge.chain]
    if word is not None:
        wanted = set(lineage.find(word)) | {os.path.realpath(word)}
        chosen = [n for n in flagged if n.key in wanted]
        if not chosen:
            raise GraftlineError(
                f"--adapter {word}: not an adapter whose base cannot be proven",
                "flagged here: " + (", ".join(n.id for n in flagged) or "none"))
    else:
        chosen = flagged
    if not chosen:
        raise GraftlineError(
            f"--check-data: no adapter under {', '.join(lineage.roots)} has an unproven base "
            "(several hand-made adapters written one after another on one base)",
            "nothing to decide; scan the folder that holds the adapters and their base")
    if len(chosen) > 1:
        raise GraftlineError(
            f"--check-data: {len(chosen)} adapters have an unproven base; the data is one's",
            "name it with --adapter: " + ", ".join(n.id for n in chosen))
    node = chosen[0]
    finding = node.in_memory_merge
    assert finding is not None and node.path is not None
    base = lineage.get(finding.base or "")
    if base is None or base.path is None or base.kind in ("missing", "external"):
        raise GraftlineError(f"{node.id}: its recorded base {node.base_ref} is not on this "
                             "machine", "the check loads it: make it available locally")
    from graftline.engine.export import check_adapter

    return check_adapter(Path(node.path), Path(base.path), [Path(p) for p in finding.chain],
                         data)


def cleanup_command(
    root: Path = typer.Argument(..., help="The folder to clean (a runs directory or a run)."),
    keep: list[str] = typer.Option(
        [], "--keep",
        help="What to keep (repeatable): final | last:N | best:METRIC[:min|max] | id:ID | "
             "a path | a glob. Everything else that nothing kept needs is deleted.",
    ),
    delete_export: list[str] = typer.Option(
        [], "--delete-export",
        help="An export to delete too (repeatable): its id, path, name or a glob. Exports are "
             "never deleted otherwise.",
    ),
    dry_run: bool = typer.Option(True, "--dry-run/--no-dry-run",
                                 help="Only print the plan (the default)."),
    yes: bool = typer.Option(False, "--yes", help="Delete without asking."),
) -> None:
    """Plan a cleanup and print it; delete only with --yes (or --no-dry-run and a confirmation)."""
    console = Console()
    real_root = Path(os.path.realpath(root))
    if not keep:
        # Never "keep nothing": an empty keep set would mean delete everything.
        typer.echo("error: say what to keep (--keep final, --keep last:2, --keep best:METRIC, "
                   "an id, a path or a glob); with no --keep nothing is planned or deleted",
                   err=True)
        raise typer.Exit(2)
    try:
        rules = [lineage_api.parse_keep(token) for token in keep]
        doomed = [lineage_api.parse_keep(token) for token in delete_export]
    except lineage_api.CleanupError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from exc
    lineage = _scan_or_exit([root])
    interrupted = lineage_api.pending_cleanup(real_root)
    if interrupted is not None:
        console.print(
            f"[bold yellow]Cleanup {interrupted.cleanup} (started {interrupted.started}) was "
            f"interrupted[/]: {len(interrupted.remaining)} of {len(interrupted.entries)} "
            "directories not yet removed."
        )
        if yes:
            result = lineage_api.finish_pending(real_root)
            if result is not None:
                _print_result(console, result)
            lineage = _scan_or_exit([root])
        else:
            console.print("It is finished first when you run this again with --yes.")
    try:
        plan = lineage_api.plan_cleanup(lineage, rules, delete_exports=doomed)
    except lineage_api.CleanupError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from exc
    console.print(escape(lineage_api.format_plan(plan, lineage)), highlight=False)
    if not plan.delete:
        console.print("Nothing to delete.")
        return
    go = yes or (not dry_run and typer.confirm(f"Delete {len(plan.delete)} directories?"))
    if not go:
        console.print("Dry run: nothing deleted. Add --yes to delete.")
        return
    _print_result(console, lineage_api.execute(plan, lineage))


def _print_result(console: Console, result: lineage_api.CleanupResult) -> None:
    verb = "finished" if result.resumed else "done"
    console.print(f"Cleanup {result.cleanup} {verb}: removed {len(result.removed)} directories, "
                  f"freed {human_bytes(result.bytes_freed)}.")
    for path, why in result.skipped:
        console.print(f"[yellow]skipped[/] {escape(path)}: {escape(why)}")


def register(app: typer.Typer) -> None:
    """Add this module's commands to the CLI."""
    app.command("lineage")(lineage_command)
    app.command("cleanup")(cleanup_command)

"""Exports in the lineage: leaves of the checkpoint they came from, with their verification,
wherever they were written; cleanup keeps them unless one is named with --delete-export.

A real PEFT adapter on the shipped toy base, exported for real (streaming merge, reload,
logit comparison) once into the scanned tree and once outside it; `graftline lineage` and
`graftline cleanup` run as a user runs them.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from console_support import screen_text, wait_for
from lineage_helpers import make_adapter
from textual.app import App
from textual.widgets import Tree
from textual.widgets.tree import TreeNode

from graftline.console.screens.lineage import LineageScreen
from graftline.engine.export import plan_export, run_export
from graftline.engine.lineage import Edge, Lineage, Node, parse_keep, plan_cleanup, scan
from graftline.engine.lineage.cleanup import CleanupError, format_plan
from graftline.engine.lineage.journal import HISTORY
from graftline.engine.lineage.model import ExportInfo


def graftline(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    code = "from graftline.console.cli import main; main()"
    env = {**os.environ, "COLUMNS": "200", "HF_HUB_OFFLINE": "1"}
    return subprocess.run([sys.executable, "-c", code, *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300, check=False)


def export(checkpoint: Path, out: Path) -> str:
    result = run_export(plan_export(checkpoint, out, dtype="float32"))
    assert result.ok, result.problems
    return result.manifest.id


@pytest.mark.asyncio
async def test_exports_are_leaves_with_their_verification_and_cleanup_keeps_them(
        toy_base: Path, tmp_path: Path) -> None:
    tree = tmp_path / "tree"
    adapter = make_adapter(tree / "sft", toy_base)
    inside = tree / "exports" / "shipped"
    outside = tmp_path / "models" / "elsewhere"
    inside_id, outside_id = export(adapter, inside), export(adapter, outside)

    lineage = scan([tree])
    source = str(adapter.resolve())
    for path, export_id, in_roots in ((inside, inside_id, True), (outside, outside_id, False)):
        node = lineage.node(str(path.resolve()))
        assert node.kind == "export" and node.id == export_id and node.in_roots is in_roots
        assert Edge(node.key, source, "exported_from", "manifest") in lineage.parents(node.key)
        assert node.export is not None and node.export.verified is True
        assert node.export.formats == ("safetensors",) and node.export.dtype == "float32"
        assert "logit diff" in node.export.verification
        assert not lineage.children(node.key)  # a leaf

    shown = graftline("lineage", str(tree), cwd=tmp_path)
    assert shown.returncode == 0, shown.stderr
    text = " ".join(shown.stdout.split())
    assert str(outside) in text and "verified" in text and "exported_from" in text
    data = json.loads(graftline("lineage", str(tree), "--json", cwd=tmp_path).stdout)
    exports = [n for n in data["nodes"] if n["kind"] == "export"]
    assert {n["export"]["verified"] for n in exports} == {True} and len(exports) == 2

    # the console's lineage tree: both exports under the adapter, verified, the outside one
    # with where it went; the detail panel says how it was written and verified
    host = _Host(tree)
    async with host.run_test(size=(140, 30)) as pilot:
        await wait_for(pilot, lambda: isinstance(host.screen, LineageScreen)
                       and host.screen.scans > 0, what="the lineage scan")
        screen = host.screen
        widget = screen.query_one(Tree)
        sft = next(n for n in _walk(widget.root) if n.data == source)
        leaves = {screen.lineage.node(c.data).path: str(c.label) for c in sft.children}
        assert set(leaves) == {str(inside.resolve()), str(outside.resolve())}
        assert all("verified" in label and "NOT" not in label for label in leaves.values())
        assert "→" in leaves[str(outside.resolve())]
        widget.move_cursor(next(c for c in sft.children if c.data == str(outside.resolve())))
        await pilot.pause()
        detail = " ".join(screen_text(host).split())
        assert "safetensors, float32, verified" in detail

    # cleanup keeping only the adapter: the export inside the tree stays, listed as an export
    kept = graftline("cleanup", str(tree), "--keep", "sft", "--yes", cwd=tmp_path)
    assert kept.returncode == 0, kept.stderr
    assert "Exports, never deleted unless named" in kept.stdout
    assert (inside / "model.safetensors").is_file() and "Nothing to delete" in kept.stdout

    # a --delete-export word that names no export refuses the whole plan, with a guess
    typo = graftline("cleanup", str(tree), "--keep", "sft", "--delete-export", "shiped",
                     "--yes", cwd=tmp_path)
    assert typo.returncode == 2 and "names no export" in typo.stderr
    assert "did you mean" in typo.stderr and (inside / "model.safetensors").is_file()

    # named, it is planned, deleted and journaled like any other deletion
    gone = graftline("cleanup", str(tree), "--keep", "sft", "--delete-export",
                     "exports/shipped", "--yes", cwd=tmp_path)
    assert gone.returncode == 0, gone.stderr
    assert not inside.exists() and (adapter / "adapter_model.safetensors").is_file()
    history = [json.loads(line) for line in (tree / HISTORY).read_text().splitlines()]
    assert any(entry.get("path") == str(inside.resolve()) for entry in history), history
    # the export outside the tree was never the cleanup's to touch
    assert (outside / "model.safetensors").is_file()
    assert str(outside.resolve()) in scan([tree])


class _Host(App[None]):
    def __init__(self, root: Path) -> None:
        super().__init__()
        self.root = root

    def on_mount(self) -> None:
        self.push_screen(LineageScreen(self.root))


def _walk(node: TreeNode[str]) -> list[TreeNode[str]]:
    out = [node]
    for child in node.children:
        out += _walk(child)
    return out


def _shipped_tree() -> Lineage:
    def node(key: str, kind: str, **fields: object) -> Node:
        return Node(key=f"/r/{key}", id=key, kind=kind, name=key,  # type: ignore[arg-type]
                    path=f"/r/{key}", bytes=10, **fields)  # type: ignore[arg-type]

    nodes = (node("base", "base"), node("sft", "adapter", stage="sft"),
             node("gguf", "export", export=ExportInfo(("safetensors", "gguf"), "bfloat16", True)),
             node("old", "adapter"))
    edges = (Edge("/r/sft", "/r/base", "trained_on"), Edge("/r/old", "/r/base", "trained_on"),
             Edge("/r/gguf", "/r/sft", "exported_from"))
    return Lineage(roots=("/r",), nodes=nodes, edges=edges)


def test_final_keeps_the_checkpoint_an_export_came_from() -> None:
    plan = plan_cleanup(_shipped_tree(), [parse_keep("final")])
    assert {"/r/sft", "/r/old", "/r/gguf"} <= set(plan.keep)
    assert plan.delete == ()


@pytest.mark.parametrize("words", [["best:loss"], ["id:gguf-typo"], ["gguf", "final"]])
def test_a_delete_export_word_that_names_no_single_export_refuses(words: list[str]) -> None:
    lineage = _shipped_tree()
    keep = [parse_keep("sft")] + ([parse_keep(words[1])] if len(words) > 1 else [])
    with pytest.raises(CleanupError, match="Nothing was deleted"):
        plan_cleanup(lineage, keep, delete_exports=[parse_keep(words[0])])


def test_an_export_is_protected_until_named() -> None:
    lineage = _shipped_tree()
    plan = plan_cleanup(lineage, [parse_keep("sft")])
    assert "/r/gguf" in plan.protected and "/r/gguf" not in plan.delete
    assert plan.delete == ("/r/old",)
    assert "Exports, never deleted unless named" in format_plan(plan, lineage)
    named = plan_cleanup(lineage, [parse_keep("sft")], delete_exports=[parse_keep("id:gguf")])
    assert set(named.delete) == {"/r/gguf", "/r/old"}


def test_the_export_index_is_owner_only_and_forgets_exports_that_are_gone(
        tmp_path: Path) -> None:
    from graftline.engine.common import export_index

    def fake_export(name: str, export_id: str) -> Path:
        folder = tmp_path / name
        folder.mkdir()
        (folder / "graftline.json").write_text(json.dumps({"id": export_id, "kind": "export"}))
        return folder

    first, second = fake_export("a", "id-a"), fake_export("b", "id-b")
    assert export_index.record(first, tmp_path / "src", "id-a")
    assert export_index.record(second, tmp_path / "src", "id-b")
    assert {e["id"] for e in export_index.read_entries()} == {"id-a", "id-b"}
    assert export_index.index_path().stat().st_mode & 0o777 == 0o600
    (first / "graftline.json").write_text(json.dumps({"id": "another", "kind": "export"}))
    assert export_index.record(second, tmp_path / "src", "id-b")  # rewrites: prunes the stale
    assert [e["id"] for e in export_index.read_entries()] == ["id-b"]


def test_an_export_stage_of_a_bare_base_is_a_verified_leaf_of_that_base(
        toy_base: Path, tmp_path: Path) -> None:
    """A hand-made tree holding only the user's base model; a pipeline whose one stage exports
    that base (no adapter: the plain export stage) to a folder outside the tree. The export is
    indexed where it went, so the tree's lineage shows it as a verified leaf of the base."""
    import shutil

    from typer.testing import CliRunner

    from graftline.console.cli import app
    from graftline.engine.common.sink import ListSink
    from graftline.engine.pipeline.file import load
    from graftline.engine.run.runner import run_pipeline

    tree = tmp_path / "tree"
    base = tree / "my-base"
    shutil.copytree(toy_base, base)
    out = tmp_path / "shipped" / "base-f32"
    path = tmp_path / "ship.toml"
    path.write_text(f'[pipeline]\nname = "ship"\nbase = "{base}"\nruns_dir = "runs"\n'
                    f'[[stage]]\nname = "export"\nkind = "export"\nout = "{out}"\n'
                    'dtype = "float32"\n')
    result = run_pipeline(load(path), tmp_path / "runs" / "ship", ListSink())
    assert result.status == "finished", result.message

    lineage = scan([tree])
    node = lineage.node(str(out.resolve()))
    assert node.kind == "export" and node.in_roots is False
    assert Edge(node.key, str(base.resolve()), "exported_from", "manifest") \
        in lineage.parents(node.key)
    assert not lineage.children(node.key)  # a leaf
    assert node.export is not None and node.export.verified is True
    assert "logit" in node.export.verification  # the plain export's export_equal check

    shown = CliRunner().invoke(app, ["lineage", str(tree)], env={"COLUMNS": "200"})
    assert shown.exit_code == 0, shown.output
    text = " ".join(shown.output.split())
    assert str(out) in text and "verified" in text and "exported_from" in text

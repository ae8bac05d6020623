"""The engine is headless and the console never touches a trainer: enforced, not hoped for."""

from __future__ import annotations

import ast
import subprocess
import sys
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SRC = REPO / "src"


def _imports(folder: Path) -> dict[str, set[str]]:
    found: dict[str, set[str]] = {}
    for path in folder.rglob("*.py"):
        names: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names |= {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names.add(
                    node.module
                    if node.module.startswith("graftline")
                    else node.module.split(".")[0]
                )
        found[str(path.relative_to(REPO))] = names
    return found


def test_engine_never_imports_textual_or_the_console() -> None:
    offenders = {
        path: names
        for path, names in _imports(SRC / "engine").items()
        if "textual" in names or any(n.startswith("graftline.console") for n in names)
    }
    assert offenders == {}


def test_console_never_imports_trainers() -> None:
    offenders = {
        path: names & {"trl", "peft", "unsloth"}
        for path, names in _imports(SRC / "console").items()
        if names & {"trl", "peft", "unsloth"}
    }
    assert offenders == {}


def test_import_linter_contracts_hold() -> None:
    result = subprocess.run(
        [str(Path(sys.executable).parent / "lint-imports")],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_source_package_is_listed_in_pyproject() -> None:
    listed = set(
        tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]
    )
    on_disk = {
        "graftline." + ".".join(p.parent.relative_to(SRC).parts) if p.parent != SRC else "graftline"
        for p in SRC.rglob("__init__.py")
    }
    assert on_disk <= listed, f"add to pyproject.toml packages: {sorted(on_disk - listed)}"


def test_every_public_name_of_each_engine_area_resolves() -> None:
    """Each area's `__all__` is its public surface; a name there must import (lazily)."""
    import importlib

    for area in ("pipeline", "run", "lineage", "export", "rehearse", "common"):
        package = importlib.import_module(f"graftline.engine.{area}")
        missing = [name for name in package.__all__ if getattr(package, name, None) is None]
        assert missing == [], f"graftline.engine.{area}: {missing}"


def test_engine_areas_import_nothing_heavy() -> None:
    """`graftline --help` and the console's first frame must not pay for torch or trl."""
    code = (
        "import sys\n"
        "import graftline.engine.pipeline, graftline.engine.run, graftline.engine.lineage\n"
        "import graftline.engine.export, graftline.engine.rehearse, graftline.engine.common\n"
        "print(sorted(m for m in ('torch', 'transformers', 'trl', 'peft') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_each_areas_type_checking_mirror_names_its_lazy_surface() -> None:
    """mypy sees an area's public names through the `if TYPE_CHECKING:` imports of its
    `__init__` (at run time `lazy_exports` serves them): the two must name the same things, from
    the same modules, or a name is `Any` to mypy (or missing at run time)."""
    for area in ("pipeline", "run", "lineage", "export", "rehearse", "common", "toy"):
        path = SRC / "engine" / area / "__init__.py"
        tree = ast.parse(path.read_text(), str(path))
        exports: dict[str, str] = {}
        mirrored: dict[str, str] = {}
        for node in tree.body:
            if isinstance(node, ast.Assign) and any(
                    getattr(t, "id", None) == "_EXPORTS" for t in node.targets):
                exports = ast.literal_eval(node.value)
            if isinstance(node, ast.If) and getattr(node.test, "id", None) == "TYPE_CHECKING":
                for imp in node.body:
                    assert isinstance(imp, ast.ImportFrom) and imp.module
                    prefix = f"graftline.engine.{area}"
                    for alias in imp.names:
                        name = alias.asname or alias.name
                        module = alias.name if imp.module == prefix else \
                            imp.module.removeprefix(prefix + ".")
                        # `import read as read_manifest` is `_EXPORTS`'s "manifest:read"
                        renamed = imp.module != prefix and alias.name != name
                        mirrored[name] = f"{module}:{alias.name}" if renamed else module
        assert mirrored == exports, (
            f"graftline.engine.{area}: keep the TYPE_CHECKING imports and _EXPORTS in step "
            f"(only in _EXPORTS: {sorted(set(exports) - set(mirrored))}, only mirrored: "
            f"{sorted(set(mirrored) - set(exports))})")

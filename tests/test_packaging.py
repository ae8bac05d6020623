"""What a non-editable install carries: the console's themes (outside the package), the shipped
toy bases and the shipped family twins (package data)."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from graftline.console import app

REPO = Path(__file__).resolve().parents[1]


def test_the_wheel_carries_the_themes(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
         "-w", str(tmp_path), str(REPO)],
        capture_output=True, text=True, check=False, timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    (wheel,) = tmp_path.glob("graftline-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    for theme_file in ("graftline.tcss", "themes.py"):
        assert any(n.endswith(f".data/data/share/graftline/themes/{theme_file}") for n in names)
    assert "graftline/console/app.py" in names
    # the shipped toy bases: every file their records name travels in the wheel
    from graftline.engine.toy.shipped import SHIPPED_ROOT, checked_record

    for base in (p for p in SHIPPED_ROOT.iterdir() if p.is_dir()):
        wanted = [*checked_record(base).files, "toy_base.json"]
        assert all(f"graftline/engine/toy/bases/{base.name}/{n}" in names for n in wanted)
    # and the shipped family twins
    from graftline.engine.rehearse.families import RECORD, checked_twin
    from graftline.engine.rehearse.families import SHIPPED_ROOT as TWINS

    twins = [p for p in TWINS.iterdir() if p.is_dir()]
    assert len(twins) == 9
    for twin in twins:
        wanted = [*checked_twin(twin)["files"], RECORD]
        assert all(f"graftline/engine/rehearse/twins/{twin.name}/{n}" in names for n in wanted)


def test_an_installed_console_finds_its_themes_under_the_prefix(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    prefix = tmp_path / "venv"
    shared = prefix / "share" / "graftline" / "themes"
    shared.mkdir(parents=True)
    for name in ("graftline.tcss", "themes.py"):
        (shared / name).write_bytes((REPO / "themes" / name).read_bytes())
    monkeypatch.setattr(app, "REPO", tmp_path / "site-packages")  # no themes/ beside it
    monkeypatch.setattr(sys, "prefix", str(prefix))
    assert app.bundled_themes() == shared
    module = app._load_theme_module()
    assert module is not None and module.BUILTIN

"""The family twins ship as package data (rehearse/families.py): every machine checks the
families on the same bytes, copied into the cache instead of trained; a shipped copy that differs
from its record is refused, and a recipe that does not ship is built as before."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from graftline.engine.common.shipped_files import changed_files
from graftline.engine.rehearse.families import (
    FAMILIES,
    RECORD,
    SHIPPED_ROOT,
    ShippedTwinDamaged,
    TwinRecipe,
    build_family,
    checked_twin,
    read_record,
    twin_dir,
    twin_name,
)


def test_every_family_ships_a_twin_whose_files_match_its_record() -> None:
    for name in FAMILIES:
        record = checked_twin(SHIPPED_ROOT / twin_name(name))
        assert record["family"] == name and record["origin"] == "shipped"
        assert {"config.json", "model.safetensors", "tokenizer_config.json"} <= set(record["files"])
        assert record["built_with"]["threads"] == "1"


def test_the_cache_gets_the_shipped_bytes(tmp_path: Path) -> None:
    target = build_family("qwen3", cache=tmp_path)
    shipped = SHIPPED_ROOT / target.name
    assert target == twin_dir("qwen3", cache=tmp_path)
    assert read_record(target) == read_record(shipped)
    assert changed_files(target, read_record(shipped)["files"]) == []
    assert build_family("qwen3", cache=tmp_path) == target


def test_a_twin_built_here_before_its_recipe_shipped_is_replaced(tmp_path: Path) -> None:
    target = twin_dir("qwen2", cache=tmp_path)
    target.mkdir(parents=True)
    (target / "config.json").write_text("{}")
    (target / "model.safetensors").write_bytes(b"an older build's weights")
    (target / RECORD).write_text(json.dumps({"family": "qwen2", "steps": 300}))
    assert build_family("qwen2", cache=tmp_path) == target
    assert read_record(target) == read_record(SHIPPED_ROOT / target.name)
    assert changed_files(target, read_record(target)["files"]) == []
    # a torn record is no twin either
    (target / RECORD).write_text('{"family": "qwe')
    assert build_family("qwen2", cache=tmp_path) == target
    assert read_record(target) == read_record(SHIPPED_ROOT / target.name)


def test_a_damaged_shipped_twin_is_refused_and_the_cache_keeps_nothing(tmp_path: Path) -> None:
    ships = tmp_path / "ships"
    source = ships / twin_name("llama")
    shutil.copytree(SHIPPED_ROOT / source.name, source)
    (source / "tokenizer.json").write_text("{}")  # edited by hand, or a torn install
    cache = tmp_path / "cache"
    with pytest.raises(ShippedTwinDamaged, match=r"tokenizer\.json") as caught:
        build_family("llama", cache=cache, shipped=ships)
    assert "reinstall graftline" in (caught.value.fix or "")
    assert not twin_dir("llama", cache=cache).exists()
    assert [p.name for p in (cache / "families").iterdir() if not p.name.endswith(".lock")] == []


def test_a_recipe_that_does_not_ship_is_built_once(tmp_path: Path) -> None:
    recipe = TwinRecipe(steps=3)  # not the shipped recipe: another key
    target = build_family("qwen3", recipe, cache=tmp_path)
    record = read_record(target)
    assert record["steps"] == 3 and "files" not in record and "origin" not in record
    assert not (SHIPPED_ROOT / target.name).exists()
    written = (target / "model.safetensors").stat().st_mtime_ns
    assert build_family("qwen3", recipe, cache=tmp_path) == target
    assert (target / "model.safetensors").stat().st_mtime_ns == written

"""The event log's schema: one typed record per event type (engine/common/event_types.py), the
table of events in docs/architecture.md checked against the records, and every row of the runs
the tests ship checked against its record."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import pytest

from graftline.engine.common.event_types import (
    CHECK_EVENTS,
    EVENT_PARTS,
    EVENT_RECORDS,
    EventFieldsError,
    Samples,
    StageFinished,
    StageStarted,
    check,
    event_of,
    fields_of,
)
from graftline.engine.common.sink import ListSink, emit_record
from graftline.engine.run.events import EventWriter

sys.path.insert(0, str(Path(__file__).parent / "fixtures"))
from synthetic_run import write_synthetic_run

ROOT = Path(__file__).resolve().parents[1]


def _doc_rows() -> dict[str, str]:
    """`type` → the row's data cell, from the events table of docs/architecture.md, with the
    note under the table on what events relayed from a process group's rank 0 add."""
    text = (ROOT / "docs" / "architecture.md").read_text(encoding="utf-8")
    section = text[text.index("## Events (`type` → `data` fields)"):]
    rows: dict[str, str] = {}
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) >= 2 and cells[0].startswith("`"):
            for name in re.findall(r"`([a-z_]+)`", cells[0]):
                rows[name] = cells[1]
    note = next(p for p in section.split("\n\n") if "relayed from a process group" in p)
    said, _, extra = note.partition("also carries")
    relayed = set(re.findall(r"`([a-z_]+)`", said))
    return {name: row + (" " + extra if name in relayed else "") for name, row in rows.items()}


def test_the_docs_table_names_every_type_and_every_field_of_its_record() -> None:
    rows = _doc_rows()
    assert sorted(rows) == sorted(EVENT_RECORDS)
    for kind, row in rows.items():
        required, optional = fields_of(kind)
        missing = [name for name in required + optional if f"`{name}`" not in row]
        assert not missing, f"{kind}: the docs' row does not name {missing}"


def test_every_row_of_the_shipped_runs_fits_its_record(tmp_path: Path) -> None:
    logs = sorted((ROOT / "tests" / "fixtures" / "recorded_runs").glob("*/events.jsonl"))
    logs.append(write_synthetic_run(tmp_path / "synthetic", steps_per_stage=4) / "events.jsonl")
    seen: set[str] = set()
    for log in logs:
        for line in log.read_text(encoding="utf-8").splitlines():
            row = json.loads(line)
            seen.add(row["type"])
            assert check(row["type"], row["data"]) == [], (log.name, row)
    assert {"run_started", "stage_started", "metrics", "check_result", "stage_finished",
            "checkpoint_saved", "telemetry", "run_finished"} <= seen


def test_check_names_what_a_row_lacks_and_what_a_closed_record_does_not_know() -> None:
    assert check("run_finished", {"status": "finished", "message": None}) == []
    assert check("run_finished", {"message": "x", "colour": "red"}) == [
        "run_finished: no `status`", "run_finished: `colour` is not in its record"]
    assert check("metrics", {"step": 1, "loss": 0.5}) == []  # open: the trainer's own keys
    assert check("lunch", {}) == ["unknown event type 'lunch'"]


def _emit_sites() -> list[tuple[str, int, str, list[str], bool]]:
    """Every `….emit("type", stage, field=…)` call in src/ whose type is a literal (or a module
    constant bound to one): (file, line, type, keyword names, whether it also passes **data).
    The relays that forward another event's own type and data (`emit(type, …, **data)`) are
    not calls a person spells, so they are left out."""
    import ast

    sites: list[tuple[str, int, str, list[str], bool]] = []
    for path in sorted((ROOT / "src").rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        constants = {target.id: node.value.value for node in tree.body
                     if isinstance(node, ast.Assign) and isinstance(node.value, ast.Constant)
                     and isinstance(node.value.value, str)
                     for target in node.targets if isinstance(target, ast.Name)}
        for node in ast.walk(tree):
            if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                    and node.func.attr == "emit" and node.args):
                continue
            first = node.args[0]
            if isinstance(first, ast.Constant) and isinstance(first.value, str):
                kind = first.value
            elif isinstance(first, ast.Name) and first.id in constants:
                kind = constants[first.id]
            else:
                continue
            sites.append((str(path.relative_to(ROOT)), node.lineno, kind,
                          [k.arg for k in node.keywords if k.arg is not None],
                          any(k.arg is None for k in node.keywords)))
    return sites


def test_every_emit_in_the_source_spells_its_records_fields() -> None:
    """A misspelled field at an emit site fails here, without running the path that emits it:
    a closed record refuses a keyword it does not name, and a call that passes no `**data`
    must name every field its record always has."""
    sites = _emit_sites()
    # the walk found the engine's keyword emits, not nothing (a site that builds its closed
    # record, `emit_record(sink, stage, StageFinished(…))`, is mypy's to check, not this walk's)
    assert len(sites) > 30
    problems = []
    for where, line, kind, names, spread in sites:
        if kind not in EVENT_RECORDS:
            problems.append(f"{where}:{line}: unknown event type {kind!r}")
            continue
        required, optional = fields_of(kind)
        if not getattr(EVENT_RECORDS[kind], "OPEN", False):
            problems += [f"{where}:{line}: {kind} has no field `{name}`" for name in names
                         if name not in {*required, *optional}]
        if not spread:
            problems += [f"{where}:{line}: {kind} without `{name}`" for name in required
                         if name not in names]
    assert not problems, "\n".join(problems)


def test_every_typed_part_an_emit_spreads_names_only_its_records_fields() -> None:
    """The fields an emit site builds apart (`emit(…, **part)`) are TypedDicts, so mypy checks
    their names where they are built; each of those names must be a field of every record the
    part is spread into."""
    assert EVENT_PARTS
    problems = [f"{part.__name__}: {kind} has no field `{name}`"
                for part, kinds in EVENT_PARTS.items() for kind in kinds
                for name in part.__annotations__
                if name not in {*fields_of(kind)[0], *fields_of(kind)[1]}]
    assert not problems, "\n".join(problems)


def test_a_record_built_at_the_emit_site_writes_the_row_its_keywords_wrote(
        tmp_path: Path) -> None:
    """`emit_record` (mypy checks the record's fields where it is built) writes the row the
    keyword call wrote: every field, and a sparse one (a process group's, a relay's) only where
    it is set; in the record's order, the values the caller's own objects."""
    metrics = {"loss": 0.5}
    plain = StageFinished(kind="sft", status="complete", seconds=1.5, metrics=metrics,
                          evaluation={})
    assert event_of(plain) == ("stage_finished", {
        "kind": "sft", "status": "complete", "seconds": 1.5, "metrics": metrics,
        "evaluation": {}})
    assert event_of(plain)[1]["metrics"] is metrics
    group = StageFinished(kind="sft", status="failed", seconds=2.0, metrics={}, evaluation={},
                          world_size=4, failed_rank=3, failed_exitcode=-9)
    assert list(event_of(group)[1]) == ["kind", "status", "seconds", "metrics", "evaluation",
                                        "world_size", "failed_rank", "failed_exitcode"]
    started = StageStarted(kind="dpo", index=1, max_steps=10, global_step_offset=0,
                           action="continue", reference=None, reference_label=None,
                           resumed_from=None)
    assert event_of(started)[1] == {  # the site always names these, None or not
        "kind": "dpo", "index": 1, "max_steps": 10, "global_step_offset": 0,
        "action": "continue", "reference": None, "reference_label": None,
        "resumed_from": None}
    sink = ListSink()
    emit_record(sink, "s1", Samples(when="end", kind="sft", samples=[], global_step=7))
    assert sink.events == [("samples", "s1", {"when": "end", "kind": "sft", "samples": [],
                                              "global_step": 7})]
    writer = EventWriter(tmp_path, summary=False)
    emit_record(writer, "s1", plain)
    writer.close()
    row = json.loads((tmp_path / "events.jsonl").read_text())
    assert (row["type"], row["stage"], row["data"]) == ("stage_finished", "s1", {
        "kind": "sft", "status": "complete", "seconds": 1.5, "metrics": {"loss": 0.5},
        "evaluation": {}})


def test_an_emit_that_builds_a_wrong_field_fails_while_checking(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The suite checks every emitted row (conftest sets GRAFTLINE_CHECK_EVENTS=1): the event
    log's writer and the in-memory sink refuse a misspelled field before it is written, naming
    the field and the record; a live run (the variable unset) writes the row as given."""
    assert EVENT_RECORDS  # the records this checks against
    monkeypatch.setenv(CHECK_EVENTS, "1")
    wrong = {"kind": "sft", "status": "complete", "secs": 1.0, "metrics": {}}
    (tmp_path / "checked").mkdir()
    (tmp_path / "live").mkdir()
    for sink in (ListSink(), EventWriter(tmp_path / "checked", summary=False)):
        with pytest.raises(EventFieldsError) as raised:
            sink.emit("stage_finished", "s1", **wrong)
        assert "`secs` is not in its record" in str(raised.value)
        assert "no `seconds`" in str(raised.value) and "event_types.py" in raised.value.fix
    written = tmp_path / "checked" / "events.jsonl"
    assert not written.exists() or written.read_text() == ""
    monkeypatch.delenv(CHECK_EVENTS)
    EventWriter(tmp_path / "live", summary=False).emit("stage_finished", "s1", **wrong)
    row = json.loads((tmp_path / "live" / "events.jsonl").read_text())
    assert row["data"]["secs"] == 1.0

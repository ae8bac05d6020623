"""The event log's schema: one typed record per event type, the names the emitters may use.

`EventType` is the type of `Sink.emit`'s first argument, so mypy refuses an event type no record
describes. Each record is the `data` of its type: fields without a default are always there,
those with one may be left out, and an `OPEN` record carries more keys than it names (a
trainer's logged metrics, a telemetry sample's devices, a rehearsal phase's own fields).
`check(type, data)` says what a row lacks or has too many of; the table of events in
docs/architecture.md is checked against these records (tests/test_event_types.py), and so is
every row of the recorded and synthetic runs the tests ship, and every emit in src/ that spells
its fields. `require(type, data)`, called by the event log's writer and the in-memory sink,
raises on a row that does not fit when `GRAFTLINE_CHECK_EVENTS=1` (the test suite sets it, so
an emit that builds its fields at run time is checked on every path the tests run); a live run
never checks, so it never dies of its own log.

A closed record's emit site builds the record itself (`sink.emit_record(sink, stage,
StageFinished(...))`), so mypy checks every field's name and type where the event is made;
`event_of` turns it into the row: every field, except a `SPARSE` one (only where it applies: a
process group's, a relay's) while it is None, so the row is what the keyword call wrote. The
open records (metrics, warnings, errors, info, telemetry, rehearsal, progress) carry keys no
record names, and are emitted with keywords.
"""

from __future__ import annotations

import dataclasses
import functools
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Literal, TypedDict, cast, get_args

from graftline.engine.common.errors import GraftlineError

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

__all__ = ["CHECK_EVENTS", "EVENT_PARTS", "EVENT_RECORDS", "CheckpointSaved", "EventFieldsError",
           "EventType", "FailedRank", "ProcessGroupStart", "RunFinished", "RunStarted", "Samples",
           "StageFinished", "StageStarted", "Telemetry", "check", "event_of", "fields_of",
           "record_of", "require"]

CHECK_EVENTS = "GRAFTLINE_CHECK_EVENTS"  # "1": every emitted row is checked against its record

EventType = Literal[
    "run_started", "stage_started", "metrics", "checkpoint_saved", "check_result", "warning",
    "error", "stage_finished", "telemetry", "run_finished", "samples", "rehearsal", "info",
    "progress",
]


@dataclass(frozen=True)
class RunStarted:
    run: str
    pipeline: str
    stages: list[dict[str, Any]]  # {name, kind, action, lora_r, reference, reference_label,
    backend: str  #                  max_steps} per stage, in file order
    resumed: bool


@dataclass(frozen=True)
class StageStarted:
    SPARSE: ClassVar[frozenset[str]] = frozenset(
        {"world_size", "processes", "num_machines", "machine_rank", "distributed", "launcher"})
    kind: str
    index: int
    max_steps: int | None
    global_step_offset: int
    action: str | None
    reference: str | None
    reference_label: str | None = None
    resumed_from: str | None = None  # the Trainer checkpoint a resumed stage continues from
    # scale-out (run/distributed.py): the stage's process group
    world_size: int | None = None
    processes: int | None = None
    num_machines: int | None = None
    machine_rank: int | None = None
    distributed: str | None = None
    launcher: str | None = None


@dataclass(frozen=True)
class Metrics:
    OPEN: ClassVar[bool] = True  # and the trainer's logged keys (loss, learning_rate, …)
    step: int
    global_step: int | None = None
    max_steps: int | None = None
    epoch: float | None = None
    tokens_per_s: float | None = None
    steps_per_s: float | None = None
    eta_s: float | None = None


@dataclass(frozen=True)
class CheckpointSaved:
    SPARSE: ClassVar[frozenset[str]] = frozenset({"world_size"})
    path: str
    kind: str  # adapter, merged, combined, export, trainer
    id: str
    bytes: int | None
    world_size: int | None = None  # relayed from a process group's rank 0


@dataclass(frozen=True)
class CheckResult:
    SPARSE: ClassVar[frozenset[str]] = frozenset({"world_size"})
    name: str
    status: str  # pass, warn, fail
    message: str
    data: dict[str, Any] | None = None
    world_size: int | None = None  # relayed from a process group's rank 0


@dataclass(frozen=True)
class Warning:
    OPEN: ClassVar[bool] = True  # a resume's `resumed_from`, a full disk's report, …
    message: str
    fix: str | None = None


@dataclass(frozen=True)
class Error:
    OPEN: ClassVar[bool] = True  # a process group's `world_size`, `exit_code`, …
    message: str
    fix: str | None = None
    # a distributed stage's: the rank that ended its group first, and its exit code
    failed_rank: int | None = None
    failed_exitcode: int | None = None


@dataclass(frozen=True)
class StageFinished:
    SPARSE: ClassVar[frozenset[str]] = frozenset(
        {"world_size", "machine_rank", "failed_rank", "failed_exitcode", "message"})
    kind: str
    status: str  # complete, failed, stopped, skipped
    seconds: float | None
    metrics: dict[str, Any]  # the stage's summary
    evaluation: dict[str, Any] | None = None
    # a stage on a process group: its size, this host's machine rank, the rank and exit code
    # that ended it, and what the group's end says
    world_size: int | None = None
    machine_rank: int | None = None
    failed_rank: int | None = None
    failed_exitcode: int | None = None
    message: str | None = None


@dataclass(frozen=True)
class Telemetry:
    OPEN: ClassVar[bool] = True  # per-device and per-rank fields as the machine has them
    gpus: list[dict[str, Any]] | None = None
    gpu: Any = None
    gpu_reason: str | None = None
    proc_gpu_bytes: int | None = None
    rss: int | None = None
    ram_used: int | None = None
    ram_total: int | None = None
    cpu_percent: float | None = None
    disk_free: int | None = None
    forecast_bytes: int | None = None
    ranks: list[dict[str, Any]] | None = None
    ranks_alive: int | None = None


@dataclass(frozen=True)
class RunFinished:
    status: str  # finished, failed, stopped
    message: str | None = None


@dataclass(frozen=True)
class Samples:
    SPARSE: ClassVar[frozenset[str]] = frozenset({"world_size"})
    when: str  # start, eval, end
    kind: str
    samples: list[dict[str, str]]  # [{prompt, answer, expected?}]
    global_step: int | None
    world_size: int | None = None  # relayed from a process group's rank 0


@dataclass(frozen=True)
class Rehearsal:
    OPEN: ClassVar[bool] = True  # each phase's own fields (docs/run-directory.md)
    phase: str  # started, twin, stage, cleanup, finished


@dataclass(frozen=True)
class Info:
    OPEN: ClassVar[bool] = True  # e.g. a cleanup's `cleanup`, `removed`, `freed`
    message: str


@dataclass(frozen=True)
class Progress:
    OPEN: ClassVar[bool] = True
    task: str  # export
    phase: str
    fraction: float
    message: str | None = None


EVENT_RECORDS: dict[str, type] = {
    "run_started": RunStarted, "stage_started": StageStarted, "metrics": Metrics,
    "checkpoint_saved": CheckpointSaved, "check_result": CheckResult, "warning": Warning,
    "error": Error, "stage_finished": StageFinished, "telemetry": Telemetry,
    "run_finished": RunFinished, "samples": Samples, "rehearsal": Rehearsal, "info": Info,
    "progress": Progress,
}
assert set(EVENT_RECORDS) == set(get_args(EventType))


# Fields an emit site builds apart and spreads into the call (`emit(…, **part)`): typed, so mypy
# checks their names where they are built; EVENT_PARTS says which records each belongs to
# (tests/test_event_types.py checks every key against them). A part leaves out what does not
# apply, so the row is the same as before: a one-process stage has no `world_size` at all.
class ProcessGroupStart(TypedDict, total=False):
    """What a distributed stage's `stage_started` adds: the group's size, this host's
    processes and machine rank (the console's rank liveness reads them)."""

    world_size: int
    processes: int
    machine_rank: int


class FailedRank(TypedDict, total=False):
    """The rank that ended a process group first, and its exit code, on the group's `error` and
    `stage_finished`."""

    failed_rank: int
    failed_exitcode: int


EVENT_PARTS: dict[type, tuple[str, ...]] = {
    ProcessGroupStart: ("stage_started",),
    FailedRank: ("error", "stage_finished"),
}


def fields_of(type: str) -> tuple[list[str], list[str]]:
    """(required, optional) field names of an event type's record."""
    required, optional = _fields(type)
    return list(required), list(optional)


@functools.cache
def _fields(type: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
    required: list[str] = []
    optional: list[str] = []
    for item in dataclasses.fields(EVENT_RECORDS[type]):
        empty = item.default is dataclasses.MISSING and \
            item.default_factory is dataclasses.MISSING
        (required if empty else optional).append(item.name)
    return tuple(required), tuple(optional)


_TYPE_OF: dict[type, str] = {record: name for name, record in EVENT_RECORDS.items()}


def event_of(record: DataclassInstance) -> tuple[EventType, dict[str, Any]]:
    """A record as its event's type and row data: every field, except a `SPARSE` one left at
    None (it applies only on some rows: a process group's, a relay's). The values are the
    record's own objects, not copies."""
    sparse: frozenset[str] = getattr(record, "SPARSE", frozenset())
    data = {item.name: getattr(record, item.name) for item in dataclasses.fields(record)
            if not (item.name in sparse and getattr(record, item.name) is None)}
    return cast(EventType, _TYPE_OF[type(record)]), data


def record_of(type: str, data: dict[str, Any]) -> Any:
    """One event's `data` as its typed record (the keys its record names; an open record's
    others are left out). TypeError when a field without a default is missing."""
    record = EVENT_RECORDS[type]
    names = {item.name for item in dataclasses.fields(record)}
    return record(**{key: value for key, value in data.items() if key in names})


def _faults(type: str, data: dict[str, Any]) -> tuple[list[str], list[str]]:
    """(the required fields `data` lacks, the keys its closed record does not name)."""
    required, optional = _fields(type)
    missing = [name for name in required if name not in data]
    named = {*required, *optional}
    unknown = ([] if getattr(EVENT_RECORDS[type], "OPEN", False)
               else [key for key in data if key not in named])
    return missing, unknown


def check(type: str, data: dict[str, Any]) -> list[str]:
    """What one event's `data` lacks or has too many of, against its record; [] when it fits."""
    if type not in EVENT_RECORDS:
        return [f"unknown event type {type!r}"]
    missing, unknown = _faults(type, data)
    return ([f"{type}: no `{name}`" for name in missing]
            + [f"{type}: `{key}` is not in its record" for key in unknown])


class EventFieldsError(GraftlineError):
    """An emitted event whose data does not fit its record (raised only while checking)."""


def require(type: str, data: dict[str, Any]) -> None:
    """With `GRAFTLINE_CHECK_EVENTS=1`, raise `EventFieldsError` for a row with a field its
    record does not name (a misspelling), or of an unknown type, saying everything `check`
    finds; nothing otherwise (one environment lookup: the metrics path stays cheap). A row that
    only lacks fields passes: readers take partial rows (an old log, a test's hand-made one)."""
    if os.environ.get(CHECK_EVENTS) != "1":
        return
    if type in EVENT_RECORDS and not _faults(type, data)[1]:
        return
    problems = check(type, data)
    if problems:
        raise EventFieldsError(
            "; ".join(problems), fix="spell the field as the event's record in "
            "engine/common/event_types.py names it, or add it there and to the events table in "
            "docs/architecture.md")

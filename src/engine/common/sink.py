"""Where a running stage reports: one interface, several destinations.

Stages never know whether they report to an event log, a test's list or a progress bar.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

from graftline.engine.common.event_types import EventType, event_of, require

if TYPE_CHECKING:
    from _typeshed import DataclassInstance


class Sink(Protocol):
    def emit(self, type: EventType, stage: str | None = None, **data: Any) -> object: ...


def emit_record(sink: Sink, stage: str | None, record: DataclassInstance) -> object:
    """Emit a closed event record (event_types: `StageFinished(...)`, …) built at the call site,
    where mypy checks its fields; the row is what the same keywords would have written."""
    type, data = event_of(record)
    return sink.emit(type, stage, **data)


class ListSink:
    """Keeps every event in memory: for tests and rehearsals."""

    def __init__(self) -> None:
        self.events: list[tuple[str, str | None, dict[str, Any]]] = []

    def emit(self, type: EventType, stage: str | None = None, **data: Any) -> None:
        require(type, data)  # a misspelled field fails the test that emitted it
        self.events.append((type, stage, data))

    def of_type(self, type: str) -> list[dict[str, Any]]:
        return [data for t, _stage, data in self.events if t == type]

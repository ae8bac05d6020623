"""The files cleanup leaves in a root: the journal of a deletion in progress, and the history.

Both are append-only JSON lines, fsynced per line, so a crash mid-cleanup leaves a journal that
says exactly which directories were finished; the next cleanup reports and finishes the rest.
The history outlives the journal: it lets a later "broken" message say which cleanup removed a
base (`removed_by`).

Per directory the journal says `removing` before the first file goes and `done` after the
history has it. A crash between the two leaves a directory half or wholly gone that the journal
names as begun: finishing the cleanup records it in the history either way, so no removal the
cleanup made goes unrecorded.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

JOURNAL = ".graftline-cleanup.journal.jsonl"
HISTORY = ".graftline-cleanup-history.jsonl"


@dataclass(frozen=True)
class Removal:
    """One directory a cleanup removed, as the history remembers it."""

    cleanup: str
    time: str
    path: str
    id: str
    kind: str
    bytes: int

    def describe(self) -> str:
        return f"cleanup {self.cleanup} at {self.time}"


@dataclass(frozen=True)
class PendingCleanup:
    """A cleanup whose journal was left behind: it was interrupted before it finished."""

    root: str
    cleanup: str
    started: str
    entries: tuple[dict[str, Any], ...]  # every planned deletion, as journaled
    done: frozenset[str]  # paths finished: removed and recorded, skipped, or found gone
    begun: frozenset[str] = frozenset()  # paths whose removal had started (`removing`)

    @property
    def remaining(self) -> tuple[dict[str, Any], ...]:
        return tuple(e for e in self.entries if e["path"] not in self.done)


def append_line(path: Path, record: dict[str, Any]) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_NOFOLLOW, 0o644)
    try:
        os.write(fd, (json.dumps(record, sort_keys=True) + "\n").encode())
        os.fsync(fd)
    finally:
        os.close(fd)


def _lines(path: Path) -> list[dict[str, Any]]:
    if path.is_symlink() or not path.is_file():
        return []
    records = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue  # a line cut short by the crash that the journal exists for
    return records


def read_history(root: Path) -> dict[str, Removal]:
    """Every removal recorded in `root`'s history, by path (latest wins)."""
    out: dict[str, Removal] = {}
    for rec in _lines(Path(root) / HISTORY):
        try:
            removal = Removal(**{k: rec[k] for k in Removal.__dataclass_fields__})
        except (KeyError, TypeError):
            continue
        out[removal.path] = removal
    return out


def read_journal(root: Path) -> PendingCleanup | None:
    """The interrupted cleanup in `root`, or None when no journal is there."""
    path = Path(root) / JOURNAL
    records = _lines(path)
    if not records:
        return None
    head = records[0]
    if head.get("type") != "plan":
        return None

    def paths(kind: str) -> frozenset[str]:
        return frozenset(r["path"] for r in records[1:] if r.get("type") == kind and "path" in r)

    return PendingCleanup(
        root=str(root),
        cleanup=head.get("cleanup", "?"),
        started=head.get("time", "?"),
        entries=tuple(head.get("entries", ())),
        done=paths("done"),
        begun=paths("removing"),
    )


def removed_by(path: Path) -> str | None:
    """Which cleanup removed `path`, e.g. "cleanup c-20261102-101500 at 2026-11-02T10:15:00+00:00".

    Looks in the history file of every directory above `path` (a cleanup keeps its history in
    the root it cleaned), so the caller needs only the missing path. None when no cleanup
    history knows it (it was removed some other way).
    """
    raw = os.path.abspath(os.path.expanduser(str(path)))
    wanted = {raw, os.path.realpath(raw)}
    for candidate in wanted.copy():
        parent = Path(candidate).parent
        while True:
            history = read_history(parent) if (parent / HISTORY).exists() else {}
            for key in wanted:
                if key in history:
                    return history[key].describe()
            if parent.parent == parent:
                break
            parent = parent.parent
    return None

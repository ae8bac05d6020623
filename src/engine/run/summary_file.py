"""`events.summary.json` on disk: save, load, check against the log, rebuild, open.

The summary records `offset` (the log bytes it covers), `last_seq`, and CRCs of the log's first
line and of the line ending at `offset`. A reader that finds the log shorter than `offset`, or
either line different, does not trust the summary: it rebuilds it from the log and says so
(`open_summary`). What the summary holds is run/summary.py's business.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from graftline.engine.common import atomic
from graftline.engine.common.layout import EVENTS, SUMMARY
from graftline.engine.run.summary import Summary, crc

__all__ = ["Opened", "catch_up", "first_line", "line_before", "load", "open_summary", "rebuild",
           "save", "verify"]


def first_line(path: Path) -> bytes | None:
    """The log's first complete line (with its newline), or None."""
    try:
        with Path(path).open("rb") as handle:
            line = handle.readline(1 << 22)
    except FileNotFoundError:
        return None
    return line if line.endswith(b"\n") else None


def line_before(path: Path, offset: int) -> bytes | None:
    """The complete line that ends exactly at `offset` (with its newline), or None."""
    if offset <= 0:
        return None
    try:
        with Path(path).open("rb") as handle:
            start = max(0, offset - 65_536)
            while True:
                handle.seek(start)
                blob = handle.read(offset - start)
                if len(blob) != offset - start or not blob.endswith(b"\n"):
                    return None
                cut = blob.rfind(b"\n", 0, len(blob) - 1)
                if cut >= 0 or start == 0:
                    return blob[cut + 1:]
                start = max(0, start - (1 << 22))
    except FileNotFoundError:
        return None


def verify(summary: Summary, events_path: Path) -> str | None:
    """Why the summary cannot be trusted for this log, or None when it agrees with it."""
    try:
        size = Path(events_path).stat().st_size
    except FileNotFoundError:
        return "events.jsonl is missing" if summary.offset else None
    if summary.offset > size:
        return f"it covers {summary.offset:,} bytes but events.jsonl has {size:,}"
    if summary.offset == 0:
        return None
    if crc(first_line(events_path)) != summary.head_crc:
        return "events.jsonl starts differently (a replaced log)"
    if crc(line_before(events_path, summary.offset)) != summary.tail_crc:
        return f"events.jsonl differs at byte {summary.offset:,} (an edited or replaced log)"
    return None


def save(run_dir: Path, summary: Summary) -> int:
    """Replace the summary file atomically (a reader sees the old file or the new one); its size.

    No fsync: the summary is a cache of the log, and the engine's training thread should not wait
    for the disk every couple of seconds. After a power cut it may be empty or old; a reader then
    finds it corrupt or behind and rebuilds it or reads the longer tail."""
    text = summary.to_json()
    atomic.write_text(Path(run_dir) / SUMMARY, text, mode=0o600, fsync=False)
    return len(text)


def load(run_dir: Path) -> Summary:
    """The summary file as written (ValueError/OSError when missing, truncated or foreign)."""
    raw = (Path(run_dir) / SUMMARY).read_bytes()
    try:
        decoded = json.loads(raw)
    except ValueError as exc:
        raise ValueError(f"not JSON ({len(raw):,} bytes; truncated or corrupt): {exc}") from exc
    try:
        return Summary.from_dict(decoded)
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise ValueError(f"unreadable: {exc}") from exc


def catch_up(summary: Summary, events_path: Path, *, upto: int | None = None) -> list[str]:
    """Fold the log's complete lines after `summary.offset` (streamed, bounded memory)."""
    from graftline.engine.run.events import iter_rows, torn_tail

    events_path = Path(events_path)
    for rows, end, last_line in iter_rows(events_path, summary.offset, upto=upto):
        summary.extend(rows)
        summary.covered(end, last_line)
    if summary.head_crc is None and summary.offset:
        summary.head_crc = crc(first_line(events_path))
    summary.fold()
    torn = torn_tail(events_path, summary.offset) if upto is None else 0
    return [f"events.jsonl ends in an incomplete line ({torn:,} bytes) after byte "
            f"{summary.offset:,}: skipped (a writer killed mid-line, or one writing now)"
            ] if torn else []


def rebuild(events_path: Path, *, upto: int | None = None) -> tuple[Summary, list[str]]:
    """A summary folded from the log's start, in one streaming pass."""
    summary = Summary()
    return summary, catch_up(summary, events_path, upto=upto)


@dataclass
class Opened:
    summary: Summary
    notices: list[str]
    rebuilt: bool
    from_offset: int  # where the trusted summary ended and the log's tail began
    reason: str | None = None  # why it was rebuilt


def open_summary(run_dir: Path, *, tail: bool = True, write_back: bool = True) -> Opened:
    """The run's summary, checked against its log; rebuilt from the log when it is missing
    (quietly: an older run, or an engine before its first save) or corrupt or disagrees (with a
    notice). `tail`: also fold the log after its offset.
    `write_back`: store a rebuilt summary (best effort; a reader without write access goes on)."""
    run_dir = Path(run_dir)
    events_path = run_dir / EVENTS
    notices: list[str] = []
    reason: str | None
    missing = False
    try:
        summary = load(run_dir)
        reason = verify(summary, events_path)
    except FileNotFoundError:
        has_log = events_path.exists() and events_path.stat().st_size > 0
        summary, reason, missing = Summary(), "none yet" if has_log else None, True
    except (OSError, ValueError) as exc:
        summary, reason = Summary(), str(exc)
    rebuilt = reason is not None
    if rebuilt:
        summary = Summary()
    from_offset = summary.offset
    if rebuilt or tail:
        notices += catch_up(summary, events_path)
    if rebuilt and not missing:  # a missing one is normal (an older run, a new engine)
        notices.insert(0, f"summary {SUMMARY}: {reason}; rebuilt from {EVENTS} "
                          f"({summary.events:,} events)")
    if rebuilt and write_back and summary.offset:
        try:
            save(run_dir, summary)
        except OSError as exc:
            notices.append(f"could not store the rebuilt summary: {exc}")
    return Opened(summary, notices, rebuilt, from_offset, reason)

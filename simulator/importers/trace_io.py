"""Reading and writing traces: JSONL, one wire event per line, sorted by ts.

``read_trace`` yields raw lines (with their 1-based line numbers) rather than events, so replay
can send a bad line to its dead-letter file with the line number and the decoder's reason instead
of stopping. Files ending in ``.gz`` are read and written gzip-compressed.
"""

from __future__ import annotations

import gzip
import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import IO

from engine.events import Event, decode, encode_event

from . import TraceImportError

PathLike = str | os.PathLike[str]


def _open(path: PathLike, mode: str) -> IO[bytes]:
    p = Path(path)
    if p.suffix == ".gz":
        return gzip.open(p, mode)  # type: ignore[return-value]
    return open(p, mode)  # noqa: SIM115


def sort_events(events: Iterable[Event]) -> list[Event]:
    """Events ordered by ts; equal timestamps keep their input order (sorted() is stable)."""
    return sorted(events, key=lambda ev: ev.ts)


def write_trace(events: Iterable[Event], path: PathLike) -> int:
    """Write events, sorted by ts, as canonical JSONL. Returns the number of lines written."""
    evs = sort_events(events)
    p = Path(path)
    if p.parent and not p.parent.exists():
        p.parent.mkdir(parents=True, exist_ok=True)
    with _open(p, "wb") as fh:
        buf: list[bytes] = []
        for ev in evs:
            buf.append(encode_event(ev))
            if len(buf) >= 10_000:
                fh.write(b"\n".join(buf) + b"\n")
                buf.clear()
        if buf:
            fh.write(b"\n".join(buf) + b"\n")
    return len(evs)


def read_trace(path: PathLike) -> Iterator[tuple[int, bytes]]:
    """``(line_number, raw_line)`` for each non-blank line, without its line ending.

    Blank lines are skipped (a trailing newline is not an event); everything else is yielded as
    is, valid or not: decoding and dead-lettering are the caller's business.
    """
    try:
        fh = _open(path, "rb")
    except OSError as exc:
        raise TraceImportError(f"cannot open trace {path}: {exc.strerror or exc}") from exc
    with fh:
        for no, line in enumerate(fh, start=1):
            raw = line.rstrip(b"\r\n")
            if raw.strip():
                yield no, raw


def read_events(path: PathLike) -> list[Event]:
    """All events of a trace; the first bad line raises TraceImportError with its number."""
    from engine.errors import DecodeError

    out: list[Event] = []
    for no, raw in read_trace(path):
        try:
            out.extend(decode(raw))
        except DecodeError as exc:
            raise TraceImportError(f"{path}:{no}: {exc.reason}: {exc.detail}") from exc
    return out

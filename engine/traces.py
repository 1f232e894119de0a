"""Reading and writing traces: JSONL, one wire event per line, sorted by ts.

``read_trace`` yields raw lines (with their 1-based line numbers) rather than events, so replay
can send a bad line to its dead-letter file with the line number and the decoder's reason instead
of stopping. Files ending in ``.gz`` are read and written gzip-compressed.
"""

from __future__ import annotations

import gzip
import heapq
import itertools
import os
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import IO

import msgspec

from engine.errors import TraceImportError
from engine.events import Event, decode, encode_event

PathLike = str | os.PathLike[str]


def _open(path: PathLike, mode: str) -> IO[bytes]:
    p = Path(path)
    if p.suffix == ".gz":
        return gzip.open(p, mode)  # type: ignore[return-value]
    return open(p, mode)  # noqa: SIM115


def sort_events(events: Iterable[Event]) -> list[Event]:
    """Events ordered by ts; equal timestamps keep their input order (sorted() is stable)."""
    return sorted(events, key=lambda ev: ev.ts)


CHUNK_EVENTS = 1_000_000  # events sorted in memory at a time; larger inputs spill to temp files


class _Ts(msgspec.Struct):
    ts: float


_TS_DECODER = msgspec.json.Decoder(_Ts)


def write_trace(events: Iterable[Event], path: PathLike, *, chunk: int = CHUNK_EVENTS) -> int:
    """Write events, sorted by ts (stable), as canonical JSONL. Returns the number of lines.

    Memory stays bounded for any input size: up to ``chunk`` events are sorted in memory; beyond
    that each sorted chunk is spilled to a temporary file next to ``path`` and the chunks are
    merged (``heapq.merge`` prefers the earlier chunk on equal ts, so the sort stays stable).
    """
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    it = iter(events)
    first = sort_events(itertools.islice(it, chunk))
    rest = sort_events(itertools.islice(it, chunk))
    with _open(p, "wb") as fh:
        if not rest:  # the common case: everything fits in one chunk
            return _write_lines(fh, (encode_event(ev) for ev in first))
        with tempfile.TemporaryDirectory(prefix=".trace-sort-", dir=p.parent) as tmp:
            spills: list[Path] = []
            chunk_evs = first
            while chunk_evs:
                spill = Path(tmp) / f"{len(spills)}.jsonl"
                with open(spill, "wb") as out:
                    _write_lines(out, (encode_event(ev) for ev in chunk_evs))
                spills.append(spill)
                chunk_evs, rest = rest, sort_events(itertools.islice(it, chunk))
            files = [open(s, "rb") for s in spills]  # noqa: SIM115 (closed below)
            try:
                merged = heapq.merge(*files, key=lambda line: _TS_DECODER.decode(line).ts)
                return _write_lines(fh, (line.rstrip(b"\n") for line in merged))
            finally:
                for f in files:
                    f.close()


def _write_lines(fh: IO[bytes], lines: Iterable[bytes]) -> int:
    n = 0
    buf: list[bytes] = []
    for line in lines:
        buf.append(line)
        if len(buf) >= 10_000:
            fh.write(b"\n".join(buf) + b"\n")
            n += len(buf)
            buf.clear()
    if buf:
        fh.write(b"\n".join(buf) + b"\n")
        n += len(buf)
    return n


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

"""CSV traces: ``user,ts,lat,lon[,acc]`` -> Gps events.

* A header line is required and names the columns (any order, case-insensitive; other columns
  are ignored). Note the order in the usual header: **lat before lon**.
* ``ts``: epoch seconds, or an ISO 8601 time (``2024-05-01T12:00:00Z``; a time without an offset
  is read as UTC).
* ``acc``: metres; when the column is absent or a cell is empty, ``CSV_DEFAULT_ACC_M`` (10 m, a
  typical outdoor phone fix: traces without accuracy usually come from good GPS).
* Each value is validated like a wire event; the first bad row raises ``TraceImportError`` with
  the file, the line number and the reason.
"""

from __future__ import annotations

import csv
import math
import os
from datetime import UTC, datetime
from pathlib import Path

from engine.errors import DecodeError
from engine.events import Event, event_from_dict

from . import TraceImportError

CSV_DEFAULT_ACC_M = 10.0
REQUIRED = ("user", "ts", "lat", "lon")


def parse_time(text: str) -> float:
    """Epoch seconds from a number or an ISO 8601 string (naive = UTC). ValueError otherwise."""
    text = text.strip()
    try:
        return float(text)
    except ValueError:
        pass
    dt = datetime.fromisoformat(text.replace("Z", "+00:00").replace("z", "+00:00"))
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return dt.timestamp()


def load_csv(
    path: str | os.PathLike[str], *, default_acc: float = CSV_DEFAULT_ACC_M
) -> list[Event]:
    """Gps events from a CSV trace, in file order (``write_trace`` sorts them by ts)."""
    p = Path(path)
    try:
        fh = open(p, newline="", encoding="utf-8-sig")  # noqa: SIM115 (utf-8-sig: Excel's BOM)
    except OSError as exc:
        raise TraceImportError(f"cannot open {p}: {exc.strerror or exc}") from exc
    with fh:
        reader = csv.reader(fh)
        header = next(reader, None)
        cols = _columns(p, header)
        out: list[Event] = []
        for row in reader:
            if not row or all(not c.strip() for c in row):
                continue
            out.append(_row(p, reader.line_num, row, cols, default_acc))
    return out


def _columns(p: Path, header: list[str] | None) -> dict[str, int]:
    if header is None:
        raise TraceImportError(f"{p}: empty file; expected a header line 'user,ts,lat,lon[,acc]'")
    names = [h.strip().lower() for h in header]
    missing = [c for c in REQUIRED if c not in names]
    if missing:
        raise TraceImportError(
            f"{p}:1: the first line must be a header naming the columns user,ts,lat,lon[,acc] "
            f"(lat before lon); missing {', '.join(missing)} in {header!r}"
        )
    return {n: names.index(n) for n in (*REQUIRED, "acc") if n in names}


def _row(p: Path, line: int, row: list[str], cols: dict[str, int], default_acc: float) -> Event:
    def cell(name: str) -> str:
        i = cols[name]
        if i >= len(row):
            raise TraceImportError(
                f"{p}:{line}: missing the {name} column (row has {len(row)} cells)"
            )
        return row[i].strip()

    try:
        ts = parse_time(cell("ts"))
        lat, lon = float(cell("lat")), float(cell("lon"))
        acc_text = cell("acc") if "acc" in cols else ""
        acc = float(acc_text) if acc_text else default_acc
    except ValueError as exc:
        raise TraceImportError(f"{p}:{line}: not a number or time: {exc}") from exc
    if not all(math.isfinite(v) for v in (ts, lat, lon, acc)):
        raise TraceImportError(f"{p}:{line}: NaN or infinite value in {row!r}")
    try:
        return event_from_dict(
            {"type": "gps", "user": cell("user"), "ts": ts, "lon": lon, "lat": lat, "acc": acc}
        )
    except DecodeError as exc:
        hint = " (is lat/lon swapped? the header says which is which)" if "la" in exc.detail else ""
        raise TraceImportError(f"{p}:{line}: {exc.reason}: {exc.detail}{hint}") from exc

"""GeoLife trajectories (Microsoft Research Asia, 182 users, Beijing) -> Gps events.

A ``.plt`` file has 6 header lines, then one point per line::

    lat,lon,0,altitude_feet,days_since_1899-12-30,YYYY-MM-DD,HH:MM:SS

Times are GMT. The dataset stores no accuracy, so every fix gets ``GEOLIFE_DEFAULT_ACC_M``
(10 m: the loggers and phones of the collection were outdoor GPS). The user is the folder name in
the dataset's layout ``Data/<user>/Trajectory/<file>.plt``; for a lone file elsewhere, pass
``user=`` (else the file's parent folder name is used).
"""

from __future__ import annotations

import calendar
import os
from collections.abc import Iterator
from pathlib import Path

from engine.errors import DecodeError
from engine.events import Event, event_from_dict

from . import TraceImportError

GEOLIFE_DEFAULT_ACC_M = 10.0
HEADER_LINES = 6


def plt_files(path: str | os.PathLike[str]) -> list[Path]:
    """The .plt files at ``path`` (a file, or a directory searched recursively), sorted."""
    p = Path(path)
    if p.is_file():
        return [p]
    if not p.is_dir():
        raise TraceImportError(f"{p}: no such file or directory")
    files = sorted(p.rglob("*.plt"))
    if not files:
        raise TraceImportError(f"{p}: no .plt files found (expected Data/<user>/Trajectory/*.plt)")
    return files


def user_of(plt: Path) -> str:
    """``Data/<user>/Trajectory/x.plt`` -> ``<user>``; elsewhere the parent folder's name."""
    if plt.parent.name.lower() == "trajectory":
        return plt.parent.parent.name
    return plt.parent.name


def load_geolife(
    path: str | os.PathLike[str], *, acc: float = GEOLIFE_DEFAULT_ACC_M, user: str | None = None
) -> list[Event]:
    """Gps events from a .plt file or a GeoLife directory tree, in file order."""
    return list(iter_geolife(path, acc=acc, user=user))


def iter_geolife(
    path: str | os.PathLike[str], *, acc: float = GEOLIFE_DEFAULT_ACC_M, user: str | None = None
) -> Iterator[Event]:
    """Like ``load_geolife`` but lazy, one file at a time: the whole dataset (24.9M points) is
    several GB as objects, so stream it into ``write_trace``, whose memory is bounded."""
    for plt in plt_files(path):
        yield from iter_plt(plt, user=user or user_of(plt), acc=acc)


def iter_plt(plt: Path, *, user: str, acc: float = GEOLIFE_DEFAULT_ACC_M) -> Iterator[Event]:
    try:
        lines = plt.read_text(encoding="utf-8", errors="strict").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise TraceImportError(f"cannot read {plt}: {exc}") from exc
    if len(lines) < HEADER_LINES:
        raise TraceImportError(f"{plt}: shorter than the 6 header lines of a GeoLife .plt file")
    for no, line in enumerate(lines[HEADER_LINES:], start=HEADER_LINES + 1):
        if not line.strip():
            continue
        yield _point(plt, no, line, user, acc)


def _point(plt: Path, no: int, line: str, user: str, acc: float) -> Event:
    parts = [s.strip() for s in line.split(",")]
    if len(parts) < 7:
        raise TraceImportError(
            f"{plt}:{no}: expected 7 fields 'lat,lon,0,alt,days,date,time', got {len(parts)}"
        )
    try:
        lat, lon = float(parts[0]), float(parts[1])
        y, mo, d = (int(x) for x in parts[5].split("-"))
        h, mi, s = (int(x) for x in parts[6].split(":"))
        ts = float(calendar.timegm((y, mo, d, h, mi, s, 0, 0, 0)))
    except ValueError as exc:
        raise TraceImportError(f"{plt}:{no}: bad number, date or time in {line!r}") from exc
    try:
        return event_from_dict(
            {"type": "gps", "user": user, "ts": ts, "lon": lon, "lat": lat, "acc": acc}
        )
    except DecodeError as exc:
        raise TraceImportError(f"{plt}:{no}: {exc.reason}: {exc.detail}") from exc

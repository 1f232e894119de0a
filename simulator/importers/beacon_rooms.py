"""Real iBeacon scanner logs (../shared/data/near_field/beacon_rooms) -> catalog, trace, truth.

The data is inverted with respect to geopush's model. There, fixed *scanners* (Raspberry Pis, one
per room, ``scannerID`` like ``Room201``) log the *beacons* that people carried between rooms.
geopush expects a phone (the user) that sights beacons fixed in stores. So:

* each **scanner is a store** (``store_id`` = the scannerID), a tiny circle at an arbitrary place
  (``ORIGIN`` plus ~110 m per scanner; no GPS is involved) carrying one synthetic beacon
  ``SCANNER_UUID:major:minor`` whose major/minor come from a CRC-32 of the scannerID;
* each **beacon is a user** (``user`` = its canonical ``UUID:major:minor``);
* each scanner read becomes ``Beacon(user=<beacon>, uuid/major/minor=<scanner's beacon>, rssi)``:
  "the user's phone saw the store's beacon at this RSSI".

Records are pretty-printed JSON objects concatenated with no separator (``}{``), parsed as a
stream with ``json.JSONDecoder.raw_decode``. ``time`` is Java milliseconds (UTC). Scanner
heartbeats (``messageType`` 1: the beacon sitting on each scanner, major = room number, minor 20)
are dropped: they are the scanner reporting itself, not a visitor.

Ground truth is transcribed from the dataset's README (times there are local, PST = UTC-8 on
2015-03-03 and -07, PDT = UTC-7 from 2015-03-10; the data's first and last timestamps confirm the
offsets). A row ``{"user", "store_id", "start", "end", "run"}`` says the beacon was in that room
for the whole interval (epoch seconds). Rows are clipped to the time the room's scanner was
logging (first to last record of that scanner in the run): on 2015-03-31 three of the six
scanners stopped early, and a room nobody listens to cannot be scored. Moves leave gaps: the README gives, for each move, the
time the author left his desk and the time he came back, so a beacon is in its old room until the
first and in its new room from the second. Where the README gives only one time per move
(2015-03-31) the beacon is taken to arrive ``TRANSIT_S`` after it. Beacons whose path the README
does not time (beacon 1 on 2015-03-03; the groups G1..G15 and beacons 81 and 154 on 2015-03-31,
whose members or moves are not stated), and the runs without a timeline (Beacon5 runs, 2015-03-13,
2015-05-11), get no truth. Where the README contradicts itself (a move "from" a room the beacon
was not in) the interval before that move is dropped rather than guessed. In the 03-07 and 03-10
runs the README's beacon numbers (1, 2, 5, 6, 7, 8) are the ``minor`` values of the beacons with
UUID DAF246CE-8363-...; the README says "major" for 03-07, but the data shows they are minors.
"""

from __future__ import annotations

import calendar
import gzip
import json
import os
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from engine.events import Beacon, Event, encode_event
from engine.traces import sort_events, write_trace
from fences.store import beacon_key

from . import TraceImportError

SCANNER_UUID = "BEAC0000-5CA7-4E00-8000-000000000000"  # synthetic: the stores' beacons
MERCHANT_ID = "beacon-rooms"
ORIGIN = (0.0, 0.0)  # arbitrary: the rooms have no known position
SPACING_DEG = 0.001  # ~110 m between scanner stores along the equator
STORE_RADIUS_M = 5.0
HEARTBEAT = 1
TRANSIT_S = 120.0  # assumed carrying time when the README gives a single time per move
MOVING_UUID = "DAF246CE-8363-11E4-B116-123B93F75CBA"  # the README's numbered beacons


def scanner_beacon(scanner_id: str) -> tuple[int, int]:
    """The synthetic (major, minor) registered on a scanner's store: CRC-32 of its id."""
    crc = zlib.crc32(scanner_id.encode("utf-8"))
    return crc >> 16, crc & 0xFFFF


def canonical_uuid(uuid: str) -> str:
    u = uuid.strip().upper().replace("-", "")
    if len(u) != 32:
        return uuid.strip().upper()
    return f"{u[:8]}-{u[8:12]}-{u[12:16]}-{u[16:20]}-{u[20:]}"


def beacon_user(uuid: str, major: int, minor: int) -> str:
    """The user id of a physical beacon: its canonical ``UUID:major:minor``."""
    return beacon_key(canonical_uuid(uuid), major, minor)


# --- parsing ------------------------------------------------------------------------------------


def data_files(path: str | os.PathLike[str]) -> list[Path]:
    p = Path(path)
    if p.is_file():
        return [p]
    if not p.is_dir():
        raise TraceImportError(f"{p}: no such file or directory")
    files = sorted([*p.glob("*.json.gz"), *p.glob("*.json")])
    if not files:
        raise TraceImportError(f"{p}: no *.json.gz scanner logs found")
    return files


def iter_records(file: Path) -> Iterator[dict[str, Any]]:
    """The JSON objects of one log, concatenated with or without whitespace between them."""
    try:
        raw = gzip.decompress(file.read_bytes()) if file.suffix == ".gz" else file.read_bytes()
        text = raw.decode("utf-8")
    except (OSError, EOFError, UnicodeDecodeError) as exc:
        raise TraceImportError(f"cannot read {file}: {exc}") from exc
    dec = json.JSONDecoder()
    i, n = 0, len(text)
    while True:
        while i < n and text[i] in " \t\r\n":
            i += 1
        if i >= n:
            return
        try:
            obj, i = dec.raw_decode(text, i)
        except json.JSONDecodeError as exc:
            line = text.count("\n", 0, exc.pos) + 1
            raise TraceImportError(f"{file}:{line}: not a JSON object stream: {exc.msg}") from exc
        if not isinstance(obj, dict):
            line = text.count("\n", 0, i) + 1
            raise TraceImportError(f"{file}:{line}: expected a JSON object, got {obj!r:.40}")
        yield obj


def run_name(file: Path) -> str:
    name = file.name
    for ext in (".json.gz", ".json"):
        if name.endswith(ext):
            return name[: -len(ext)]
    return name


def _sighting(file: Path, k: int, rec: dict[str, Any]) -> tuple[str, Beacon] | None:
    try:
        if rec.get("messageType", 0) == HEARTBEAT:
            return None
        scanner = str(rec["scannerID"])
        major, minor = scanner_beacon(scanner)
        rssi = float(rec["rssi"])
        ts = float(rec["time"]) / 1000.0
        user = beacon_user(str(rec["uuid"]), int(rec["major"]), int(rec["minor"]))
    except (KeyError, TypeError, ValueError) as exc:
        raise TraceImportError(
            f"{file}: record {k}: missing or bad field {exc}: {rec!r:.200}"
        ) from exc
    if not (-150.0 <= rssi <= 0.0 and 0.0 < ts < 4102444800.0):
        raise TraceImportError(f"{file}: record {k}: rssi or time out of range: {rec!r:.200}")
    return scanner, Beacon(user, ts, SCANNER_UUID, major, minor, rssi)


# --- ground truth (transcribed from the README) -------------------------------------------------


@dataclass(frozen=True)
class Timeline:
    """One run's documented movements. Times are local ``HH:MM:SS`` on ``date``."""

    run: str
    date: str  # YYYY-MM-DD
    utc_offset_h: int  # PST -8, PDT -7
    start: str
    end: str
    initial: dict[int, int]  # beacon number -> room
    # (leave, arrive or None for leave + TRANSIT_S, {beacon: (from room or None, to room)})
    moves: list[tuple[str, str | None, dict[int, tuple[int | None, int]]]] = field(
        default_factory=list
    )
    ident: str = "minor"  # the beacon number is the minor of a MOVING_UUID beacon

    def epoch(self, hms: str) -> float:
        y, mo, d = (int(x) for x in self.date.split("-"))
        h, mi, s = (int(x) for x in hms.split(":"))
        return float(calendar.timegm((y, mo, d, h, mi, s, 0, 0, 0)) - self.utc_offset_h * 3600)


def _to(rooms: dict[int, int]) -> dict[int, tuple[int | None, int]]:
    return {b: (None, r) for b, r in rooms.items()}


_FOUR = {1: 201, 2: 201, 5: 201, 6: 201, 7: 201, 8: 201}
TIMELINES: dict[str, Timeline] = {
    t.run: t
    for t in [
        # "Beacon 2 remained in Room201 ... Beacon 3 on top of the Room201 scanner ... Beacon 4 on
        # top of the Room202 scanner the entire time" (13:16:10 to 13:42:30 PST). Beacon 1 moved
        # at undocumented times: no truth.
        Timeline("TwoScannersRun#1-2015-03-03", "2015-03-03", -8, "13:16:10", "13:42:30", {2: 201, 3: 201, 4: 202}),
        Timeline(
            "FourScannersRun#1-2015-03-07", "2015-03-07", -8, "11:46:11", "11:58:43", dict(_FOUR),
            [
                ("11:46:26", "11:47:24", _to({1: 204, 2: 204})),
                ("11:48:23", "11:49:40", _to({5: 202, 6: 202})),
                ("11:50:05", "11:51:32", _to({7: 203, 8: 203})),
                ("11:52:16", "11:53:39", _to({1: 201, 5: 201})),  # 1 via 202 to fetch 5
                ("11:54:48", "11:55:45", _to({2: 201})),
                ("11:55:53", "11:56:54", _to({7: 201})),
                ("11:57:06", "11:58:20", _to({6: 201, 8: 201})),  # 6 via 203 to fetch 8
            ],
        ),
        Timeline(
            "FourScannersRun1-2015-03-10", "2015-03-10", -7, "12:41:59", "12:59:00", dict(_FOUR),
            [
                ("12:42:10", "12:43:14", _to({1: 204, 2: 204})),
                ("12:44:02", "12:45:04", _to({5: 202, 6: 202})),
                ("12:45:44", "12:46:59", _to({7: 203, 8: 203})),
                ("12:50:56", "12:52:18", _to({1: 201, 5: 201})),
                ("12:52:30", "12:53:28", _to({2: 201})),
                ("12:53:39", "12:54:50", _to({7: 201})),
                ("12:55:08", "12:56:45", _to({6: 201, 8: 201})),
            ],
        ),
        # Individually numbered beacons only (groups' members are not listed; 81 made round trips
        # at undocumented times; 154 was "put on dog").
        Timeline(
            "SixScannersRun-2015-03-31", "2015-03-31", -7, "15:01:12", "16:11:07",
            {69: 201, 98: 201, 159: 202, 66: 205, 61: 206, 130: 206},
            [
                ("15:02:07", None, {98: (201, 204), 66: (205, 201)}),
                ("15:08:04", None, {69: (201, 203)}),
                ("15:11:12", None, {130: (206, 201)}),
                ("15:14:19", None, {66: (201, 202), 98: (204, 201)}),
                ("15:16:12", None, {130: (201, 205), 66: (202, 201)}),
                ("15:19:13", None, {66: (201, 205), 159: (204, 201)}),  # 159 was in 202
                ("15:22:04", None, {98: (201, 202)}),
                ("15:30:34", None, {159: (201, 206), 61: (206, 201)}),
                ("15:33:46", None, {61: (201, 204)}),
                ("15:35:59", None, {69: (203, 201)}),
                ("15:40:55", None, {66: (205, 201)}),
                ("15:42:14", None, {159: (206, 201), 69: (201, 206)}),
                ("15:44:30", None, {66: (201, 203)}),
                ("15:47:41", None, {159: (201, 205)}),
                ("15:53:23", None, {130: (204, 201)}),  # 130 was in 205
                ("15:58:03", None, {98: (202, 201)}),
                ("15:59:33", None, {69: (206, 201)}),
                ("16:01:37", None, {61: (204, 201)}),
                ("16:04:02", None, {66: (203, 201)}),
                ("16:05:51", None, {159: (205, 201)}),
            ],
        ),
    ]
}  # fmt: skip


def timeline_truth(t: Timeline, users: dict[int, str]) -> list[dict[str, Any]]:
    """Stay intervals from a timeline; ``users`` maps beacon numbers to user ids."""
    rows: list[dict[str, Any]] = []
    room: dict[int, int | None] = dict(t.initial)
    since = {b: t.epoch(t.start) for b in t.initial}

    def stay(b: int, until: float) -> None:
        r = room[b]
        if r is not None and b in users and until > since[b]:
            rows.append(
                {
                    "user": users[b],
                    "store_id": f"Room{r}",
                    "start": since[b],
                    "end": until,
                    "run": t.run,
                }
            )

    for leave, arrive, moved in t.moves:
        t_leave = t.epoch(leave)
        t_arrive = t.epoch(arrive) if arrive else t_leave + TRANSIT_S
        for b, (src, dst) in moved.items():
            if src is not None and src != room[b]:
                room[b] = None  # the README contradicts itself: no claim before this move
            stay(b, t_leave)
            room[b], since[b] = dst, t_arrive
    for b in t.initial:
        stay(b, t.epoch(t.end))
    rows.sort(key=lambda r: (r["start"], r["user"]))
    return rows


def clip_to_uptime(
    rows: list[dict[str, Any]], uptime: dict[str, list[float]]
) -> list[dict[str, Any]]:
    """Truth only while the room's scanner was logging: a stopped scanner sees nobody (on
    2015-03-31 the Room201 and Room205 scanners stopped within two minutes and Room202 after
    21 minutes, long before the documented moves ended)."""
    out = []
    for r in rows:
        span = uptime.get(r["store_id"])
        if span is None:
            continue
        start, end = max(r["start"], span[0]), min(r["end"], span[1])
        if end > start:
            out.append({**r, "start": start, "end": end})
    return out


def _numbered_users(run: str, seen: set[tuple[str, int, int]]) -> dict[int, str]:
    """Beacon number -> user id, from the MOVING_UUID beacons seen in the run (number = minor)."""
    majors: dict[int, set[int]] = {}
    for uuid, major, minor in seen:
        if canonical_uuid(uuid) == MOVING_UUID:
            majors.setdefault(minor, set()).add(major)
    out = {}
    for number, ms in majors.items():
        if len(ms) != 1:
            raise TraceImportError(
                f"{run}: beacon number {number} is ambiguous (majors {sorted(ms)})"
            )
        out[number] = beacon_user(MOVING_UUID, next(iter(ms)), number)
    return out


# --- the importer -------------------------------------------------------------------------------


def catalog_features(scanners: list[str]) -> dict[str, Any]:
    """A store catalog (GeoJSON FeatureCollection): one tiny circle per scanner."""
    ids: dict[tuple[int, int], str] = {}
    feats = []
    for k, sid in enumerate(sorted(scanners)):
        major, minor = scanner_beacon(sid)
        if (major, minor) in ids:
            raise TraceImportError(
                f"scanners {ids[(major, minor)]!r} and {sid!r} share a beacon id"
            )
        ids[(major, minor)] = sid
        feats.append(
            {
                "type": "Feature",
                "geometry": {
                    "type": "Point",
                    "coordinates": [ORIGIN[0] + k * SPACING_DEG, ORIGIN[1]],
                },
                "properties": {
                    "store_id": sid,
                    "merchant_id": MERCHANT_ID,
                    "name": f"{sid} scanner",
                    "radius_m": STORE_RADIUS_M,
                    "beacons": [beacon_key(SCANNER_UUID, major, minor)],
                },
            }
        )
    return {"type": "FeatureCollection", "features": feats}


def load_beacon_rooms(
    path: str | os.PathLike[str],
) -> tuple[dict[str, Any], list[Event], list[dict[str, Any]]]:
    """(catalog FeatureCollection, Beacon events sorted by ts, truth rows) for a log or a folder."""
    scanners: set[str] = set()
    events: list[Event] = []
    truth: list[dict[str, Any]] = []
    for file in data_files(path):
        run = run_name(file)
        seen: set[tuple[str, int, int]] = set()
        uptime: dict[str, list[float]] = {}  # scanner -> [first, last] record time, heartbeats too
        for k, rec in enumerate(iter_records(file)):
            got = _sighting(file, k, rec)
            if got is None:
                continue
            scanner, ev = got
            scanners.add(scanner)
            events.append(ev)
            span = uptime.setdefault(scanner, [ev.ts, ev.ts])
            span[0], span[1] = min(span[0], ev.ts), max(span[1], ev.ts)
            seen.add((str(rec["uuid"]), int(rec["major"]), int(rec["minor"])))
        tl = TIMELINES.get(run)
        if tl is not None:
            rows = timeline_truth(tl, _numbered_users(run, seen))
            truth.extend(clip_to_uptime(rows, uptime))
    truth.sort(key=lambda r: (r["start"], r["user"]))
    return catalog_features(sorted(scanners)), sort_events(events), truth


def write_beacon_rooms(
    path: str | os.PathLike[str], out_dir: str | os.PathLike[str]
) -> dict[str, int]:
    """Write OUT/stores.geojson, OUT/trace.jsonl and OUT/truth.jsonl; returns counts."""
    catalog, events, truth = load_beacon_rooms(path)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "stores.geojson").write_text(json.dumps(catalog, indent=1) + "\n", encoding="utf-8")
    n = write_trace(events, out / "trace.jsonl")
    with open(out / "truth.jsonl", "w", encoding="utf-8") as fh:
        for row in truth:
            fh.write(json.dumps(row, separators=(",", ":")) + "\n")
    return {"stores": len(catalog["features"]), "events": n, "truth": len(truth)}


__all__ = ["encode_event", "load_beacon_rooms", "write_beacon_rooms"]

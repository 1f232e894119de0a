"""Trace importers: small fixtures written here, and the real beacon_rooms logs."""

from __future__ import annotations

import collections
import gzip
import json
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from engine.events import Beacon, Gps, Wifi, decode, encode_event
from engine.traces import read_events, read_trace, write_trace
from fences.catalog import parse_catalog
from simulator.importers import TraceImportError
from simulator.importers.beacon_rooms import (
    SCANNER_UUID,
    TIMELINES,
    beacon_user,
    iter_records,
    load_beacon_rooms,
    scanner_beacon,
    timeline_truth,
    write_beacon_rooms,
)
from simulator.importers.csv_trace import CSV_DEFAULT_ACC_M, load_csv
from simulator.importers.geolife import GEOLIFE_DEFAULT_ACC_M, load_geolife
from simulator.importers.owntracks import load_owntracks

# --- trace_io ------------------------------------------------------------------------------------


def test_write_trace_sorts_stably_and_is_canonical(tmp_path: Path) -> None:
    evs = [
        Gps("b", 20.0, 1.0, 2.0, 3.0),
        Gps("a", 10.0, 1.0, 2.0, 3.0),
        Wifi("c", 20.0, []),  # same ts as the first: keeps input order after it
        Gps("d", 5.0, 1.0, 2.0, 3.0),
    ]
    path = tmp_path / "t.jsonl"
    assert write_trace(evs, path) == 4
    lines = path.read_bytes().splitlines()
    assert lines == [encode_event(e) for e in (evs[3], evs[1], evs[0], evs[2])]
    assert [n for n, _ in read_trace(path)] == [1, 2, 3, 4]
    assert read_events(path) == [evs[3], evs[1], evs[0], evs[2]]


def test_read_trace_yields_bad_lines_with_numbers(tmp_path: Path) -> None:
    path = tmp_path / "t.jsonl"
    good = encode_event(Gps("a", 1.0, 1.0, 2.0, 3.0))
    path.write_bytes(good + b"\n\n{bad json\r\n" + good + b"\n")
    assert list(read_trace(path)) == [(1, good), (3, b"{bad json"), (4, good)]
    with pytest.raises(TraceImportError, match=r"t.jsonl:3: malformed_json"):
        read_events(path)


def test_trace_gzip_round_trip(tmp_path: Path) -> None:
    evs = [Gps("a", float(i + 1), 1.0, 2.0, 3.0) for i in range(5)]
    path = tmp_path / "t.jsonl.gz"
    write_trace(evs, path)
    assert gzip.decompress(path.read_bytes()).count(b"\n") == 5
    assert read_events(path) == evs


# --- CSV -----------------------------------------------------------------------------------------


def test_csv(tmp_path: Path) -> None:
    path = tmp_path / "t.csv"
    path.write_text(
        "user,ts,lat,lon,acc\n"
        "alice,1700000000,60.17,24.94,8\n"
        "bob,2024-05-01T12:00:00Z,60.18,24.95,\n"
        "\n"
        "carol, 1700000001.5 , -33.9 , 151.2 ,25.5\n"
    )
    evs = load_csv(path)
    assert evs == [
        Gps("alice", 1700000000.0, 24.94, 60.17, 8.0),  # lat before lon in the CSV
        Gps("bob", 1714564800.0, 24.95, 60.18, CSV_DEFAULT_ACC_M),
        Gps("carol", 1700000001.5, 151.2, -33.9, 25.5),
    ]


def test_csv_columns_by_name_without_acc(tmp_path: Path) -> None:
    path = tmp_path / "t.csv"
    path.write_text("lon,lat,ts,user,note\n24.9,60.1,1700000000,u,hello\n")
    assert load_csv(path, default_acc=30.0) == [Gps("u", 1700000000.0, 24.9, 60.1, 30.0)]


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("", "empty file"),
        ("alice,1700000000,60.1,24.9\n", r":1: the first line must be a header"),
        ("user,ts,lat,lon\nu,1700000000,60.1,24.9\nu,yesterday,60.1,24.9\n", r":3: not a number"),
        ("user,ts,lat,lon\nu,1700000000,95,24.9\n", r":2: out_of_range: lat.*swapped"),
        ("user,ts,lat,lon\nu,1700000000000,60,24.9\n", r":2: out_of_range: ts.*milliseconds"),
        ("user,ts,lat,lon\nu,1700000000,60\n", r":2: missing the lon column"),
        ("user,ts,lat,lon,acc\nu,1700000000,60,24,nan\n", r":2: NaN"),
        ("user,ts,lat,lon\n,1700000000,60,24\n", r":2: invalid_field: user"),
    ],
)
def test_csv_errors(tmp_path: Path, text: str, match: str) -> None:
    path = tmp_path / "t.csv"
    path.write_text(text)
    with pytest.raises(TraceImportError, match=match):
        load_csv(path)


# --- GeoLife -------------------------------------------------------------------------------------

PLT_HEADER = "Geolife trajectory\nWGS 84\nAltitude is in Feet\nReserved 3\n0,2,255,My Track,0,0,2,8421376\n0\n"


def _plt(points: list[str]) -> str:
    return PLT_HEADER + "".join(p + "\n" for p in points)


def test_geolife_tree(tmp_path: Path) -> None:
    for user, name, pts in [
        ("000", "20081023025304.plt", ["39.984702,116.318417,0,492,39744.1201851852,2008-10-23,02:53:04",
                                        "39.984683,116.31845,0,492,39744.1202546296,2008-10-23,02:53:10"]),
        ("010", "20081024000000.plt", ["40.0,116.3,0,-777,39745.0,2008-10-24,00:00:00"]),
    ]:  # fmt: skip
        d = tmp_path / "Data" / user / "Trajectory"
        d.mkdir(parents=True)
        (d / name).write_text(_plt(pts))
    evs = load_geolife(tmp_path / "Data")
    assert evs == [
        Gps("000", 1224730384.0, 116.318417, 39.984702, GEOLIFE_DEFAULT_ACC_M),
        Gps("000", 1224730390.0, 116.31845, 39.984683, GEOLIFE_DEFAULT_ACC_M),
        Gps("010", 1224806400.0, 116.3, 40.0, GEOLIFE_DEFAULT_ACC_M),
    ]
    # one file, accuracy and user overridden
    one = tmp_path / "Data" / "010" / "Trajectory" / "20081024000000.plt"
    assert load_geolife(one, acc=25.0, user="zed") == [Gps("zed", 1224806400.0, 116.3, 40.0, 25.0)]


@pytest.mark.parametrize(
    ("body", "match"),
    [
        ("only\nthree\nlines\n", "shorter than the 6 header lines"),
        (_plt(["39.9,116.3,0,492,39744.12"]), r":7: expected 7 fields"),
        (
            _plt(
                [
                    "39.9,116.3,0,492,39744.12,2008-10-23,02:53:04",
                    "x,116.3,0,492,1,2008-10-23,02:53:04",
                ]
            ),
            r":8: bad number",
        ),
        (_plt(["39.9,196.3,0,492,39744.12,2008-10-23,02:53:04"]), r":7: out_of_range: lon"),
    ],
)
def test_geolife_errors(tmp_path: Path, body: str, match: str) -> None:
    path = tmp_path / "x.plt"
    path.write_text(body)
    with pytest.raises(TraceImportError, match=match):
        load_geolife(path)


def test_geolife_empty_dir(tmp_path: Path) -> None:
    with pytest.raises(TraceImportError, match="no .plt files"):
        load_geolife(tmp_path)


# --- OwnTracks -----------------------------------------------------------------------------------


def test_owntracks_fixtures_dir(shared_data: Path, tmp_path: Path) -> None:
    """Every fixture through the file importer: location-less types are skipped and counted."""
    d = shared_data / "formats" / "owntracks"
    stats: Counter[str] = Counter()
    got: dict[str, list[str]] = {}
    for f in sorted(d.glob("*.json")):
        try:
            got[f.name] = [type(e).__name__ for e in load_owntracks(f, user="user", stats=stats)]
        except TraceImportError as exc:
            got[f.name] = [str(exc).split(": ")[1]]
    assert got["location_multiple_messages.json"] == ["Gps", "Gps"]
    assert got["location_with_created_at.json"] == ["Gps", "Wifi"]
    assert got["cmd_status.json"] == []
    assert got["encrypted_message.json"] == ["unsupported_encrypted"]
    assert got["location_empty.json"] == ["missing_field"]
    assert stats["ignored_type"] == 10  # 3 card, 5 cmd, configuration, waypoint
    assert stats["messages"] == 11  # location and transition messages decoded (one file holds 2)


def test_owntracks_jsonl_and_recorder(tmp_path: Path) -> None:
    msgs = [
        {"_type": "location", "tst": 1700000000, "lat": 60.1, "lon": 24.9, "acc": 5, "topic": "owntracks/ann/ph"},
        {"_type": "lwt", "tst": 1700000001},
        {"_type": "location", "tst": "1700000002000", "lat": "60.2", "lon": "24.8", "topic": "owntracks/bob/tab"},
    ]  # fmt: skip
    jl = tmp_path / "m.jsonl"
    jl.write_text("\n".join(json.dumps(m) for m in msgs) + "\n")
    stats: Counter[str] = Counter()
    evs = load_owntracks(jl, stats=stats)
    assert [(e.user, e.ts) for e in evs] == [("ann", 1700000000.0), ("bob", 1700000002.0)]
    assert stats["ignored_type"] == 1
    rec = tmp_path / "2023-11.rec"
    rec.write_text(
        "".join(f"2023-11-14T22:13:20Z\t*                 \t{json.dumps(m)}\n" for m in msgs[:2])
    )
    assert load_owntracks(rec, user="ann") == [evs[0]]
    rec.write_text(
        "".join(f"2023-11-14T22:13:20Z\t*                 \t{json.dumps(m)}\n" for m in msgs)
    )
    with pytest.raises(TraceImportError, match=r"rec:3: wrong_user"):
        load_owntracks(rec, user="ann")  # the second location's topic names bob


def test_owntracks_errors(tmp_path: Path) -> None:
    p = tmp_path / "m.jsonl"
    p.write_text('{"_type":"location","tst":1700000000,"lat":1,"lon":1}\nnot json\n')
    with pytest.raises(TraceImportError, match=r"m.jsonl:2: not JSON"):
        load_owntracks(p, user="u")
    p.write_text('{"_type":"location","tst":1700000000,"lat":1,"lon":1}\n')
    with pytest.raises(TraceImportError, match="pass user="):
        load_owntracks(p)


# --- beacon_rooms: synthetic -----------------------------------------------------------------------


def _rec(
    scanner: str, minor: int, rssi: int, t_ms: int, mt: int = 0, major: int = 0
) -> dict[str, Any]:
    return {"scannerID": scanner, "uuid": "DAF246CE836311E4B116123B93F75CBA", "code": 533, "major": major,
            "minor": minor, "rssi": rssi, "time": t_ms, "messageType": mt}  # fmt: skip


def test_beacon_rooms_stream_and_inversion(tmp_path: Path) -> None:
    recs = [_rec("Room202", 5, -60, 1425757600000), _rec("Room201", 20, -40, 1425757599000, mt=1, major=201),
            _rec("Room201", 5, -80, 1425757590500)]  # fmt: skip
    text = "".join(json.dumps(r, indent=2) for r in recs)  # "}{" with no separator, as upstream
    f = tmp_path / "Mini-2015-03-07.json.gz"
    f.write_bytes(gzip.compress(text.encode()))
    assert [r["time"] for r in iter_records(f)] == [r["time"] for r in recs]
    catalog, events, truth = load_beacon_rooms(f)
    user = "DAF246CE-8363-11E4-B116-123B93F75CBA:0:5"
    assert user == beacon_user("daf246ce836311e4b116123b93f75cba", 0, 5)
    m201, n201 = scanner_beacon("Room201")
    m202, n202 = scanner_beacon("Room202")
    # heartbeat dropped; sorted by time; the beacon is the user, the scanner's beacon is sighted
    assert events == [Beacon(user, 1425757590.5, SCANNER_UUID, m201, n201, -80.0),
                      Beacon(user, 1425757600.0, SCANNER_UUID, m202, n202, -60.0)]  # fmt: skip
    assert truth == []  # no documented timeline for this run
    cat = parse_catalog(catalog)  # the catalog is valid for the fences loader
    assert cat.by_beacon(SCANNER_UUID, m202, n202) == cat.slot("Room202")
    for ev in events:
        assert decode(encode_event(ev)) == [ev]


def test_beacon_rooms_bad_stream(tmp_path: Path) -> None:
    f = tmp_path / "bad.json"
    f.write_text(json.dumps(_rec("Room201", 1, -50, 1)) + '\n{"scannerID": ')
    with pytest.raises(TraceImportError, match=r"bad.json:2: not a JSON object stream"):
        load_beacon_rooms(f)
    f.write_text(json.dumps({"scannerID": "Room201"}))
    with pytest.raises(TraceImportError, match="missing or bad field"):
        load_beacon_rooms(f)


def test_timeline_truth_intervals_and_contradictions() -> None:
    t = TIMELINES["FourScannersRun#1-2015-03-07"]
    users = {n: f"b{n}" for n in (1, 2, 5, 6, 7, 8)}
    rows = timeline_truth(t, users)
    b1 = [(r["store_id"], r["start"], r["end"]) for r in rows if r["user"] == "b1"]
    start, end = t.epoch("11:46:11"), t.epoch("11:58:43")
    assert start == 1425757571.0  # 11:46:11 PST = 19:46:11 UTC
    assert b1 == [
        ("Room201", start, t.epoch("11:46:26")),
        ("Room204", t.epoch("11:47:24"), t.epoch("11:52:16")),
        ("Room201", t.epoch("11:53:39"), end),
    ]
    six = TIMELINES["SixScannersRun-2015-03-31"]
    rows = timeline_truth(six, {159: "b159", 130: "b130"})
    # 159 started in 202 but "moved from 204" at 15:19:13: the first stay is dropped, not guessed
    first159 = min((r for r in rows if r["user"] == "b159"), key=lambda r: r["start"])
    assert first159["start"] > six.epoch("15:19:13")
    assert all(r["end"] > r["start"] for r in rows)


# --- beacon_rooms: the real logs ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def real(shared_data: Path) -> tuple[dict[str, Any], list[Any], list[dict[str, Any]]]:
    return load_beacon_rooms(shared_data / "near_field" / "beacon_rooms")


def test_real_beacon_rooms_shape(
    real: tuple[dict[str, Any], list[Any], list[dict[str, Any]]],
) -> None:
    catalog, events, truth = real
    stores = {f["properties"]["store_id"] for f in catalog["features"]}
    assert stores == {
        "General",
        "Generalx",
        "Room201",
        "Room202",
        "Room202x",
        "Room203",
        "Room204",
        "Room205",
        "Room206",
    }
    assert len(parse_catalog(catalog)) == 9
    assert len(events) > 390_000
    assert all(isinstance(e, Beacon) for e in events)
    assert [e.ts for e in events] == sorted(e.ts for e in events)
    runs = Counter(r["run"] for r in truth)
    assert set(runs) == set(TIMELINES)
    assert runs["FourScannersRun#1-2015-03-07"] == 18 and runs["FourScannersRun1-2015-03-10"] == 18
    assert runs["TwoScannersRun#1-2015-03-03"] == 3


def test_real_truth_agrees_with_the_strongest_scanner(
    real: tuple[dict[str, Any], list[Any], list[dict[str, Any]]],
) -> None:
    """Oracle for the transcription (times, time zones, beacon numbering): in each documented
    stay, the scanner hearing the beacon loudest (per 15 s window) is the documented room's."""
    catalog, events, truth = real
    room_of = {
        scanner_beacon(f["properties"]["store_id"]): f["properties"]["store_id"]
        for f in catalog["features"]
    }
    by_user: dict[str, list[Any]] = collections.defaultdict(list)
    for ev in events:
        by_user[ev.user].append(ev)
    agree = total = 0
    for r in truth:
        windows: dict[int, dict[str, float]] = collections.defaultdict(dict)
        for ev in by_user[r["user"]]:
            if r["start"] <= ev.ts < r["end"]:
                room = room_of[(ev.major, ev.minor)]
                w = windows[int(ev.ts // 15)]
                w[room] = max(w.get(room, -999.0), ev.rssi)
        for w in windows.values():
            total += 1
            agree += max(w, key=lambda k: w[k]) == r["store_id"]
    assert total > 1400
    assert agree / total > 0.99


def test_write_beacon_rooms(shared_data: Path, tmp_path: Path) -> None:
    src = shared_data / "near_field" / "beacon_rooms" / "FourScannersRun#1-2015-03-07.json.gz"
    counts = write_beacon_rooms(src, tmp_path)
    assert counts["stores"] == 4 and counts["truth"] == 18
    assert counts["events"] == sum(1 for _ in read_trace(tmp_path / "trace.jsonl"))
    rows = [json.loads(x) for x in (tmp_path / "truth.jsonl").read_text().splitlines()]
    assert {r["store_id"] for r in rows} == {"Room201", "Room202", "Room203", "Room204"}
    assert set(rows[0]) == {"user", "store_id", "start", "end", "run"}
    parse_catalog(json.loads((tmp_path / "stores.geojson").read_text()))
    assert read_events(tmp_path / "trace.jsonl")[0].uuid == SCANNER_UUID


def test_write_trace_spills_and_merges_stably(tmp_path: Path) -> None:
    """Chunked external sort equals the in-memory stable sort (ties keep input order)."""
    import random

    rnd = random.Random(7)
    evs = [Gps(f"u{i}", float(rnd.randint(1, 40)), 1.0, 2.0, 3.0) for i in range(1000)]
    small, big = tmp_path / "small.jsonl", tmp_path / "big.jsonl"
    assert write_trace(iter(evs), small, chunk=37) == 1000
    assert write_trace(evs, big) == 1000
    assert small.read_bytes() == big.read_bytes()
    assert read_events(small) == sorted(evs, key=lambda e: e.ts)
    assert {p.name for p in tmp_path.iterdir()} == {"small.jsonl", "big.jsonl"}  # spills removed

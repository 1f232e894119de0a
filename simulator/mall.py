"""Import the real mall survey (../shared/data/near_field/mall) as catalog, trace and truth.

The data (Microsoft Indoor Location Competition 2.0 sample, site 1 = a Hangzhou mall, floor F1):
``ilc20_site1_F1_wifi_beacon_waypoints.tsv.gz`` holds 106 survey walks, each a phone carried
through the mall: ``TYPE_WAYPOINT`` rows (ground-truth x, y in metres on the floor plan),
``TYPE_WIFI`` rows (ssid, bssid, rssi, frequency, last-seen ms) and ``TYPE_BEACON`` rows (uuid,
major, minor, tx power, rssi, distance, mac). ``site1_floormaps/F1/geojson_map.json`` holds the
floor outline (first feature) and the store polygons in degrees; ``floor_info.json`` the floor
size in metres.

Metres to degrees: the floor plan's metre frame is the floor outline's bounding box, x east from
its west edge and y north from its south edge. Checked: the box measures 239.55 x 176.24 m on the
sphere against floor_info's 239.82 x 176.44 m (0.1%), every one of the 742 waypoints falls on the
floor this way round and only 525 with y flipped. So positions map to lon/lat consistently; but
the survey has no phone GPS, and a waypoint is ground truth, so the trace carries no Gps events
unless ``gps_acc`` is given (then each waypoint becomes a fix with that accuracy: a labelled
"what if GPS were this good indoors" variant, not a measurement).

Stores: every named polygon except the mall's own areas (corridor/decoration ``fuzhumian``, closed
areas ``feikaifangquyu``, washroom surrounds, rest areas ``xiuxiqu`` and vacant units ``kongpu``).
``store_id`` = the polygon's id, ``merchant_id`` = its name (brands with two units share one).

Ground truth: the surveyors walked the corridors: no waypoint lies inside a store polygon
(median 1.3 m from the nearest one). "In the store" therefore means "at its shopfront": the
phone's position (linear between consecutive waypoints, as the competition defines walks) within
``AT_STORE_M`` (3 m) of a store polygon, the nearest one winning. Positions sampled every second
give, per walk, runs at one store: the truth stays.

Registration (what a merchant's survey would register), one rule for APs and beacons: take every
scan made at a store (by the rule above); for each AP (beacon id), the mean RSSI per store over
the scans that heard it there (at least ``MIN_SCANS``); register it to the store with the
strongest mean when that mean is at least ``AP_MIN_DBM`` (-70 dBm; beacons ``BEACON_MIN_DBM``
-85) and beats the runner-up store by ``MARGIN_DB`` (5 dB). Mall-wide APs and the shared beacon
id heard everywhere fail the margin and stay unregistered. Caveat: registration and scoring use
the same walks, so figures are optimistic for a real deployment.

WiFi rows whose last-seen time is more than ``STALE_S`` (10 s) before the scan are cached results
from earlier scans and are dropped.
"""

from __future__ import annotations

import gzip
import json
import os
import re
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from engine.errors import GeopushError

TSV = "ilc20_site1_F1_wifi_beacon_waypoints.tsv.gz"
NON_STORES = frozenset({"fuzhumian", "feikaifangquyu", "xishoujianfuzhumian", "xiuxiqu", "kongpu"})
AT_STORE_M = 3.0
MIN_SCANS = 3
AP_MIN_DBM = -70.0
BEACON_MIN_DBM = -85.0
MARGIN_DB = 5.0
STALE_S = 10.0
EARTH_R = 6_371_008.8


class MallImportError(GeopushError):
    """The mall folder is missing a file or has a malformed line."""


@dataclass
class Walk:
    path_id: str
    wp_t: list[float] = field(default_factory=list)
    wp_x: list[float] = field(default_factory=list)
    wp_y: list[float] = field(default_factory=list)
    # scan time -> [(bssid, rssi)]
    wifi: dict[float, list[tuple[str, float]]] = field(default_factory=lambda: defaultdict(list))
    beacons: list[tuple[float, str, int, int, float]] = field(default_factory=list)


@dataclass
class MallStore:
    store_id: str
    name: str
    geometry: dict[str, Any]
    poly_m: Any  # shapely geometry in the floor's metre frame
    wifi: list[str] = field(default_factory=list)
    beacons: list[str] = field(default_factory=list)


def _need(p: Path) -> Path:
    if not p.exists():
        raise MallImportError(f"{p} not found: pass the mall folder (../shared/data/near_field/mall)")
    return p


def read_walks(tsv: Path) -> dict[str, Walk]:
    walks: dict[str, Walk] = {}
    with gzip.open(_need(tsv), "rt", encoding="utf-8") as fh:
        for no, line in enumerate(fh, 1):
            p = line.rstrip("\n").split("\t")
            if len(p) < 3 or p[1] == "#":
                continue
            w = walks.get(p[0])
            if w is None:
                w = walks[p[0]] = Walk(p[0])
            try:
                ts = int(p[1]) / 1000.0
                kind = p[2]
                if kind == "TYPE_WAYPOINT":
                    w.wp_t.append(ts)
                    w.wp_x.append(float(p[3]))
                    w.wp_y.append(float(p[4]))
                elif kind == "TYPE_WIFI":
                    if ts - int(p[7]) / 1000.0 <= STALE_S:
                        w.wifi[ts].append((p[4].lower(), float(p[5])))
                elif kind == "TYPE_BEACON":
                    w.beacons.append((ts, p[3].upper(), int(p[4]), int(p[5]), float(p[7])))
            except (IndexError, ValueError) as exc:
                raise MallImportError(f"{tsv}:{no}: malformed {p[2] if len(p) > 2 else ''} row ({exc})") from exc
    for w in walks.values():
        order = np.argsort(w.wp_t, kind="stable")
        w.wp_t = [w.wp_t[i] for i in order]
        w.wp_x = [w.wp_x[i] for i in order]
        w.wp_y = [w.wp_y[i] for i in order]
    return walks


class Frame:
    """Floor metres <-> lon/lat, from the floor outline's bounding box."""

    def __init__(self, floor_geom: Any, width_m: float, height_m: float) -> None:
        self.minx, self.miny, self.maxx, self.maxy = floor_geom.bounds
        self.w = width_m
        self.h = height_m

    def to_lonlat(self, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return (self.minx + np.asarray(x) / self.w * (self.maxx - self.minx),
                self.miny + np.asarray(y) / self.h * (self.maxy - self.miny))

    def to_m(self, lon: np.ndarray, lat: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return ((np.asarray(lon) - self.minx) / (self.maxx - self.minx) * self.w,
                (np.asarray(lat) - self.miny) / (self.maxy - self.miny) * self.h)


def read_floor(folder: Path, floor: str) -> tuple[Frame, list[MallStore]]:
    import shapely
    from shapely.geometry import shape

    base = folder / "site1_floormaps" / floor
    try:
        doc = json.loads(_need(base / "geojson_map.json").read_text(encoding="utf-8"))
        info = json.loads(_need(base / "floor_info.json").read_text(encoding="utf-8"))["map_info"]
    except (json.JSONDecodeError, KeyError) as exc:
        raise MallImportError(f"{base}: unreadable floor plan ({exc})") from exc
    feats = doc["features"]
    frame = Frame(shape(feats[0]["geometry"]), float(info["width"]), float(info["height"]))
    stores = []
    for f in feats[1:]:
        props = f.get("properties") or {}
        name = str(props.get("name") or "").replace("&amp;", "&")
        if not name or name in NON_STORES:
            continue
        geom = shape(f["geometry"])
        poly_m = shapely.transform(geom, lambda c: np.column_stack(frame.to_m(c[:, 0], c[:, 1])))
        stores.append(MallStore(str(props.get("id")), name, f["geometry"], poly_m))
    return frame, stores


def _positions(w: Walk, t: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(x, y, known) at times t, linear between waypoints; unknown outside the walk."""
    wt = np.asarray(w.wp_t)
    x = np.interp(t, wt, w.wp_x)
    y = np.interp(t, wt, w.wp_y)
    known = (t >= wt[0]) & (t <= wt[-1]) if len(wt) else np.zeros(len(t), bool)
    return x, y, known


def _at_store(stores: list[MallStore], x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Index of the store whose polygon is nearest and within AT_STORE_M, else -1."""
    import shapely

    if len(x) == 0:
        return np.zeros(0, np.int64)
    pts = shapely.points(x, y)
    best = np.full(len(x), -1, np.int64)
    best_d = np.full(len(x), np.inf)
    for k, s in enumerate(stores):
        d = shapely.distance(s.poly_m, pts)
        better = (d <= AT_STORE_M) & (d < best_d)
        best[better] = k
        best_d[better] = d[better]
    return best


def register(stores: list[MallStore], walks: dict[str, Walk]) -> dict[str, int]:
    """Assign APs and beacons to stores by the strongest-mean rule (module doc)."""
    ap_sum: dict[str, dict[int, list[float]]] = defaultdict(lambda: defaultdict(list))
    bc_sum: dict[str, dict[int, list[float]]] = defaultdict(lambda: defaultdict(list))
    for w in walks.values():
        if not w.wp_t:
            continue
        st = np.asarray(sorted(w.wifi))
        x, y, known = _positions(w, st)
        at = np.where(known, _at_store(stores, x, y), -1)
        for ts, k in zip(st.tolist(), at.tolist(), strict=True):
            if k >= 0:
                for bssid, rssi in w.wifi[ts]:
                    ap_sum[bssid][k].append(rssi)
        bt = np.asarray([b[0] for b in w.beacons])
        x, y, known = _positions(w, bt)
        at = np.where(known, _at_store(stores, x, y), -1)
        for (_, uuid, major, minor, rssi), k in zip(w.beacons, at.tolist(), strict=True):
            if k >= 0:
                bc_sum[f"{uuid}:{major}:{minor}"][k].append(rssi)
    n_ap = _assign(ap_sum, AP_MIN_DBM, lambda k, ident: stores[k].wifi.append(ident))
    n_bc = _assign(bc_sum, BEACON_MIN_DBM, lambda k, ident: stores[k].beacons.append(ident))
    for s in stores:
        s.wifi.sort()
        s.beacons.sort()
    return {"aps_seen": len(ap_sum), "aps_registered": n_ap, "beacons_seen": len(bc_sum),
            "beacons_registered": n_bc}


def _assign(sums: dict[str, dict[int, list[float]]], min_dbm: float, put: Any) -> int:
    n = 0
    for ident in sorted(sums):
        means = sorted(((float(np.mean(v)), k) for k, v in sums[ident].items() if len(v) >= MIN_SCANS),
                       reverse=True)
        if not means or means[0][0] < min_dbm:
            continue
        if len(means) > 1 and means[0][0] - means[1][0] < MARGIN_DB:
            continue
        put(means[0][1], ident)
        n += 1
    return n


def truth_stays(stores: list[MallStore], walks: dict[str, Walk]) -> list[dict[str, Any]]:
    """Per walk, runs of 1 s samples at one store (module doc), with the signals heard there."""
    wifi_of = {b: k for k, s in enumerate(stores) for b in s.wifi}
    beacon_of = {b: k for k, s in enumerate(stores) for b in s.beacons}
    rows = []
    for pid in sorted(walks):
        w = walks[pid]
        if len(w.wp_t) < 2:
            continue
        t = np.arange(w.wp_t[0], w.wp_t[-1] + 1e-9, 1.0)
        t = np.append(t, w.wp_t[-1]) if t[-1] < w.wp_t[-1] else t
        x, y, _ = _positions(w, t)
        at = _at_store(stores, x, y)
        start = 0
        for i in range(1, len(t) + 1):
            if i == len(t) or at[i] != at[start]:
                k = int(at[start])
                if k >= 0:
                    a, b = float(t[start]), float(t[i - 1])
                    sig = set()
                    for ts, aps in w.wifi.items():
                        if a - 0.5 <= ts <= b + 0.5 and any(wifi_of.get(bs) == k for bs, _ in aps):
                            sig.add("wifi")
                    for ts, uuid, major, minor, _ in w.beacons:
                        if a - 0.5 <= ts <= b + 0.5 and beacon_of.get(f"{uuid}:{major}:{minor}") == k:
                            sig.add("beacon")
                    rows.append({"user": pid, "store_id": stores[k].store_id, "start": round(a, 3),
                                 "end": round(b, 3),
                                 "signals": [s for s in ("gps", "wifi", "beacon") if s in sig]})
                start = i
    rows.sort(key=lambda r: (r["start"], r["user"]))
    return rows


def _slug(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-") or "store"


def catalog(stores: list[MallStore], max_accuracy_m: float = 50.0) -> dict[str, Any]:
    feats = []
    for s in stores:
        feats.append({
            "type": "Feature",
            "geometry": s.geometry,
            "properties": {
                "store_id": s.store_id, "merchant_id": _slug(s.name), "name": s.name,
                "wifi": s.wifi, "beacons": s.beacons, "nfc": [], "tz": "Asia/Shanghai",
                "max_accuracy_m": max_accuracy_m, "tags": ["mall"],
            },
        })
    return {"type": "FeatureCollection", "features": feats}


def events(walks: dict[str, Walk], frame: Frame, gps_acc: float | None = None) -> list[Any]:
    from engine.events import Ap, Beacon, Gps, Wifi

    out: list[Any] = []
    for pid in sorted(walks):
        w = walks[pid]
        for ts in sorted(w.wifi):
            aps = w.wifi[ts]
            out.append(Wifi(pid, ts, [Ap(b, float(r)) for b, r in aps]))
        for ts, uuid, major, minor, rssi in w.beacons:
            out.append(Beacon(pid, ts, uuid, major, minor, float(rssi)))
        if gps_acc is not None and w.wp_t:
            lon, lat = frame.to_lonlat(np.asarray(w.wp_x), np.asarray(w.wp_y))
            for ts, lo, la in zip(w.wp_t, lon.tolist(), lat.tolist(), strict=True):
                out.append(Gps(pid, ts, round(lo, 7), round(la, 7), float(gps_acc)))
    return out


def load_mall(path: str | os.PathLike[str], floor: str = "F1", gps_acc: float | None = None
              ) -> tuple[dict[str, Any], list[Any], list[dict[str, Any]], dict[str, int]]:
    """(catalog FeatureCollection, events, truth rows, counts) for the mall folder."""
    folder = Path(path)
    frame, stores = read_floor(folder, floor)
    walks = read_walks(folder / TSV)
    counts = register(stores, walks)
    truth = truth_stays(stores, walks)
    evs = events(walks, frame, gps_acc)
    counts.update({"stores": len(stores), "walks": len(walks), "events": len(evs),
                   "truth": len(truth)})
    return catalog(stores), evs, truth, counts


def write_mall(path: str | os.PathLike[str], out_dir: str | os.PathLike[str], floor: str = "F1",
               gps_acc: float | None = None) -> dict[str, int]:
    """Write OUT/stores.geojson, OUT/trace.jsonl, OUT/truth.jsonl; returns counts."""
    cat, evs, truth, counts = load_mall(path, floor, gps_acc)
    write_outputs(out_dir, cat, evs, truth)
    return counts


def write_outputs(out_dir: str | os.PathLike[str], cat: dict[str, Any], evs: list[Any],
                  truth: list[dict[str, Any]]) -> None:
    from engine.traces import write_trace

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "stores.geojson").write_text(json.dumps(cat, ensure_ascii=False) + "\n", encoding="utf-8")
    write_trace(evs, out / "trace.jsonl")
    with open(out / "truth.jsonl", "w", encoding="utf-8") as fh:
        for row in truth:
            fh.write(json.dumps(row, separators=(",", ":")) + "\n")

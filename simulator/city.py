"""`geopush simulate city`: a seeded city, its people, their phones' signals and the ground truth.

Writes into OUT:

* ``stores.geojson``  the store catalog (docs/catalog.md): circles and polygons, malls of small
  units whose GPS fences overlap, WiFi BSSIDs, beacons ("UUID:major:minor") and NFC tags;
* ``campaigns.json``  a few campaigns for some merchants (docs/campaigns.md);
* ``profiles.jsonl``  one line per person: tags and opt-out;
* ``trace.jsonl``     the events, one wire-JSON line each, sorted by ts (then user);
* ``truth.jsonl``     one line per stay in a store: ``{"user","store_id","start","end","signals"}``,
  ``signals`` naming what the phone produced during the stay (gps, wifi, beacon, nfc), where
  wifi means a scan heard one of the store's registered APs;
* ``city.json``       parameters, counts, the labelled spoofers, the measured generation rate.

Same arguments and seed => byte-identical files. The layout is in simulator.layout, people's
days in simulator.people, the signal models in simulator.signals, JSON formatting in
simulator.emit.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from simulator import emit
from simulator.layout import (
    BEACON_UUID,
    CATEGORIES,
    MAX_VERTS,
    Layout,
    beacon_ids,
    build_layout,
    store_bssids,
)
from simulator.people import People, build_people, tags_of
from simulator.signals import S_BEACON, S_GPS, S_NFC, S_WIFI, Emitter

DAY0 = 1772409600.0  # Monday 2026-03-02 00:00:00 UTC
T0_DEFAULT = DAY0 + 6 * 3600.0  # the default start: 06:00 that day
EVENTS_PER_WINDOW = 3_000_000
_TYPES = ("gps", "wifi", "beacon", "nfc", "payment")


@dataclass
class CityReport:
    out: str
    stores: int
    users: int
    hours: float
    seed: int
    t0: float
    t_end: float
    events: int = 0
    events_by_type: dict[str, int] = field(default_factory=dict)
    truth_stays: int = 0
    spoofers: list[str] = field(default_factory=list)
    seconds: float = 0.0
    events_per_s: float = 0.0
    trace_seconds: float = 0.0
    trace_events_per_s: float = 0.0
    cpu_seconds: float = 0.0  # CPU time of this process (both threads): honest on a busy machine
    events_per_cpu_s: float = 0.0


class _Ids:
    """Zero-padded ids: u0042, s000123, m00012 (widths fixed by the city's size)."""

    def __init__(self, users: int, stores: int, merchants: int) -> None:
        self.uw = len(str(max(users - 1, 0)))
        self.sw = len(str(max(stores - 1, 0)))
        self.mw = len(str(max(merchants - 1, 0)))

    def user(self, i: int) -> str:
        return f"u{i:0{self.uw}d}"

    def store(self, i: int) -> str:
        return f"s{i:0{self.sw}d}"

    def merchant(self, i: int) -> str:
        return f"m{i:0{self.mw}d}"

    def nfc(self, i: int) -> str:
        return f"nfc-s{i:0{self.sw}d}"


def generate_city(
    *,
    stores: int,
    users: int,
    hours: float,
    seed: int,
    out: str | Path,
    t0: float | None = None,
    start_hour: float = 6.0,
    progress: bool = False,
    on_window: Callable[[int, int], None] | None = None,
) -> CityReport:
    """Generate the city into ``out`` (created if needed). Returns counts and the rate.

    The run starts at ``t0`` (epoch s; default Monday 2026-03-02 at ``start_hour`` UTC), which is
    ``start_hour`` o'clock in the people's day, and lasts ``hours``."""
    start = time.perf_counter()
    cpu0 = time.process_time()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    lay = build_layout(stores, seed)
    if t0 is None:
        t0 = DAY0 + start_hour * 3600.0
    ppl = build_people(lay, users, hours, seed, t0, start_hour)
    ids = _Ids(users, stores, lay.n_merchants)
    rep = CityReport(str(out), stores, users, hours, seed, t0, ppl.t_end)
    rep.spoofers = [ids.user(int(i)) for i in np.flatnonzero(ppl.spoofer)]
    write_stores(out / "stores.geojson", lay, ids)
    write_campaigns(out / "campaigns.json", lay, ids, seed)
    write_profiles(out / "profiles.jsonl", ppl, ids)
    t_trace = time.perf_counter()
    em = Emitter(lay, ppl, seed)
    _write_trace(out / "trace.jsonl", em, ids, rep, progress, on_window)
    rep.trace_seconds = time.perf_counter() - t_trace
    rep.truth_stays = write_truth(out / "truth.jsonl", ppl, em.flags, ids)
    rep.seconds = time.perf_counter() - start
    rep.cpu_seconds = time.process_time() - cpu0
    rep.events_per_cpu_s = rep.events / rep.cpu_seconds if rep.cpu_seconds > 0 else 0.0
    rep.events_per_s = rep.events / rep.seconds if rep.seconds > 0 else 0.0
    rep.trace_events_per_s = rep.events / rep.trace_seconds if rep.trace_seconds > 0 else 0.0
    meta = asdict(rep)
    # Timings vary run to run; city.json keeps only what the seed decides, so it stays
    # byte-identical too.
    for k in ("seconds", "events_per_s", "trace_seconds", "trace_events_per_s", "out",
              "cpu_seconds", "events_per_cpu_s"):
        meta.pop(k)
    meta["origin_lonlat"] = list(lay.to_lonlat(np.zeros(1), np.zeros(1)))
    meta["origin_lonlat"] = [float(v[0]) for v in meta["origin_lonlat"]]
    meta["beacon_uuid"] = BEACON_UUID
    (out / "city.json").write_text(json.dumps(meta, indent=2) + "\n")
    return rep


def _windows(ppl: People) -> list[tuple[float, float]]:
    rate = ppl.n * 0.04  # events per second of simulated time, roughly
    step = float(np.clip(EVENTS_PER_WINDOW / max(rate, 1.0), 60.0, 3600.0))
    edges = np.arange(ppl.t0, ppl.t_end, step).tolist() + [ppl.t_end]
    return list(zip(edges[:-1], edges[1:], strict=True))


def _write_trace(path: Path, em: Emitter, ids: _Ids, rep: CityReport, progress: bool,
                 on_window: Callable[[int, int], None] | None) -> None:
    from contextlib import nullcontext

    windows = _windows(em.ppl)
    counts = dict.fromkeys(_TYPES, 0)
    bar: Any = None
    ctx: Any = nullcontext()
    if progress:
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeRemainingColumn,
        )

        ctx = bar = Progress(
            TextColumn("[bold]trace[/] {task.fields[events]:>12,} events  {task.fields[rate]}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("windows"),
            TimeRemainingColumn(),
        )
    t_start = time.perf_counter()
    widths = (ids.uw, ids.sw, ids.mw)
    # Formatting (numba, GIL released) and writing run in a second thread while the next window
    # is generated: the two halves take similar time, so two cores nearly double the rate.
    with ctx, path.open("wb") as f, ThreadPoolExecutor(1) as pool:
        task = bar.add_task("trace", total=len(windows), events=0, rate="") if bar else None
        pending: Future[None] | None = None
        for n, (w0, w1) in enumerate(windows):
            ev = em.window(w0, w1)
            if pending is not None:
                pending.result()
            pending = pool.submit(_format_and_write, f, ev, widths)
            bc = np.bincount(ev.cols["kind"], minlength=len(_TYPES))
            for name, c in zip(_TYPES, bc, strict=True):
                counts[name] += int(c)
            rep.events += len(ev)
            if bar is not None:
                el = time.perf_counter() - t_start
                bar.update(task, advance=1, events=rep.events,
                           rate=f"{rep.events / max(el, 1e-9):,.0f}/s")
            if on_window is not None:
                on_window(n + 1, len(windows))
        if pending is not None:
            pending.result()
    rep.events_by_type = counts


def _format_and_write(f: Any, ev: Any, widths: tuple[int, int, int]) -> None:
    f.write(emit.format_events(ev.cols, ev.ap_bssid, ev.ap_rssi, BEACON_UUID, widths))


def _ring(lay: Layout, s: int) -> list[list[float]]:
    nv = int(lay.nverts[s])
    ang = lay.vert_ang[s, :nv]
    r = lay.radius[s] * lay.vert_rad[s, :nv]
    lon, lat = lay.to_lonlat(lay.cx[s] + r * np.cos(ang), lay.cy[s] + r * np.sin(ang))
    pts = [[round(float(a), 7), round(float(b), 7)] for a, b in zip(lon, lat, strict=True)]
    return pts + [pts[0]]


def store_features(lay: Layout, ids: _Ids) -> list[dict[str, Any]]:
    lon, lat = lay.to_lonlat(lay.cx, lay.cy)
    feats: list[dict[str, Any]] = []
    major, minor = beacon_ids(np.arange(lay.n_stores))
    for s in range(lay.n_stores):
        sid = ids.store(s)
        cat = CATEGORIES[int(lay.category[s])]
        in_mall = int(lay.mall[s]) >= 0
        props: dict[str, Any] = {
            "store_id": sid,
            "merchant_id": ids.merchant(int(lay.merchant[s])),
            "name": f"{cat.title()} {sid}" + (f" (mall {int(lay.mall[s])})" if in_mall else ""),
        }
        if lay.is_poly[s]:
            geom: dict[str, Any] = {"type": "Polygon", "coordinates": [_ring(lay, s)]}
        else:
            geom = {"type": "Point", "coordinates": [round(float(lon[s]), 7), round(float(lat[s]), 7)]}
            props["radius_m"] = round(float(lay.radius[s]), 1)
        props["wifi"] = [
            ":".join(f"{(b >> (8 * k)) & 0xFF:02x}" for k in range(5, -1, -1))
            for b in store_bssids(s, int(lay.n_ap[s]))
        ]
        props["beacons"] = [f"{BEACON_UUID}:{int(major[s])}:{int(minor[s])}"] if lay.has_beacon[s] else []
        props["nfc"] = [ids.nfc(s)] if lay.has_nfc[s] else []
        props["tz"] = "UTC"
        props["max_accuracy_m"] = float(lay.max_acc[s])
        props["tags"] = [cat] + (["mall"] if in_mall else [])
        feats.append({"type": "Feature", "geometry": geom, "properties": props})
    return feats


def write_stores(path: Path, lay: Layout, ids: _Ids) -> None:
    import msgspec

    doc = {"type": "FeatureCollection", "features": store_features(lay, ids)}
    path.write_bytes(msgspec.json.encode(doc) + b"\n")


def campaign_doc(lay: Layout, ids: _Ids, seed: int) -> dict[str, Any]:
    """A few campaigns for some merchants: a welcome offer for new customers on enter, a dwell
    reward, a lunch deal for returning customers, a thank-you to followers on exit."""
    rng = np.random.default_rng([seed, 3])
    # Prefer merchants with mall units (busy) and chains: weight by store count.
    weight = np.bincount(lay.merchant, minlength=lay.n_merchants).astype(float)
    weight[np.unique(lay.merchant[lay.mall >= 0])] *= 3
    n = min(max(3, lay.n_merchants // 10), 300, int(np.count_nonzero(weight)))
    chosen = rng.choice(lay.n_merchants, n, replace=False, p=weight / weight.sum())
    campaigns: list[dict[str, Any]] = []
    for m in sorted(int(x) for x in chosen):
        mid = ids.merchant(m)
        kinds = rng.choice(4, int(rng.integers(1, 4)), replace=False)
        for k in sorted(int(x) for x in kinds):
            value = float(rng.choice([2.0, 3.0, 5.0, 10.0]))
            if k == 0:
                c: dict[str, Any] = {
                    "id": f"{mid}-welcome", "merchant_id": mid, "trigger": "enter",
                    "audience": {"segment": "new"}, "caps": {"per_user": 1, "period_s": 30 * 86400},
                    "inventory": int(rng.integers(50, 1000)), "priority": 2,
                    "coupon": {"title": f"Welcome: {value:g} EUR off", "value": value,
                               "currency": "EUR", "expires_in_s": 7 * 86400},
                }
            elif k == 1:
                c = {
                    "id": f"{mid}-stay", "merchant_id": mid, "trigger": "dwell", "dwell_s": 600,
                    "audience": {"segment": "all", "exclude_tags": ["senior"]},
                    "caps": {"per_user": 1, "period_s": 86400, "cooldown_s": 3600},
                    "priority": 1,
                    "coupon": {"title": f"Stay a while: {value:g} EUR off", "value": value,
                               "currency": "EUR", "expires_in_s": 3600},
                }
            elif k == 2:
                c = {
                    "id": f"{mid}-lunch", "merchant_id": mid, "trigger": "enter",
                    "audience": {"segment": "returning", "tags_any": ["commuter", "foodie", "student"]},
                    "schedule": {"days": ["mon", "tue", "wed", "thu", "fri"], "start": "11:00", "end": "14:00"},
                    "caps": {"per_user": 2, "period_s": 7 * 86400},
                    "inventory": int(rng.integers(100, 2000)), "priority": 3,
                    "coupon": {"title": "Lunch deal", "value": value, "currency": "EUR",
                               "expires_in_s": 3 * 3600},
                }
            else:
                c = {
                    "id": f"{mid}-thanks", "merchant_id": mid, "trigger": "exit",
                    "audience": {"segment": "followers"},
                    "caps": {"per_user": 1, "period_s": 7 * 86400},
                    "coupon": {"title": "Thanks for coming: next visit", "value": value,
                               "currency": "EUR", "expires_in_s": 14 * 86400},
                }
            campaigns.append(c)
    return {
        "max_pushes_per_user_per_day": 3,
        "quiet_hours": {"start": "22:00", "end": "07:00"},
        "campaigns": campaigns,
    }


def write_campaigns(path: Path, lay: Layout, ids: _Ids, seed: int) -> None:
    path.write_text(json.dumps(campaign_doc(lay, ids, seed), indent=1) + "\n")


def write_profiles(path: Path, ppl: People, ids: _Ids) -> None:
    import msgspec

    # One JSON fragment per distinct tag set (a few hundred), then plain string joins: the same
    # bytes as msgspec-encoding {"user", "tags", "opt_out"} per person, ten times faster.
    frags = {int(m): msgspec.json.encode(tags_of(int(m))).decode() for m in np.unique(ppl.tag_mask)}
    opt = ("false", "true")
    with path.open("w") as f:
        f.writelines(
            f'{{"user":"{ids.user(i)}","tags":{frags[m]},"opt_out":{opt[o]}}}\n'
            for i, (m, o) in enumerate(zip(ppl.tag_mask.tolist(), ppl.opt_out.tolist(), strict=True))
        )


def truth_rows(ppl: People, flags: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(stay index, start, end) of every stay in a store within the simulated window, sorted by
    (start, user)."""
    start = np.maximum(ppl.st_start, ppl.t0)
    end = np.minimum(ppl.st_end, ppl.t_end)
    idx = np.flatnonzero((ppl.st_store >= 0) & (end > start))
    order = np.lexsort((ppl.st_store[idx], ppl.st_user[idx], start[idx]))
    idx = idx[order]
    return idx, np.round(start[idx], 3), np.round(end[idx], 3)


_SIG_NAMES = ((S_GPS, "gps"), (S_WIFI, "wifi"), (S_BEACON, "beacon"), (S_NFC, "nfc"))
_SIG_JSON = {
    f: "[" + ",".join(f'"{n}"' for b, n in _SIG_NAMES if f & b) + "]" for f in range(16)
}


def write_truth(path: Path, ppl: People, flags: np.ndarray, ids: _Ids) -> int:
    idx, start, end = truth_rows(ppl, flags)
    users = ppl.st_user[idx].tolist()
    stores = ppl.st_store[idx].tolist()
    fl = flags[idx].tolist()
    with path.open("w") as f:
        f.writelines(
            f'{{"user":"{ids.user(u)}","store_id":"{ids.store(s)}","start":{a!r},"end":{b!r},'
            f'"signals":{_SIG_JSON[g]}}}\n'
            for u, s, a, b, g in zip(users, stores, start.tolist(), end.tolist(), fl, strict=True)
        )
    return len(idx)


__all__ = ["CityReport", "MAX_VERTS", "T0_DEFAULT", "generate_city"]

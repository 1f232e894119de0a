"""The simulated city: determinism, invariants of its files, and the fast JSON writer against
engine.events.encode_event."""

from __future__ import annotations

import json
import math
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import simulator.city as city_mod
from engine.events import Beacon, Gps, Nfc, Payment, Wifi, decode, encode_event
from fences.catalog import load_catalog
from simulator import emit
from simulator.city import generate_city

FILES = (
    "stores.geojson",
    "campaigns.json",
    "profiles.jsonl",
    "trace.jsonl",
    "truth.jsonl",
    "city.json",
)
ARGS = {"stores": 300, "users": 1000, "hours": 3.0, "seed": 7}


@pytest.fixture(scope="module")
def city(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("city")
    generate_city(out=out, **ARGS)
    return out


@pytest.fixture(scope="module")
def lines(city: Path) -> list[bytes]:
    return (city / "trace.jsonl").read_bytes().splitlines()


@pytest.fixture(scope="module")
def events(lines: list[bytes]) -> list[dict]:
    return [json.loads(b) for b in lines]


@pytest.fixture(scope="module")
def truth(city: Path) -> list[dict]:
    return [json.loads(s) for s in (city / "truth.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def meta(city: Path) -> dict:
    return json.loads((city / "city.json").read_text())


def test_same_seed_same_bytes_whatever_the_window(
    city: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Much smaller windows than the fixture used: per-event noise is keyed by (user, tick), so
    # cutting time differently must not change a byte.
    monkeypatch.setattr(city_mod, "EVENTS_PER_WINDOW", 5000)
    generate_city(out=tmp_path, **ARGS)
    for name in FILES:
        assert (tmp_path / name).read_bytes() == (city / name).read_bytes(), name


def test_another_seed_another_city(city: Path, tmp_path: Path) -> None:
    generate_city(out=tmp_path, **{**ARGS, "seed": 8, "users": 50})
    assert (tmp_path / "trace.jsonl").read_bytes() != (city / "trace.jsonl").read_bytes()


def test_every_line_decodes_and_is_encode_event_bytes(lines: list[bytes]) -> None:
    assert len(lines) > 10_000
    for line in lines:
        (ev,) = decode(line)
        assert encode_event(ev) == line


def test_trace_sorted_by_ts_with_every_kind(events: list[dict], meta: dict) -> None:
    ts = [e["ts"] for e in events]
    assert ts == sorted(ts)
    assert meta["t0"] <= ts[0] and ts[-1] < meta["t_end"]
    kinds = {e["type"] for e in events}
    assert kinds == {"gps", "wifi", "beacon", "nfc", "payment"}
    assert sum(meta["events_by_type"].values()) == len(events) == meta["events"]


def test_catalog_is_valid_with_circles_polygons_and_overlapping_malls(city: Path) -> None:
    cat = load_catalog(city / "stores.geojson", strict=True)
    assert len(cat) == ARGS["stores"]
    circles = [s for s in cat.stores if s.is_circle]
    polys = [s for s in cat.stores if not s.is_circle]
    assert circles and polys
    mall = [s for s in circles if "mall" in s.tags]
    assert len(mall) >= 12
    # Some pair of mall units have GPS fences that overlap.
    overlaps = 0
    for a, b in zip(mall, mall[1:], strict=False):
        d = _metres(a.center, b.center)
        overlaps += d < (a.radius_m or 0) + (b.radius_m or 0)
    assert overlaps > 0
    assert all(s.wifi for s in mall)
    assert any(s.beacons for s in cat.stores) and any(s.nfc for s in cat.stores)
    assert any(not s.wifi and not s.beacons for s in cat.stores)  # GPS-only stores exist


def test_truth_stays_are_real_stores_in_the_window(
    city: Path, truth: list[dict], meta: dict
) -> None:
    cat = load_catalog(city / "stores.geojson")
    assert len(truth) > 100
    for t in truth:
        s = cat.get(t["store_id"])
        assert meta["t0"] <= t["start"] < t["end"] <= meta["t_end"]
        sig = set(t["signals"])
        assert sig <= {"gps", "wifi", "beacon", "nfc"}
        assert not ("wifi" in sig and not s.wifi)
        assert not ("beacon" in sig and not s.beacons)
        assert not ("nfc" in sig and not s.nfc)
    per_user: dict[str, list[dict]] = defaultdict(list)
    for t in truth:
        per_user[t["user"]].append(t)
    for stays in per_user.values():  # one place at a time
        stays.sort(key=lambda t: t["start"])
        for a, b in zip(stays, stays[1:], strict=False):
            assert a["end"] <= b["start"]


def test_gps_speeds_believable_except_labelled_spoofers(events: list[dict], meta: dict) -> None:
    spoofers = set(meta["spoofers"])
    assert spoofers, "the fixture city is big enough for one labelled spoofer"
    last: dict[str, tuple[float, float, float]] = {}
    fastest_honest = 0.0
    fastest_spoofer = 0.0
    accs = []
    for e in events:
        if e["type"] != "gps":
            continue
        accs.append(e["acc"])
        prev = last.get(e["user"])
        last[e["user"]] = (e["lon"], e["lat"], e["ts"])
        if prev is None:
            continue
        kmh = _metres(prev[:2], (e["lon"], e["lat"])) / max(e["ts"] - prev[2], 1e-3) * 3.6
        if e["user"] in spoofers:
            fastest_spoofer = max(fastest_spoofer, kmh)
        else:
            fastest_honest = max(fastest_honest, kmh)
    assert fastest_honest <= 250.0
    assert fastest_spoofer > 250.0
    a = np.asarray(accs)
    assert a.min() >= 4.0
    assert np.mean((a >= 5) & (a <= 50)) > 0.9


def test_payments_and_taps_happen_during_stays_at_that_merchant(
    city: Path, events: list[dict], truth: list[dict]
) -> None:
    cat = load_catalog(city / "stores.geojson")
    stays: dict[str, list[dict]] = defaultdict(list)
    for t in truth:
        stays[t["user"]].append(t)
    n = 0
    for e in events:
        if e["type"] == "payment":
            ok = [
                t
                for t in stays[e["user"]]
                if t["start"] <= e["ts"] <= t["end"]
                and cat.get(t["store_id"]).merchant_id == e["merchant_id"]
            ]
        elif e["type"] == "nfc":
            slot = cat.by_nfc(e["tag"])
            assert slot is not None
            ok = [
                t
                for t in stays[e["user"]]
                if t["start"] <= e["ts"] <= t["end"]
                and t["store_id"] == cat.stores[slot].store_id
                and "nfc" in t["signals"]
            ]
        else:
            continue
        n += 1
        assert ok, e
    assert n > 0


def test_wifi_heard_strongest_in_own_store(
    city: Path, events: list[dict], truth: list[dict]
) -> None:
    """Log-distance path loss with walls: during a stay with wifi signal, the strongest
    registered AP in most scans is the store's own."""
    cat = load_catalog(city / "stores.geojson")
    by_user: dict[str, list[dict]] = defaultdict(list)
    for t in truth:
        if "wifi" in t["signals"]:
            by_user[t["user"]].append(t)
    own = other = 0
    for e in events:
        if e["type"] != "wifi":
            continue
        for t in by_user.get(e["user"], ()):
            if t["start"] <= e["ts"] <= t["end"]:
                reg = [ap for ap in e["aps"] if cat.by_bssid(ap["bssid"]) is not None]
                best = max(reg, key=lambda ap: ap["rssi"])
                if cat.stores[cat.by_bssid(best["bssid"])].store_id == t["store_id"]:
                    own += 1
                else:
                    other += 1
    assert own > 100 and other / (own + other) < 0.02


def test_profiles_and_campaigns_parse_with_the_engine(city: Path) -> None:
    from engine.campaigns import load_campaigns
    from engine.profiles import load_profiles

    cs = load_campaigns(city / "campaigns.json")
    assert len(cs) >= 3
    assert {c.trigger for c in cs.campaigns} >= {"enter"}
    book = load_profiles(city / "profiles.jsonl")
    assert len(book) == ARGS["users"]


# --- the numba writer against encode_event ------------------------------------------------------

_I = st.integers


@settings(max_examples=200, deadline=None)
@given(
    user=_I(0, 10**6),
    ts=_I(1, 4_102_444_800_000),
    lon=_I(-1_800_000_000, 1_800_000_000),
    lat=_I(-900_000_000, 900_000_000),
    acc=_I(0, 100_000),
    rssi=_I(-150, 0),
    major=_I(0, 65535),
    minor=_I(0, 65535),
    cents=_I(0, 10**9),
    bssid=_I(0, 2**48 - 1),
)
def test_writer_matches_encode_event(
    user: int,
    ts: int,
    lon: int,
    lat: int,
    acc: int,
    rssi: int,
    major: int,
    minor: int,
    cents: int,
    bssid: int,
) -> None:
    from engine.events import Ap

    uuid = "F7826DA6-4FA2-4E98-8024-BC5B71E0893E"
    cols = {
        "kind": np.array([emit.GPS, emit.WIFI, emit.BEACON, emit.NFC, emit.PAY]),
        "user": np.full(5, user),
        "ts_ms": np.full(5, ts),
        "a": np.array([lon, 0, major, user, user]),
        "b": np.array([lat, 1, minor, 0, cents]),
        "c": np.array([acc, 0, rssi, 0, 0]),
    }
    got = emit.format_events(
        cols, np.array([bssid]), np.array([rssi]), uuid, (7, 7, 7)
    ).splitlines()
    u = f"u{user:07d}"
    t = ts / 1000
    mac = ":".join(f"{(bssid >> (8 * k)) & 0xFF:02x}" for k in range(5, -1, -1))
    want = [
        Gps(u, t, lon / 1e7, lat / 1e7, acc / 10),
        Wifi(u, t, [Ap(mac, float(rssi))]),
        Beacon(u, t, uuid, major, minor, float(rssi)),
        Nfc(u, t, f"nfc-s{user:07d}"),
        Payment(u, t, f"m{user:07d}", cents / 100),
    ]
    assert got == [encode_event(w) for w in want]


def _metres(a: tuple[float, float] | None, b: tuple[float, float] | None) -> float:
    assert a is not None and b is not None
    lon1, lat1, lon2, lat2 = map(math.radians, (*a, *b))
    h = (
        math.sin((lat2 - lat1) / 2) ** 2
        + math.cos(lat1) * math.cos(lat2) * math.sin((lon2 - lon1) / 2) ** 2
    )
    return 2 * 6_371_008.8 * math.asin(math.sqrt(h))


def test_wifi_hearing_kernel_against_a_plain_python_oracle() -> None:
    """simulator.signals._hear (numba) against the path-loss model written out per AP."""
    from simulator import signals
    from simulator.layout import BLOCK_M, STORE_AP_PREFIX, build_layout

    lay = build_layout(200, seed=3)
    rng = np.random.default_rng(0)
    m = int(lay.mall_cell[0])
    cx, cy = lay.cell_centre(np.array([m]))
    n = 300
    x = cx[0] + rng.uniform(-50, 50, n)
    y = cy[0] + rng.uniform(-50, 50, n)
    first = int(lay.mall_start[0])
    store_in = np.where(rng.random(n) < 0.7, first + rng.integers(0, lay.mall_count[0], n), -1)
    keys = rng.integers(0, 2**62, n)
    out_b = np.zeros((n, signals.MAX_APS), np.int64)
    out_r = np.zeros((n, signals.MAX_APS), np.int64)
    out_n = np.zeros(n, np.int64)
    own = np.zeros(n, np.bool_)
    signals._hear(x, y, store_in, keys, lay.cell_ptr, lay.cell_idx, lay.cx, lay.cy,
                  lay.n_ap.astype(np.int64), lay.ap_dx, lay.ap_dy, lay.nx, lay.ny, BLOCK_M,
                  STORE_AP_PREFIX, out_b, out_r, out_n, own)
    assert out_n.sum() > 2 * n and own.any() and (out_n == signals.MAX_APS).any()
    for i in range(n):
        heard = []
        cell = int(y[i] // BLOCK_M) * lay.nx + int(x[i] // BLOCK_M)
        for s in lay.cell_idx[lay.cell_ptr[cell]:lay.cell_ptr[cell + 1]]:
            for a in range(int(lay.n_ap[s])):
                d = max(math.hypot(x[i] - lay.cx[s] - lay.ap_dx[s, a], y[i] - lay.cy[s] - lay.ap_dy[s, a]), 1.0)
                wall = 0.0 if s == store_in[i] else 12.0
                noise = _gauss_oracle(int(keys[i]), int(s) * 4 + a + 1)
                r = -40.0 - 30.0 * math.log10(d) - wall + 2.5 * noise
                if r >= -92.0:
                    heard.append((int(np.round(r)), STORE_AP_PREFIX | (int(s) << 2) | a, int(s)))
        heard.sort(key=lambda h: -h[0])
        k = int(out_n[i])
        assert k == min(len(heard), signals.MAX_APS)
        assert sorted(out_r[i, :k].tolist(), reverse=True) == [h[0] for h in heard[:k]]
        assert set(out_b[i, :k].tolist()) <= {h[1] for h in heard}
        assert bool(own[i]) == any(h[2] == store_in[i] for h in heard)


def _gauss_oracle(key: int, salt: int) -> float:
    """The kernel's noise, from simulator.rng's numpy splitmix64 (an independent implementation)."""
    from simulator import rng as srng

    h = srng.mix(np.array([key], np.uint64) ^ np.uint64(salt))
    ua = float((srng.mix(h ^ np.uint64(0x51)) >> np.uint64(11))[0]) / 2.0**53
    ub = float((srng.mix(h ^ np.uint64(0x52)) >> np.uint64(11))[0]) / 2.0**53
    return math.sqrt(-2.0 * math.log1p(-ua)) * math.cos(2.0 * math.pi * ub)

"""FenceIndex: the documented rules, edge cases and bad input, one example each.

(The property tests in test_index_properties.py hold the same API against a brute-force oracle.)
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import shapely
from index_cases import _fold
from index_oracle import haversine, matches, signed_distance
from shapely.geometry import Polygon, box

from fences.catalog import Catalog
from fences.errors import FencesError, UnknownStoreError
from fences.index import FenceIndex, QueryError
from fences.store import Store
from fences.synth import synth_city

M = 6_371_008.8 * math.pi / 180.0


def circle(sid: str, lon: float, lat: float, r: float) -> Store:
    return Store(sid, "m", center=(lon, lat), radius_m=r)


def poly(sid: str, geom: shapely.Geometry) -> Store:
    return Store(sid, "m", polygon=geom)


SQUARE = box(10.0, 50.0, 10.002, 50.001)


def test_boundary_and_vertices_are_inside() -> None:
    idx = FenceIndex([poly("p", SQUARE)])
    for lon, lat in [(10.0, 50.0005), (10.001, 50.0), (10.002, 50.001), (10.0, 50.0)]:
        got = idx.query(lon, lat)
        assert [s for s, _ in got] == [0], (lon, lat)
        assert got[0][1] == pytest.approx(0.0, abs=1e-6)
    assert idx.query(10.001, 50.0005)[0][1] < 0
    assert idx.query(9.9999, 50.0005) == []


def test_circle_edge_is_inside_and_distance_is_haversine() -> None:
    r = 100.0
    lat_edge = 50.0 + math.degrees(r / 6_371_008.8)  # due north, exactly r on the sphere
    idx = FenceIndex([circle("c", 10.0, 50.0, r)])
    got = idx.query(10.0, lat_edge)
    assert [s for s, _ in got] == [0] and abs(got[0][1]) < 1e-6
    d = idx.distance(0, 10.01, 50.0)
    assert d == pytest.approx(haversine(10.01, 50.0, 10.0, 50.0) - r, abs=1e-6)


def test_hole_is_outside_with_distance_to_hole_edge() -> None:
    g = Polygon(
        [(0, 0), (0.01, 0), (0.01, 0.01), (0, 0.01)],
        [[(0.004, 0.004), (0.006, 0.004), (0.006, 0.006), (0.004, 0.006)]],
    )
    idx = FenceIndex([poly("h", g)])
    assert idx.query(0.005, 0.005) == []
    d = idx.distance(0, 0.005, 0.005)
    assert d == pytest.approx(
        0.001 * M, rel=1e-6
    )  # 1/1000 degree to the hole's edge, at the equator
    got = idx.query(0.005, 0.005, acc_m=112.0)
    assert [s for s, _ in got] == [0] and got[0][1] == pytest.approx(d)
    assert idx.query(0.002, 0.002)[0][1] < 0


def test_results_sorted_by_distance_and_margin_counts() -> None:
    stores = [
        circle("far", 10.0, 50.0, 10.0),
        circle("near", 10.0, 50.0, 100.0),
        circle("mid", 10.0, 50.0, 50.0),
    ]
    idx = FenceIndex(stores)
    got = idx.query(10.0, 50.0)
    assert [s for s, _ in got] == [1, 2, 0]
    fix_lat = 50.0 + 120.0 / M
    assert idx.query(10.0, fix_lat) == []
    assert [s for s, _ in idx.query(10.0, fix_lat, acc_m=15.0, margin_m=10.0)] == [1]


def test_antimeridian_circle_and_split_polygon() -> None:
    c = circle("c", 179.9995, 10.0, 200.0)
    split = _fold(box(179.99, 20.0, 180.01, 20.01))
    assert split.geom_type == "MultiPolygon"
    idx = FenceIndex([c, poly("p", split)])
    assert [s for s, _ in idx.query(-179.9995, 10.0)] == [0]
    assert [s for s, _ in idx.query(179.995, 20.005)] == [1]
    assert [s for s, _ in idx.query(-179.995, 20.005)] == [1]
    for lon in (180.0, -180.0):
        got = idx.query(lon, 20.005)
        assert [s for s, _ in got] == [1] and got[0][1] < 0
    # a fix just outside, across the line, finds the fence within its accuracy
    near = idx.query(-179.9899, 20.005, acc_m=50.0)
    assert [s for s, _ in near] == [1] and 0 < near[0][1] < 50.0
    lon_out = 179.989
    assert idx.query(lon_out, 20.005) == []
    # lon beyond 180 is folded
    assert [s for s, _ in idx.query(180.0005, 10.0)] == [0]


def test_high_latitude_and_pole_circle() -> None:
    stores = [circle("n", 0.0, 85.0, 50_000.0), circle("pole", 45.0, 89.999, 500.0)]
    idx = FenceIndex(stores)
    # 49.9 km east along the parallel is farther than 49.9 km on the sphere: use the oracle
    for lon, lat in [(5.0, 85.0), (3.0, 85.2), (-4.0, 84.8), (0.0, 85.449), (180.0, 89.9995)]:
        sd, must, may = matches(dict(enumerate(stores)), lon, lat, 0.0)
        got = {s for s, _ in idx.query(lon, lat)}
        assert must <= got <= may, (lon, lat, sd)


def test_integer_and_numpy_inputs() -> None:
    idx = FenceIndex([circle("c", 0.0, 0.0, 10.0)])
    assert [s for s, _ in idx.query(0, 0)] == [0]
    assert [s for s, _ in idx.query(np.float64(0.0), np.float32(0.0), np.int64(1))] == [0]
    fix, slot, _ = idx.query_many([0, 1], [0, 1], 5)
    assert fix.tolist() == [0] and slot.tolist() == [0]


def test_bad_input_says_what_to_do() -> None:
    idx = FenceIndex([circle("c", 0.0, 0.0, 10.0)])
    with pytest.raises(QueryError, match="lat"):
        idx.query(0.0, 91.0)
    with pytest.raises(QueryError):
        idx.query(float("nan"), 0.0)
    with pytest.raises(QueryError, match="accuracy"):
        idx.query(0.0, 0.0, acc_m=-1.0)
    with pytest.raises(QueryError):
        idx.query_many([0.0, 1.0], [0.0])
    with pytest.raises(QueryError):
        idx.query_many([0.0], [0.0], [-5.0])
    with pytest.raises(UnknownStoreError):
        idx.store(5)


def test_catalog_is_shared_and_updates_keep_slots() -> None:
    cat = Catalog([circle("a", 0.0, 0.0, 10.0), circle("b", 1.0, 1.0, 10.0)])
    idx = FenceIndex(cat)
    assert idx.catalog is cat and len(idx) == 2
    assert idx.update(circle("a", 2.0, 2.0, 10.0)) == 0
    assert idx.query(0.0, 0.0) == []
    assert [s for s, _ in idx.query(2.0, 2.0)] == [0]
    assert idx.store(0).center == (2.0, 2.0)
    idx.remove("b")
    assert len(idx) == 1 and idx.query(1.0, 1.0) == []
    with pytest.raises(UnknownStoreError):
        idx.store(1)
    with pytest.raises(UnknownStoreError):
        idx.update(circle("b", 1.0, 1.0, 10.0))
    slot = idx.add(circle("c", 3.0, 3.0, 10.0))
    assert slot == 2 and [s for s, _ in idx.query(3.0, 3.0)] == [2]
    idx.compact()
    assert [s for s, _ in idx.query(3.0, 3.0)] == [2] and idx.query(1.0, 1.0) == []
    fix, slot_a, _ = idx.query_many([2.0, 3.0, 1.0], [2.0, 3.0, 1.0])
    assert fix.tolist() == [0, 1] and slot_a.tolist() == [0, 2]


def test_many_matches_per_fix_grow_the_output() -> None:
    stores = [circle(f"c{i}", 0.0, 0.0, 100.0 + i) for i in range(300)]
    idx = FenceIndex(stores)
    lons = np.zeros(500)
    fix, slot, dist = idx.query_many(lons, lons)
    assert len(fix) == 500 * 300
    assert (np.diff(fix) >= 0).all()
    assert slot[:300].tolist() == list(range(299, -1, -1))  # largest circle: most negative distance
    assert len(idx.query(0.0, 0.0)) == 300


def test_batch_equals_single_on_a_synthetic_city() -> None:
    city = synth_city(3000, seed=5)
    idx = FenceIndex(city.stores)
    lons, lats = city.fixes(2000, seed=6)
    accs = np.random.default_rng(7).choice([0.0, 10.0, 80.0], size=len(lons))
    a = idx.query_many(lons, lats, accs)
    b = idx.query_many(lons, lats, accs, sort_fixes=False)
    for x, y in zip(a, b, strict=True):
        assert np.array_equal(x, y)
    fix, slot, dist = a
    assert 0.03 < len(np.unique(fix[dist <= 0])) / len(lons) < 0.3  # the city is calibrated to ~10%
    for i in range(0, len(lons), 97):
        got = idx.query(float(lons[i]), float(lats[i]), float(accs[i]))
        rows = fix == i
        assert [s for s, _ in got] == slot[rows].tolist()
        # spot-check against the oracle
        near = {s: city.stores[s] for s in range(len(city.stores)) if s in set(slot[rows].tolist())}
        for s, d in got:
            assert d == pytest.approx(
                signed_distance(near[s], float(lons[i]), float(lats[i])), abs=1e-5
            )


def test_bad_store_changes_nothing() -> None:
    idx = FenceIndex([circle("a", 0.0, 0.0, 10.0)])
    with pytest.raises(FencesError):
        idx.add(circle("b", 0.0, 95.0, 10.0))
    with pytest.raises(FencesError):
        idx.update(Store("a", "m"))
    assert len(idx) == 1 and [s for s, _ in idx.query(0.0, 0.0)] == [0]
    with pytest.raises(UnknownStoreError):
        idx.catalog.slot("b")


def test_removed_catalog_slots_are_not_indexed_and_ids_come_back_fresh() -> None:
    cat = Catalog([circle("a", 0.0, 0.0, 10.0), circle("b", 0.0, 0.0, 20.0)])
    cat.remove("a")
    idx = FenceIndex(cat)
    assert [s for s, _ in idx.query(0.0, 0.0)] == [1] and len(idx) == 1
    idx.remove("b")
    new = idx.add(circle("b", 0.0, 0.0, 30.0))
    assert new not in (0, 1)
    assert [s for s, _ in idx.query(0.0, 0.0)] == [new]


def test_empty_index_and_empty_batch() -> None:
    idx = FenceIndex([])
    assert idx.query(0.0, 0.0, 100.0) == [] and len(idx) == 0
    fix, slot, dist = idx.query_many(np.zeros(0), np.zeros(0))
    assert len(fix) == len(slot) == len(dist) == 0
    slot0 = idx.add(circle("a", 0.0, 0.0, 5.0))
    assert [s for s, _ in idx.query(0.0, 0.0)] == [slot0]


def test_circle_distance_matches_an_independent_great_circle_formula() -> None:
    """Haversine in the kernel vs the atan2 (Vincenty, sphere) form: < 1 mm, 1 m to 50 km, to 85°."""
    rng = np.random.default_rng(11)
    R = 6_371_008.8
    for _ in range(300):
        lat = float(rng.uniform(-85, 85))
        lon = float(rng.uniform(-180, 180))
        dist = float(np.exp(rng.uniform(0, np.log(50_000))))
        brg = float(rng.uniform(0, 2 * math.pi))
        p1, d = math.radians(lat), dist / R
        p2 = math.asin(math.sin(p1) * math.cos(d) + math.cos(p1) * math.sin(d) * math.cos(brg))
        l2 = math.radians(lon) + math.atan2(
            math.sin(brg) * math.sin(d) * math.cos(p1), math.cos(d) - math.sin(p1) * math.sin(p2)
        )
        lon2 = (math.degrees(l2) + 180.0) % 360.0 - 180.0
        idx = FenceIndex([circle("c", lon, lat, 1.0)])
        got = idx.distance(0, lon2, math.degrees(p2)) + 1.0
        dl = math.radians(lon2 - lon)
        q2 = math.radians(math.degrees(p2))
        num = math.hypot(
            math.cos(q2) * math.sin(dl),
            math.cos(p1) * math.sin(q2) - math.sin(p1) * math.cos(q2) * math.cos(dl),
        )
        den = math.sin(p1) * math.sin(q2) + math.cos(p1) * math.cos(q2) * math.cos(dl)
        assert got == pytest.approx(R * math.atan2(num, den), abs=1e-3)
        assert got == pytest.approx(dist, abs=1e-3)


def test_bench_match_reports_every_key() -> None:
    from simulator.bench.match import measure

    res = measure(2000, 3000, n_single=100, repeat=1, quiet=True)
    for key in (
        "stores",
        "fixes",
        "build_s",
        "rss_mb",
        "single_us",
        "batch_fixes_per_s",
        "baseline_batch_fixes_per_s",
    ):
        assert res[key] > 0, key
    assert res["stores"] == 2000 and res["fixes"] == 3000
    assert 0.02 < res["inside_frac"] < 0.4
    # the baseline's 32-gons sit inside our circles: it can only find fewer matches (or equal)
    assert res["baseline_matches_per_fix"] <= res["matches_per_fix"] * 1.01

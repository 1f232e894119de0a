"""fences.fastload (bulk validation) held to the feature-by-feature reference: on generated
catalogs with invalid and unusual features mixed in, both give the same stores and the same
problems, in the same order, with the same messages."""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgspec
import numpy as np
import pytest
import shapely
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fences import catalog as C
from fences import fastload
from fences.catalog import load_catalog, to_feature
from fences.errors import CatalogError
from fences.fastload import parse_features
from fences.store import Store
from fences.synth import synth_city

SQUARE = [[[24.0, 60.0], [24.001, 60.0], [24.001, 60.001], [24.0, 60.001], [24.0, 60.0]]]
HOLE = [
    [24.0004, 60.0004],
    [24.0006, 60.0004],
    [24.0006, 60.0006],
    [24.0004, 60.0006],
    [24.0004, 60.0004],
]
ACROSS = [[[179.9, 10.0], [-179.9, 10.0], [-179.9, 10.1], [179.9, 10.1], [179.9, 10.0]]]
BOWTIE = [[[24.0, 60.0], [24.001, 60.001], [24.001, 60.0], [24.0, 60.001], [24.0, 60.0]]]
UUID = "F7826DA6-4FA2-4E98-8024-BC5B71E0893E"

Mutation = Callable[[dict[str, Any], np.random.Generator], None]


def _props(f: dict[str, Any]) -> dict[str, Any]:
    p = f.get("properties")
    return p if isinstance(p, dict) else {}


def _geom(kind: str, coords: Any) -> Callable[[dict[str, Any], np.random.Generator], None]:
    def m(f: dict[str, Any], _: np.random.Generator) -> None:
        f["geometry"] = {"type": kind, "coordinates": copy.deepcopy(coords)}
        _props(f).pop("radius_m", None)

    return m


def _set(key: str, value: Any) -> Mutation:
    def m(f: dict[str, Any], _: np.random.Generator) -> None:
        if isinstance(f.get("properties"), dict):
            f["properties"][key] = copy.deepcopy(value)

    return m


def _drop(key: str) -> Mutation:
    def m(f: dict[str, Any], _: np.random.Generator) -> None:
        _props(f).pop(key, None)

    return m


def _feature(key: str, value: Any) -> Mutation:
    def m(f: dict[str, Any], _: np.random.Generator) -> None:
        f[key] = copy.deepcopy(value)

    return m


def _coords(fn: Callable[[Any], Any]) -> Mutation:
    def m(f: dict[str, Any], _: np.random.Generator) -> None:
        g = f.get("geometry")
        if isinstance(g, dict) and "coordinates" in g:
            g["coordinates"] = fn(g["coordinates"])

    return m


def _first_pos(c: Any) -> Any:
    while isinstance(c, list) and c and isinstance(c[0], list):
        c = c[0]
    return c


def _move(dx: float, dy: float) -> Mutation:
    def fn(c: Any) -> Any:
        p = _first_pos(c)
        if not isinstance(p, list) or len(p) < 2 or not all(type(v) in (int, float) for v in p[:2]):
            return c
        p[0] += dx
        p[1] += dy
        return c

    return _coords(fn)


def _unclose(c: Any) -> Any:
    ring = c[0] if isinstance(c, list) and c and isinstance(c[0], list) else None
    last = ring[-1] if ring else None
    if isinstance(last, list) and len(last) >= 2 and all(type(v) in (int, float) for v in last[:2]):
        ring[-1] = [last[0] + 1e-4, last[1]]  # type: ignore[index]
    return c


def _ints(c: Any) -> Any:
    if isinstance(c, list):
        return [_ints(v) for v in c]
    return int(round(c)) if isinstance(c, float) else c


def _bssid(rng: np.random.Generator) -> str:
    return ":".join(f"{int(b):02x}" for b in rng.integers(0, 4, 6))  # small space: clashes


MUTATIONS: list[Mutation] = [
    _move(200.0, 0.0),  # longitude out of range
    _move(0.0, 100.0),  # latitude out of range
    _coords(_ints),  # integer coordinates (valid)
    _coords(lambda c: [*c, 5.0] if c and not isinstance(c[0], list) else c),  # 3-D point
    _coords(lambda c: [str(v) for v in c] if c and not isinstance(c[0], list) else c),
    _coords(_unclose),
    _coords(
        lambda c: (
            [r[:3] for r in c] if c and isinstance(c[0], list) and isinstance(c[0][0], list) else c
        )
    ),
    _coords(lambda c: []),
    _set("radius_m", "30"),
    _set("radius_m", 0),
    _set("radius_m", 60_000),
    _set("radius_m", True),
    _set("radius_m", 30),
    _set("radius_m", None),
    _drop("radius_m"),
    _drop("store_id"),
    _set("store_id", "   "),
    _set("store_id", 7),
    _set("store_id", "  padded  "),
    _set("store_id", "s0000001"),  # probably a duplicate
    _set("merchant_id", None),
    _set("name", 5),
    _set("name", 0),
    _set("name", ""),
    _set("name", None),
    _set("name", "Café Ünïcode"),
    lambda f, rng: _set("wifi", [_bssid(rng)])(f, rng),
    _set("wifi", ["A4-2B-B0-C1-D2-E3"]),
    _set("wifi", ["nope"]),
    _set("wifi", "a4:2b:b0:c1:d2:e3"),
    lambda f, rng: _set("beacons", [f"{UUID}:{int(rng.integers(0, 3))}:1"])(f, rng),
    _set("beacons", ["bad:1:2"]),
    _set("beacons", [f"{UUID.lower()}:70000:1"]),
    _set("nfc", [""]),
    lambda f, rng: _set("nfc", [f" tag-{int(rng.integers(0, 5))} "])(f, rng),
    _set("tz", "Europe/Helsinki"),
    _set("tz", "Mars/Olympus"),
    _set("tz", 3),
    _set("max_accuracy_m", 50),
    _set("max_accuracy_m", -1),
    _set("max_accuracy_m", "x"),
    _set("tags", ["umbrella", "x"]),
    _set("tags", "umbrella"),
    _set("opening", {"mon": [9, 17]}),
    _set("note", None),
    _feature("bbox", [0, 0, 1, 1]),
    _feature("id", None),
    _feature("id", 3),
    _feature("id", "f-3"),
    _feature("id", True),
    _feature("coordinates", [1, 2]),
    _feature("properties", None),
    _feature("type", "feature"),
    _feature("geometry", None),
    _feature("extra", 1),
    lambda f, _: f.pop("properties", None),
    _geom("point", [24.0, 60.0]),
    _geom("MultiPolygon", [SQUARE]),
    _geom("Polygon", [SQUARE[0], HOLE]),
    _geom("Polygon", ACROSS),
    _geom("Polygon", BOWTIE),
    _geom("Polygon", _ints(SQUARE)),
    _geom("LineString", [[0, 0], [1, 1]]),
    lambda f, rng: (_geom("Polygon", SQUARE)(f, rng), _set("radius_m", 30)(f, rng)),
    lambda f, _: isinstance(f.get("geometry"), dict) and f["geometry"].update(bbox=[0, 0, 1, 1]),
    lambda f, _: isinstance(f.get("geometry"), dict) and f["geometry"].update(foo=1),
]


def _features(n: int, seed: int) -> list[dict[str, Any]]:
    return [to_feature(s) for s in synth_city(n, seed=seed).stores]


def _mutated(base: list[dict[str, Any]], seed: int, share: float) -> list[dict[str, Any]]:
    rng = np.random.default_rng(seed)
    feats = copy.deepcopy(base)
    for i in np.flatnonzero(rng.random(len(feats)) < share).tolist():
        for _ in range(int(rng.integers(1, 3))):
            MUTATIONS[int(rng.integers(len(MUTATIONS)))](feats[i], rng)
    return feats


def _both(features: list[Any]) -> tuple[Any, Any]:
    """(stores, problems) by the reference and by the bulk path, over the same encoded features."""
    raws = msgspec.json.decode(msgspec.json.encode(features), type=list[msgspec.Raw])
    slow = C._assemble((C._parse_feature(msgspec.json.decode(r)) for r in raws), [])
    chunk, fastload.CHUNK = fastload.CHUNK, 37  # chunk boundaries inside every test catalog
    try:
        fast = C._assemble(parse_features(raws), [])
    finally:
        fastload.CHUNK = chunk
    return slow, fast


def _same_stores(a: list[Store], b: list[Store]) -> None:
    assert a == b  # every field but properties, polygons by exact coordinates and type
    assert [s.properties for s in a] == [s.properties for s in b]
    for s, t in zip(a, b, strict=True):
        if s.polygon is not None:
            assert s.polygon.wkb == t.polygon.wkb  # type: ignore[union-attr]
        assert type(s.center) is type(t.center) and type(s.radius_m) is type(t.radius_m)


def test_every_mutation_alone_gives_the_same_result() -> None:
    base = _features(40, seed=3)
    for k, mutation in enumerate(MUTATIONS):
        feats = copy.deepcopy(base)
        rng = np.random.default_rng(k)
        for i in (0, 1, 5, 17):  # circles and polygons alike
            mutation(feats[i], rng)
        (s1, p1), (s2, p2) = _both(feats)
        assert p1 == p2, f"mutation {k}"
        _same_stores(s1, s2)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 2**31 - 1), share=st.sampled_from([0.02, 0.2, 0.6]))
def test_generated_catalogs_give_the_same_stores_and_problems(seed: int, share: float) -> None:
    base = _features(300, seed=seed % 7)
    (s1, p1), (s2, p2) = _both(_mutated(base, seed, share))
    assert p1 == p2
    _same_stores(s1, s2)


TYPED_BUT_WRONG: list[Mutation] = [
    _move(200.0, 0.0),
    _move(0.0, 100.0),
    _coords(_unclose),
    _set("radius_m", 0),
    _set("radius_m", "30"),
    _set("store_id", "s0000001"),
    _set("store_id", "   "),
    _set("name", 5),
    _set("wifi", ["nope"]),
    _set("wifi", ["A4-2B-B0-C1-D2-E3"]),
    _set("beacons", [f"{UUID.lower()}:70000:1"]),
    _set("tz", "Mars/Olympus"),
    _set("max_accuracy_m", -1),
    _set("tags", "umbrella"),
    _geom("Polygon", ACROSS),
    _geom("Polygon", BOWTIE),
    _geom("Polygon", [SQUARE[0], HOLE]),
]


def test_typed_but_wrong_features_are_explained_by_the_reference(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Features that fit the typed decoder but not the bulk checks are re-read and explained
    exactly as the reference does, also across chunk boundaries."""
    monkeypatch.setattr(fastload, "CHUNK", 7)
    feats = _features(60, seed=5)
    rng = np.random.default_rng(0)
    for k, mutation in enumerate(TYPED_BUT_WRONG):
        mutation(feats[2 * k], rng)
    (s1, p1), (s2, p2) = _both(feats)
    assert p1 == p2 and len(p1) >= 12
    _same_stores(s1, s2)


def test_non_features_in_the_array_are_explained_alike() -> None:
    feats: list[Any] = [*_features(5, seed=1), 3, "x", None, [1], {"type": "Feature"}]
    (s1, p1), (s2, p2) = _both(feats)
    assert p1 == p2 and p1
    _same_stores(s1, s2)


def _write(path: Path, features: list[Any]) -> Path:
    path.write_text(json.dumps({"type": "FeatureCollection", "features": features}))
    return path


def test_load_catalog_bulk_equals_reference_on_a_city(tmp_path: Path) -> None:
    path = _write(tmp_path / "c.geojson", _mutated(_features(3000, seed=0), 5, 0.0))
    slow, fast = load_catalog(path, bulk=False), load_catalog(path)
    _same_stores(slow.stores, fast.stores)
    assert slow._by_id == fast._by_id and slow.tagged == fast.tagged


def test_load_catalog_bulk_raises_the_same_problems(tmp_path: Path) -> None:
    path = _write(tmp_path / "bad.geojson", _mutated(_features(500, seed=2), 11, 0.1))
    with pytest.raises(CatalogError) as slow:
        load_catalog(path, bulk=False)
    with pytest.raises(CatalogError) as fast:
        load_catalog(path)
    assert slow.value.problems == fast.value.problems
    assert str(slow.value) == str(fast.value)


def test_identifier_clashes_in_an_otherwise_valid_catalog() -> None:
    """Every feature valid on its own (the fast lane of the checks across features), but BSSIDs,
    beacons and NFC tags claimed twice: the same clash problems and the same stores left out."""
    feats = _features(200, seed=8)
    rng = np.random.default_rng(8)
    for f in feats:
        f["properties"]["wifi"] = [_bssid(rng)]
        f["properties"]["nfc"] = [f"tag-{int(rng.integers(0, 150))}"]
        f["properties"]["beacons"] = [f"{UUID}:1:{int(rng.integers(0, 150))}"]
    raws = msgspec.json.decode(msgspec.json.encode(feats), type=list[msgspec.Raw])
    assert C._all_valid_alone(parse_features(raws))
    (s1, p1), (s2, p2) = _both(feats)
    assert p1 == p2 and len(p1) > 50 and len(s1) < 200
    _same_stores(s1, s2)


def test_repeated_members_read_alike(tmp_path: Path) -> None:
    """Loading lets the last of repeated members win (docs/catalog.md); the typed decoder must
    read them the same way, or leave the feature to the reference."""
    point = '{"type": "Point", "coordinates": [24.9, 60.1]}'
    feats = [
        '{"type": "Feature", "properties": {"store_id": "a", "merchant_id": "m", "radius_m": 30,'
        ' "store_id": "b"}, "geometry": ' + point + "}",
        '{"type": "Feature", "properties": {"store_id": "c", "merchant_id": "m", "radius_m": 30},'
        ' "geometry": ' + point + ', "geometry": {"type": "Point", "coordinates": [24.8, 60.2]}}',
        '{"type": "Feature", "properties": {"store_id": "d", "merchant_id": "m", "radius_m": 30},'
        ' "geometry": {"coordinates": [24.7, 60.3], "type": "Point", "type": "Point"}}',
    ]
    path = tmp_path / "dups.geojson"
    path.write_text('{"type": "FeatureCollection", "features": [' + ",".join(feats) + "]}")
    slow, fast = load_catalog(path, bulk=False), load_catalog(path)
    _same_stores(slow.stores, fast.stores)
    assert [s.store_id for s in fast.stores] == ["b", "c", "d"]
    assert fast.get("c").center == (24.8, 60.2)


# --------------------------------------------------------------------------------------------
# Columns (fastload.load_columns): a valid catalog without a Store object per feature


def _columns_vs_reference(features: list[Any], chunk: int = 37) -> C.Catalog | None:
    """load_columns over ``features`` held to the reference: None exactly when the reference
    finds a problem, else the same stores (every field, properties, polygons by WKB) and the
    same look-ups as ``Catalog(reference stores)``."""
    raws = msgspec.json.decode(msgspec.json.encode(features), type=list[msgspec.Raw])
    stores, problems = C._assemble((C._parse_feature(msgspec.json.decode(r)) for r in raws), [])
    old, fastload.CHUNK = fastload.CHUNK, chunk
    try:
        got = fastload.load_columns(raws)
    finally:
        fastload.CHUNK = old
    assert (got is None) == bool(problems), problems[:3]
    if got is not None:
        want = C.Catalog(stores)
        assert got.columns() is not None
        _same_stores(stores, list(got.stores))
        assert got._by_id == want._by_id and got.tagged == want.tagged
        assert got._by_bssid == want._by_bssid
        assert got._by_beacon == want._by_beacon and got._by_nfc == want._by_nfc
        assert list(got.owners()) == [(s.store_id, s.merchant_id) for s in stores]
    return got


def test_columns_every_mutation_alone() -> None:
    """Each mutation on one circle, then on one polygon, in an otherwise valid catalog."""
    base = _features(40, seed=3)
    circle = next(i for i, f in enumerate(base) if f["geometry"]["type"] == "Point")
    polygon = next(i for i, f in enumerate(base) if f["geometry"]["type"] == "Polygon")
    for k, mutation in enumerate(MUTATIONS):
        for i in (circle, polygon):
            feats = copy.deepcopy(base)
            mutation(feats[i], np.random.default_rng(k))
            for chunk in (7, 1000):
                _columns_vs_reference(feats, chunk)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 2**31 - 1), share=st.sampled_from([0.0, 0.01, 0.05, 0.3]))
def test_columns_on_generated_catalogs(seed: int, share: float) -> None:
    base = _features(300, seed=seed % 7)
    _columns_vs_reference(_mutated(base, seed, share))


VALID_VARIANTS: list[Mutation] = [
    _coords(_ints),
    _set("radius_m", 30),
    _set("store_id", "  padded  "),
    _set("name", 0),
    _set("name", None),
    _set("name", "Café Ünïcode"),
    _set("wifi", ["A4-2B-B0-C1-D2-E3", "a4:2b:b0:c1:d2:e3", " a4:2b:b0:c1:d2:e4 "]),
    _set("wifi", []),
    _set("beacons", [f"{UUID.lower()}:7:1", f"{UUID}:0007:1", f"{UUID}: 65535:0"]),
    _set("nfc", [" tag-a ", "tag-a", "tag-b"]),
    _set("tz", "Europe/Helsinki"),
    _set("tz", None),
    _set("max_accuracy_m", 50),
    _set("max_accuracy_m", 12.5),
    _set("tags", ["umbrella", "x"]),
    _set("tags", []),
    _set("opening", {"mon": [9, 17]}),
    _set("note", None),
    _feature("id", 3),
    _feature("id", "f-3"),
    _feature("bbox", [0, 0, 1, 1]),
    _geom("MultiPolygon", [SQUARE]),
    _geom("Polygon", [SQUARE[0], HOLE]),
    _geom("Polygon", ACROSS),
    _geom("Polygon", [[[24, 60], [25, 60], [25, 61], [24, 61], [24, 60]]]),
]


def test_columns_valid_variants_one_per_store() -> None:
    """Catalogs that are valid but written in every unusual way the loader accepts: one
    variant per store (identifiers made unique), all chunk sizes: the same catalog."""
    feats = _features(2 * len(VALID_VARIANTS), seed=4)
    rng = np.random.default_rng(4)
    for k, mutation in enumerate(VALID_VARIANTS):
        mutation(feats[2 * k], rng)
    for k, f in enumerate(feats):  # one store's identifiers never clash with another's
        p = f["properties"]
        for key in ("wifi", "nfc"):
            if key in p:
                p[key] = [
                    re.sub("b0", f"{k:02x}", v, flags=re.I) if key == "wifi" else f"{v}-{k}"
                    for v in p[key]
                ]
        if "beacons" in p:
            p["beacons"] = [v.rsplit(":", 1)[0] + f":{k}" for v in p["beacons"]]
    for chunk in (1, 3, 7, 1000):
        assert _columns_vs_reference(feats, chunk) is not None


def test_columns_take_the_fast_lane(monkeypatch: pytest.MonkeyPatch) -> None:
    """A plain catalog and one whose stores carry other properties never go feature by
    feature (``_bulk``), and the index built from the columns makes no Store object."""
    calls: list[int] = []
    real = fastload._bulk

    def spy(*a: Any) -> Any:
        calls.append(1)
        return real(*a)

    monkeypatch.setattr(fastload, "_bulk", spy)
    feats = _features(500, seed=6)
    for k in range(0, 500, 5):
        feats[k]["properties"].update(
            wifi=[f"00:00:00:00:{k >> 8:02x}:{k & 255:02x}"],
            beacons=[f"{UUID}:1:{k}"],
            nfc=[f"nfc-{k}"],
            tz="Europe/Helsinki",
            tags=["x"],
            max_accuracy_m=40,
        )
    assert _columns_vs_reference(feats) is not None
    extra = copy.deepcopy(feats)
    for f in extra:
        f["properties"]["address"] = "Main St 1"
    assert _columns_vs_reference(extra) is not None
    assert not calls
    from fences.index import FenceIndex

    got = fastload.load_columns(
        msgspec.json.decode(msgspec.json.encode(feats), type=list[msgspec.Raw])
    )
    assert got is not None
    index = FenceIndex(got)
    assert list.count(got.stores, None) == len(got.stores)  # no Store object made
    ref = FenceIndex(list(got.stores))
    for name, a in ref.base_arrays().items():
        assert np.array_equal(a, index.base_arrays()[name], equal_nan=True), name


def test_columns_removal_and_compaction_read_the_stores() -> None:
    """After a change the catalog is no longer as loaded: the index rebuilds from the stores."""
    got = _columns_vs_reference(_features(200, seed=9))
    assert got is not None
    from fences.index import FenceIndex

    index = FenceIndex(got)
    first = got.stores[0]
    index.remove(first.store_id)
    assert got.columns() is None
    index.compact()
    assert first.store_id not in {got.stores[s].store_id for s, _ in index.query(*_near(first))}
    assert len(index) == 199


def _near(store: Store) -> tuple[float, float]:
    if store.center is not None:
        return store.center
    pt = store.polygon.representative_point()  # type: ignore[union-attr]
    return float(pt.x), float(pt.y)


def test_columns_step_aside_for_clashes_across_stores() -> None:
    """Every feature valid on its own: a store_id used twice, or one BSSID, beacon or NFC tag
    claimed by two stores, and the columns step aside (the reference explains)."""
    base = _features(60, seed=8)
    for key, values in (
        ("store_id", None),
        ("wifi", ["a4:2b:b0:c1:d2:e3"]),
        ("beacons", [f"{UUID}:1:2"]),
        ("nfc", ["tag-1"]),
    ):
        feats = copy.deepcopy(base)
        if values is None:
            feats[40]["properties"]["store_id"] = feats[3]["properties"]["store_id"]
        else:
            feats[3]["properties"][key] = values
            feats[40]["properties"][key] = [v.upper() if key == "wifi" else v for v in values]
        for chunk in (7, 1000):
            assert _columns_vs_reference(feats, chunk) is None, key


COORDINATES = [
    "[24.5, 60.25]", "[24, 60]", "[-0.0, 1e-3]", "[1E2, -2.5e+1]", "[ 24.5 ,\n60.25 ]",
    "[24.5]", "[24.5, 60, 3]", "[]", "[[24.5, 60]]", "[24.5, [60]]", '["24.5", 60]',
    "[null, 60]", "[true, 60]", "[1e400, 60]", "5", "[{}, 1]",
    "[[[0, 0], [1, 0], [1, 1], [0, 0]]]",
    "[[[0, 0], [1, 0], [1, 1], [0, 0]], [[0.1, 0.1], [0.2, 0.1], [0.2, 0.2], [0.1, 0.1]]]",
    "[[[0, 0], [1, 0], [1, 1]]]", "[[]]", "[]", "[[[]]]", "[[[0, 0, 1], [1, 0], [1, 1], [0, 0]]]",
    "[[[0, 0], [1, 0], [1, 1], [0, 0]], [0, 0]]", "[[[0, 0], [1, 0], [1, 1], [0, 0]], 7]",
    "[[[0, 0], [1, 0], [1, [1]], [0, 0]]]", "[[[[0, 0]], [1, 0], [1, 1], [0, 0]]]",
    "[[[0, 0], [1, 0], [], [0, 0]]]", '[[[0, 0], [1, 0], [1, "1"], [0, 0]]]',
    "[[[0, 0], [1, 0], [1, 1], [0, 0], 5]]", "[5, [[0, 0], [1, 0], [1, 1], [0, 0]]]",
    "[[5, [0, 0], [1, 0], [1, 1], [0, 0]]]", "[[[0, 0], [1, 0], [1, 1], [0, 0]], []]",
    "[[0, 0], [1, 0], [1, 1], [0, 0]]", "[[[[0, 0], [1, 0], [1, 1], [0, 0]]]]",
    "[[[0,0],[1,0],[1,1],[0,0]],[[0,0],[1,0],[1,1],[0,0]],[[0,0],[1,0],[1,1],[0,0]]]",
    "[[[-1.5e-3,2E+2],[1,0],[1,1],[-1.5e-3,2E+2]]]", "[ [ [ 0 , 0 ] , [ 1 , 0 ] ] ]",
    "[[[0, 0], [1, 0]], [[0, 0], [1, 0], 2]]", "[[[0, 0], [1, 0]], [[0, 0], [1, [0, 2]]]]",
    "[[[0, 0], [1, 0]], [[0, 0], [[1, 0]]]]", "[[[0, 0], [1, 0]], [[0, 0], [1, 0]], 2]",
    "[[[0, 0], [1, 0]], [[0, 0], [1, 0]], [2]]", "[[[0, 0]], [[0, 0], [1, 0]], [[2, 3]]]",
    "[[1, 2], 3]", "[1, [2, 3]]", "[[1], [2]]", "[1, 2, [3]]", "[-0, 0.5e-7]",
]  # fmt: skip


def test_numbers_reads_coordinates_as_the_typed_decoder_does() -> None:
    """fastload._numbers (coordinates left encoded, read in bulk) against the typed decoder of
    a Point's or a Polygon's coordinates: the same numbers and rings, or both refuse (or
    _numbers an empty polygon or ring); alone and after a valid value (one bad value refuses
    the batch)."""
    point = msgspec.json.Decoder(tuple[float, float])
    polygon = msgspec.json.Decoder(list[list[tuple[float, float]]])
    good = {1: "[24.5, 60.25]", 3: "[[[0, 0], [1, 0], [1, 1], [0, 0]]]"}
    for text in COORDINATES:
        for depth, decoder in ((1, point), (3, polygon)):
            try:
                want: Any = decoder.decode(text)
            except msgspec.ValidationError:
                want = None
            raws = [msgspec.json.decode(v, type=msgspec.Raw) for v in (good[depth], text)]
            for batch in (raws[1:], raws):
                got = fastload._numbers(batch, depth)
                if want is None:
                    assert got is None, (text, depth)
                    continue
                if got is None:  # only an empty polygon or ring, which the columns refuse anyway
                    assert depth == 3 and (not want or not all(want)), text
                    continue
                xy, rlen, nring = got
                if depth == 1:
                    assert xy[-1].tolist() == list(want)
                    continue
                rings = [[tuple(v) for v in ring] for ring in want]
                assert xy[-sum(map(len, rings)) :].tolist() == [list(v) for v in sum(rings, [])]
                assert rlen[-len(rings) :].tolist() == [len(r) for r in rings]
                assert nring[-1] == len(rings)


def _random_coordinates(rng: np.random.Generator, depth: int) -> Any:
    """A value the typed decoder of a Point's (depth 1) or a Polygon's (depth 3) coordinates
    mostly accepts, now and then with a nesting error or a non-number in it."""

    def number() -> Any:
        return (
            float(rng.normal(0, 10.0 ** rng.integers(-3, 4)))
            if rng.random() < 0.8
            else int(rng.integers(-180, 181))
        )

    def position() -> Any:
        r = rng.random()
        if r < 0.97:
            return [number(), number()]
        return [[number(), number()]] if r < 0.98 else [number()] if r < 0.99 else number()

    if depth == 1:
        return position()
    rings = [
        [position() for _ in range(int(rng.integers(1, 8)))] for _ in range(rng.integers(1, 4))
    ]
    if rng.random() < 0.03:
        rings.insert(int(rng.integers(0, len(rings) + 1)), position())
    if rng.random() < 0.02:
        rings[0].insert(int(rng.integers(0, len(rings[0]) + 1)), copy.deepcopy(rings[-1]))
    return rings


@pytest.mark.parametrize("depth", [1, 3])
def test_numbers_on_generated_batches(depth: int) -> None:
    """fastload._numbers on batches of generated values (mostly valid, some with a position
    nested too deep or too shallow, a number where an array belongs, an array of one or three
    numbers) against the typed decoder of every value: all of the batch or None when any value
    is refused."""
    decoder = msgspec.json.Decoder(
        tuple[float, float] if depth == 1 else list[list[tuple[float, float]]]
    )
    rng = np.random.default_rng(depth)
    refused = 0
    for _ in range(300):
        values = [_random_coordinates(rng, depth) for _ in range(int(rng.integers(1, 12)))]
        texts = [json.dumps(v, indent=None if rng.random() < 0.5 else 1) for v in values]
        raws = [msgspec.json.decode(t, type=msgspec.Raw) for t in texts]
        want: list[Any] = []
        try:
            want = [decoder.decode(t) for t in texts]
        except msgspec.ValidationError:
            want = []
        got = fastload._numbers(raws, depth)
        if not want:
            refused += 1
            assert got is None, texts
            continue
        assert got is not None, texts
        xy, rlen, nring = got
        if depth == 1:
            assert xy.tolist() == [list(p) for p in want]
            continue
        rings = [ring for poly in want for ring in poly]
        assert xy.tolist() == [list(p) for ring in rings for p in ring]
        assert rlen.tolist() == [len(r) for r in rings]
        assert nring.tolist() == [len(poly) for poly in want]
    assert 20 < refused < 280  # both kinds of batch were tried


def _ring_cases(rng: np.random.Generator) -> list[list[list[list[float]]]]:
    """Polygons (lists of rings) of every kind the star test meets: stars and convex rings in
    either orientation, random vertex orders (mostly self-intersecting), bow ties, spikes,
    repeated and collinear vertices, rings wound twice (pentagrams), near-degenerate rings,
    rings with holes, around the equator and the prime meridian and far from them."""
    out: list[list[list[list[float]]]] = []
    for _ in range(3000):
        lon0, lat0 = (
            (float(rng.uniform(-179, 179)), float(rng.uniform(-89, 89)))
            if rng.random() < 0.7
            else (float(rng.normal(0, 1e-4)), float(rng.normal(0, 1e-4)))
        )
        size = 10.0 ** rng.uniform(-7, -1)
        k = int(rng.integers(3, 13))
        kind = rng.integers(0, 8)
        ang = np.sort(rng.uniform(0, 2 * np.pi, k))
        rad = size * (rng.uniform(0.5, 1.0, k) if kind != 1 else np.ones(k))
        if kind == 2:  # random order
            rng.shuffle(ang)
        elif kind == 3:  # wound twice
            ang = np.concatenate([ang, ang + 2 * np.pi]) * 1.0
            rad = np.concatenate([rad, rad[::-1]])
        elif kind == 4:  # a spike, a repeat or a collinear vertex
            ang = np.insert(ang, 1, ang[1] if rng.random() < 0.5 else ang[0])
            rad = np.insert(rad, 1, rad[0] * rng.choice([1.0, 0.5, 2.0]))
        elif kind == 5:  # nearly degenerate: every vertex nearly on one line
            ang = np.where(np.arange(len(ang)) % 2 == 0, 0.0, np.pi) + rng.normal(
                0, 1e-12, len(ang)
            )
        pts = np.stack([lon0 + rad * np.cos(ang), lat0 + rad * np.sin(ang)], axis=1)
        if rng.random() < 0.5:
            pts = pts[::-1]
        if kind == 6:  # a bow tie
            pts = np.array([[0, 0], [1, 1], [1, 0], [0, 1]]) * size + [lon0, lat0]
        ring = [*pts.tolist(), pts[0].tolist()]
        rings = [ring]
        if kind == 7:  # a hole, inside or not
            f = 0.2 if rng.random() < 0.7 else 3.0
            hole = pts * f + np.array([lon0, lat0]) * (1 - f)
            rings.append([*hole.tolist(), hole[0].tolist()])
        out.append(rings)
    return out


def test_surely_valid_vouches_only_for_valid_polygons() -> None:
    """fastload._surely_valid (the star test that spares GEOS most polygons) against GEOS: it
    may leave a valid polygon to GEOS, never vouch for an invalid one."""
    rng = np.random.default_rng(11)
    cases = _ring_cases(rng)
    xy = np.array([p for poly in cases for ring in poly for p in ring], dtype=np.float64)
    rlen = np.array([len(ring) for poly in cases for ring in poly], dtype=np.int64)
    nring = np.array([len(poly) for poly in cases], dtype=np.int64)
    sure = fastload._surely_valid(xy, rlen, nring)
    valid = shapely.is_valid(
        [shapely.Polygon(poly[0], poly[1:]) for poly in cases]  # type: ignore[arg-type]
    )
    assert not (sure & ~valid).any(), [cases[i] for i in np.flatnonzero(sure & ~valid)[:3]]
    assert sure.sum() > 0.2 * len(cases) and (~valid).sum() > 0.2 * len(cases)


def test_surely_valid_takes_most_generated_city_polygons() -> None:
    """The polygons of fences.synth (star-shaped) are mostly vouched for, so GEOS checks few."""
    polys = [s.polygon for s in synth_city(3000, seed=5).stores if s.polygon is not None]
    xy, (ring_off, poly_off) = shapely.to_ragged_array(polys)[1:]
    sure = fastload._surely_valid(xy, np.diff(ring_off), np.diff(poly_off))
    assert sure.mean() > 0.9


# The text cut at line breaks (fastload.load_columns_text): no top-level decode


def _layouts(features: list[Any]) -> dict[str, bytes]:
    """One collection written in several ways: as dump_catalog does (a feature per line, the
    comma at the end), comma first, indented (line breaks inside the features), on one line,
    with blank lines and CRLF, with spaces around everything."""
    enc = [json.dumps(f).encode() for f in features]
    head = b'{"type": "FeatureCollection", "features": ['
    return {
        "per_line": head + b"\n" + b",\n".join(enc) + b"\n]}\n",
        "comma_first": head + b"\n" + b"\n,".join(enc) + b"\n]}",
        "indented": json.dumps(
            {"type": "FeatureCollection", "features": features}, indent=1
        ).encode(),
        "one_line": head + b",".join(enc) + b"]}",
        "blank_crlf": head + b"\r\n\r\n" + b",\r\n\r\n".join(enc) + b"\r\n\r\n]\r\n}\r\n",
        "spaced": b' { "type" :  "FeatureCollection" ,\t"features" : [ \n '
        + b" , \n ".join(enc)
        + b" \n ] \n } ",
    }


def _text_vs_reference(text: bytes, tmp_path: Path) -> None:
    """load_catalog of ``text`` (the cut text first) as the reference loads it: the same stores
    or the same problems; load_columns_text, when it takes the text, as load_columns does."""
    path = tmp_path / "c.geojson"
    path.write_bytes(text)
    try:
        want: Any = list(load_catalog(path, bulk=False).stores)
    except CatalogError as exc:
        want = exc.problems
    try:
        got: Any = list(load_catalog(path).stores)
    except CatalogError as exc:
        got = exc.problems
    if isinstance(want, list) and want and isinstance(want[0], Store):
        _same_stores(want, got)
    else:
        assert got == want
    done, cat = fastload.load_columns_text(text)
    if done:
        plain = msgspec.json.decode(text, type=C._Collection)
        again = fastload.load_columns(plain.features)
        assert (cat is None) == (again is None)
        if cat is not None and again is not None:
            _same_stores(list(again.stores), list(cat.stores))
            assert cat._by_id == again._by_id and cat._by_bssid == again._by_bssid


@pytest.mark.parametrize("size", [1, 300, 5000, 10**9])
def test_cut_text_reads_as_the_reference(
    size: int, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Valid catalogs and catalogs with problems, in every layout, cut every line, every few
    features or not at all: the same stores or the same problems as the reference."""
    monkeypatch.setattr(fastload, "CHUNK_BYTES", size)
    base = _features(60, seed=12)
    for k in range(0, 60, 7):
        base[k]["properties"].update(wifi=[f"00:00:00:00:00:{k:02x}"], nfc=[f"n{k}"])
    taken = 0
    for feats in (base, _mutated(base, 3, 0.1)):
        for name, text in _layouts(feats).items():
            _text_vs_reference(text, tmp_path)
            taken += fastload.load_columns_text(text)[0]
            if name == "indented" and size < 10**9:
                assert not fastload.load_columns_text(text)[0]  # cut inside features: refused
    assert taken >= 8


def test_cut_text_refuses_what_is_not_json(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Two commas or none where the text is cut, a comma before the first feature or after the
    last, something after the collection, other members: never taken as features, and
    load_catalog says what the reference says."""
    monkeypatch.setattr(fastload, "CHUNK_BYTES", 1)  # a cut at every line break
    enc = [json.dumps(f).encode() for f in _features(6, seed=13)]
    head = b'{"type": "FeatureCollection", "features": [\n'
    bad = {
        "two_commas": head + enc[0] + b",\n," + b",\n".join(enc[1:]) + b"\n]}",
        "no_comma": head + enc[0] + b"\n" + b",\n".join(enc[1:]) + b"\n]}",
        "comma_first": head + b",\n" + b",\n".join(enc) + b"\n]}",
        "comma_last": head + b",\n".join(enc) + b",\n]}",
        "after": head + b",\n".join(enc) + b"\n]}\n[]",
        "member": head + b",\n".join(enc) + b'\n], "bbox": [0, 0, 1, 1]}',
        "cut_member": head + b",\n".join(enc) + b'\n]\n, "bbox": [0, 0, 1, 1]}',
        "half": head + b",\n".join(enc)[: len(b",\n".join(enc)) // 2] + b"\n]}",
        "nested": head + b"[\n" + b",\n".join(enc) + b"\n]]}",
    }
    for name, text in bad.items():
        done, cat = fastload.load_columns_text(text)
        assert not done and cat is None, name
        _text_vs_reference(text, tmp_path)

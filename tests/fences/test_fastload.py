"""fences.fastload (bulk validation) held to the feature-by-feature reference: on generated
catalogs with invalid and unusual features mixed in, both give the same stores and the same
problems, in the same order, with the same messages."""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgspec
import numpy as np
import pytest
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

"""fences.catalog: parsing, strict validation (every problem at once), look-ups, tombstones,
writing, and Turf's boolean-valid fixtures for polygons."""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import shapely
from hypothesis import given, settings
from hypothesis import strategies as st

from fences import antimeridian, geojson
from fences.catalog import (
    _jumps,
    _position_ok,
    catalog_to_geojson,
    dump_catalog,
    load_catalog,
    parse_catalog,
    parse_stores,
    store_from_feature,
    to_feature,
    validate,
)
from fences.errors import CatalogError, Problem, UnknownStoreError

UUID = "f7826da6-4fa2-4e98-8024-bc5b71e0893e"
SQUARE = [[[24.0, 60.0], [24.001, 60.0], [24.001, 60.001], [24.0, 60.001], [24.0, 60.0]]]
HOLE = [
    [24.0004, 60.0004],
    [24.0006, 60.0004],
    [24.0006, 60.0006],
    [24.0004, 60.0006],
    [24.0004, 60.0004],
]


def circle(sid: str = "c-1", lon: float = 24.9, lat: float = 60.1, **props: Any) -> dict[str, Any]:
    p = {"store_id": sid, "merchant_id": "m-1", "radius_m": 30, **props}
    return {
        "type": "Feature",
        "properties": p,
        "geometry": {"type": "Point", "coordinates": [lon, lat]},
    }


def polygon(
    sid: str = "p-1", coords: Any = None, kind: str = "Polygon", **props: Any
) -> dict[str, Any]:
    p = {"store_id": sid, "merchant_id": "m-2", **props}
    geom = {"type": kind, "coordinates": copy.deepcopy(SQUARE if coords is None else coords)}
    return {"type": "Feature", "properties": p, "geometry": geom}


def fc(*features: Any) -> dict[str, Any]:
    return {"type": "FeatureCollection", "features": list(features)}


def test_valid_catalog_parses_with_normalised_identifiers() -> None:
    cat = parse_catalog(
        fc(
            circle(
                "c-1",
                wifi=["AA-BB-CC-DD-EE-FF", "aa:bb:cc:dd:ee:ff"],
                beacons=[f"{UUID}:1:42"],
                nfc=[" tag-1 "],
                tz="Europe/Helsinki",
                tags=["coffee"],
                floor=2,
            ),
            polygon("p-1", [SQUARE[0], HOLE], max_accuracy_m=40),
        )
    )
    assert len(cat) == 2
    c, p = cat.get("c-1"), cat.get("p-1")
    assert c.is_circle and c.center == (24.9, 60.1) and c.radius_m == 30
    assert c.wifi == ("aa:bb:cc:dd:ee:ff",)  # normalised and de-duplicated
    assert c.beacons == (f"{UUID.upper()}:1:42",)
    assert c.nfc == ("tag-1",) and c.tz == "Europe/Helsinki" and c.tags == ("coffee",)
    assert c.properties == {"floor": 2}  # unknown properties are kept
    assert cat.by_bssid("AA:BB:CC:DD:EE:FF") == 0
    assert cat.by_beacon(UUID, "1", 42) == 0
    assert cat.by_nfc("tag-1") == 0
    assert not p.is_circle and p.tz == "UTC" and p.max_accuracy_m == 40
    assert c.max_accuracy_m == 100.0
    # holes are honoured: the hole's centre is not in the fence, the ring between is
    assert not p.polygon.contains(shapely.Point(24.0005, 60.0005))
    assert p.polygon.contains(shapely.Point(24.0002, 60.0002))


# (what is wrong, how to break a valid catalog, words the reason must contain)
BROKEN: list[tuple[str, Any, str]] = [
    ("unclosed ring", lambda f: f[1]["geometry"]["coordinates"][0].pop(), "is not closed"),
    (
        "short ring",
        lambda f: f[1]["geometry"].update(coordinates=[[[0, 0], [1, 0], [0, 0]]]),
        "at least 4",
    ),
    (
        "self-intersection",
        lambda f: f[1]["geometry"].update(coordinates=[[[0, 0], [2, 2], [2, 0], [0, 2], [0, 0]]]),
        "Self-intersection",
    ),
    (
        "hole outside",
        lambda f: f[1]["geometry"]["coordinates"].append([[30, 0], [31, 0], [31, 1], [30, 0]]),
        "hole lies outside",
    ),
    ("lon out of range", lambda f: f[0]["geometry"].update(coordinates=[181, 0]), "out of range"),
    (
        "lat out of range",
        lambda f: f[1]["geometry"]["coordinates"][0][2].__setitem__(1, 91.0),
        "out of range",
    ),
    ("lat lon swapped", lambda f: f[0]["geometry"].update(coordinates=[60.1, 124.9]), "swap them"),
    ("NaN", lambda f: f[0]["geometry"].update(coordinates=[math.nan, 60.0]), "not NaN"),
    (
        "string coordinate",
        lambda f: f[0]["geometry"].update(coordinates=[24.9, "60.1"]),
        "must be a number",
    ),
    (
        "duplicate store_id",
        lambda f: f[1]["properties"].update(store_id="c-1"),
        "already used by feature 0",
    ),
    (
        "radius too small",
        lambda f: f[0]["properties"].update(radius_m=0.5),
        "radius_m 0.5 is out of range",
    ),
    ("radius too big", lambda f: f[0]["properties"].update(radius_m=50_001), "out of range"),
    (
        "radius as text",
        lambda f: f[0]["properties"].update(radius_m="30"),
        "radius_m must be a number",
    ),
    ("Point without radius", lambda f: f[0]["properties"].pop("radius_m"), "needs radius_m"),
    (
        "radius on polygon",
        lambda f: f[1]["properties"].update(radius_m=10),
        "only applies to a Point",
    ),
    (
        "malformed BSSID",
        lambda f: f[0]["properties"].update(wifi=["aa:bb:cc:dd:ee"]),
        "BSSID 'aa:bb:cc:dd:ee' is malformed",
    ),
    (
        "malformed beacon",
        lambda f: f[0]["properties"].update(beacons=["abc:1:2"]),
        "beacon id 'abc:1:2' is malformed",
    ),
    (
        "beacon minor too big",
        lambda f: f[0]["properties"].update(beacons=[f"{UUID}:1:70000"]),
        "is malformed",
    ),
    (
        "BSSID claimed twice",
        lambda f: f[1]["properties"].update(wifi=["00:11:22:33:44:55"]),
        "also claimed by feature 0",
    ),
    (
        "beacon claimed twice",
        lambda f: f[1]["properties"].update(beacons=[f"{UUID.upper()}:7:8"]),
        "also claimed by feature 0",
    ),
    (
        "NFC claimed twice",
        lambda f: f[1]["properties"].update(nfc=["n-1"]),
        "NFC tag n-1 is also claimed",
    ),
    ("missing store_id", lambda f: f[1]["properties"].pop("store_id"), "store_id is missing"),
    (
        "missing merchant_id",
        lambda f: f[1]["properties"].pop("merchant_id"),
        "merchant_id is missing",
    ),
    ("numeric store_id", lambda f: f[1]["properties"].update(store_id=17), "non-empty string"),
    ("wrong geometry type", lambda f: f[1]["geometry"].update(type="LineString"), "is not a fence"),
    ("geometry type case", lambda f: f[1]["geometry"].update(type="polygon"), "case-sensitive"),
    ("null geometry", lambda f: f[1].update(geometry=None), "geometry is null"),
    ("bad tz", lambda f: f[0]["properties"].update(tz="Europe/Atlantis"), "not an IANA time zone"),
    (
        "bad max_accuracy",
        lambda f: f[0]["properties"].update(max_accuracy_m=-1),
        "must be positive",
    ),
    (
        "pole",
        lambda f: f[1]["geometry"].update(
            coordinates=[[[-160, 80], [0, 80], [160, 80], [-160, 80]]]
        ),
        "winds around a pole",
    ),
    ("not a Feature", lambda f: f[1].update(type="Featur"), '"type" must be "Feature"'),
    ("feature id object", lambda f: f[1].update(id={}), '"id" must be a string or a number'),
    ("bad bbox", lambda f: f[1].update(bbox=[1, 2, 3]), "bbox has 3 elements"),
    ("name not text", lambda f: f[1]["properties"].update(name=5), "name must be a string"),
]


def _good() -> list[dict[str, Any]]:
    return [
        circle("c-1", wifi=["00:11:22:33:44:55"], beacons=[f"{UUID}:7:8"], nfc=["n-1"]),
        polygon("p-1"),
    ]


def test_good_base_is_clean() -> None:
    assert validate(fc(*_good())) == []


@pytest.mark.parametrize(("what", "breaker", "words"), BROKEN, ids=[b[0] for b in BROKEN])
def test_each_problem_is_reported_with_an_actionable_reason(
    what: str, breaker: Any, words: str
) -> None:
    feats = _good()
    breaker(feats)
    problems = validate(fc(*feats))
    assert problems, what
    assert any(words in p.reason for p in problems), [str(p) for p in problems]
    assert all(p.index in (0, 1) for p in problems)
    with pytest.raises(CatalogError):
        parse_catalog(fc(*feats))


def test_every_problem_at_once_with_index_and_store_id() -> None:
    feats = [circle(f"c-{i}", lon=24 + i / 1000) for i in range(10)]
    feats[2]["properties"]["radius_m"] = 0
    feats[5]["properties"]["wifi"] = ["nope"]
    feats[5]["properties"]["tz"] = "Nowhere/Land"
    feats[7]["properties"]["store_id"] = "c-1"
    feats.append(polygon("s-17"))
    feats[10]["geometry"]["coordinates"][0].pop()
    with pytest.raises(CatalogError) as info:
        parse_catalog(fc(*feats))
    problems = info.value.problems
    assert [p.index for p in problems] == [2, 5, 5, 7, 10]
    assert problems[3].store_id == "c-1"
    assert str(problems[4]) == (
        "feature 10 (store_id 's-17'): ring 0 of polygon is not closed: its last coordinate "
        "[24.0, 60.001] differs from its first [24.0, 60.0]; repeat the first coordinate at the end"
    )
    assert "5 problem(s)" in str(info.value)


def test_unclosed_ring_is_an_error_even_though_shapely_would_close_it() -> None:
    ring = SQUARE[0][:-1]
    assert shapely.Polygon(ring).is_valid  # shapely closes it silently...
    assert validate(fc(polygon("p", [ring])))  # ...we do not


def test_valid_parts_are_still_returned_by_parse_stores() -> None:
    feats = _good()
    feats[1]["properties"]["radius_m"] = 3
    stores, problems = parse_stores(fc(*feats))
    assert [s.store_id for s in stores] == ["c-1"] and len(problems) == 1


def test_collection_level_problems() -> None:
    assert validate([]) == [Problem(None, None, validate([])[0].reason)]
    assert "FeatureCollection" in validate({"type": "Feature"})[0].reason
    assert "features" in validate({"type": "FeatureCollection"})[-1].reason
    assert any(
        "properties" in p.reason
        for p in validate({"type": "FeatureCollection", "properties": {}, "features": []})
    )


def test_antimeridian_polygon_is_split_into_parts_in_range() -> None:
    ring = [[170, 40], [-170, 40], [-170, 50], [170, 50], [170, 40]]
    store = parse_catalog(fc(polygon("am", [ring]))).get("am")
    assert isinstance(store.polygon, shapely.MultiPolygon) and len(store.polygon.geoms) == 2
    minx, _, maxx, _ = store.polygon.bounds
    assert minx == -180 and maxx == 180
    assert store.polygon.contains(shapely.Point(179, 45)) and store.polygon.contains(
        shapely.Point(-179, 45)
    )
    assert not store.polygon.contains(shapely.Point(0, 45))


def test_store_from_feature_and_round_trip(tmp_path: Path) -> None:
    feats = [
        circle(
            "c-1", wifi=["00:11:22:33:44:55"], tz="Asia/Tokyo", max_accuracy_m=50, extra={"a": 1}
        ),
        polygon("p-1", [SQUARE[0], HOLE], name="Shop", tags=["x"]),
        polygon(
            "m-1",
            [[SQUARE[0]], [[[25, 60], [25.001, 60], [25.001, 60.001], [25, 60]]]],
            kind="MultiPolygon",
        ),
        polygon("am", [[[170, 40], [-170, 40], [-170, 50], [170, 50], [170, 40]]]),
    ]
    cat = parse_catalog(fc(*feats))
    assert store_from_feature(feats[0]) == cat.get("c-1")
    with pytest.raises(CatalogError) as info:
        store_from_feature(circle("x", radius_m=-1), index=4)
    assert info.value.problems[0].index == 4
    path = tmp_path / "out.geojson"
    assert dump_catalog(cat, path) == 4
    again = load_catalog(path)
    for sid in ("c-1", "p-1", "m-1", "am"):
        a, b = cat.get(sid), again.get(sid)
        assert a == b, sid
        assert a.properties == b.properties
    assert to_feature(cat.get("c-1"))["properties"]["extra"] == {"a": 1}


def test_unwritable_store_is_a_clear_error_and_leaves_no_file(tmp_path: Path) -> None:
    import dataclasses

    store = store_from_feature(circle("c-1"))
    bad = dataclasses.replace(store, properties={"when": object()})
    path = tmp_path / "out.geojson"
    with pytest.raises(CatalogError, match="cannot be written as JSON"):
        dump_catalog([store, bad], path)
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(CatalogError, match="cannot write"):
        dump_catalog([store], tmp_path / "missing-dir" / "x.geojson")


def test_catalog_remove_leaves_a_tombstone() -> None:
    cat = parse_catalog(fc(*_good()))
    assert cat.remove("c-1") == 0
    assert len(cat) == 1 and not cat.is_alive(0) and cat.is_alive(1)
    assert cat.by_bssid("00:11:22:33:44:55") is None and cat.by_nfc("n-1") is None
    with pytest.raises(UnknownStoreError):
        cat.get("c-1")
    with pytest.raises(UnknownStoreError):
        cat.remove("c-1")
    assert [s.store_id for _, s in cat.alive()] == ["p-1"]
    assert [f["properties"]["store_id"] for f in catalog_to_geojson(cat)["features"]] == ["p-1"]
    store = store_from_feature(circle("c-1", wifi=["00:11:22:33:44:55"]))
    assert cat.add(store) == 2  # a new slot; the tombstone is never reused
    assert cat.by_bssid("00:11:22:33:44:55") == 2 and len(cat) == 2


def test_load_catalog_file_errors(tmp_path: Path) -> None:
    with pytest.raises(CatalogError, match="cannot read"):
        load_catalog(tmp_path / "missing.geojson")
    bad = tmp_path / "bad.geojson"
    bad.write_text('{"type": "FeatureCollection",\n "features": [}\n')
    with pytest.raises(CatalogError, match="line 2"):
        load_catalog(bad)
    dup = tmp_path / "dup.geojson"
    dup.write_text('{"type": "FeatureCollection", "type": "Feature", "features": []}')
    with pytest.raises(CatalogError, match="twice"):
        load_catalog(dup, strict=True)
    for text, words in (
        ("[1, 2]", "got an array"),
        ('{"type": "FeatureCollection", "features": {}}', '"features" must be an array'),
        ('{"type": "FeatureCollection", "features": [NaN]}', "NaN and Infinity are not JSON"),
    ):
        other = tmp_path / "other.geojson"
        other.write_text(text)
        with pytest.raises(CatalogError, match=words):
            load_catalog(other)


def test_lazy_and_strict_loading_agree(tmp_path: Path) -> None:
    feats = _good() + [circle(f"x{i}", lon=24 + i / 100) for i in range(20)]
    path = tmp_path / "c.geojson"
    path.write_text(json.dumps(fc(*feats)))
    lazy, strict = load_catalog(path), load_catalog(path, strict=True)
    assert lazy.stores == strict.stores
    feats[3]["properties"]["radius_m"] = -1
    feats[7]["geometry"] = None
    path.write_text(json.dumps(fc(*feats)))
    errors = []
    for s in (False, True):
        with pytest.raises(CatalogError) as info:
            load_catalog(path, strict=s)
        errors.append(info.value.problems)
    assert errors[0] == errors[1] and [p.index for p in errors[0]] == [3, 7]


# ---- property: any valid store survives writing and reading back unchanged

lon = st.floats(-179.9, 179.4)  # a polygon adds up to 0.5 degrees east
lat = st.floats(-84, 84)


@st.composite
def stores_fc(draw: st.DrawFn) -> dict[str, Any]:
    feats = []
    n = draw(st.integers(1, 6))
    for i in range(n):
        x, y = draw(lon), draw(lat)
        if draw(st.booleans()):
            feats.append(circle(f"s{i}", x, y, radius_m=draw(st.floats(1, 50_000))))
        else:
            w, h = draw(st.floats(1e-4, 0.5)), draw(st.floats(1e-4, 0.5))
            ring = [[x, y], [x + w, y], [x + w, y + h], [x, y + h], [x, y]]
            feats.append(polygon(f"s{i}", [ring]))
    return fc(*feats)


@settings(max_examples=40, deadline=None, derandomize=True)
@given(stores_fc())
def test_round_trip_property(doc: dict[str, Any]) -> None:
    cat = parse_catalog(doc)
    again = parse_catalog(json.loads(json.dumps(catalog_to_geojson(cat))))
    assert [s for _, s in cat.alive()] == [s for _, s in again.alive()]


# ---- Turf's boolean-valid fixtures (valid/true, valid/false) for polygons

TURF_VALID = {
    # file: (turf says valid, we accept, why when we differ)
    "true/Polygon/polygon.geojson": True,
    "true/Polygon/polygon-internal-hole.geojson": True,
    "true/Polygon/polygon-with-hole-1-vertice-touching.geojson": True,
    "true/MultiPolygon/multipolygon.geojson": True,
    "true/MultiPolygon/multipolygon-with-hole.geojson": True,
    "true/MultiPolygon/multipolygon-touch.geojson": True,
    "false/Polygon/not-closing-ring.geojson": False,  # shapely would close it; we do not
    "false/Polygon/not-enough-coords.geojson": False,
    "false/Polygon/polygon-with-hole-2-vertices-touching.geojson": False,
    "false/Polygon/polygon-with-puncture.geojson": False,
    "false/Polygon/polygon-with-spike.geojson": False,
    "false/MultiPolygon/multipoly-with-2-vertices-touching.geojson": False,
    "false/MultiPolygon/multipolygons-overlap.geojson": False,
    "false/MultiPolygon/not-enough-coords.geojson": False,
    "true/Point/point.geojson": True,  # as circles (radius_m added)
    "true/Point/point-with-z.geojson": True,
    "false/Point/point.geojson": False,
}


@pytest.mark.parametrize("name", sorted(TURF_VALID))
def test_turf_boolean_valid(shared_data: Path, name: str) -> None:
    doc = json.loads((shared_data / "semantics/turf/turf-boolean-valid" / name).read_text())
    for f in doc["features"]:
        f["properties"] = {"store_id": "t", "merchant_id": "m"}
        if f["geometry"]["type"] == "Point":
            f["properties"]["radius_m"] = 10
    problems = validate(doc)
    assert (problems == []) is TURF_VALID[name], [str(p) for p in problems]
    assert all(p.reason for p in problems)


def test_turf_polygon_fixtures_are_all_covered(shared_data: Path) -> None:
    root = shared_data / "semantics/turf/turf-boolean-valid"
    on_disk = {
        str(p.relative_to(root))
        for p in root.rglob("*.geojson")
        if p.parent.name in ("Polygon", "MultiPolygon")
    }
    assert on_disk <= set(TURF_VALID)


# ---- fast paths held against the obvious, slow checks

scalar = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.integers(-400, 400),
    st.booleans(),
    st.text(max_size=3),
    st.none(),
)
position = st.one_of(
    st.lists(scalar, max_size=4), scalar, st.lists(st.lists(scalar, max_size=2), max_size=2)
)


@settings(max_examples=400, deadline=None, derandomize=True)
@given(position)
def test_fast_position_check_agrees_with_the_slow_one(pos: Any) -> None:
    slow = (
        geojson.position_problem(pos) is None
        and all(math.isfinite(c) for c in pos)
        and -180 <= pos[0] <= 180
        and -90 <= pos[1] <= 90
    )
    assert _position_ok(pos) is slow


@settings(max_examples=200, deadline=None, derandomize=True)
@given(st.lists(st.tuples(st.floats(-180, 180), st.floats(-90, 90)), min_size=2, max_size=8))
def test_jump_shortcut_never_skips_a_crossing(ring: list[tuple[float, float]]) -> None:
    arr = np.array(ring, dtype=np.float64)
    if not _jumps([list(p) for p in ring]):
        assert not antimeridian.needs_split([arr])


json_value = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-300, 300)
    | st.floats(allow_nan=True)
    | st.text(max_size=4),
    lambda kids: (
        st.lists(kids, max_size=5) | st.dictionaries(st.text(max_size=4), kids, max_size=4)
    ),
    max_leaves=25,
)
keys = st.sampled_from(
    ["type", "coordinates", "radius_m", "wifi", "beacons", "nfc", "tz", "store_id"]
)


@settings(max_examples=300, deadline=None, derandomize=True)
@given(
    json_value, st.sampled_from(["geometry", "coordinates", "properties", "feature", "prop"]), keys
)
def test_validator_never_crashes_on_arbitrary_json(junk: Any, where: str, key: str) -> None:
    """Whatever the JSON, validation returns problems (with reasons) instead of raising."""
    feats = _good()
    target = feats[1]
    if where == "geometry":
        target["geometry"] = junk
    elif where == "coordinates":
        target["geometry"]["coordinates"] = junk
    elif where == "properties":
        target["properties"] = junk
    elif where == "feature":
        feats[1] = junk
    else:
        target["properties"][key] = junk
    problems = validate(fc(*feats))
    assert all(isinstance(p, Problem) and p.reason for p in problems)
    assert validate(junk) or isinstance(junk, dict)
    assert isinstance(geojson.lint(fc(*feats)), list) and isinstance(geojson.lint(junk), list)

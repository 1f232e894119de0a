"""mapbox/geojsonhint's fixtures against fences.geojson.lint (RFC 7946 structure) and, for
FeatureCollections, the catalog validator.

geojsonhint mixes RFC MUST violations with style hints. We reject every MUST violation and accept
what the RFC only discourages; the decision for every bad file is written down below, with the
words our reason must contain (reject) or why we accept.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fences.catalog import validate
from fences.geojson import lint_text

REJECT = "reject"
ACCEPT = "accept"

BAD: dict[str, tuple[str, str]] = {
    "bad-duplicate-properties": (REJECT, "member 'type' twice"),
    "bad-featurelist": (REJECT, "a number was found"),
    "bad-json": (REJECT, "not valid JSON"),
    "bad-object-type": (REJECT, '"type" member should be a string'),
    # RFC 7946 §3.1.6: parsers SHOULD NOT reject polygons that do not follow the right-hand rule.
    "bad-polygon-interiorring-rhr": (ACCEPT, "winding order is a style hint"),
    "bad-polygonloop": (REJECT, "nested more deeply"),
    "bad-properties-as-array": (REJECT, '"properties" should be an object'),
    "badcoord": (REJECT, "must be a number"),
    "badcoordtype": (REJECT, "nested more deeply"),
    "badfeature": (REJECT, "must be an object"),
    "badfeatureid": (REJECT, '"id" must be a string or a number'),
    "bbox-4or6elements": (REJECT, "bbox has 3 elements"),
    "bbox-contains-string": (REJECT, "each element of bbox must be a number"),
    "bbox-string": (REJECT, "bbox must be an array"),
    "different-first-last": (REJECT, "not closed"),
    "different-first-size": (REJECT, "not closed"),
    # geojsonhint itself reports nothing; precision is not a validity question.
    "excessive_precision_truncated": (ACCEPT, "precision is not a validity question"),
    "expected_object": (REJECT, '"properties" should be an object'),
    "false": (REJECT, "must be a geometry object"),
    "feature_changed_semantics": (REJECT, "must not contain a 'coordinates' member"),
    "featurecollection-obj": (REJECT, '"features" should be an array'),
    "featurecollection-type-case": (REJECT, "case-sensitive"),
    "featurecollection": (REJECT, '"features" member required'),
    "featurecollection_changed_semantics": (REJECT, "must not contain a 'properties' member"),
    "geometry_changed_semantics": (REJECT, "must not contain a 'features' member"),
    # RFC 7946 §3.1.8: nested / single-member GeometryCollections SHOULD be avoided, not MUST NOT.
    "geometrycollection_nested": (ACCEPT, "SHOULD avoid, not MUST"),
    "geometrycollection_single": (ACCEPT, "SHOULD avoid, not MUST"),
    "multiple_problems": (REJECT, "must be a number"),
    "multipoint-multidimension": (REJECT, "must be a number"),
    "multipoint-nondimension": (REJECT, "nested more deeply"),
    "nofeaturetype": (REJECT, "'Featre' is not one of Feature"),
    "notype": (REJECT, '"type" member required'),
    "point-labeled-as-a-multipolygon": (REJECT, "a number was found"),
    "point-string": (REJECT, "must be a number"),
    "point-toofew": (REJECT, "has 1 element"),
    # RFC 7946 §3.1.1: positions SHOULD NOT have more than three elements; extras are ignored.
    "point-toomany": (ACCEPT, "more than three elements is SHOULD NOT"),
    "point": (REJECT, '"coordinates" member required'),
    # Same as bad-polygon-interiorring-rhr: winding order is not a reason to lose a fence.
    "polygon_winding_order": (ACCEPT, "winding order is a style hint"),
    "rootstring": (REJECT, "must be an object"),
    "short-line": (REJECT, "two or more positions"),
    "short-linearring": (REJECT, "four or more positions"),
    "short-multilinestring": (REJECT, "two or more positions"),
    "stringcoord": (REJECT, "must be a number"),
    "unknowntype": (REJECT, "'FooBar' is not one of"),
}


def _dir(shared_data: Path) -> Path:
    return shared_data / "geometries" / "geojsonhint"


def test_every_bad_file_has_a_decision(shared_data: Path) -> None:
    on_disk = {p.stem for p in (_dir(shared_data) / "bad").glob("*.geojson")}
    assert on_disk == set(BAD)


@pytest.mark.parametrize("stem", sorted(BAD))
def test_bad_file(shared_data: Path, stem: str) -> None:
    decision, words = BAD[stem]
    text = (_dir(shared_data) / "bad" / f"{stem}.geojson").read_bytes()
    problems = lint_text(text)
    if decision == ACCEPT:
        assert problems == [], problems
        return
    assert problems, f"{stem} should be rejected"
    assert any(words in p for p in problems), problems
    # A rejected FeatureCollection is rejected by the catalog validator too.
    try:
        obj = json.loads(text)
    except ValueError:
        return
    if isinstance(obj, dict) and obj.get("type") == "FeatureCollection":
        assert validate(obj)


def test_good_files_are_accepted(shared_data: Path) -> None:
    good = sorted((_dir(shared_data) / "good").glob("*.geojson"))
    assert len(good) >= 18
    for path in good:
        assert lint_text(path.read_bytes()) == [], path.name


def test_good_but_out_of_range_file_is_not_a_catalog_geometry(shared_data: Path) -> None:
    """issue82 is structurally fine GeoJSON (geojsonhint accepts it) but its longitudes go to
    -259: as a store fence it is rejected with a reason."""
    geom = json.loads((_dir(shared_data) / "good" / "issue82.geojson").read_text())
    doc = {
        "type": "FeatureCollection",
        "features": [
            {
                "type": "Feature",
                "properties": {"store_id": "x", "merchant_id": "m"},
                "geometry": geom,
            }
        ],
    }
    assert any("out of range" in p.reason for p in validate(doc))

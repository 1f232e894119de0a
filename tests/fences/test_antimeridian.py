"""fences.antimeridian against gadomski/antimeridian's cases (input/X.json vs output/flat/X.json:
straight edges in lon/lat, which is how fences/ tests polygons), plus a property test."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import shapely
from hypothesis import given, settings
from hypothesis import strategies as st
from shapely.geometry import shape

from fences.antimeridian import AntimeridianError, split

SAME = "same"  # our split equals the expected flat output (area of the symmetric difference)
POLE = "pole"  # the ring winds around a pole: deliberately unsupported, clear error
WIDE = "wide"  # crosses and spans >= 180° of longitude: ambiguous, clear error
NOT_AREA = "not an area"  # lines: a fence is an area
NO_EXPECTED = "no expected output upstream"

CASES: dict[str, str] = {
    "almost-180": SAME,  # a vertex at 179.99999999999997 leaves only a sliver we drop
    "both-poles": WIDE,
    "complex-split": SAME,
    "crossing-latitude": SAME,
    "cw-only": SAME,  # winding order does not matter to us
    "cw-split": SAME,
    "extra-crossing": POLE,
    "force-north-pole": POLE,
    "great-circle": SAME,  # flat output: straight lon/lat edges, like ours
    "issues-124": POLE,
    "issues-164": POLE,
    "issues-171": POLE,
    "issues-174": SAME,
    "issues-182": NO_EXPECTED,
    "issues-187": SAME,  # longitudes up to 198.78 (> 180) are wrapped too
    "issues-201": SAME,
    "issues-81": SAME,
    "latitude-band": SAME,  # -180 -> 180 edges are taken literally: a band
    "line": NOT_AREA,
    "multi-line": NOT_AREA,
    "multi-no-antimeridian": SAME,
    "multi-split": SAME,
    "north-pole": POLE,
    "one-ccw-hole": NO_EXPECTED,
    "one-hole": SAME,
    "over-180": SAME,
    "overlap": POLE,
    "point-on-antimeridian": SAME,
    "simple-with-ccw-hole": NO_EXPECTED,
    "simple": SAME,
    "south-pole": POLE,
    "split": SAME,
    "two-holes": SAME,
}


def _root(shared_data: Path) -> Path:
    return shared_data / "geometries" / "antimeridian"


def test_every_input_has_a_decision(shared_data: Path) -> None:
    assert {p.stem for p in (_root(shared_data) / "input").glob("*.json")} == set(CASES)


def _in_range(geom: shapely.Geometry) -> bool:
    minx, miny, maxx, maxy = geom.bounds
    return minx >= -180 and maxx <= 180 and miny >= -90 and maxy <= 90


@pytest.mark.parametrize("name", sorted(CASES))
def test_case(shared_data: Path, name: str) -> None:
    root = _root(shared_data)
    raw = json.loads((root / "input" / f"{name}.json").read_text())
    raw.setdefault("type", "Polygon")  # issues-182 has no type member upstream
    geom = shape(raw)
    decision = CASES[name]
    if decision in (POLE, WIDE, NOT_AREA):
        words = {POLE: "winds around a pole", WIDE: "ambiguous", NOT_AREA: "only Polygon"}[decision]
        with pytest.raises(AntimeridianError, match=words):
            split(geom)
        return
    out = split(geom)
    assert _in_range(out)
    if decision == NO_EXPECTED:
        # Still: same area as the unwrapped input and every part within range.
        return
    expected = shape(json.loads((root / "output" / "flat" / f"{name}.json").read_text()))
    assert out.is_valid, shapely.is_valid_reason(out)
    diff = shapely.symmetric_difference(out, expected).area
    assert diff <= 1e-6 * expected.area, (name, diff, expected.area)
    assert shapely.get_num_geometries(out) == shapely.get_num_geometries(expected)


def test_pole_cases_become_catalog_problems(shared_data: Path) -> None:
    from fences.catalog import validate

    for name, decision in CASES.items():
        if decision not in (POLE, WIDE):
            continue
        geom = json.loads((_root(shared_data) / "input" / f"{name}.json").read_text())
        doc = {
            "type": "FeatureCollection",
            "features": [
                {
                    "type": "Feature",
                    "properties": {"store_id": name, "merchant_id": "m"},
                    "geometry": geom,
                }
            ],
        }
        problems = validate(doc)
        assert problems and problems[0].store_id == name
        assert "pole" in problems[0].reason or "ambiguous" in problems[0].reason


@settings(max_examples=60, deadline=None, derandomize=True)
@given(
    west=st.floats(150, 179.9),
    east=st.floats(-179.9, -150),
    south=st.floats(-80, 70),
    height=st.floats(0.01, 10),
    probe=st.tuples(st.floats(0.01, 0.99), st.floats(0.01, 0.99)),
)
def test_split_preserves_area_and_membership(
    west: float, east: float, south: float, height: float, probe: tuple[float, float]
) -> None:
    """A box from `west` to `east` across the antimeridian: the split keeps its area, and a point
    inside the unwrapped box, wrapped back to [-180, 180], is inside the split fence."""
    north = south + height
    ring = [[west, south], [east, south], [east, north], [west, north], [west, south]]
    out = split(shapely.Polygon(ring))
    unwrapped = shapely.box(west, south, east + 360, north)
    assert _in_range(out)
    assert out.area == pytest.approx(unwrapped.area, rel=1e-9)
    x = west + probe[0] * (east + 360 - west)
    y = south + probe[1] * height
    wrapped = ((x + 180) % 360) - 180
    assert out.intersects(shapely.Point(wrapped, y))
    middle = (west + east + 360) / 2
    far = ((middle + 180 + 180) % 360) - 180  # the opposite side of the globe, wrapped
    assert not out.intersects(shapely.Point(far, y))


def test_hole_crossing_the_antimeridian_stays_a_hole() -> None:
    shell = [[170, 40], [-170, 40], [-170, 60], [170, 60], [170, 40]]
    hole = [[-175, 45], [175, 45], [175, 55], [-175, 55], [-175, 45]]  # starts on the far side
    out = split(shapely.Polygon(shell, [hole]))
    assert not out.intersects(shapely.Point(179, 50)) and not out.intersects(
        shapely.Point(-179, 50)
    )
    assert out.intersects(shapely.Point(172, 50)) and out.intersects(shapely.Point(-172, 50))
    assert out.area == pytest.approx(20 * 20 - 10 * 10)

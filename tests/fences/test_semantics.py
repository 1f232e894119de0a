"""FenceIndex against real cases written by other projects (../shared/data/semantics).

What is mapped, and why:

* **Tile38** search_cases.json: fences hold fixes, so a WITHIN / INTERSECTS query whose area is a
  fence shape (OBJECT Polygon/MultiPolygon, CIRCLE, BOUNDS, or GET of a stored polygon) becomes
  one store, and every stored POINT of the queried key becomes a fix: the point must match the
  store exactly when Tile38 returns its id. Tile38 POINT arguments are (lat, lon); OBJECTs are
  GeoJSON (lon, lat). Not mapped: stored lines/polygons as "fixes" (shapes, not positions),
  SECTOR areas (not a fence kind), CLIPBY and cursor/limit steps (paging and clipping of results).
* **Turf** fixtures: point-in-polygon (polygons with holes: hole centres outside, vertices on the
  boundary), and boolean-within / boolean-contains cases whose pair is (Point or MultiPoint,
  Polygon or MultiPolygon). Turf's within/contains exclude the boundary (like its
  ``ignoreBoundary`` option); geopush counts the boundary as inside, because a person standing on
  a store's outline is at the store. So a Turf "false" whose points lie on the boundary is checked
  as "distance 0 (on the boundary)" and the rest of Turf's answers must agree exactly.
* **Traccar** geofence_cases.json: circle, polygon, polygon across the antimeridian (its raw ring
  is unwrapped and split at ±180 the way catalogs store it) and near the prime meridian. Polyline
  corridors, segment intersection and area cases are out of scope for the index: geopush fences
  are circles and polygons (a corridor can be given as its buffered polygon).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import shapely
from index_cases import _fold
from shapely.geometry import MultiPolygon, Polygon, box, shape

from fences.index import FenceIndex
from fences.store import Store

AREA_KINDS = {"OBJECT", "CIRCLE", "BOUNDS", "GET"}


def _point_of(cmd: list[Any]) -> tuple[float, float] | None:
    if "POINT" in cmd:
        i = cmd.index("POINT")
        return float(cmd[i + 2]), float(cmd[i + 1])  # Tile38 POINT is lat lon
    return None


def _fence(cmd: list[Any], objects: dict[str, dict[str, Any]]) -> Store | None:
    kind = cmd[3]
    if kind == "OBJECT":
        g = shape(json.loads(cmd[4]))
        return Store("q", "m", polygon=g) if isinstance(g, Polygon | MultiPolygon) else None
    if kind == "CIRCLE":
        return Store("q", "m", center=(float(cmd[5]), float(cmd[4])), radius_m=float(cmd[6]))
    if kind == "BOUNDS":
        lat0, lon0, lat1, lon1 = (float(v) for v in cmd[4:8])
        return Store("q", "m", polygon=box(lon0, lat0, lon1, lat1))
    if kind == "GET":
        stored = objects.get(cmd[4], {}).get(cmd[5])
        return (
            Store("q", "m", polygon=stored) if isinstance(stored, Polygon | MultiPolygon) else None
        )
    return None


def test_tile38_within_and_intersects(shared_data: Path) -> None:
    cases = json.loads((shared_data / "semantics/tile38/search_cases.json").read_text())
    checked = 0
    for name, steps in cases["functions"].items():
        objects: dict[str, dict[str, Any]] = {}
        points: dict[str, dict[str, tuple[float, float]]] = {}
        for step in steps:
            cmd = step["cmd"]
            if cmd[0] == "SET":
                pt = _point_of(cmd)
                if pt is not None:
                    points.setdefault(cmd[1], {})[cmd[2]] = pt
                elif "OBJECT" in cmd:
                    objects.setdefault(cmd[1], {})[cmd[2]] = shape(
                        json.loads(cmd[cmd.index("OBJECT") + 1])
                    )
                continue
            if (
                cmd[0] not in ("WITHIN", "INTERSECTS")
                or cmd[2] != "IDS"
                or cmd[3] not in AREA_KINDS
            ):
                continue
            if "CLIPBY" in cmd or str(step["expect"]).startswith("ERR"):
                continue
            fence = _fence(cmd, objects)
            if fence is None or not points.get(cmd[1]):
                continue
            found = re.match(r"\[\d+ \[(.*)\]\]", step["expect"])
            assert found, step
            expected = set(found.group(1).split())
            index = FenceIndex([fence])
            for pid, (lon, lat) in points[cmd[1]].items():
                got = index.query(lon, lat)
                assert (len(got) == 1) == (pid in expected), (
                    f"{name} {cmd[:4]} point {pid} at ({lon}, {lat}): {got}"
                )
                checked += 1
    assert checked >= 30, f"only {checked} Tile38 point checks were mapped"


def _turf_pairs(shared_data: Path) -> list[tuple[Path, bool, shapely.Geometry, shapely.Geometry]]:
    """(file, expected, points, fence) for Turf within/contains cases of points vs polygons."""
    out = []
    for op in ("turf-boolean-within", "turf-boolean-contains"):
        for path in sorted((shared_data / "semantics/turf" / op).rglob("*.geojson")):
            expected = "/true/" in str(path)
            feats = json.loads(path.read_text())["features"]
            a, b = shape(feats[0]["geometry"]), shape(feats[1]["geometry"])
            pts, fence = (a, b) if op == "turf-boolean-within" else (b, a)
            if pts.geom_type in ("Point", "MultiPoint") and fence.geom_type in (
                "Polygon",
                "MultiPolygon",
            ):
                out.append((path, expected, pts, fence))
    return out


def test_turf_points_within_and_contained_by_polygons(shared_data: Path) -> None:
    pairs = _turf_pairs(shared_data)
    assert len(pairs) >= 15
    for path, expected, pts, fence in pairs:
        index = FenceIndex([Store("f", "m", polygon=fence)])
        dists = [index.distance(0, p.x, p.y) for p in shapely.get_parts(pts)]
        matched = [bool(index.query(p.x, p.y)) for p in shapely.get_parts(pts)]
        assert matched == [d <= 0 for d in dists], path
        on_boundary = [abs(d) < 1e-6 for d in dists]
        # DE-9IM within, read off our signed distances: all in the closure, some strictly inside
        within = all(d <= 1e-6 for d in dists) and any(d < -1e-6 for d in dists)
        assert within == expected, f"{path.name}: distances {dists}"
        if not expected and all(on_boundary):
            # Turf excludes the boundary; geopush counts it inside (documented rule)
            assert all(matched), path.name


def test_turf_point_in_polygon_with_holes(shared_data: Path) -> None:
    folder = shared_data / "semantics/turf/turf-boolean-point-in-polygon/in"
    files = sorted(folder.glob("*.geojson"))
    assert files
    for path in files:
        geom = shape(json.loads(path.read_text())["geometry"])
        index = FenceIndex([Store("f", "m", polygon=geom)])
        for part in shapely.get_parts(geom):
            for hole in part.interiors:
                c = Polygon(hole).representative_point()
                assert index.query(c.x, c.y) == [], f"{path.name}: a point in a hole is outside"
                assert index.distance(0, c.x, c.y) > 0
            p = part.representative_point()  # inside the part, outside its holes
            assert index.query(p.x, p.y) and index.distance(0, p.x, p.y) < 0, path.name
            for x, y in list(part.exterior.coords) + [
                xy for h in part.interiors for xy in h.coords
            ]:
                got = index.query(x, y)
                assert got and abs(got[0][1]) < 1e-6, (
                    f"{path.name}: vertex ({x}, {y}) is on the boundary: inside"
                )


def _traccar_fence(case: dict[str, Any]) -> Store:
    if "geometry_vertices_raw" in case:
        raw = case["geometry_vertices_raw"]
        # unwrap the ring next to its first vertex, then split at ±180 as catalogs store it
        x0 = raw[0][0]
        ring = [((x - x0 + 180.0) % 360.0 - 180.0 + x0, y) for x, y in raw]
        return Store("t", "m", polygon=_fold(Polygon(ring)))
    g = case["geometry"]
    if g.get("kind") == "circle":
        return Store("t", "m", center=tuple(g["center"]), radius_m=float(g["radius_m"]))
    return Store("t", "m", polygon=shape(g))


def test_traccar_geofence_cases(shared_data: Path) -> None:
    cases = json.loads((shared_data / "semantics/traccar/geofence_cases.json").read_text())["cases"]
    used = [c for c in cases if "contains" in c and not c["name"].startswith("polyline")]
    assert {c["name"] for c in used} >= {
        "circle_contains",
        "polygon_contains",
        "polygon_antimeridian",
    }
    for case in used:
        index = FenceIndex([_traccar_fence(case)])
        for (lon, lat), expected in case["contains"]:
            assert bool(index.query(lon, lat)) == expected, f"{case['name']}: ({lon}, {lat})"


@pytest.mark.parametrize("lon", [-180.0096, 179.991])
def test_traccar_antimeridian_fix_reaches_across(shared_data: Path, lon: float) -> None:
    """A fix just outside the split triangle still finds it within its accuracy, across ±180."""
    cases = json.loads((shared_data / "semantics/traccar/geofence_cases.json").read_text())["cases"]
    case = next(c for c in cases if c["name"] == "polygon_antimeridian")
    index = FenceIndex([_traccar_fence(case)])
    d = index.distance(0, lon, 66.9015)
    assert d < 0
    assert index.query(lon, 66.9015 + 0.05, acc_m=10_000.0)

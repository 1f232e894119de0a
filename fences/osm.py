"""OpenStreetMap shops, malls and amenities to a store catalog (``geopush fences import-osm``).

Input: a GeoJSON export (pyrosm, osmium export, overpass-turbo: Features whose properties are OSM
tags, ideally with ``osm_type``/``osm_id`` or an ``id`` like ``"way/123"``) or an ``.osm.pbf``
file (read with pyosmium; ways and relations become areas through osmium's area assembler).

Which objects become stores: anything tagged ``shop=*`` (malls are ``shop=mall``), ``amenity=*``
except street furniture (benches, parking, waste baskets ... see ``SKIPPED_AMENITIES``), and
buildings tagged ``building=retail|commercial|kiosk|supermarket``. ``include_all=True`` takes
every Point and (Multi)Polygon instead (for files that are not OSM, like a campus outline).

Mapping: polygons stay polygons; points become circles of ``DEFAULT_POINT_RADIUS_M`` (25 m: about
a shop front plus GPS error in a street); ``store_id`` is ``"<osm type>/<osm id>"`` (``node/42``,
``way/7``, ``relation/9``); ``merchant_id`` is the first of ``brand``, ``operator``, ``name``, else
the store_id; ``name`` from ``name``; ``tags`` like ``["shop=supermarket", "brand=Alepa"]``.

Every candidate goes through the catalog validator; those it rejects (e.g. a self-intersecting
outline in OSM) are left out and listed in ``OsmImport.skipped`` with the reason, so the written
catalog always passes ``geopush fences check`` and nothing is dropped silently.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from fences.catalog import parse_stores, read_json
from fences.errors import CatalogError, ImportOsmError, Problem
from fences.store import Store

DEFAULT_POINT_RADIUS_M = 25.0
STORE_BUILDINGS = frozenset({"retail", "commercial", "kiosk", "supermarket"})
# Amenities that are street furniture or infrastructure, not places that receive visitors.
SKIPPED_AMENITIES = frozenset(
    {
        "bench",
        "waste_basket",
        "waste_disposal",
        "recycling",
        "bicycle_parking",
        "motorcycle_parking",
        "parking",
        "parking_entrance",
        "parking_space",
        "post_box",
        "telephone",
        "drinking_water",
        "toilets",
        "clock",
        "fountain",
        "grit_bin",
        "shelter",
        "charging_station",
        "taxi",
        "bicycle_rental",
        "vending_machine",
        "atm",
        "loading_dock",
        "bus_station",
        "ferry_terminal",
    }
)
_TAG_KEYS = ("shop", "amenity", "building", "brand", "cuisine")


@dataclass
class OsmImport:
    stores: list[Store] = field(default_factory=list)
    skipped: list[Problem] = field(default_factory=list)  # candidates left out, and why
    read: int = 0  # OSM objects / features looked at


def is_store(tags: Mapping[str, Any]) -> bool:
    if tags.get("shop"):
        return True
    amenity = tags.get("amenity")
    if amenity and amenity not in SKIPPED_AMENITIES:
        return True
    return tags.get("building") in STORE_BUILDINGS


def _feature(
    store_id: str, tags: Mapping[str, Any], geometry: Mapping[str, Any], radius_m: float
) -> dict[str, Any]:
    name = str(tags.get("name", "")).strip()
    merchant = next(
        (
            str(tags[k]).strip()
            for k in ("brand", "operator", "name")
            if str(tags.get(k, "")).strip()
        ),
        store_id,
    )
    props: dict[str, Any] = {
        "store_id": store_id,
        "merchant_id": merchant,
        "tags": [f"{k}={tags[k]}" for k in _TAG_KEYS if tags.get(k)],
    }
    if name:
        props["name"] = name
    if tags.get("opening_hours"):
        props["opening_hours"] = str(tags["opening_hours"])
    geometry = dict(geometry)
    if geometry.get("type") == "Point":
        props["radius_m"] = radius_m
        geometry["coordinates"] = list(geometry["coordinates"])[:2]
    elif geometry.get("type") == "MultiPolygon" and len(geometry.get("coordinates") or ()) == 1:
        geometry = {"type": "Polygon", "coordinates": geometry["coordinates"][0]}
    return {"type": "Feature", "properties": props, "geometry": geometry}


def _geojson_id(i: int, feature: Mapping[str, Any]) -> str:
    props = feature.get("properties") or {}
    if props.get("osm_type") and props.get("osm_id") is not None:
        return f"{props['osm_type']}/{props['osm_id']}"
    for raw in (feature.get("id"), props.get("@id"), props.get("id")):
        if isinstance(raw, str | int) and not isinstance(raw, bool) and str(raw).strip():
            return str(raw).strip()
    return f"feature-{i}"


def _from_geojson(
    path: str, include_all: bool, radius_m: float, out: OsmImport
) -> list[dict[str, Any]]:
    try:
        doc = read_json(path)
    except CatalogError as exc:
        raise ImportOsmError(f"{path}: {exc.problems[0].reason}") from exc
    features = doc.get("features") if isinstance(doc, dict) else None
    if not isinstance(features, list):
        raise ImportOsmError(
            f"{path} is not a GeoJSON FeatureCollection; export OSM data as one (or give an .osm.pbf)"
        )
    cands: list[dict[str, Any]] = []
    for i, f in enumerate(features):
        out.read += 1
        if not isinstance(f, dict) or not isinstance(f.get("geometry"), dict):
            continue
        tags = f.get("properties") or {}
        if not isinstance(tags, dict):
            continue
        kind = f["geometry"].get("type")
        if kind not in ("Point", "Polygon", "MultiPolygon") or not (include_all or is_store(tags)):
            continue
        cands.append(_feature(_geojson_id(i, f), tags, f["geometry"], radius_m))
    return cands


def _from_pbf(
    path: str, include_all: bool, radius_m: float, out: OsmImport
) -> list[dict[str, Any]]:
    import osmium

    cands: list[dict[str, Any]] = []
    factory = osmium.geom.GeoJSONFactory()

    class Handler(osmium.SimpleHandler):
        def node(self, n: Any) -> None:
            out.read += 1
            tags = {t.k: t.v for t in n.tags}
            if tags and (is_store(tags) or (include_all and tags.get("name"))):
                geom = {"type": "Point", "coordinates": [n.location.lon, n.location.lat]}
                cands.append(_feature(f"node/{n.id}", tags, geom, radius_m))

        def area(self, a: Any) -> None:
            out.read += 1
            tags = {t.k: t.v for t in a.tags}
            if not (is_store(tags) or (include_all and tags.get("name"))):
                return
            kind = "way" if a.from_way() else "relation"
            try:
                geom = json.loads(factory.create_multipolygon(a))
            except RuntimeError as exc:  # osmium could not assemble the outline
                out.skipped.append(
                    Problem(
                        None,
                        f"{kind}/{a.orig_id()}",
                        f"OSM outline could not be built ({exc}); fix it in OSM",
                    )
                )
                return
            cands.append(_feature(f"{kind}/{a.orig_id()}", tags, geom, radius_m))

    try:
        Handler().apply_file(path, locations=True)
    except (RuntimeError, ValueError, OSError) as exc:
        raise ImportOsmError(
            f"cannot read OSM file {path!r}: {exc}; is it a valid .osm.pbf?"
        ) from exc
    return cands


def _unique(cands: list[dict[str, Any]], out: OsmImport) -> Iterator[dict[str, Any]]:
    seen: set[str] = set()
    for f in cands:
        sid = f["properties"]["store_id"]
        if sid in seen:
            out.skipped.append(
                Problem(None, sid, "the same OSM object appears twice in the input; kept the first")
            )
            continue
        seen.add(sid)
        yield f


def import_osm(
    path: str | os.PathLike[str],
    *,
    include_all: bool = False,
    point_radius_m: float = DEFAULT_POINT_RADIUS_M,
) -> OsmImport:
    """Read an OSM GeoJSON export or .osm.pbf and return the stores it holds (all valid)."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise ImportOsmError(f"no such file: {path!r}")
    out = OsmImport()
    if path.endswith(".pbf") or path.endswith(".osm"):
        cands = _from_pbf(path, include_all, point_radius_m, out)
    else:
        cands = _from_geojson(path, include_all, point_radius_m, out)
    features = list(_unique(cands, out))
    stores, problems = parse_stores({"type": "FeatureCollection", "features": features})
    for p in problems:
        out.skipped.append(Problem(None, p.store_id, p.reason))
    out.stores = stores
    return out

"""The slow, obviously-right oracle the index is held against: every store tested exactly.

Circles: haversine written out with the math module. Polygons: containment by shapely's exact
``covers`` (boundary counts as inside, the index's rule) and the distance to the boundary by
shapely in an equirectangular projection centred on the fix (the metric the index documents).
"""

from __future__ import annotations

import math

import shapely
from shapely.geometry import Point

from fences.store import Store

R = 6_371_008.8
M = R * math.pi / 180.0
TOL = 1e-6  # metres: fixes closer than this to the match threshold may go either way


def haversine(lon1: float, lat1: float, lon2: float, lat2: float) -> float:
    p1, p2 = math.radians(lat1), math.radians(lat2)
    h = (
        math.sin((p2 - p1) / 2) ** 2
        + math.cos(p1) * math.cos(p2) * math.sin(math.radians(lon2 - lon1) / 2) ** 2
    )
    return 2 * R * math.asin(math.sqrt(min(h, 1.0)))


def signed_distance(store: Store, lon: float, lat: float) -> float:
    if store.center is not None:
        assert store.radius_m is not None
        return haversine(lon, lat, store.center[0], store.center[1]) - store.radius_m
    geom = store.polygon
    inside = bool(shapely.covers(geom, Point(lon, lat)))
    k = math.cos(math.radians(lat)) * M
    parts = []
    for part in shapely.get_parts(geom):
        # move the whole part by the multiple of 360° that brings it nearest the fix (exact in
        # binary: ±180 maps onto ∓180), so parts split at ±180 join again next to the fix
        cx = part.centroid.x
        shift = ((cx - lon + 180.0) % 360.0 - 180.0) - (cx - lon)
        whole = round(shift / 360.0) * 360.0
        parts.append(shapely.transform(part, lambda xy, s=whole: xy + [s, 0.0]))
    joined = shapely.union_all(parts)  # the seam between joined parts is not boundary

    def project(xy):  # type: ignore[no-untyped-def]
        out = xy.copy()
        out[:, 0] = (xy[:, 0] - lon) * k
        out[:, 1] = (xy[:, 1] - lat) * M
        return out

    d = float(shapely.distance(shapely.transform(joined, project).boundary, Point(0.0, 0.0)))
    return -d if inside else d


def matches(
    stores: dict[int, Store], lon: float, lat: float, r: float
) -> tuple[dict[int, float], set[int], set[int]]:
    """(signed distance per slot, slots that must match, slots that may match)."""
    sd = {slot: signed_distance(s, lon, lat) for slot, s in stores.items()}
    must = {slot for slot, d in sd.items() if d <= r - TOL}
    # exact containment decides on the boundary itself (the boundary is inside)
    pt = Point(lon, lat)
    must |= {
        slot
        for slot, s in stores.items()
        if s.polygon is not None and shapely.covers(s.polygon, pt)
    }
    may = {slot for slot, d in sd.items() if d <= r + TOL}
    return sd, must, may

"""Random catalogs and fixes for the index's property tests (seeded numpy, driven by hypothesis).

Catalogs mix 5 m and 50 km circles, star-shaped polygons with holes, multipolygons, polygons
crossing the antimeridian (split into parts within [-180, 180] as the catalog loader stores
them), around locales from the equator to ±85° and at ±180°. Fixes include polygon vertices,
edge midpoints, points exactly radius_m from a circle's centre, centres and lon = ±180.
"""

from __future__ import annotations

import math

import numpy as np
import shapely
from shapely.geometry import MultiPolygon, Polygon, box

from fences.store import Store

M = 6_371_008.8 * math.pi / 180.0
LOCALES = [
    (10.0, 50.0),
    (179.995, 0.0),
    (-179.99, 60.0),
    (25.0, 85.0),
    (-70.0, -84.9),
    (0.0, 0.0),
    (120.0, 31.0),
]


def _offset(lon: float, lat: float, dx_m: float, dy_m: float) -> tuple[float, float]:
    return lon + dx_m / (M * math.cos(math.radians(lat))), lat + dy_m / M


def _star(
    rng: np.random.Generator, lon: float, lat: float, size_m: float, scale: float = 1.0
) -> list[tuple[float, float]]:
    n = int(rng.integers(4, 13))
    ang = 2 * math.pi * (np.arange(n) + 0.5 * rng.random(n)) / n
    rad = size_m * (0.3 + 0.7 * rng.random(n)) * scale
    return [
        _offset(lon, lat, float(r * math.cos(a)), float(r * math.sin(a)))
        for a, r in zip(ang, rad, strict=True)
    ]


def _fold(geom: shapely.Geometry) -> shapely.Geometry:
    """Split a polygon drawn with longitudes beyond ±180 into parts inside [-180, 180]."""
    x0, _, x1, _ = geom.bounds
    if x0 >= -180.0 and x1 <= 180.0:
        return geom
    parts: list[Polygon] = []
    for shift in (-360.0, 0.0, 360.0):
        piece = shapely.intersection(geom, box(-180.0 - shift, -90.0, 180.0 - shift, 90.0))
        piece = shapely.transform(piece, lambda xy, s=shift: xy + np.array([s, 0.0]))
        parts += [p for p in shapely.get_parts(piece) if isinstance(p, Polygon) and not p.is_empty]
    return MultiPolygon(parts)


def _wrap(lon: float) -> float:
    return (lon + 180.0) % 360.0 - 180.0


def random_store(rng: np.random.Generator, sid: str, lon0: float, lat0: float) -> Store:
    lon, lat = _offset(lon0, lat0, float(rng.normal(0, 1500)), float(rng.normal(0, 1500)))
    kind = rng.random()
    if kind < 0.45:
        pick = rng.random()
        radius = (
            5.0 if pick < 0.25 else 50_000.0 if pick < 0.35 else float(np.exp(rng.uniform(0, 8)))
        )
        return Store(sid, "m", center=(_wrap(lon), lat), radius_m=radius)
    size = float(np.exp(rng.uniform(np.log(10), np.log(3000))))
    shell = _star(rng, lon, lat, size)
    holes = [_star(rng, lon, lat, size, 0.1)] if rng.random() < 0.4 else []
    geom: shapely.Geometry = Polygon(shell, holes)
    if kind > 0.8:
        ang = rng.uniform(0, 2 * math.pi)
        c2 = _offset(lon, lat, 2.5 * size * math.cos(ang), 2.5 * size * math.sin(ang))
        geom = MultiPolygon([geom, Polygon(_star(rng, c2[0], c2[1], size))])
    geom = _fold(geom)
    if not geom.is_valid:
        geom = shapely.make_valid(geom)
        geom = MultiPolygon([p for p in shapely.get_parts(geom) if isinstance(p, Polygon)])
    return Store(sid, "m", polygon=geom)


def random_catalog(rng: np.random.Generator, locale: int, n: int) -> list[Store]:
    lon0, lat0 = LOCALES[locale]
    return [random_store(rng, f"s{i}", lon0, lat0) for i in range(n)]


def random_fixes(
    rng: np.random.Generator, stores: list[Store], locale: int, n: int
) -> list[tuple[float, float, float, float]]:
    """(lon, lat, acc_m, margin_m) fixes, a third of them on boundaries, vertices or centres."""
    lon0, lat0 = LOCALES[locale]
    out: list[tuple[float, float, float, float]] = []
    for _ in range(n):
        pick = rng.random()
        s = stores[int(rng.integers(len(stores)))] if stores else None
        if s is not None and pick < 0.35:
            if s.polygon is not None:
                xy = shapely.get_coordinates(s.polygon)
                i = int(rng.integers(len(xy)))
                if rng.random() < 0.5 or i == len(xy) - 1:
                    lon, lat = float(xy[i, 0]), float(xy[i, 1])
                else:  # edge midpoint (may fall a hair off the edge in floating point)
                    lon, lat = (
                        float((xy[i, 0] + xy[i + 1, 0]) / 2),
                        float((xy[i, 1] + xy[i + 1, 1]) / 2),
                    )
            else:
                assert s.center is not None and s.radius_m is not None
                if rng.random() < 0.3:
                    lon, lat = s.center
                else:
                    lon, lat = _destination(
                        s.center[0], s.center[1], s.radius_m, rng.uniform(0, 360)
                    )
        elif pick < 0.4:
            lon, lat = (180.0 if rng.random() < 0.5 else -180.0), lat0 + float(rng.normal(0, 0.01))
        else:
            lon, lat = _offset(lon0, lat0, float(rng.normal(0, 3000)), float(rng.normal(0, 3000)))
        lat = min(max(lat, -90.0), 90.0)
        acc = float(rng.choice([0.0, 0.0, 5.0, 50.0, 500.0, rng.uniform(0, 3000)]))
        margin = float(rng.choice([0.0, 0.0, 10.0, 100.0]))
        out.append((_wrap(lon) if lon != 180.0 else lon, lat, acc, margin))
    return out


def _destination(lon: float, lat: float, dist_m: float, bearing_deg: float) -> tuple[float, float]:
    """The point dist_m along a great circle from (lon, lat) (standard spherical formula)."""
    d = dist_m / 6_371_008.8
    p1, l1, b = math.radians(lat), math.radians(lon), math.radians(bearing_deg)
    p2 = math.asin(math.sin(p1) * math.cos(d) + math.cos(p1) * math.sin(d) * math.cos(b))
    l2 = l1 + math.atan2(
        math.sin(b) * math.sin(d) * math.cos(p1), math.cos(d) - math.sin(p1) * math.sin(p2)
    )
    return _wrap(math.degrees(l2)), math.degrees(p2)

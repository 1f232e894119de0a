"""Spherical and local-metric helpers shared by the index, the kernel and the benchmark.

Conventions (the whole of fences/ follows them):

* coordinates are (lon, lat) in degrees, float64 (float32 has ~0.65 m resolution and flips
  matches);
* circle distances are haversine on a sphere of radius ``R_EARTH`` (the IUGG mean radius); against
  WGS84 geodesics the sphere differs by < 0.5 m for the sub-kilometre distances that decide a
  match;
* polygon distances are measured in a local equirectangular projection centred on the fix
  (x = dlon * cos(lat_fix) * M_PER_DEG, y = dlat * M_PER_DEG); containment is exact (the
  projection is affine in lon/lat, so it agrees with shapely's planar test). The distance error
  against the sphere grows as d**2 * tan(lat) / R; measured maxima: at d = 1 km, 0.03 m at 40°,
  0.17 m at 80°, 0.35 m at 85°; at 5 km, 0.6 m at 40° and 8.7 m at 85°; at 50 km, 64 m at 40°.
  Matching only needs distances up to accuracy + margin (well under 1 km in practice), where it
  stays under 0.5 m up to 85°; a far boundary's distance is approximate in the same measure.
"""

from __future__ import annotations

import math

import numpy as np
from numpy.typing import ArrayLike, NDArray

R_EARTH = 6_371_008.8
"""Mean Earth radius in metres (IUGG), used for every spherical distance."""
M_PER_DEG = R_EARTH * math.pi / 180.0
"""Metres per degree of latitude (and of longitude at the equator) on that sphere."""
POLE_LAT = 89.99
"""Beyond this latitude a box padded for a distance spans every longitude."""
BOX_SLACK = 1.01
"""Safety factor on degree paddings (the exact longitude bound is slightly super-additive)."""


def wrap_lon(lon: ArrayLike) -> NDArray[np.float64]:
    """Longitudes folded into [-180, 180)."""
    a = np.asarray(lon, dtype=np.float64)
    return np.asarray(a - 360.0 * np.floor((a + 180.0) / 360.0), dtype=np.float64)


def haversine_m(
    lon1: ArrayLike, lat1: ArrayLike, lon2: ArrayLike, lat2: ArrayLike
) -> NDArray[np.float64]:
    """Great-circle distance in metres (vectorised; broadcasts like numpy)."""
    p1 = np.radians(np.asarray(lat1, dtype=np.float64))
    p2 = np.radians(np.asarray(lat2, dtype=np.float64))
    dp = p2 - p1
    dl = np.radians(np.asarray(lon2, dtype=np.float64) - np.asarray(lon1, dtype=np.float64))
    h = np.sin(dp / 2.0) ** 2 + np.cos(p1) * np.cos(p2) * np.sin(dl / 2.0) ** 2
    return np.asarray(2.0 * R_EARTH * np.arcsin(np.sqrt(np.minimum(h, 1.0))), dtype=np.float64)


def pad_deg(lat: ArrayLike, dist_m: ArrayLike) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """Degree half-widths (dlon, dlat) of a box that holds every point within ``dist_m`` of a
    point at ``lat``. dlon is 360 (every longitude) when the disc reaches the pole region."""
    lat_a = np.abs(np.asarray(lat, dtype=np.float64))
    d = np.asarray(dist_m, dtype=np.float64)
    dlat = d / M_PER_DEG * BOX_SLACK + 1e-9
    worst = lat_a + dlat
    with np.errstate(divide="ignore", invalid="ignore"):
        dlon = dlat / np.cos(np.radians(np.minimum(worst, 90.0)))
    dlon = np.where((worst >= POLE_LAT) | ~(dlon < 180.0), 360.0, dlon)
    return np.asarray(dlon, dtype=np.float64), np.asarray(dlat, dtype=np.float64)


def split_boxes(
    x0: NDArray[np.float64],
    y0: NDArray[np.float64],
    x1: NDArray[np.float64],
    y1: NDArray[np.float64],
) -> tuple[NDArray[np.int64], NDArray[np.float64]]:
    """Fold lon/lat boxes whose longitudes leave [-180, 180] into one or two boxes inside it.

    Returns (owner index per output box, boxes as an (m, 4) array x0, y0, x1, y1). Latitudes are
    clipped to [-90, 90]. A box wider than 360° becomes the full longitude range.
    """
    n = len(x0)
    idx = np.arange(n, dtype=np.int64)
    y0c = np.maximum(y0, -90.0)
    y1c = np.minimum(y1, 90.0)
    full = (x1 - x0) >= 360.0
    lo = ~full & (x0 < -180.0)
    hi = ~full & (x1 > 180.0)
    inside = ~(full | lo | hi)
    parts = [
        (idx[inside], x0[inside], x1[inside]),
        (idx[full], np.full(full.sum(), -180.0), np.full(full.sum(), 180.0)),
        # left overflow: [x0 + 360, 180] and [-180, x1]
        (idx[lo], x0[lo] + 360.0, np.full(lo.sum(), 180.0)),
        (idx[lo], np.full(lo.sum(), -180.0), np.minimum(x1[lo], 180.0)),
        # right overflow: [x0, 180] and [-180, x1 - 360]
        (idx[hi], np.maximum(x0[hi], -180.0), np.full(hi.sum(), 180.0)),
        (idx[hi], np.full(hi.sum(), -180.0), x1[hi] - 360.0),
    ]
    owner = np.concatenate([p[0] for p in parts])
    bx0 = np.concatenate([p[1] for p in parts])
    bx1 = np.concatenate([p[2] for p in parts])
    boxes = np.column_stack([bx0, y0c[owner], bx1, y1c[owner]]).astype(np.float64)
    order = np.argsort(owner, kind="stable")
    return owner[order], boxes[order]


def circle_boxes(
    lon: NDArray[np.float64], lat: NDArray[np.float64], radius_m: NDArray[np.float64]
) -> tuple[NDArray[np.int64], NDArray[np.float64]]:
    """Bounding boxes of spherical circles, split into wrapped boxes across 180°."""
    dlon, dlat = pad_deg(lat, radius_m)
    return split_boxes(lon - dlon, lat - dlat, lon + dlon, lat + dlat)


def query_boxes(lon: float, lat: float, dist_m: float) -> list[tuple[float, float, float, float]]:
    """One or two lon/lat boxes holding every point within ``dist_m`` metres of (lon, lat).

    Plain Python (a few hundred ns): the same padding as ``pad_deg`` and the numba kernel."""
    dlat = dist_m / M_PER_DEG * BOX_SLACK + 1e-9
    worst = abs(lat) + dlat
    dlon = 360.0
    if worst < POLE_LAT:
        dlon = dlat / math.cos(math.radians(worst))
        if not dlon < 180.0:
            dlon = 360.0
    y0, y1 = max(lat - dlat, -90.0), min(lat + dlat, 90.0)
    x0, x1 = lon - dlon, lon + dlon
    if x1 - x0 >= 360.0:
        return [(-180.0, y0, 180.0, y1)]
    if x0 < -180.0:
        return [(x0 + 360.0, y0, 180.0, y1), (-180.0, y0, x1, y1)]
    if x1 > 180.0:
        return [(x0, y0, 180.0, y1), (-180.0, y0, x1 - 360.0, y1)]
    return [(x0, y0, x1, y1)]

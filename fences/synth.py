"""A seeded synthetic city for benchmarks: clustered store fences and fixes drawn where people are.

Stores: 70% circles of 30-150 m, 30% star-shaped polygons of 4-20 vertices and similar size,
placed by a mixture of Gaussian districts (a dense centre, several secondary centres and suburbs)
around (lon0, lat0). Fixes come from the same mixture, so most fall near stores.

Calibration: with fences of total area A scattered by a density p, a random fix lands in about
lambda = A * integral(p^2) fences (and inside at least one with probability 1 - exp(-lambda)). The
district spread is scaled with the number of stores so that about ``inside_frac`` of the fixes
are inside some fence whatever N is (a fixed 50 km city would be covered several times over at
500k stores). The benchmark measures and reports the real fraction and matches per fix.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import shapely
from numpy.typing import NDArray

from fences.geo import M_PER_DEG
from fences.store import Store

# districts: weight, spread relative to the city's scale, offset (in units of that scale)
_DISTRICTS = [
    (0.30, 0.5, (0.0, 0.0)),
    (0.15, 0.7, (2.0, 0.5)),
    (0.15, 0.6, (-1.5, 1.8)),
    (0.10, 0.8, (0.5, -2.2)),
    (0.10, 0.4, (-2.5, -1.0)),
    (0.20, 2.0, (0.0, 0.0)),  # suburbs: a wide, thin spread
]
_CIRCLE_SHARE = 0.7
_R_MIN, _R_MAX = 30.0, 150.0


@dataclass
class City:
    stores: list[Store]
    lon0: float
    lat0: float
    scale_m: float  # the districts' spread unit in metres

    def fixes(self, n: int, seed: int = 1) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
        """``n`` fixes (lons, lats) drawn from the city's district mixture."""
        rng = np.random.default_rng(seed)
        x, y = _sample_districts(rng, n, self.scale_m)
        return _to_lonlat(x, y, self.lon0, self.lat0)


def _sample_districts(
    rng: np.random.Generator, n: int, scale: float
) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    w = np.array([d[0] for d in _DISTRICTS])
    k = rng.choice(len(_DISTRICTS), size=n, p=w / w.sum())
    spread = np.array([d[1] for d in _DISTRICTS])[k] * scale
    off = np.array([d[2] for d in _DISTRICTS])[k] * scale
    x = off[:, 0] + rng.normal(size=n) * spread
    y = off[:, 1] + rng.normal(size=n) * spread
    return x, y


def _to_lonlat(
    x: NDArray[np.float64], y: NDArray[np.float64], lon0: float, lat0: float
) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    lat = lat0 + y / M_PER_DEG
    lon = lon0 + x / (M_PER_DEG * math.cos(math.radians(lat0)))
    return lon.astype(np.float64), lat.astype(np.float64)


def _scale_for(n: int, inside_frac: float) -> float:
    """District spread unit (m) giving ~inside_frac of fixes inside a fence (see module doc)."""
    mean_r2 = (_R_MAX**3 - _R_MIN**3) / (3 * (_R_MAX - _R_MIN))
    # star polygons with radii 0.5-1.0 x R cover about 0.55 of their circle
    area = n * math.pi * mean_r2 * (_CIRCLE_SHARE + (1 - _CIRCLE_SHARE) * 0.55)
    lam = -math.log(1 - inside_frac)
    w = np.array([d[0] for d in _DISTRICTS])
    b = np.array([d[1] for d in _DISTRICTS])
    integral_unit = float(
        np.sum(w**2 / (4 * math.pi * b**2))
    )  # of p^2 at scale 1 (districts apart)
    return math.sqrt(area * integral_unit / lam)


def synth_city(
    n_stores: int,
    seed: int = 0,
    lon0: float = 116.40,
    lat0: float = 39.90,
    inside_frac: float = 0.10,
) -> City:
    """A city of ``n_stores`` fences (store ids ``s0000001``...), reproducible from ``seed``."""
    rng = np.random.default_rng(seed)
    scale = _scale_for(max(n_stores, 1), inside_frac)
    x, y = _sample_districts(rng, n_stores, scale)
    lon, lat = _to_lonlat(x, y, lon0, lat0)
    is_circle = rng.random(n_stores) < _CIRCLE_SHARE
    radius = rng.uniform(_R_MIN, _R_MAX, n_stores)
    polys = _star_polygons(rng, lon[~is_circle], lat[~is_circle], radius[~is_circle])
    stores: list[Store] = []
    pi = 0
    for i in range(n_stores):
        sid = f"s{i:07d}"
        if is_circle[i]:
            stores.append(
                Store(
                    sid,
                    f"m{i % 9973}",
                    center=(float(lon[i]), float(lat[i])),
                    radius_m=float(radius[i]),
                )
            )
        else:
            stores.append(Store(sid, f"m{i % 9973}", polygon=polys[pi]))
            pi += 1
    return City(stores=stores, lon0=lon0, lat0=lat0, scale_m=scale)


def _star_polygons(
    rng: np.random.Generator,
    lon: NDArray[np.float64],
    lat: NDArray[np.float64],
    size: NDArray[np.float64],
) -> list[shapely.Geometry]:
    """Star-shaped simple polygons (4-20 vertices, vertex radii 0.5-1.0 x size) around points."""
    n = len(lon)
    verts = rng.integers(4, 21, n)
    out: list[shapely.Geometry] = [None] * n
    for k in np.unique(verts):
        idx = np.flatnonzero(verts == k)
        m = len(idx)
        ang = 2 * math.pi * (np.arange(k)[None, :] + 0.5 * rng.random((m, k))) / k
        rad = size[idx, None] * (0.5 + 0.5 * rng.random((m, k)))
        dx = rad * np.cos(ang) / (M_PER_DEG * np.cos(np.radians(lat[idx, None])))
        dy = rad * np.sin(ang) / M_PER_DEG
        ring = np.empty((m, k + 1, 2))
        ring[:, :k, 0] = lon[idx, None] + dx
        ring[:, :k, 1] = lat[idx, None] + dy
        ring[:, k] = ring[:, 0]
        for j, g in zip(idx, shapely.polygons(ring), strict=True):
            out[j] = g
    return out


def circle_polygons(
    lon: NDArray[np.float64],
    lat: NDArray[np.float64],
    radius_m: NDArray[np.float64],
    quad_segs: int = 8,
) -> NDArray[np.object_]:
    """Circles as polygons buffered in a local metric projection (what a baseline user builds):
    4 * quad_segs vertices, like shapely's default buffer, inscribed in the true circle."""
    k = 4 * quad_segs
    ang = 2 * math.pi * np.arange(k + 1) / k
    ring = np.empty((len(lon), k + 1, 2))
    ring[:, :, 0] = lon[:, None] + radius_m[:, None] * np.cos(ang) / (
        M_PER_DEG * np.cos(np.radians(lat[:, None]))
    )
    ring[:, :, 1] = lat[:, None] + radius_m[:, None] * np.sin(ang) / M_PER_DEG
    ring[:, k] = ring[:, 0]
    return np.asarray(shapely.polygons(ring), dtype=object)

"""Polygons that cross the antimeridian, split into parts that lie in [-180, 180].

A GeoJSON ring crosses the antimeridian when two consecutive longitudes jump by more than 180°
(RFC 7946 §3.1.9 asks writers to split such geometries; many do not). We read the ring as the
*shorter* way round: the jump is undone by adding or subtracting 360°, so the ring becomes
continuous in an "unwrapped" longitude that may leave [-180, 180]. The unwrapped polygon is then
clipped against the three 360°-wide windows centred on -360, 0 and +360 and each piece shifted
back, which yields a MultiPolygon whose parts touch the antimeridian from both sides.

Edges are straight lines in lon/lat (the "flat" interpretation, like the rest of fences/, which
tests polygons with planar shapely predicates), not great circles.

Not supported, reported as :class:`AntimeridianError` with a reason a person can act on:

* a ring that winds around a pole (its unwrapped longitude does not come back to where it started,
  e.g. a cap north of 80°N): a geofence containing a pole is not a store; split it by hand into
  parts that do not contain the pole;
* a crossing ring that spans 180° of longitude or more after unwrapping: the shorter-way reading
  becomes ambiguous (the antimeridian test case ``both-poles`` is such a ring);
* lines (fences are areas).

A ring whose only jumps are between points exactly on -180 and +180 (a band drawn from -180 to
180) is taken literally, as a planar polygon spanning the whole range.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import numpy.typing as npt
import shapely

Ring = npt.NDArray[np.float64]  # shape (n, 2): lon, lat

# A crossing ring wider than this (after unwrapping) is ambiguous: the shorter-way reading may not
# be what its author meant (e.g. a band meant to contain both poles). Stores are far smaller.
MAX_CROSSING_WIDTH = 180.0
# Pieces smaller than this (deg²; about 0.01 m² at the equator) are rounding slivers such as the
# one a vertex at 179.99999999999997 leaves on the far side.
_SLIVER_DEG2 = 1e-12


class AntimeridianError(ValueError):
    """A polygon whose antimeridian crossing geopush cannot turn into a fence."""


def ring_crosses(ring: Ring) -> bool:
    """True when consecutive longitudes jump by more than 180° (other than -180 <-> +180)."""
    lon = ring[:, 0]
    jumps = np.abs(np.diff(lon)) > 180.0
    if not jumps.any():
        return False
    both_on_meridian = (np.abs(lon[:-1]) == 180.0) & (np.abs(lon[1:]) == 180.0)
    return bool((jumps & ~both_on_meridian).any())


def crosses(rings: Sequence[Ring]) -> bool:
    return any(ring_crosses(r) for r in rings)


def needs_split(rings: Sequence[Ring]) -> bool:
    """True when a ring crosses the antimeridian or has longitudes outside [-180, 180]."""
    return any(ring_crosses(r) or bool((np.abs(r[:, 0]) > 180.0).any()) for r in rings)


def _unwrap(ring: Ring, what: str) -> Ring:
    lon = ring[:, 0]
    step = np.diff(lon)
    shift = np.concatenate(
        ([0.0], -360.0 * np.cumsum(np.round(step / 360.0) * (np.abs(step) > 180.0)))
    )
    out = ring.copy()
    out[:, 0] = lon + shift
    if abs(out[-1, 0] - out[0, 0]) > 1e-9:
        raise AntimeridianError(
            f"{what} winds around a pole (its longitudes go all the way round the globe); "
            "geopush does not support fences that contain a pole: draw the fence as polygons "
            "that do not enclose the pole"
        )
    width = float(out[:, 0].max() - out[:, 0].min())
    if width >= MAX_CROSSING_WIDTH:
        raise AntimeridianError(
            f"{what} crosses the antimeridian and then spans {width:.1f}° of longitude, which "
            "is ambiguous (it may be meant to go the other way round the globe or to contain a "
            f"pole); a fence that crosses the antimeridian must span less than "
            f"{MAX_CROSSING_WIDTH:.0f}°: split it into parts in [-180, 180] yourself"
        )
    return out


def _fit_hole(hole: Ring, lo: float, hi: float) -> Ring:
    """Shift an unwrapped hole by a multiple of 360° so that it lies in the shell's range."""
    best, best_gap = hole, float("inf")
    for k in (-360.0, 0.0, 360.0):
        x0 = float(hole[:, 0].min()) + k
        x1 = float(hole[:, 0].max()) + k
        gap = max(lo - x0, 0.0) + max(x1 - hi, 0.0)
        if gap < best_gap:
            best_gap = gap
            best = hole.copy()
            best[:, 0] += k
    return best


def split_rings(shell: Ring, holes: Sequence[Ring], what: str = "polygon") -> list[shapely.Polygon]:
    """Split one polygon (shell + holes, as (n, 2) arrays) into parts inside [-180, 180].

    Raises AntimeridianError for the unsupported cases listed in the module docstring.
    """
    if not needs_split([shell, *holes]):
        return [shapely.Polygon(shell, list(holes))]
    ushell = _unwrap(shell, f"the outer ring of {what}")
    lo, hi = float(ushell[:, 0].min()), float(ushell[:, 0].max())
    uholes = [_fit_hole(_unwrap(h, f"hole {i} of {what}"), lo, hi) for i, h in enumerate(holes, 1)]
    poly = shapely.Polygon(ushell, uholes)
    if not poly.is_valid:
        # Leave it to the caller's validity check to explain; splitting garbage hides the cause.
        return [poly]
    parts: list[shapely.Polygon] = []
    for k in (-360.0, 0.0, 360.0):
        window = shapely.box(-180.0 + k, -90.0, 180.0 + k, 90.0)
        piece = shapely.transform(shapely.intersection(poly, window), lambda xy, k=k: xy - [k, 0.0])
        parts.extend(_polygons(piece))
    return parts


def _polygons(geom: shapely.Geometry) -> list[shapely.Polygon]:
    out: list[shapely.Polygon] = []
    for g in shapely.get_parts(geom):
        if isinstance(g, shapely.Polygon) and g.area > _SLIVER_DEG2:
            out.append(g)
    return out


def split(geom: shapely.Geometry) -> shapely.Geometry:
    """Split a shapely Polygon/MultiPolygon whose rings cross the antimeridian.

    Returns the input unchanged when nothing crosses, a Polygon when one part remains, otherwise a
    MultiPolygon in [-180, 180].
    """
    if not isinstance(geom, shapely.Polygon | shapely.MultiPolygon):
        raise AntimeridianError(
            f"only Polygon and MultiPolygon fences are split at the antimeridian, not {geom.geom_type}"
        )
    polys = list(shapely.get_parts(geom))
    parts: list[shapely.Polygon] = []
    changed = False
    for i, p in enumerate(polys):
        shell = np.asarray(p.exterior.coords, dtype=np.float64)[:, :2]
        holes = [np.asarray(r.coords, dtype=np.float64)[:, :2] for r in p.interiors]
        if needs_split([shell, *holes]):
            changed = True
            what = "polygon" if len(polys) == 1 else f"polygon {i}"
            parts.extend(split_rings(shell, holes, what))
        else:
            parts.append(p)
    if not changed:
        return geom
    if len(parts) == 1:
        return parts[0]
    return shapely.MultiPolygon(parts)

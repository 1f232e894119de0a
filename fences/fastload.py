"""Bulk validation of a catalog's features: the fast path of ``fences.catalog.load_catalog``.

The feature-by-feature validator (``fences.catalog._parse_feature``) is the reference: it spends
~15 µs of Python per store. Here each feature is decoded by a typed msgspec decoder (a Feature
whose geometry is a Point or a Polygon of 2-D positions and nothing else), the few per-store
properties are read in one short loop, and the geometric checks run in bulk with numpy: ranges,
ring closure and length, antimeridian jumps; polygons are built at once by
``shapely.from_ragged_array`` (and then checked for validity by GEOS in one vectorised call, as
the reference does).

The rule that keeps both paths identical: a feature is taken here only when the reference would
find *nothing* wrong with it and would build the same Store from it. Anything else -- a typed
decode that fails (a MultiPolygon, a bbox, a foreign member, null properties, a 3-D position ...),
a value out of range, an unclosed ring, a ring crossing the antimeridian, a malformed identifier
-- sends that one feature to the reference validator, which produces its problems with the usual
messages. The checks across features (store_id and identifier clashes, polygon validity, the
order of problems) are the reference's own (``fences.catalog._assemble``).
tests/fences/test_fastload.py holds the two paths to the same Catalog and the same problems on
generated catalogs with invalid features mixed in.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import msgspec
import numpy as np
import shapely

from fences import catalog as C
from fences.store import Store


class _Point(msgspec.Struct, tag_field="type", tag="Point", forbid_unknown_fields=True):
    coordinates: tuple[float, float]


class _Polygon(msgspec.Struct, tag_field="type", tag="Polygon", forbid_unknown_fields=True):
    coordinates: list[list[tuple[float, float]]]


class _Feature(msgspec.Struct, forbid_unknown_fields=True):
    type: Literal["Feature"]
    properties: dict[str, Any]
    geometry: _Point | _Polygon
    id: str | int | float | msgspec.UnsetType = msgspec.UNSET


_DECODER = msgspec.json.Decoder(_Feature)
_BASIC = frozenset({"store_id", "merchant_id", "name", "radius_m"})
_NO_IDENTS: C._Idents = ((), (), ())

# a store's fields after its shape: wifi, beacons, nfc, tz, max_accuracy_m, tags, extra properties
_Ids = tuple[str, ...]
_Row = tuple[_Ids, _Ids, _Ids, str, float, _Ids, dict[str, Any]]


def _props(props: dict[str, Any], radius: float | None) -> _Row | None:
    """The store's fields other than its shape, from properties holding more than store_id,
    merchant_id, name and radius_m; None when the reference would object."""
    fb = C._Feature()
    wifi, beacons, nfc = C._bssids(props, fb), C._beacons(props, fb), C._nfc(props, fb)
    tz = props.get("tz")
    if tz is None:
        tz = C.DEFAULT_TZ
    elif not isinstance(tz, str) or not C._tz_ok(tz):
        return None
    max_acc = C._number(props, "max_accuracy_m", fb)
    if max_acc is not None and max_acc <= 0:
        return None
    tags = C._string_list(props, "tags", fb)
    if fb.reasons:
        return None
    extra = {k: v for k, v in props.items() if k not in C.KNOWN_PROPERTIES}
    acc = C.DEFAULT_MAX_ACCURACY_M if max_acc is None else max_acc
    return (wifi, beacons, nfc, tz, acc, tuple(tags), extra)


def parse_features(raws: Sequence[msgspec.Raw]) -> list[C._Parsed]:
    """``fences.catalog._parse_feature`` of every encoded feature, in order (see the module
    docstring): bulk-validated where possible, the reference validator elsewhere."""
    n = len(raws)
    out: list[Any] = [None] * n  # a result, or for a polygon the store's other fields
    pg_at: list[int] = []  # features with a Polygon: rings per polygon, vertices per ring
    pg_rings: list[int] = []
    ring_len: list[int] = []
    verts: list[tuple[float, float]] = []
    decode = _DECODER.decode
    basic = _BASIC
    lo, hi = C.MIN_RADIUS_M, C.MAX_RADIUS_M
    plain = ((), (), (), C.DEFAULT_TZ, C.DEFAULT_MAX_ACCURACY_M, ())
    no_idents = _NO_IDENTS
    for i, raw in enumerate(raws):
        try:
            f = decode(raw)
        except msgspec.ValidationError:
            continue
        props = f.properties
        sid = props.get("store_id")
        mid = props.get("merchant_id")
        if type(sid) is not str or type(mid) is not str:
            continue
        sid = sid.strip()
        mid = mid.strip()
        name = props.get("name") or ""
        if not sid or not mid or type(name) is not str:
            continue
        r = props.get("radius_m")
        geom = f.geometry
        if type(geom) is _Point:
            if (type(r) is not float and type(r) is not int) or not lo <= r <= hi:
                continue
            x, y = geom.coordinates
            if not (-180.0 <= x <= 180.0 and -90.0 <= y <= 90.0):
                continue
            if props.keys() <= basic:
                store = Store(sid, mid, name, (x, y), float(r), None, *plain, {})
                out[i] = (store, sid, [], no_idents)
                continue
            row = _props(props, float(r))
            if row is not None:
                wifi, beacons, nfc = row[0], row[1], row[2]
                store = Store(sid, mid, name, (x, y), float(r), None, *row)
                out[i] = (store, sid, [], (wifi, beacons, nfc))
            continue
        if r is not None:
            continue
        assert type(geom) is _Polygon
        rings = geom.coordinates
        if not rings:
            continue
        ok = True
        for ring in rings:
            if len(ring) < 4 or ring[0] != ring[-1]:
                ok = False
                break
        if not ok:
            continue
        row = (*plain, {}) if props.keys() <= basic else _props(props, None)
        if row is None:
            continue
        pg_at.append(i)
        pg_rings.append(len(rings))
        for ring in rings:
            ring_len.append(len(ring))
            verts.extend(ring)
        out[i] = (sid, mid, name, row)

    polygons = _polygons(pg_at, pg_rings, ring_len, verts)
    del verts
    for i in pg_at:
        polygon = polygons.get(i)
        if polygon is None:
            out[i] = None
            continue
        sid, mid, name, row = out[i]
        store = Store(sid, mid, name, None, None, polygon, *row)
        out[i] = (store, sid, [], (row[0], row[1], row[2]))
    for i in range(n):
        if out[i] is None:
            out[i] = C._parse_feature(msgspec.json.decode(raws[i]))
    return out


def _in_range(xy: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
    """Longitude in [-180, 180] and latitude in [-90, 90] (NaN fails), per row."""
    x, y = xy[:, 0], xy[:, 1]
    return np.asarray((x >= -180.0) & (x <= 180.0) & (y >= -90.0) & (y <= 90.0), dtype=bool)


def _polygons(
    pg_at: list[int],
    pg_rings: list[int],
    ring_len: list[int],
    verts: list[tuple[float, float]],
) -> dict[int, shapely.Geometry]:
    """Range and antimeridian checks over every vertex at once, then one Polygon per passing
    feature (a failing feature is left out: the reference explains it)."""
    if not pg_at:
        return {}
    xy = np.array(verts, dtype=np.float64).reshape(-1, 2)
    rlen = np.asarray(ring_len, dtype=np.int64)
    nring = np.asarray(pg_rings, dtype=np.int64)
    ring_of_vert = np.repeat(np.arange(len(rlen)), rlen)
    poly_of_ring = np.repeat(np.arange(len(nring)), nring)
    bad_vert = ~_in_range(xy)
    # consecutive longitudes more than 180° apart within a ring: may cross the antimeridian
    jump = np.zeros(len(xy), dtype=bool)
    if len(xy) > 1:
        same_ring = ring_of_vert[1:] == ring_of_vert[:-1]
        jump[1:] = same_ring & (np.abs(np.diff(xy[:, 0])) > 180.0)
    bad_ring = np.bincount(ring_of_vert[bad_vert | jump], minlength=len(rlen)) > 0
    bad_poly = np.bincount(poly_of_ring[bad_ring], minlength=len(nring)) > 0
    keep_poly = ~bad_poly
    keep_ring = keep_poly[poly_of_ring]
    keep_vert = keep_ring[ring_of_vert]
    if not keep_poly.any():
        return {}
    ring_off = np.concatenate([[0], np.cumsum(rlen[keep_ring])])
    poly_off = np.concatenate([[0], np.cumsum(nring[keep_poly])])
    geoms = shapely.from_ragged_array(
        shapely.GeometryType.POLYGON,
        np.ascontiguousarray(xy[keep_vert]),
        (ring_off, poly_off),
    )
    kept = [i for i, k in zip(pg_at, keep_poly.tolist(), strict=True) if k]
    return dict(zip(kept, geoms.tolist(), strict=True))


__all__ = ["parse_features"]

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

import math
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any, Literal

import msgspec
import numpy as np
import shapely

from fences import catalog as C
from fences.store import Store


class _Point(msgspec.Struct, tag_field="type", tag="Point", forbid_unknown_fields=True, gc=False):
    coordinates: tuple[float, float]


class _Polygon(
    msgspec.Struct, tag_field="type", tag="Polygon", forbid_unknown_fields=True, gc=False
):
    coordinates: list[list[tuple[float, float]]]


class _Feature(msgspec.Struct, forbid_unknown_fields=True, gc=False):
    type: Literal["Feature"]
    properties: dict[str, Any]
    geometry: _Point | _Polygon
    id: str | int | float | msgspec.UnsetType = msgspec.UNSET


_DECODER = msgspec.json.Decoder(_Feature)
CHUNK = 20_000
"""Features validated together (numpy vectors, one from_ragged_array call per chunk)."""
_BASIC = frozenset({"store_id", "merchant_id", "name", "radius_m"})
_KNOWN = C.KNOWN_PROPERTIES
_BSSID_RE = C._BSSID_RE
_UUID_RE = C._UUID_RE
_NO_IDENTS: C._Idents = ((), (), ())
_NO_REASONS: list[str] = []  # shared: _assemble only reads it

# a store's fields after its shape: wifi, beacons, nfc, tz, max_accuracy_m, tags, extra properties
_Ids = tuple[str, ...]
_Row = tuple[_Ids, _Ids, _Ids, str, float, _Ids, dict[str, Any]]


def _props(props: dict[str, Any]) -> _Row | None:
    """The store's fields after its shape, from properties holding more than store_id,
    merchant_id, name and radius_m; None when the reference would object (or might: anything
    unusual is left to it). Same normalisation as fences.catalog's _bssids, _beacons, _nfc."""
    wifi: tuple[str, ...] = ()
    beacons: tuple[str, ...] = ()
    nfc: tuple[str, ...] = ()
    tags: tuple[str, ...] = ()
    v = props.get("wifi")
    if v is not None:
        if type(v) is not list:
            return None
        keys = []
        for raw in v:
            if type(raw) is not str:
                return None
            k = raw.strip().lower().replace("-", ":")
            if not _BSSID_RE.match(k):
                return None
            keys.append(k)
        wifi = tuple(dict.fromkeys(keys))
    v = props.get("beacons")
    if v is not None:
        if type(v) is not list:
            return None
        keys = []
        for raw in v:
            if type(raw) is not str:
                return None
            parts = raw.strip().rsplit(":", 2)
            if len(parts) != 3:
                return None
            uuid = parts[0].strip().upper()
            if not _UUID_RE.match(uuid):
                return None
            try:
                major, minor = int(parts[1]), int(parts[2])
            except ValueError:
                return None
            if not (0 <= major <= 65535 and 0 <= minor <= 65535):
                return None
            keys.append(f"{uuid}:{major}:{minor}")
        beacons = tuple(dict.fromkeys(keys))
    v = props.get("nfc")
    if v is not None:
        if type(v) is not list:
            return None
        keys = []
        for raw in v:
            if type(raw) is not str or not raw.strip():
                return None
            keys.append(raw.strip())
        nfc = tuple(dict.fromkeys(keys))
    v = props.get("tags")
    if v is not None:
        if type(v) is not list or not all(type(t) is str for t in v):
            return None
        tags = tuple(v)
    tz = props.get("tz")
    if tz is None:
        tz = C.DEFAULT_TZ
    elif type(tz) is not str or not C._tz_ok(tz):
        return None
    v = props.get("max_accuracy_m")
    acc = C.DEFAULT_MAX_ACCURACY_M
    if v is not None:
        if type(v) is float and v > 0.0 and v != math.inf:  # NaN fails v > 0
            acc = v
        elif type(v) is int and 0 < v < 2**53:
            acc = float(v)
        else:
            return None
    extra = {k: x for k, x in props.items() if k not in _KNOWN}
    return (wifi, beacons, nfc, tz, acc, tags, extra)


def parse_features(raws: Sequence[msgspec.Raw]) -> list[C._Parsed]:
    """``fences.catalog._parse_feature`` of every encoded feature, in order (see the module
    docstring): bulk-validated where possible, the reference validator elsewhere. Features go
    through in chunks of ``CHUNK``, so the temporaries (decoded features, vertex lists) stay
    small: the peak memory is the stores plus the file, as on the reference path."""
    decode = _DECODER.decode

    def each(chunk: Sequence[msgspec.Raw]) -> Iterator[_Feature | None]:
        for raw in chunk:
            try:
                yield decode(raw)
            except msgspec.ValidationError:
                yield None

    out: list[C._Parsed] = []
    for start in range(0, len(raws), CHUNK):
        chunk = raws[start : start + CHUNK]
        out.extend(_bulk(each(chunk), len(chunk), chunk.__getitem__))
    return out


def _bulk(
    feats: Iterable[_Feature | None], n: int, raw_of: Callable[[int], msgspec.Raw]
) -> list[C._Parsed]:
    out: list[Any] = [None] * n  # a result, or for a polygon the store's other fields
    pg_at: list[int] = []  # features with a Polygon: rings per polygon, vertices per ring
    pg_rings: list[int] = []
    ring_len: list[int] = []
    verts: list[tuple[float, float]] = []
    basic = _BASIC
    lo, hi = C.MIN_RADIUS_M, C.MAX_RADIUS_M
    plain = ((), (), (), C.DEFAULT_TZ, C.DEFAULT_MAX_ACCURACY_M, ())
    no_idents = _NO_IDENTS
    for i, f in enumerate(feats):
        if f is None:
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
                out[i] = (store, sid, _NO_REASONS, no_idents)
                continue
            row = _props(props)
            if row is not None:
                wifi, beacons, nfc = row[0], row[1], row[2]
                store = Store(sid, mid, name, (x, y), float(r), None, *row)
                out[i] = (store, sid, _NO_REASONS, (wifi, beacons, nfc))
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
        row = (*plain, {}) if props.keys() <= basic else _props(props)
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
        out[i] = (store, sid, _NO_REASONS, (row[0], row[1], row[2]))
    for i in range(n):
        if out[i] is None:
            out[i] = C._parse_feature(msgspec.json.decode(raw_of(i)))
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


__all__ = ["CHUNK", "parse_features"]

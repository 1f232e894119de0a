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

``load_columns`` goes further for a catalog with nothing to report (the usual case): chunks of
features become columns (fences.columns) without a Store object or a per-feature Python step:
properties decoded as a struct of the known ones (or a dict), coordinates left encoded and read
in bulk (``_numbers``), every check a C-speed pass over a column. A chunk with anything unusual
goes through ``_bulk`` above; a catalog with any problem gives None and is validated again on
the row path, which explains it. The same tests hold the columns to the reference.
``load_columns_text`` does the same from the file's text when it has the usual shape (features
on their own lines): the array cut at line breaks, no top-level decode.
"""

from __future__ import annotations

import contextlib
import math
import re
from collections.abc import Callable, Iterable, Iterator, Sequence
from itertools import chain, repeat
from operator import attrgetter, is_, is_not, methodcaller
from typing import Any, Literal

import msgspec
import numpy as np
import shapely

from fences import catalog as C
from fences.columns import PLAIN, LazyStores, Row, StoreColumns
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


class _Props(msgspec.Struct, forbid_unknown_fields=True, gc=False):
    """A feature's properties when it has no others than these (None: absent or null, which
    the reference treats alike for every one of them)."""

    store_id: Any = None
    merchant_id: Any = None
    name: Any = None
    radius_m: Any = None
    wifi: Any = None
    beacons: Any = None
    nfc: Any = None
    tz: Any = None
    max_accuracy_m: Any = None
    tags: Any = None


class _RPoint(msgspec.Struct, tag_field="type", tag="Point", forbid_unknown_fields=True, gc=False):
    coordinates: msgspec.Raw  # parsed in bulk by _numbers


class _RPolygon(
    msgspec.Struct, tag_field="type", tag="Polygon", forbid_unknown_fields=True, gc=False
):
    coordinates: msgspec.Raw


class _SFeature(msgspec.Struct, forbid_unknown_fields=True, gc=False):
    """A feature for the columns: properties among the known ones, coordinates left encoded."""

    type: Literal["Feature"]
    properties: _Props
    geometry: _RPoint | _RPolygon
    id: str | int | float | msgspec.UnsetType = msgspec.UNSET


class _DFeature(msgspec.Struct, forbid_unknown_fields=True, gc=False):
    """The same with any properties."""

    type: Literal["Feature"]
    properties: dict[str, Any]
    geometry: _RPoint | _RPolygon
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
            key = _beacon(raw) if type(raw) is str else None
            if key is None:
                return None
            keys.append(key)
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
    out: list[C._Parsed] = []
    for start in range(0, len(raws), CHUNK):
        chunk = raws[start : start + CHUNK]
        out.extend(_bulk(_each(chunk), len(chunk), chunk.__getitem__))
    return out


def _each(chunk: Sequence[msgspec.Raw]) -> Iterator[_Feature | None]:
    decode = _DECODER.decode
    for raw in chunk:
        try:
            yield decode(raw)
        except msgspec.ValidationError:
            yield None


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


# --------------------------------------------------------------------------------------------
# Columns: a valid catalog without a Store object per feature


class _Cols:
    """One chunk of features as columns (chunk-local rows); see fences.columns.StoreColumns."""

    def __init__(self, n: int) -> None:
        self.ids: list[str] = []
        self.merchants: list[str] = []
        self.names: list[str] = []
        self.center = np.full((n, 2), np.nan)
        self.radius = np.full(n, np.nan)
        self.polygons: np.ndarray[Any, Any] = np.full(n, None, dtype=object)
        self.rare: dict[int, Row] = {}
        self.unsure: np.ndarray[Any, Any] = np.zeros(0, np.int64)  # polygons GEOS must check


def _all_str(values: list[Any]) -> bool:
    return set(map(type, values)) <= _STR


_STR = {str}
_NUM = {float, int}
_DEFAULT_ACC = C.DEFAULT_MAX_ACCURACY_M


_Claims = tuple[list[str], list[int]]  # identifier keys and the features claiming them


def _idents(
    vals: list[Any], norm: Callable[[list[str]], list[str] | None]
) -> tuple[list[tuple[str, ...]], _Claims] | None:
    """Per feature, the normalised keys of one identifier property (wifi, beacons or nfc) in
    first-seen order without repeats, and every (key, feature) claim; None when the reference
    would object (or might)."""
    out: list[tuple[str, ...]] = [()] * len(vals)
    have = [k for k, v in enumerate(vals) if v is not None]
    if not have:
        return out, ([], [])
    lists = [vals[k] for k in have]
    if set(map(type, lists)) != {list}:
        return None
    flat = list(chain.from_iterable(lists))
    if not _all_str(flat):
        return None
    keys = norm(flat)
    if keys is None:
        return None
    lens = list(map(len, lists))
    if set(lens) == {1}:
        for k, key in zip(have, keys, strict=True):
            out[k] = (key,)
        return out, (keys, have)
    pos = 0
    owners: list[int] = []
    out_keys: list[str] = []
    for k, m in zip(have, lens, strict=True):
        t = tuple(dict.fromkeys(keys[pos : pos + m]))
        out[k] = t
        out_keys.extend(t)
        owners.extend([k] * len(t))
        pos += m
    return out, (out_keys, owners)


def _norm_wifi(flat: list[str]) -> list[str] | None:
    keys = [raw.strip().lower().replace("-", ":") for raw in flat]
    return keys if all(map(_BSSID_RE.match, keys)) else None


def _beacon(raw: str) -> str | None:
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
    return f"{uuid}:{major}:{minor}"


_U16 = r"(?:0|[1-9][0-9]{0,3}|[1-5][0-9]{4}|6[0-4][0-9]{3}|65[0-4][0-9]{2}|655[0-2][0-9]|6553[0-5])"
_CANONICAL_BEACON = re.compile(
    r"[0-9A-F]{8}-[0-9A-F]{4}-[0-9A-F]{4}-[0-9A-F]{4}-[0-9A-F]{12}:" + _U16 + ":" + _U16 + r"\Z"
)
"""A beacon id written as its own normalised key (upper case, major and minor in 0..65535
without leading zeros, no spaces): ``_beacon`` would return it unchanged."""


def _norm_beacons(flat: list[str]) -> list[str] | None:
    if all(map(_CANONICAL_BEACON.match, flat)):
        return flat
    keys = list(map(_beacon, flat))
    return None if None in keys else keys  # type: ignore[return-value]


def _norm_nfc(flat: list[str]) -> list[str] | None:
    keys = [raw.strip() for raw in flat]
    return keys if all(keys) else None


def _acc(v: Any) -> float:
    """max_accuracy_m as the store holds it, or -1.0 when the reference would object."""
    if v is None:
        return _DEFAULT_ACC
    if type(v) is float:
        return v if v > 0.0 and v != math.inf else -1.0  # NaN fails v > 0
    if type(v) is int and 0 < v < 2**53:
        return float(v)
    return -1.0


def _rows(
    column: Callable[[str], list[Any]], extra: list[dict[str, Any]]
) -> tuple[list[Row], list[_Claims]] | None:
    """``_props`` of many properties objects at once (the same rows; None if any would be
    None), and the identifier claims (wifi, beacons, nfc) by position. ``column(key)``: the
    value of a property in each object (None when absent); ``extra``: their other properties."""
    got_wifi = _idents(column("wifi"), _norm_wifi)
    got_beacons = _idents(column("beacons"), _norm_beacons)
    got_nfc = _idents(column("nfc"), _norm_nfc)
    if got_wifi is None or got_beacons is None or got_nfc is None:
        return None
    (wifi, c1), (beacons, c2), (nfc, c3) = got_wifi, got_beacons, got_nfc
    tags: list[tuple[str, ...]] = [()] * len(extra)
    for k, v in enumerate(column("tags")):
        if v is not None:
            if type(v) is not list or not _all_str(v):
                return None
            tags[k] = tuple(v)
    tzs = [C.DEFAULT_TZ if v is None else v for v in column("tz")]
    if not _all_str(tzs) or not all(map(C._tz_ok, set(tzs))):
        return None
    accs = list(map(_acc, column("max_accuracy_m")))
    if -1.0 in accs:
        return None
    rows = list(zip(wifi, beacons, nfc, tzs, accs, tags, extra, strict=True))
    return rows, [c1, c2, c3]


_RARE = ("wifi", "beacons", "nfc", "tz", "max_accuracy_m", "tags")
_PROPERTIES = attrgetter("properties")
_GEOMETRY = attrgetter("geometry")
_COORDINATES = attrgetter("coordinates")
_FIELDS = ("store_id", "merchant_id", "name", "radius_m", *_RARE)
_ALL_FIELDS = attrgetter(*_FIELDS)


def _chunk_columns(feats: list[_DFeature] | list[_SFeature]) -> tuple[_Cols, list[_Claims]] | None:
    """A chunk of typed features as columns, when ``_bulk`` would take every one of them (and so
    the reference would find nothing wrong with any); None otherwise."""
    n = len(feats)
    props: list[Any] = list(map(_PROPERTIES, feats))
    geoms: list[Any] = list(map(_GEOMETRY, feats))
    typed = n > 0 and type(props[0]) is _Props
    if typed:  # every property as a column in one pass
        by_key = dict(zip(_FIELDS, zip(*map(_ALL_FIELDS, props), strict=True), strict=True))

    def column(key: str, of: list[Any] | None = None) -> list[Any]:
        if of is None:
            if typed:
                return list(by_key[key])
            of = props
        if typed:
            return list(map(attrgetter(key), of))
        return list(map(methodcaller("get", key), of))

    sids = column("store_id")
    mids = column("merchant_id")
    if not _all_str(sids) or not _all_str(mids):
        return None
    sids = list(map(str.strip, sids))
    mids = list(map(str.strip, mids))
    names = [v or "" for v in column("name")]
    if not all(sids) or not all(mids) or not _all_str(names):
        return None
    radii = column("radius_m")
    point = np.fromiter(map(is_, map(type, geoms), repeat(_RPoint)), dtype=bool, count=n)
    out = _Cols(n)
    out.ids, out.merchants, out.names = sids, mids, names
    pi = np.flatnonzero(point).tolist()
    if pi:
        r = [radii[i] for i in pi] if len(pi) < n else radii
        if not set(map(type, r)) <= _NUM:
            return None
        try:
            rad = np.array(r, dtype=np.float64)
        except OverflowError:
            return None
        if not ((rad >= C.MIN_RADIUS_M) & (rad <= C.MAX_RADIUS_M)).all():
            return None
        pts = _numbers(list(map(_COORDINATES, map(geoms.__getitem__, pi))), 1)
        if pts is None:
            return None
        xy = pts[0]
        if not _in_range(xy).all():
            return None
        out.center[pi] = xy
        out.radius[pi] = rad
    qi = np.flatnonzero(~point).tolist()
    if qi:
        if any(radii[i] is not None for i in qi):
            return None
        pgs = _numbers(list(map(_COORDINATES, map(geoms.__getitem__, qi))), 3)
        if pgs is None:
            return None
        xy, rlen, nring = pgs
        if (nring == 0).any() or (rlen < 4).any():
            return None
        ring_off = np.concatenate([[0], np.cumsum(rlen)])
        first, last = ring_off[:-1], ring_off[1:] - 1
        if not (xy[first] == xy[last]).all() or not _in_range(xy).all():
            return None
        same_ring = np.ones(len(xy) - 1, dtype=bool)
        same_ring[last[:-1]] = False  # the step from a ring's last vertex to the next ring's first
        if (same_ring & (np.abs(np.diff(xy[:, 0])) > 180.0)).any():
            return None  # may cross the antimeridian: the reference splits it
        poly_off = np.concatenate([[0], np.cumsum(nring)])
        out.polygons[qi] = shapely.from_ragged_array(
            shapely.GeometryType.POLYGON, xy, (ring_off, poly_off)
        )
        out.unsure = np.asarray(qi, dtype=np.int64)[~_surely_valid(xy, rlen, nring)]
    claims: list[_Claims] = [([], []), ([], []), ([], [])]
    if typed:  # only the known properties: a feature with any of the rarer ones set
        has = np.zeros(n, dtype=bool)
        for key in _RARE:
            vals = by_key[key]
            if vals.count(None) != n:
                has |= np.fromiter(map(is_not, vals, repeat(None)), dtype=bool, count=n)
        ext = np.flatnonzero(has).tolist()
        extra: list[dict[str, Any]] = [{} for _ in ext]
    else:
        ext = [i for i, known in enumerate(map(_BASIC.issuperset, props)) if not known]
        known = _KNOWN.issuperset
        extra = [
            {} if known(p) else {k: x for k, x in p.items() if k not in _KNOWN}
            for p in (props[i] for i in ext)
        ]
    if ext:
        sub = [props[i] for i in ext]
        got = _rows(lambda key: column(key, sub), extra)
        if got is None:
            return None
        rows, by_pos = got
        out.rare = dict(zip(ext, rows, strict=True))
        claims = [(keys, [ext[j] for j in at]) for keys, at in by_pos]
    return out, claims


_NUMBER_CHARS = b"0123456789.eE+- \t\r\n"
_FLOATS = msgspec.json.Decoder(list[float])
_POLYGONS = re.compile(rb"(?:\[(?:\[p+\])+\])+")
_OPEN, _CLOSE, _P = ord("["), ord("]"), ord("p")


def _numbers(
    raws: list[msgspec.Raw], depth: int
) -> tuple[np.ndarray[Any, Any], np.ndarray[Any, Any], np.ndarray[Any, Any]] | None:
    """Coordinates left encoded, read in bulk: ``raws`` are JSON values, each a position
    (``depth`` 1: ``[x, y]``) or a Polygon's rings (``depth`` 3: arrays of rings of
    positions). Returns the positions as an (n, 2) float array, the positions per ring and the
    rings per polygon (depth 3); None unless every value is exactly that: arrays nested to
    ``depth`` with two numbers in each innermost one and nothing else (what the typed decoder
    of ``_Point`` and ``_Polygon`` accepts), or when a polygon or a ring is empty.

    Each value is valid JSON (msgspec.Raw is checked as it is decoded), so its shape is its
    brackets and commas: the text without the characters of numbers and white space. There
    every ``[,]`` is an array of exactly two numbers (a position: ``p``); with the commas
    dropped, the points must read ``pp...p`` and the polygons ``[[pp..][pp..]][...]``, and the
    count of numbers (read by msgspec as one flat array, the brackets taken out) must be twice
    the count of positions: no number outside a position."""
    text = b",".join(raws)
    shape = text.translate(None, _NUMBER_CHARS).replace(b"[,]", b"p").replace(b",", b"")
    if depth == 1:
        if shape != b"p" * len(raws):
            return None
        npos = len(raws)
    elif _POLYGONS.fullmatch(shape) is None:
        return None  # also anything but brackets, commas and numbers (a string, null, ...)
    else:
        npos = shape.count(b"p")
    try:
        flat = _FLOATS.decode(b"[" + text.translate(None, b"[]") + b"]")
    except msgspec.DecodeError:  # a number out of range
        return None
    if len(flat) != 2 * npos:  # a number outside the positions
        return None
    xy = np.array(flat, dtype=np.float64).reshape(-1, 2)
    if depth == 1:
        return xy, np.zeros(0, np.int64), np.zeros(0, np.int64)
    u = np.frombuffer(shape, dtype=np.uint8)
    is_p = u == _P
    opens = u == _OPEN
    closes = u == _CLOSE
    ring_open = np.flatnonzero(opens[:-1] & is_p[1:])
    ring_close = np.flatnonzero(closes[1:] & is_p[:-1]) + 1
    poly_close = np.flatnonzero(closes[1:] & closes[:-1]) + 1
    if len(poly_close) != len(raws):
        return None
    seen = np.cumsum(is_p)
    rlen = seen[ring_close] - seen[ring_open]
    rings_before = np.cumsum(closes & np.concatenate([[False], is_p[:-1]]))[poly_close]
    nring = np.diff(rings_before, prepend=0)
    return xy, rlen.astype(np.int64), nring.astype(np.int64)


_SURE = 1e-9
"""How far from collinear (the sine of the angle) two vertices must be, seen from the centre,
for the star test to trust the sign of their cross product: the rounding error of that product
is ~1e-15 of its scale."""


def _surely_valid(
    xy: np.ndarray[Any, Any], rlen: np.ndarray[Any, Any], nring: np.ndarray[Any, Any]
) -> np.ndarray[Any, Any]:
    """Per polygon (``_numbers``' rings, each closed and of 4 or more positions): True when it
    is certainly valid, so GEOS need not be asked: one ring, star-shaped around the mean of its
    vertices: seen from there, every edge turns the same way by a clear angle (the sine above
    ``_SURE``) and the turns add up to one full turn, not two or more. Such a ring is simple
    (each edge keeps to its own sector around the centre), closed, with three or more distinct
    vertices not all on a line, which is all OGC validity asks of a polygon without holes. False
    says nothing: GEOS decides (a ring with holes, a concave ring not star-shaped around that
    point, repeated or collinear vertices, a bow tie)."""
    ring_off = np.concatenate([[0], np.cumsum(rlen)])
    starts, lasts = ring_off[:-1], ring_off[1:] - 1
    # the mean of a ring's vertices (its closing repeat left out)
    centre = (np.add.reduceat(xy, starts, axis=0) - xy[lasts]) / (rlen - 1)[:, None]
    u = xy - np.repeat(centre, rlen, axis=0)
    a, b = u[:-1], u[1:]  # from each vertex to the next (the step after a ring's last is masked)
    cross = a[:, 0] * b[:, 1] - a[:, 1] * b[:, 0]
    dot = a[:, 0] * b[:, 0] + a[:, 1] * b[:, 1]
    scale = np.hypot(a[:, 0], a[:, 1]) * np.hypot(b[:, 0], b[:, 1]) * _SURE
    turn = np.arctan2(cross, dot)
    # steps k -> k+1 with k the last vertex of a ring cross into the next ring: neutral values
    cross_left = np.append(cross - scale, np.inf)
    cross_right = np.append(cross + scale, -np.inf)
    turn = np.append(turn, 0.0)
    cross_left[lasts] = np.inf
    cross_right[lasts] = -np.inf
    turn[lasts] = 0.0
    left = np.minimum.reduceat(cross_left, starts) > 0.0  # every step turns left, clearly
    right = np.maximum.reduceat(cross_right, starts) < 0.0
    total = np.abs(np.add.reduceat(turn, starts))
    ring_ok = (left | right) & (total < 3.0 * np.pi)  # one full turn (2 pi), not 4 pi or more
    first_ring = np.concatenate([[0], np.cumsum(nring)[:-1]])
    out: np.ndarray[Any, Any] = (nring == 1) & ring_ok[first_ring]
    return out


def _stores_columns(stores: list[Store]) -> _Cols:
    """Stores (from ``_bulk``) as columns."""
    out = _Cols(len(stores))
    out.ids = [s.store_id for s in stores]
    out.merchants = [s.merchant_id for s in stores]
    out.names = [s.name for s in stores]
    for k, s in enumerate(stores):
        if s.center is not None:
            out.center[k] = s.center
            out.radius[k] = s.radius_m
        else:
            out.polygons[k] = s.polygon
        row = (s.wifi, s.beacons, s.nfc, s.tz, s.max_accuracy_m, s.tags, s.properties)
        if row[:6] != PLAIN or s.properties:
            out.rare[k] = row
    out.unsure = np.flatnonzero(~shapely.is_missing(out.polygons))
    return out


def load_columns(raws: Sequence[msgspec.Raw], text: bytes | None = None) -> C.Catalog | None:
    """The Catalog of encoded features that make a valid catalog, as columns (fences.columns:
    Store objects made on first access); None when the reference would report any problem
    (or might: then the caller runs the full validation, which explains it). Same stores as
    ``load_catalog(bulk=False)``: chunks of typed features become columns with C-speed checks,
    a chunk with anything unusual goes through ``_bulk`` (and so the reference). ``text``: the
    JSON text the features were decoded from (each chunk is then decoded from its span of the
    text, copied into one reused buffer, instead of a joined copy of its own)."""
    chunks = [raws[start : start + CHUNK] for start in range(0, len(raws), CHUNK)]
    spans = _spans(chunks, text)
    if spans:
        assert text is not None
        encoded: Iterable[bytes | memoryview] = _copies(text, spans)
    else:
        encoded = (b"[" + b",".join(chunk) + b"]" for chunk in chunks)
    return _columns(zip(encoded, map(_given, chunks), strict=True))


def _given(chunk: Sequence[msgspec.Raw]) -> Callable[[bytes | memoryview], Sequence[msgspec.Raw]]:
    return lambda _encoded: chunk


CHUNK_BYTES = 8_000_000
"""Bytes of the file's features array decoded together by ``load_columns_text``."""
_WS = b" \t\n\r"
_HEAD = re.compile(
    rb'[ \t\n\r]*\{[ \t\n\r]*"type"[ \t\n\r]*:[ \t\n\r]*"FeatureCollection"[ \t\n\r]*,'
    rb'[ \t\n\r]*"features"[ \t\n\r]*:[ \t\n\r]*\['
)
_TAIL = re.compile(rb"\][ \t\n\r]*\}[ \t\n\r]*\Z")


class _NotRuns(Exception):
    """A piece of the text is not a run of whole features (or not JSON)."""


def load_columns_text(text: bytes) -> tuple[bool, C.Catalog | None]:
    """``load_columns`` straight from the text of a catalog in the usual shape, without
    decoding its top level first: ``(True, load_columns(...))``, or ``(False, None)`` when the
    text is not in that shape (then the caller decodes it as usual).

    The usual shape: ``{"type": "FeatureCollection", "features": [`` features ``]}`` with line
    breaks between some features (as ``geopush fences`` and ``dump_catalog`` write them). The
    array is cut after line breaks into pieces of about ``CHUNK_BYTES``, each decoded as an array
    of features. A cut inside a feature cannot go unnoticed: the piece before it starts at a
    feature (the first after the ``[``; the next ones by induction) and would end inside an
    object or a string, which no JSON decoder accepts; exactly one comma must lie between two
    pieces. So every piece decoding means the pieces hold the array's features, in order, and
    the text is the JSON the top-level decode would have read."""
    pieces = _pieces(text)
    if pieces is None:
        return False, None
    try:
        return True, _columns(zip(_copies(text, pieces), repeat(_raws_of)))
    except (_NotRuns, msgspec.DecodeError):
        return False, None


def _raws_of(encoded: bytes | memoryview) -> list[msgspec.Raw]:
    try:
        return _RAWS.decode(bytes(encoded))
    except msgspec.DecodeError as exc:
        raise _NotRuns from exc


def _pieces(text: bytes) -> list[tuple[int, int]] | None:
    """Spans of ``text`` holding its features in runs (see ``load_columns_text``), white space
    and the separating commas left out; None: not the usual shape."""
    head = _HEAD.match(text)
    tail = _TAIL.search(text, max(0, len(text) - 4096))
    if head is None or tail is None or tail.start() < head.end():
        return None
    a, end = head.end(), tail.start()
    cuts: list[tuple[int, int]] = []
    while a < end:
        b = text.find(b"\n", min(a + CHUNK_BYTES, end), end)
        b = end if b < 0 else b + 1
        if b - a > 8 * CHUNK_BYTES + 65_536:
            return None  # few line breaks: decoded at once, the temporaries would be too many
        cuts.append((a, b))
        a = b
    out: list[tuple[int, int]] = []
    comma = False  # the previous piece ended with the comma after its last feature
    for a, b in cuts:
        a, b = _strip(text, a, b)
        if a == b:
            continue  # only white space (a blank line)
        lead = text[a] == 0x2C
        if lead == comma if out else lead:
            return None  # two commas or none between pieces, or one before the first feature
        if lead:
            a, b = _strip(text, a + 1, b)
        comma = a < b and text[b - 1] == 0x2C
        if comma:
            a, b = _strip(text, a, b - 1)
        if a == b:
            return None
        out.append((a, b))
    return None if comma or not out else out


def _strip(text: bytes, a: int, b: int) -> tuple[int, int]:
    while a < b and text[a] in _WS:
        a += 1
    while b > a and text[b - 1] in _WS:
        b -= 1
    return a, b


def _copies(text: bytes, spans: list[tuple[int, int]]) -> Iterator[memoryview]:
    """Each span of ``text`` as a JSON array (``[`` span ``]``), copied into one reused buffer
    (each view is released once the next is asked for)."""
    buf = bytearray(max((b - a + 2 for a, b in spans), default=0))
    for a, b in spans:
        buf[0], buf[1 : b - a + 1], buf[b - a + 1] = 0x5B, memoryview(text)[a:b], 0x5D
        view = memoryview(buf)[: b - a + 2]
        yield view
        view.release()


def _columns(
    pieces: Iterable[
        tuple[bytes | memoryview, Callable[[bytes | memoryview], Sequence[msgspec.Raw]]]
    ],
) -> C.Catalog | None:
    """``load_columns`` over pieces: each an encoded array of features and a function giving
    its features encoded one by one (for a piece with anything unusual)."""
    parts: list[_Cols] = []
    kinds: tuple[list[str], list[str], list[str]] = ([], [], [])
    owners: tuple[list[int], list[int], list[int]] = ([], [], [])
    base = 0
    for encoded, raws_of in pieces:
        got: tuple[_Cols, list[_Claims]] | None = None
        claims: list[_Claims]
        try:
            got = _chunk_columns(_STRUCTS.decode(encoded))
        except msgspec.ValidationError:  # other properties too (or anything else unusual)
            with contextlib.suppress(msgspec.ValidationError):
                got = _chunk_columns(_DICTS.decode(encoded))
        if got is not None:
            cols, claims = got
        else:
            chunk = raws_of(encoded)
            parsed = _bulk(_each(chunk), len(chunk), chunk.__getitem__)
            if any(p[2] or p[0] is None for p in parsed):
                return None
            stores: list[Store] = [p[0] for p in parsed]  # type: ignore[misc]
            cols = _stores_columns(stores)
            claims = [([], []), ([], []), ([], [])]
            for k, p in enumerate(parsed):
                for kind, keys in enumerate(p[3]):
                    claims[kind][0].extend(keys)
                    claims[kind][1].extend([k] * len(keys))
        for kind, (claimed, at) in enumerate(claims):
            kinds[kind].extend(claimed)
            owners[kind].extend([base + k for k in at] if base else at)
        parts.append(cols)
        base += len(cols.ids)
    ids = list(chain.from_iterable(c.ids for c in parts))
    by_id = dict(zip(ids, range(len(ids)), strict=True))
    if len(by_id) != len(ids):
        return None  # a store_id used twice
    maps = [dict(zip(keys, slots, strict=True)) for keys, slots in zip(kinds, owners, strict=True)]
    if any(len(m) != len(keys) for m, keys in zip(maps, kinds, strict=True)):
        return None  # an identifier claimed by two stores
    polygons = np.concatenate([c.polygons for c in parts]) if parts else np.zeros(0, object)
    unsure: list[np.ndarray[Any, Any]] = []
    offset = 0
    for c in parts:
        unsure.append(c.unsure + offset)
        offset += len(c.ids)
    if unsure and not shapely.is_valid(polygons[np.concatenate(unsure)]).all():
        return None  # GEOS finds a polygon invalid (those _surely_valid did not vouch for)
    rare: dict[int, Row] = {}
    offset = 0
    for c in parts:
        rare.update((offset + k, row) for k, row in c.rare.items())
        offset += len(c.ids)
    columns = StoreColumns(
        ids=ids,
        merchants=list(chain.from_iterable(c.merchants for c in parts)),
        names=list(chain.from_iterable(c.names for c in parts)),
        center=np.concatenate([c.center for c in parts]) if parts else np.zeros((0, 2)),
        radius=np.concatenate([c.radius for c in parts]) if parts else np.zeros(0),
        polygons=polygons,
        rare=rare,
    )
    tagged = {k for k, row in rare.items() if row[5]}
    stores_ = LazyStores(len(ids), columns.store, ids, columns.merchants, columns)
    return C.Catalog._restored(stores_, ids, tagged, maps[0], maps[1], maps[2], by_id=by_id)


def _spans(chunks: list[Sequence[msgspec.Raw]], text: bytes | None) -> list[tuple[int, int]]:
    """Where each chunk of features lies in ``text`` (from its first feature's first byte to
    its last feature's last), when every feature was decoded from ``text`` without copying
    (msgspec.Raw points into it); else []."""
    if text is None or not chunks:
        return []
    base = np.frombuffer(text, dtype=np.uint8).ctypes.data
    out: list[tuple[int, int]] = []
    for chunk in chunks:
        first, last = chunk[0], chunk[-1]
        a = np.frombuffer(first, dtype=np.uint8).ctypes.data - base
        b = np.frombuffer(last, dtype=np.uint8).ctypes.data - base + len(last)
        if not 0 <= a < b <= len(text) or (out and a < out[-1][1]):
            return []
        out.append((a, b))
    return out


_STRUCTS = msgspec.json.Decoder(list[_SFeature])
_DICTS = msgspec.json.Decoder(list[_DFeature])
_RAWS = msgspec.json.Decoder(list[msgspec.Raw])


__all__ = ["CHUNK", "CHUNK_BYTES", "load_columns", "load_columns_text", "parse_features"]

"""The store catalog: a GeoJSON FeatureCollection of stores, validated, with constant-time
look-ups by store_id, BSSID, beacon id and NFC tag.

The file format, the validation rules and the boundary rule are documented in docs/catalog.md.
In short: one RFC 7946 Feature per store; ``store_id`` and ``merchant_id`` required; a Point with
``radius_m`` is a circle, a Polygon/MultiPolygon is itself (holes honoured, antimeridian crossings
split by fences.antimeridian). Validation is strict (an unclosed ring is an error even though
shapely would close it) and reports every problem of every feature at once, each with the
feature's index, its store_id and what to do.

Entry points: ``load_catalog(path)``, ``parse_catalog(obj)``, ``validate(obj)``,
``parse_stores(obj)`` (stores and problems, for reports), ``check_stores(obj)`` (the same plus the
warnings of fences.hints, as ``geopush fences check``), ``read_json_checked(path)`` (repeated
members as located problems), ``feature_problems(feature)`` (one Feature, as the check validates
it), ``store_from_feature(feature)``, ``to_feature(store)``, ``catalog_to_geojson(catalog)``,
``dump_catalog(catalog, path)``.
"""

from __future__ import annotations

import contextlib
import functools
import gc
import json
import math
import operator
import os
import re
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TextIO

import msgspec
import numpy as np
import shapely

from fences import antimeridian, geojson
from fences.errors import CatalogError, Problem, UnknownStoreError
from fences.store import Store, beacon_key, bssid_key

if TYPE_CHECKING:
    from fences.columns import StoreColumns

MIN_RADIUS_M = 1.0
MAX_RADIUS_M = 50_000.0
DEFAULT_MAX_ACCURACY_M = 100.0
DEFAULT_TZ = "UTC"

# Properties with a meaning; anything else is kept verbatim in Store.properties.
KNOWN_PROPERTIES = frozenset(
    {
        "store_id",
        "merchant_id",
        "name",
        "radius_m",
        "wifi",
        "beacons",
        "nfc",
        "tz",
        "max_accuracy_m",
        "tags",
    }
)

# What a catalog looks like, for messages about a file that is empty or not a catalog at all.
CATALOG_SHAPE = (
    'a catalog is a GeoJSON FeatureCollection with one Feature per store, e.g. {"type": '
    '"FeatureCollection", "features": [{"type": "Feature", "properties": {"store_id": "s-1", '
    '"merchant_id": "m-1", "radius_m": 30}, "geometry": {"type": "Point", "coordinates": '
    "[24.9432, 60.1675]}}]} (docs/catalog.md)"
)

_BSSID_RE = re.compile(r"^[0-9a-f]{2}(?::[0-9a-f]{2}){5}$")
_UUID_RE = re.compile(r"^[0-9A-F]{8}-[0-9A-F]{4}-[0-9A-F]{4}-[0-9A-F]{4}-[0-9A-F]{12}$")


class Catalog:
    """An ordered list of stores plus identifier look-ups. Positions are stable slot numbers.

    Removal leaves a tombstone: the slot keeps its last Store in ``stores`` (so slot numbers held
    by an index stay valid) but is no longer alive: ``is_alive(slot)`` is False, the store_id,
    BSSIDs, beacons and NFC tags no longer resolve, ``len()`` no longer counts it, and adding the
    same store_id again takes a new slot. ``alive()`` iterates (slot, store) over live slots.
    """

    def __init__(self, stores: Iterable[Store] = ()) -> None:
        self.stores: list[Store] = []
        self._by_id: dict[str, int] = {}
        # BSSID, beacon and NFC look-ups (key -> slot); a function making one when it is first
        # needed (fences.snapshot: a restart does not decode what its first events may not use)
        self._lookups: list[dict[str, int] | Callable[[], dict[str, int]]] = [{}, {}, {}]
        self._removed: set[int] = set()
        # ``slot_of(store_id)``: the live slot or None; a bound dict look-up for hot paths.
        self.slot_of: Callable[[str], int | None] = self._by_id.get
        # Slots of live stores with any tags (few): a hot path can skip reading most stores.
        self.tagged: set[int] = set()
        # The slots changed (added, replaced, removed), in order, for readers that keep their
        # own per-slot tables up to date (engine/api/live.py's listing): entry i of the log is
        # ``changed[i - changed_base]``; the oldest half is dropped past CHANGE_LOG entries.
        self.changed: list[int] = []
        self.changed_base = 0
        if isinstance(stores, list) and stores:
            ids = [s.store_id for s in stores]
            self._by_id.update(zip(ids, range(len(ids)), strict=True))
            if len(self._by_id) == len(ids):  # unique ids (a validated catalog): link in bulk
                self.stores = list(stores)
                for slot, s in enumerate(stores):
                    if s.tags or s.wifi or s.beacons or s.nfc:
                        self._link(slot, s)
                return
            self._by_id.clear()
        for store in stores:
            self.add(store)
        self.changed.clear()  # the initial stores are not changes
        self.changed_base = 0

    @classmethod
    def _restored(
        cls,
        stores: list[Store],
        ids: list[str],
        tagged: set[int],
        by_bssid: dict[str, int] | Callable[[], dict[str, int]],
        by_beacon: dict[str, int] | Callable[[], dict[str, int]],
        by_nfc: dict[str, int] | Callable[[], dict[str, int]],
        by_id: dict[str, int] | None = None,
    ) -> Catalog:
        """A catalog of ``stores`` (all live, slot k holding ``ids[k]``) without reading them:
        fences.snapshot and fences.fastload hand in a lazily made list and the look-ups (or
        functions making them on first use; ``by_id``: store_id -> slot, when already made)."""
        self = cls()
        self.stores = stores
        if by_id is None:
            by_id = dict(zip(ids, range(len(ids)), strict=True))
        self._by_id = by_id  # taken as they are, not copied
        self.slot_of = by_id.get
        self.tagged = tagged
        self._lookups = [by_bssid, by_beacon, by_nfc]
        return self

    def _lookup(self, kind: int) -> dict[str, int]:
        got = self._lookups[kind]
        if not isinstance(got, dict):  # made on first use
            got = self._lookups[kind] = got()
        return got

    @property
    def _by_bssid(self) -> dict[str, int]:
        return self._lookup(0)

    @property
    def _by_beacon(self) -> dict[str, int]:
        return self._lookup(1)

    @property
    def _by_nfc(self) -> dict[str, int]:
        return self._lookup(2)

    def __len__(self) -> int:
        return len(self._by_id)

    def columns(self) -> StoreColumns | None:
        """The stores as columns (fences.columns), while the catalog is as the bulk loader made
        it (no store added, replaced or removed since); else None."""
        cols: StoreColumns | None = getattr(self.stores, "columns", None)
        if cols is None or self.changed or self.changed_base or len(cols) != len(self.stores):
            return None
        return cols

    def add(self, store: Store) -> int:
        """Append a store; returns its slot. Replaces an existing store with the same id."""
        if store.store_id in self._by_id:
            return self.replace(store)
        slot = len(self.stores)
        self.stores.append(store)
        self._link(slot, store)
        self._changed(slot)
        return slot

    CHANGE_LOG = 100_000

    def _changed(self, slot: int) -> None:
        self.changed.append(slot)
        if len(self.changed) > self.CHANGE_LOG:
            cut = len(self.changed) // 2
            del self.changed[:cut]
            self.changed_base += cut

    def replace(self, store: Store) -> int:
        slot = self.slot(store.store_id)
        self._unlink(self.stores[slot])
        self.tagged.discard(slot)
        self.stores[slot] = store
        self._link(slot, store)
        self._changed(slot)
        return slot

    def remove(self, store_id: str) -> int:
        """Remove a store; returns the slot it held, which becomes a tombstone (never reused)."""
        slot = self.slot(store_id)
        self._unlink(self.stores[slot])
        del self._by_id[store_id]
        self._removed.add(slot)
        self.tagged.discard(slot)
        self._changed(slot)
        return slot

    def is_alive(self, slot: int) -> bool:
        return 0 <= slot < len(self.stores) and slot not in self._removed

    def alive(self) -> Iterator[tuple[int, Store]]:
        """(slot, store) for every live slot, in slot order."""
        for slot, store in enumerate(self.stores):
            if slot not in self._removed:
                yield slot, store

    def owners(self) -> Iterator[tuple[str, str]]:
        """(store_id, merchant_id) of every live store in slot order, without making the Store
        objects of a catalog loaded as columns (fences.columns.LazyStores): at C speed while
        no store has been made or changed (a zip of the columns, no generator)."""
        peek: Callable[[int], tuple[str, str]] | None = getattr(self.stores, "owner", None)
        if peek is not None and not self._removed:
            fast: Iterator[tuple[str, str]] | None = self.stores.owners()  # type: ignore[attr-defined]
            if fast is not None:
                return fast
        return self._owners(peek)

    def _owners(self, peek: Callable[[int], tuple[str, str]] | None) -> Iterator[tuple[str, str]]:
        for slot in range(len(self.stores)):
            if slot in self._removed:
                continue
            if peek is not None:
                yield peek(slot)
            else:
                s = self.stores[slot]
                yield s.store_id, s.merchant_id

    def slot(self, store_id: str) -> int:
        try:
            return self._by_id[store_id]
        except KeyError:
            raise UnknownStoreError(store_id) from None

    def get(self, store_id: str) -> Store:
        return self.stores[self.slot(store_id)]

    def by_bssid(self, bssid: str) -> int | None:
        return self._by_bssid.get(bssid_key(bssid))

    def by_beacon(self, uuid: str, major: int | str, minor: int | str) -> int | None:
        return self._by_beacon.get(beacon_key(uuid, major, minor))

    def by_nfc(self, tag: str) -> int | None:
        return self._by_nfc.get(tag.strip())

    def _link(self, slot: int, store: Store) -> None:
        self._by_id[store.store_id] = slot
        if store.tags:
            self.tagged.add(slot)
        for b in store.wifi:
            self._by_bssid[b] = slot
        for k in store.beacons:
            self._by_beacon[k] = slot
        for t in store.nfc:
            self._by_nfc[t] = slot

    def _unlink(self, store: Store) -> None:
        for table, keys in (
            (self._by_bssid, store.wifi),
            (self._by_beacon, store.beacons),
            (self._by_nfc, store.nfc),
        ):
            for k in keys:
                table.pop(k, None)


# --------------------------------------------------------------------------------------------
# Reading


@dataclass
class _Feature:
    """Problems found in one feature so far (reasons, without the 'feature i' prefix)."""

    reasons: list[str] = field(default_factory=list)

    def bad(self, reason: str) -> None:
        self.reasons.append(reason)


def _fmt(value: object) -> str:
    text = json.dumps(value, allow_nan=True, ensure_ascii=False, default=str)
    return text if len(text) <= 60 else text[:57] + "..."


@functools.lru_cache(maxsize=1024)
def _tz_ok(name: str) -> bool:
    from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        return False
    return True


def _string(props: Mapping[str, Any], key: str, fb: _Feature, required: bool) -> str | None:
    value = props.get(key)
    if value is None:
        if required:
            fb.bad(f"{key} is missing; every store needs a {key} (a non-empty string)")
        return None
    if not isinstance(value, str) or not value.strip():
        fb.bad(f"{key} must be a non-empty string, got {_fmt(value)}; write it in quotes")
        return None
    return value.strip()


def _string_list(props: Mapping[str, Any], key: str, fb: _Feature) -> list[str]:
    value = props.get(key)
    if value is None:
        return []
    if not isinstance(value, list | tuple) or not all(isinstance(v, str) for v in value):
        fb.bad(f"{key} must be an array of strings, got {_fmt(value)}")
        return []
    return list(value)


def _number(props: Mapping[str, Any], key: str, fb: _Feature) -> float | None:
    value = props.get(key)
    if value is None:
        return None
    if not geojson.is_number(value) or not math.isfinite(value):
        fb.bad(f"{key} must be a number, got {_fmt(value)}")
        return None
    return float(value)


def _bssids(props: Mapping[str, Any], fb: _Feature) -> tuple[str, ...]:
    out: dict[str, None] = {}
    for raw in _string_list(props, "wifi", fb):
        key = bssid_key(raw)
        if not _BSSID_RE.match(key):
            fb.bad(
                f"wifi BSSID {raw!r} is malformed; write six hex pairs separated by ':' "
                "(or '-'), e.g. 'a4:2b:b0:c1:d2:e3'"
            )
        else:
            out[key] = None
    return tuple(out)


def _beacons(props: Mapping[str, Any], fb: _Feature) -> tuple[str, ...]:
    out: dict[str, None] = {}
    for raw in _string_list(props, "beacons", fb):
        parts = raw.strip().rsplit(":", 2)
        ok = len(parts) == 3 and bool(_UUID_RE.match(parts[0].strip().upper()))
        if ok:
            try:
                major, minor = int(parts[1]), int(parts[2])
            except ValueError:
                ok = False
            else:
                ok = 0 <= major <= 65535 and 0 <= minor <= 65535
        if not ok:
            fb.bad(
                f"beacon id {raw!r} is malformed; write 'UUID:major:minor' with a 36-character "
                "UUID and major, minor in 0..65535, e.g. 'F7826DA6-4FA2-4E98-8024-BC5B71E0893E:1:42'"
            )
        else:
            out[beacon_key(parts[0], parts[1], parts[2])] = None
    return tuple(out)


def _nfc(props: Mapping[str, Any], fb: _Feature) -> tuple[str, ...]:
    out: dict[str, None] = {}
    for raw in _string_list(props, "nfc", fb):
        if not raw.strip():
            fb.bad("nfc contains an empty tag id; remove it")
        else:
            out[raw.strip()] = None
    return tuple(out)


def _position_ok(pos: object) -> bool:
    """The fast test: a list of >= 2 numbers, lon in [-180, 180], lat in [-90, 90] (not NaN)."""
    if (type(pos) is not list and type(pos) is not tuple) or len(pos) < 2:
        return False
    x, y = pos[0], pos[1]
    fast = (type(x) is float or type(x) is int) and (type(y) is float or type(y) is int)
    if not fast and not (geojson.is_number(x) and geojson.is_number(y)):  # numpy: slow path
        return False
    if not (-180.0 <= x <= 180.0 and -90.0 <= y <= 90.0):  # NaN fails both comparisons
        return False
    return len(pos) == 2 or all(geojson.is_number(c) for c in pos[2:])


def _report_position(j: int, pos: object, what: str, fb: _Feature) -> None:
    """Say precisely why position j failed _position_ok."""
    problem = geojson.position_problem(pos)
    if problem:
        fb.bad(f"{what}: position {j}: {problem}")
        return
    assert isinstance(pos, list)
    if not all(math.isfinite(c) for c in pos):
        fb.bad(
            f"{what}: position {j} is {_fmt(pos)}: coordinates must be finite numbers, not NaN or infinity"
        )
        return
    fb.bad(
        f"{what}: position {j} {_fmt(pos)} is out of range: longitude must be in [-180, 180] and "
        "latitude in [-90, 90], in that order (GeoJSON is [lon, lat]); if you wrote [lat, lon], "
        "swap them"
    )


def _positions(coords: Sequence[Any], what: str, fb: _Feature) -> np.ndarray[Any, Any] | None:
    """A list of positions as an (n, 2) float array, or None after reporting why not."""
    for j, pos in enumerate(coords):
        if not _position_ok(pos):
            _report_position(j, pos, what, fb)
            return None
    return np.array([(p[0], p[1]) for p in coords], dtype=np.float64).reshape(-1, 2)


def _jumps(coords: Sequence[Any]) -> bool:
    """Consecutive longitudes more than 180° apart: the ring may cross the antimeridian
    (plain Python: cheaper than numpy for the few vertices a store has)."""
    prev = coords[0][0]
    for pos in coords:
        x = pos[0]
        if x - prev > 180.0 or prev - x > 180.0:
            return True
        prev = x
    return False


def _ring(coords: object, what: str, fb: _Feature) -> np.ndarray[Any, Any] | None:
    if not isinstance(coords, list | tuple):
        fb.bad(f"{what} must be an array of positions, got {_fmt(coords)}")
        return None
    arr = _positions(coords, what, fb)
    if arr is None:
        return None
    ok = True
    if len(coords) < 4:
        fb.bad(
            f"{what} has {len(coords)} position(s); a ring needs at least 4 (three corners and "
            "the first repeated at the end): add corners or remove the ring"
        )
        ok = False
    if coords and tuple(coords[0]) != tuple(coords[-1]):
        fb.bad(
            f"{what} is not closed: its last coordinate {_fmt(coords[-1])} differs from its "
            f"first {_fmt(coords[0])}; repeat the first coordinate at the end"
        )
        ok = False
    return arr if ok else None


def _polygon_rings(coords: object, what: str, fb: _Feature) -> list[np.ndarray[Any, Any]] | None:
    if not isinstance(coords, list | tuple) or not coords:
        fb.bad(
            f"{what} must be a non-empty array of rings (outer ring first, then holes), got {_fmt(coords)}"
        )
        return None
    rings = []
    ok = True
    for r, ring in enumerate(coords):
        arr = _ring(ring, f"ring {r} of {what}", fb)
        ok = ok and arr is not None
        if arr is not None:
            rings.append(arr)
    return rings if ok else None


def _polygon_parts(geom: Mapping[str, Any], fb: _Feature) -> list[shapely.Polygon] | None:
    kind = geom["type"]
    coords = geom.get("coordinates")
    if kind == "Polygon":
        polys = [("polygon", coords)]
    elif not isinstance(coords, list | tuple) or not coords:
        fb.bad(
            f"MultiPolygon coordinates must be a non-empty array of polygons, got {_fmt(coords)}"
        )
        return None
    else:
        polys = [(f"polygon {p}", c) for p, c in enumerate(coords)]
    parts: list[shapely.Polygon] = []
    ok = True
    for what, c in polys:
        rings = _polygon_rings(c, what, fb)
        if rings is None:
            ok = False
            continue
        if not any(_jumps(r) for r in c or ()):  # validated: in range, so no split needed
            parts.append(shapely.Polygon(rings[0], rings[1:]))
            continue
        try:
            parts.extend(antimeridian.split_rings(rings[0], rings[1:], what))
        except antimeridian.AntimeridianError as exc:
            fb.bad(str(exc))
            ok = False
    return parts if ok else None


def _explain_invalid(reason: str) -> str:
    """Turn GEOS's is_valid_reason ('Self-intersection[x y]') into an instruction."""
    m = re.match(r"^(.*?)\[([-\d.eE+]+) ([-\d.eE+]+)\]$", reason)
    what, where = (m.group(1), f" near [{m.group(2)}, {m.group(3)}]") if m else (reason, "")
    advice = {
        "Self-intersection": "its edges cross or touch each other; reorder the vertices so the "
        "outline does not cross itself, remove spikes, or make separate polygons of a MultiPolygon "
        "that do not overlap",
        "Ring Self-intersection": "a ring touches itself; split it into separate rings",
        "Hole lies outside shell": "a hole lies outside its outer ring; move it inside or drop it",
        "Nested holes": "a hole lies inside another hole; remove the inner one",
        "Interior is disconnected": "the holes cut the polygon into pieces; make each piece its "
        "own polygon of a MultiPolygon",
        "Nested shells": "one polygon of the MultiPolygon lies inside another; merge them or make "
        "the inner one a hole",
        "Duplicate Rings": "a ring appears twice; remove the copy",
        "Too few points in geometry component": "a ring collapses to fewer than 3 distinct "
        "corners; remove repeated positions or the ring",
    }.get(what, "fix the outline (shapely.is_valid_reason explains the GEOS rule)")
    return f"invalid polygon{where} ({what}): {advice}"


def _geometry(geom: object, props: Mapping[str, Any], fb: _Feature) -> tuple[Any, ...] | None:
    """(center, radius_m, polygon) for a valid geometry, else None after reporting."""
    if geom is None:
        fb.bad("geometry is null; a store needs a Point with radius_m, a Polygon or a MultiPolygon")
        return None
    if not isinstance(geom, dict):
        fb.bad(f"geometry must be an object, got {_fmt(geom)}")
        return None
    kind = geom.get("type")
    for member in ("geometry", "properties", "features"):
        if member in geom:
            fb.bad(f"geometry must not contain a {member!r} member (RFC 7946 §7.1); remove it")
    bbox = geojson._bbox_problem(geom)
    if bbox:
        fb.bad(f"geometry {bbox}")
    radius = _number(props, "radius_m", fb)
    if kind == "Point":
        coords = geom.get("coordinates")
        point_ok = _position_ok(coords)
        if not point_ok:
            problem = geojson.position_problem(coords)
            if problem:
                fb.bad(f"Point coordinates: {problem}")
                return None
            _report_position(0, coords, "Point", fb)
        assert isinstance(coords, list | tuple)
        if "radius_m" not in props or props["radius_m"] is None:
            fb.bad(
                f"a Point needs radius_m (metres, {MIN_RADIUS_M:g} to {MAX_RADIUS_M:g}) to be a "
                'circular fence; add e.g. "radius_m": 25'
            )
            return None
        if radius is not None and not MIN_RADIUS_M <= radius <= MAX_RADIUS_M:
            fb.bad(
                f"radius_m {radius:g} is out of range; use {MIN_RADIUS_M:g} to {MAX_RADIUS_M:g} "
                "metres (a larger area should be a Polygon)"
            )
            return None
        if radius is None or not point_ok:
            return None
        return (float(coords[0]), float(coords[1])), radius, None
    if kind in ("Polygon", "MultiPolygon"):
        if "radius_m" in props and props["radius_m"] is not None:
            fb.bad(
                f"radius_m only applies to a Point (a circle); this is a {kind}: remove radius_m "
                "or make the geometry a Point at the centre"
            )
        parts = _polygon_parts(geom, fb)
        if parts is None:
            return None
        if not parts:
            fb.bad(f"the {kind} has no area; give it at least three distinct corners")
            return None
        polygon = parts[0] if kind == "Polygon" and len(parts) == 1 else shapely.MultiPolygon(parts)
        return None, None, polygon
    proper = {"point": "Point", "polygon": "Polygon", "multipolygon": "MultiPolygon"}
    if isinstance(kind, str) and kind.lower() in proper:
        fb.bad(
            f"geometry type {kind!r} has the wrong case; GeoJSON types are case-sensitive: "
            f"write {proper[kind.lower()]!r}"
        )
    else:
        fb.bad(
            f"geometry type {_fmt(kind)} is not a fence; use a Point with radius_m, a Polygon or "
            "a MultiPolygon"
        )
    return None


_Idents = tuple[tuple[str, ...], tuple[str, ...], tuple[str, ...]]  # wifi, beacons, nfc


def _parse_feature(feature: object) -> tuple[Store | None, str | None, list[str], _Idents]:
    """(store or None, store_id if readable, reasons, identifiers) for one feature; identifier
    claims and polygon validity (GEOS) are checked by the caller across all features."""
    fb = _Feature()
    if not isinstance(feature, dict):
        return None, None, [f"a feature must be an object, got {_fmt(feature)}"], ((), (), ())
    if feature.get("type") != "Feature":
        fb.bad(f'"type" must be "Feature", got {_fmt(feature.get("type"))}')
    for member in ("coordinates", "geometries", "features"):
        if member in feature:
            fb.bad(
                f"a Feature must not contain a {member!r} member (RFC 7946 §7.1); move it into geometry or remove it"
            )
    if (
        "id" in feature
        and not isinstance(feature["id"], str)
        and not geojson.is_number(feature["id"])
    ):
        fb.bad(f'the Feature "id" must be a string or a number, got {_fmt(feature["id"])}')
    bbox = geojson._bbox_problem(feature)
    if bbox:
        fb.bad(f"feature {bbox}")
    props = feature.get("properties")
    if not isinstance(props, dict):
        fb.bad(
            f"properties must be an object holding at least store_id and merchant_id, got {_fmt(props)}"
        )
        props = {}
    store_id = _string(props, "store_id", fb, required=True)
    merchant_id = _string(props, "merchant_id", fb, required=True)
    name = props.get("name") or ""
    if not isinstance(name, str):
        fb.bad(f"name must be a string, got {_fmt(name)}")
        name = ""
    shape = _geometry(feature.get("geometry"), props, fb)
    wifi, beacons, nfc = _bssids(props, fb), _beacons(props, fb), _nfc(props, fb)
    tz = props.get("tz")
    if tz is None:
        tz = DEFAULT_TZ
    elif not isinstance(tz, str) or not _tz_ok(tz):
        fb.bad(
            f"tz {_fmt(tz)} is not an IANA time zone; use a name like 'Europe/Helsinki' or 'UTC'"
        )
        tz = DEFAULT_TZ
    max_acc = _number(props, "max_accuracy_m", fb)
    if max_acc is not None and max_acc <= 0:
        fb.bad(f"max_accuracy_m must be positive metres, got {max_acc:g}")
    tags = _string_list(props, "tags", fb)
    idents = (wifi, beacons, nfc)
    if fb.reasons or store_id is None or merchant_id is None or shape is None:
        return None, store_id, fb.reasons, idents
    center, radius, polygon = shape
    extra = {k: v for k, v in props.items() if k not in KNOWN_PROPERTIES}
    store = Store(
        store_id=store_id,
        merchant_id=merchant_id,
        name=name,
        center=center,
        radius_m=radius,
        polygon=polygon,
        wifi=wifi,
        beacons=beacons,
        nfc=nfc,
        tz=tz,
        max_accuracy_m=DEFAULT_MAX_ACCURACY_M if max_acc is None else max_acc,
        tags=tuple(tags),
        properties=extra,
    )
    return store, store_id, [], idents


def _collection_problems(obj: object) -> tuple[list[Any], list[Problem]]:
    if not isinstance(obj, dict):
        return [], [
            Problem(
                None,
                None,
                f"a catalog must be a GeoJSON FeatureCollection object, got {geojson.type_name(obj)}",
            )
        ]
    problems: list[Problem] = []
    if "type" not in obj:
        problems.append(Problem(None, None, f'"type" is missing; {CATALOG_SHAPE}'))
    elif obj.get("type") != "FeatureCollection":
        problems.append(
            Problem(
                None,
                None,
                f'"type" must be "FeatureCollection" (one Feature per store), got {_fmt(obj.get("type"))}',
            )
        )
    for member in ("coordinates", "geometries", "geometry", "properties"):
        if member in obj:
            problems.append(
                Problem(
                    None,
                    None,
                    f"a FeatureCollection must not contain a {member!r} member (RFC 7946 §7.1); remove it",
                )
            )
    features = obj.get("features")
    if not isinstance(features, list):
        problems.append(
            Problem(
                None,
                None,
                f'"features" must be an array of store Features, got {geojson.type_name(features)}',
            )
        )
        return [], problems
    if not features:
        problems.append(
            Problem(
                None,
                None,
                '"features" is empty: the catalog has no stores; add one Feature per store '
                "(docs/catalog.md)",
            )
        )
    return features, problems


@contextlib.contextmanager
def _gc_paused() -> Iterator[None]:
    """Pause the cyclic garbage collector while building millions of small containers.

    Decoding and validating a catalog allocates lists and dicts by the million; each allocation
    burst triggers a collection that walks every live container, which made decoding a 500k-store
    file ten times slower (8.7 s vs 0.9 s measured). Nothing we build has reference cycles.
    """
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def parse_stores(obj: object) -> tuple[list[Store], list[Problem]]:
    """Every store that is valid on its own, and every problem of the catalog (all at once).

    A store whose identifiers clash with an earlier feature's, or whose polygon GEOS finds
    invalid, is reported and left out.
    """
    with _gc_paused():
        return _parse_stores(obj)


def check_stores(obj: object) -> tuple[list[Store], list[Problem]]:
    """``parse_stores`` plus the warnings of ``geopush fences check`` (``Problem.warning``:
    coordinates that look swapped, fences.hints), in feature order among the problems."""
    with _gc_paused():
        return _parse_stores(obj, hints=True)


def _parse_stores(
    obj: object, decode: Callable[[Any], Any] | None = None, hints: bool = False
) -> tuple[list[Store], list[Problem]]:
    """``decode``: features are still encoded (msgspec.Raw) and are decoded one at a time, so
    the decoded form of a 500k-store file never exists all at once. ``hints``: add the
    warnings of fences.hints."""
    features, problems = _collection_problems(obj)
    if decode is None:
        results: Iterable[_Parsed] = map(_parse_feature, features)
    else:
        results = (_parse_feature(decode(raw)) for raw in features)
    return _assemble(results, problems, hints)


_Parsed = tuple[Store | None, str | None, list[str], _Idents]


def _assemble(
    results: Iterable[_Parsed], problems: list[Problem], hints: bool = False
) -> tuple[list[Store], list[Problem]]:
    """The checks across features, over each feature's ``_parse_feature`` result in order
    (fences.fastload hands in its own results for the features it validated in bulk)."""
    parsed: list[tuple[int, Store]] = []
    first_index: dict[str, int] = {}
    claims: dict[tuple[str, str], tuple[int, str | None]] = {}
    clashed: set[int] = set()
    if isinstance(results, list) and _all_valid_alone(results):
        # the common case, at C speed: every feature valid on its own, store_ids unique; only
        # the identifier claims remain (in feature order, as below)
        for i in [i for i, r in enumerate(results) if r[3][0] or r[3][1] or r[3][2]]:
            if _claim(i, results[i][1], results[i][3], claims, problems):
                clashed.add(i)
        parsed = list(zip(range(len(results)), map(_STORE_OF, results), strict=True))
        results = ()
    for i, (store, sid, reasons, idents) in enumerate(results):
        if reasons:
            problems.extend(Problem(i, sid, r) for r in reasons)
        clash = (idents[0] or idents[1] or idents[2]) and _claim(i, sid, idents, claims, problems)
        if sid is not None:
            if sid in first_index:
                problems.append(
                    Problem(
                        i,
                        sid,
                        f"store_id {sid!r} is already used by feature {first_index[sid]}; store_ids must be unique: rename one of them",
                    )
                )
                continue
            first_index[sid] = i
        if store is not None:
            parsed.append((i, store))
            if clash:
                clashed.add(i)
    parsed = _drop_invalid_polygons(parsed, problems)
    if clashed:
        parsed = [p for p in parsed if p[0] not in clashed]
    if hints:
        problems.extend(_hints(parsed))
    problems.sort(key=lambda p: -1 if p.index is None else p.index)  # stable: keeps order within
    return [s for _, s in parsed], problems


_STORE_OF = operator.itemgetter(0)
_REASONS_OF = operator.itemgetter(2)


def _all_valid_alone(results: list[_Parsed]) -> bool:
    """Every feature yielded a store and no reason, and no store_id repeats."""
    if any(map(_REASONS_OF, results)) or not all(map(_STORE_OF, results)):
        return False
    sids = list(map(operator.itemgetter(1), results))
    return len(set(sids)) == len(sids)


def _hints(parsed: list[tuple[int, Store]]) -> list[Problem]:
    from fences.hints import merchant_hints, tz_hint

    out = []
    for i, store in parsed:
        reason = tz_hint(store)
        if reason is not None:
            out.append(Problem(i, store.store_id, reason, warning=True))
    told = {p.index for p in out}
    out.extend(p for p in merchant_hints(parsed) if p.index not in told)
    return out


def _drop_invalid_polygons(
    parsed: list[tuple[int, Store]], problems: list[Problem]
) -> list[tuple[int, Store]]:
    """One vectorised GEOS validity pass over all polygons, then reasons for the bad ones."""
    poly_at = [k for k, (_, s) in enumerate(parsed) if s.polygon is not None]
    if not poly_at:
        return parsed
    geoms = np.array([parsed[k][1].polygon for k in poly_at], dtype=object)
    valid = shapely.is_valid(geoms)
    drop: set[int] = set()
    for k, ok in zip(poly_at, valid, strict=True):
        if not ok:
            i, store = parsed[k]
            problems.append(
                Problem(i, store.store_id, _explain_invalid(shapely.is_valid_reason(store.polygon)))
            )
            drop.add(k)
    if not drop:
        return parsed
    return [p for k, p in enumerate(parsed) if k not in drop]


def _claim(
    i: int,
    sid: str | None,
    idents: _Idents,
    claims: dict[tuple[str, str], tuple[int, str | None]],
    problems: list[Problem],
) -> bool:
    """The first feature to claim a BSSID, beacon or NFC tag keeps it; later claimants are
    errors. Returns True when this feature clashed."""
    clash = False
    for kind, keys in zip(("BSSID", "beacon", "NFC tag"), idents, strict=True):
        for key in keys:
            owner = claims.setdefault((kind, key), (i, sid))
            if owner[0] == i:
                continue
            clash = True
            who = f"feature {owner[0]}" + ("" if owner[1] is None else f" (store_id {owner[1]!r})")
            problems.append(
                Problem(
                    i,
                    sid,
                    f"{kind} {key} is also claimed by {who}; a {kind} must identify "
                    "one store: remove it from one of them",
                )
            )
    return clash


def validate(obj: object) -> list[Problem]:
    """Every problem of a parsed catalog (a FeatureCollection), empty when it is valid."""
    return parse_stores(obj)[1]


def parse_catalog(obj: Mapping[str, Any]) -> Catalog:
    """A Catalog from a parsed FeatureCollection; raises CatalogError listing every problem."""
    with _gc_paused():
        stores, problems = _parse_stores(obj)
        if problems:
            raise CatalogError(problems)
        return Catalog(stores)


def _check_feature(feature: object, index: int | None) -> tuple[Store | None, list[Problem]]:
    store, sid, reasons, _ = _parse_feature(feature)
    problems = [Problem(index, sid, r) for r in reasons]
    if store is not None and store.polygon is not None and not shapely.is_valid(store.polygon):
        problems.append(
            Problem(index, sid, _explain_invalid(shapely.is_valid_reason(store.polygon)))
        )
    if problems:
        return None, problems
    assert store is not None
    from fences.hints import tz_hint

    reason = tz_hint(store)
    if reason is not None:
        problems.append(Problem(index, sid, reason, warning=True))
    return store, problems


def feature_problems(feature: object, index: int | None = None) -> list[Problem]:
    """Every problem of one Feature, exactly as ``geopush fences check`` finds it in a catalog
    (errors, then warnings with ``Problem.warning``), except what needs the other stores: a
    store_id used twice, a BSSID/beacon/NFC tag claimed by two stores, a store far from the
    rest of its merchant's. Empty when the Feature is a valid store."""
    return _check_feature(feature, index)[1]


def store_from_feature(feature: Mapping[str, Any], index: int | None = None) -> Store:
    """One Store from one Feature; raises CatalogError with the feature's problems (warnings
    do not raise)."""
    store, problems = _check_feature(feature, index)
    if store is None:
        raise CatalogError(problems)
    return store


def read_json(path: str | os.PathLike[str], strict: bool = False) -> Any:
    """Parse a JSON file; errors become CatalogError with the line and column.

    ``strict`` also refuses objects that repeat a member name (readers disagree on which value
    wins); it costs about twice the time, so ``geopush fences check`` uses it and loading for
    matching does not (the last value wins there, as in most JSON readers).
    """
    text = _read_bytes(path)
    try:
        with _gc_paused():
            if strict:
                obj, dups = geojson.loads_all(text)
                if dups:
                    raise CatalogError(_duplicate_problems(obj, dups))
                return obj
            return msgspec.json.decode(text)
    except json.JSONDecodeError as exc:
        raise CatalogError([Problem(None, None, _syntax(exc.msg, text, exc.pos))]) from exc
    except msgspec.DecodeError as exc:
        m = re.search(r"\(byte (\d+)\)", str(exc))
        raise CatalogError(
            [Problem(None, None, _syntax(str(exc), text, int(m.group(1)) if m else None))]
        ) from exc
    except UnicodeDecodeError as exc:
        raise CatalogError(
            [Problem(None, None, f"not UTF-8 text ({exc.reason}); save the file as UTF-8")]
        ) from exc


def read_json_checked(path: str | os.PathLike[str]) -> tuple[Any, list[Problem]]:
    """Parse a catalog file as ``geopush fences check`` does: the object (the last of repeated
    members wins, as when loading) and a problem for every repeated member name, with its line
    and column and, inside a feature, the feature's index and store_id. Syntax errors raise
    CatalogError like ``read_json``."""
    text = _read_bytes(path)
    try:
        with _gc_paused():
            obj, dups = geojson.loads_all(text)
    except json.JSONDecodeError as exc:
        raise CatalogError([Problem(None, None, _syntax(exc.msg, text, exc.pos))]) from exc
    except UnicodeDecodeError as exc:
        raise CatalogError(
            [Problem(None, None, f"not UTF-8 text ({exc.reason}); save the file as UTF-8")]
        ) from exc
    return obj, _duplicate_problems(obj, dups)


def _duplicate_problems(obj: Any, dups: list[geojson.DuplicateMember]) -> list[Problem]:
    out = []
    for d in dups:
        index: int | None = None
        sid: str | None = None
        inner: tuple[str | int, ...] = d.path
        if len(d.path) >= 2 and d.path[0] == "features" and isinstance(d.path[1], int):
            index, inner = d.path[1], d.path[2:]
            feats = obj.get("features") if isinstance(obj, dict) else None
            feature = feats[index] if isinstance(feats, list) and index < len(feats) else None
            props = feature.get("properties") if isinstance(feature, dict) else None
            got = props.get("store_id") if isinstance(props, dict) else None
            sid = got.strip() if isinstance(got, str) and got.strip() else None
        if inner:
            holder = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in inner).lstrip(".")
        else:
            holder = "the feature" if index is not None else "the top-level object"
        out.append(
            Problem(
                index,
                sid,
                f"line {d.line} column {d.column}: {holder} has the member {d.key!r} twice, so "
                "readers disagree on its value (the last one is used here); keep only one",
            )
        )
    return out


def _read_bytes(path: str | os.PathLike[str]) -> bytes:
    try:
        with open(path, "rb") as fh:
            text = fh.read()
    except OSError as exc:
        reason = f"cannot read {os.fspath(path)!r}: {exc.strerror}; check the path"
        raise CatalogError([Problem(None, None, reason)]) from exc
    if not text or text.isspace():  # as ``not text.strip()``, without copying the text
        what = "empty" if not text else "blank (only white space)"
        raise CatalogError([Problem(None, None, f"the file is {what}; {CATALOG_SHAPE}")])
    return text


def _syntax(msg: str, text: bytes, pos: int | None) -> str:
    where = ""
    if pos is not None:
        line = text.count(b"\n", 0, pos) + 1
        col = pos - (text.rfind(b"\n", 0, pos) + 1) + 1
        where = f" at line {line} column {col}"
    hint = (
        " (NaN and Infinity are not JSON numbers)" if b"NaN" in text or b"Infinity" in text else ""
    )
    return f"not valid JSON{where}: {msg}{hint}; fix the syntax there"


class _Collection(msgspec.Struct, forbid_unknown_fields=True, gc=False):
    """A FeatureCollection with nothing but a type and features (the usual catalog)."""

    type: str
    features: list[msgspec.Raw]


def load_catalog(
    path: str | os.PathLike[str], strict: bool = False, bulk: bool = True, *, columns: bool = True
) -> Catalog:
    """Read and validate a catalog file; raises CatalogError listing every problem.

    The default path (``bulk`` and ``columns``) reads a valid catalog as columns
    (fences.fastload.load_columns: chunks of features decoded by typed decoders, coordinates
    read in bulk, every check at C speed; the Store objects made on first access,
    fences.columns; a file in the usual shape, features on their own lines, is cut at line
    breaks without decoding its top level first: ``load_columns_text``) and falls back, when anything would be reported, to validating the
    features in bulk and one by one where needed (``columns=False``: fences.fastload's rows),
    which explains every problem. ``bulk=False`` validates feature by feature (the reference;
    the same Catalog and the same problems on every path). ``strict`` (refuse duplicate member
    names) decodes everything with the standard library first.
    """
    if strict:
        return parse_catalog(read_json(path, strict=True))
    text = _read_bytes(path)
    done = False  # the columns have read the features and found something to report
    try:
        with _gc_paused():
            if bulk and columns:  # the usual shape in one pass: a type and an array of features
                from fences.fastload import load_columns_text

                done, catalog = load_columns_text(text)  # cut at line breaks, no top level
                if catalog is not None:
                    return catalog
            if bulk and columns and not done:
                with contextlib.suppress(msgspec.ValidationError):
                    plain = msgspec.json.decode(text, type=_Collection)
                    if plain.type == "FeatureCollection" and plain.features:
                        from fences.fastload import load_columns

                        catalog = load_columns(plain.features, text)
                        if catalog is not None:
                            return catalog
                    del plain
            top = msgspec.json.decode(text, type=dict[str, msgspec.Raw])
            shallow: dict[str, Any] = {
                k: msgspec.json.decode(v) for k, v in top.items() if k != "features"
            }
            if "features" in top:
                try:
                    shallow["features"] = msgspec.json.decode(
                        top["features"], type=list[msgspec.Raw]
                    )
                except msgspec.ValidationError:  # not an array: let the validator say what
                    shallow["features"] = msgspec.json.decode(top["features"])
            del top
            if bulk:
                from fences.fastload import parse_features

                features, problems = _collection_problems(shallow)
                stores, problems = _assemble(parse_features(features), problems)
            else:
                stores, problems = _parse_stores(shallow, decode=msgspec.json.decode)
            if problems:
                raise CatalogError(problems)
            return Catalog(stores)
    except msgspec.ValidationError:  # the root is not an object: the generic path explains
        return parse_catalog(read_json(path))
    except msgspec.DecodeError as exc:
        m = re.search(r"\(byte (\d+)\)", str(exc))
        raise CatalogError(
            [Problem(None, None, _syntax(str(exc), text, int(m.group(1)) if m else None))]
        ) from exc


# --------------------------------------------------------------------------------------------
# Writing


def _ring_coords(ring: Any) -> list[list[float]]:
    return [[float(x), float(y)] for x, y in np.asarray(ring.coords)[:, :2]]


def _polygon_coords(poly: shapely.Polygon) -> list[list[list[float]]]:
    return [_ring_coords(poly.exterior), *(_ring_coords(r) for r in poly.interiors)]


def to_feature(store: Store) -> dict[str, Any]:
    """The GeoJSON Feature that reads back as ``store`` (extra properties kept)."""
    props: dict[str, Any] = dict(store.properties)
    props.update(store_id=store.store_id, merchant_id=store.merchant_id)
    if store.name:
        props["name"] = store.name
    geometry: dict[str, Any]
    if store.center is not None:
        geometry = {"type": "Point", "coordinates": [store.center[0], store.center[1]]}
        props["radius_m"] = store.radius_m
    elif isinstance(store.polygon, shapely.Polygon):
        geometry = {"type": "Polygon", "coordinates": _polygon_coords(store.polygon)}
    elif isinstance(store.polygon, shapely.MultiPolygon):
        geometry = {
            "type": "MultiPolygon",
            "coordinates": [_polygon_coords(p) for p in store.polygon.geoms],
        }
    else:
        raise CatalogError(
            [Problem(None, store.store_id, "store has neither a circle nor a polygon; give it one")]
        )
    for key, value in (
        ("wifi", store.wifi),
        ("beacons", store.beacons),
        ("nfc", store.nfc),
        ("tags", store.tags),
    ):
        if value:
            props[key] = list(value)
    if store.tz != DEFAULT_TZ:
        props["tz"] = store.tz
    if store.max_accuracy_m != DEFAULT_MAX_ACCURACY_M:
        props["max_accuracy_m"] = store.max_accuracy_m
    return {"type": "Feature", "properties": props, "geometry": geometry}


def catalog_to_geojson(catalog: Catalog | Iterable[Store]) -> dict[str, Any]:
    """A FeatureCollection of the live stores."""
    stores = (s for _, s in catalog.alive()) if isinstance(catalog, Catalog) else catalog
    return {"type": "FeatureCollection", "features": [to_feature(s) for s in stores]}


def write_catalog(catalog: Catalog | Iterable[Store], fh: TextIO) -> int:
    """Write a catalog as GeoJSON text, one feature per line (diffs stay readable); returns the
    number of features written. Raises CatalogError for a store that cannot be written."""
    stores = (s for _, s in catalog.alive()) if isinstance(catalog, Catalog) else catalog
    fh.write('{"type": "FeatureCollection", "features": [\n')
    n = 0
    for store in stores:
        try:
            text = json.dumps(to_feature(store), ensure_ascii=False, allow_nan=False)
        except (TypeError, ValueError) as exc:
            raise CatalogError(
                [
                    Problem(
                        n,
                        store.store_id,
                        f"cannot be written as JSON ({exc}); give its properties plain numbers, strings, lists and dicts",
                    )
                ]
            ) from exc
        fh.write(("" if n == 0 else ",\n") + text)
        n += 1
    fh.write("\n]}\n")
    return n


def dump_catalog(catalog: Catalog | Iterable[Store], path: str | os.PathLike[str]) -> int:
    """Write a catalog file atomically (a temporary file renamed into place); returns the count."""
    tmp = f"{os.fspath(path)}.tmp"
    try:
        with open(tmp, "w", encoding="utf-8") as fh:
            n = write_catalog(catalog, fh)
        os.replace(tmp, path)
    except OSError as exc:
        reason = f"cannot write {os.fspath(path)!r}: {exc.strerror}; check the directory"
        raise CatalogError([Problem(None, None, reason)]) from exc
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return n

"""The store catalog as the HTTP API sees it: validated, scoped to a merchant, changed live.

A change (PUT, DELETE, bulk import) is validated as ``geopush fences check`` validates a
catalog (fences.catalog: ``store_from_feature`` for one Feature, ``parse_stores`` for a
FeatureCollection; the body is parsed refusing repeated member names, as ``fences check`` reads
a file), plus what only the live catalog can tell: a BSSID, beacon or NFC tag already claimed
by another live store. It is then applied to the API's live fence index in place
(``FenceIndex.add``/``remove``: no rebuild; removals are told to ``FenceTarget.removed``) and
persisted in the state file (engine/api/state.py) in one transaction; if persisting fails the
index change is undone. Under ``geopush run --http`` that index is the API process's own copy
(engine/api/process.py) and the engine applies the persisted change to its index between two
micro-batches (engine/api/follow.py; removals reach ``Core.stores_removed`` there, so open
visits exit); a test may give the engine's own index as the target.

At start-up and on reload the daemon lays the persisted changes over the catalog file
(``overlay``): the file is the baseline, the state file the changes made live.

No FastAPI here: the daemon imports this module whether the API is on or not.
"""

from __future__ import annotations

import json
import logging
import math
import threading
import weakref
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from engine.api.errors import AccessDenied, Conflict, InvalidRequest, NotFound
from engine.api.state import ApiState, StoreChange, read_store_changes
from fences import geojson
from fences.catalog import Catalog, parse_stores, store_from_feature, to_feature
from fences.errors import CatalogError, Problem
from fences.store import Store

if TYPE_CHECKING:
    from engine.api.campaigns import CampaignTarget

log = logging.getLogger("geopush.api")

_M_PER_DEG = 111_195.0
MAX_PAGE = 1000


class LiveIndex(Protocol):
    """What the API needs of ``fences.index.FenceIndex``: its catalog and live changes."""

    @property
    def catalog(self) -> Catalog: ...

    def add(self, store: Store) -> int: ...

    def remove(self, store_id: str) -> None: ...


def _nothing(_ids: list[str]) -> None:
    return None


@dataclass
class FenceTarget:
    """Where live changes go: ``index()`` returns the fence index in use now (a reload swaps
    it), ``removed(ids)`` tells the engine that stores went (``Core.stores_removed``);
    ``campaigns``: where campaign changes go (engine/api/campaigns.py; None: no campaigns)."""

    index: Callable[[], LiveIndex]
    removed: Callable[[list[str]], None] = _nothing
    campaigns: CampaignTarget | None = None


@dataclass
class ImportReport:
    created: list[str] = field(default_factory=list)
    updated: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    dry_run: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {
            "created": self.created,
            "updated": self.updated,
            "unchanged": self.unchanged,
            "dry_run": self.dry_run,
        }


def parse_body(body: bytes) -> Any:
    """A JSON request body, read as ``fences check`` reads a file (repeated members refused)."""
    try:
        return geojson.loads(body)
    except geojson.DuplicateKeyError as exc:
        raise CatalogError([Problem(None, None, str(exc))]) from exc
    except ValueError as exc:  # json.JSONDecodeError, UnicodeDecodeError
        raise CatalogError(
            [Problem(None, None, f"not valid JSON: {exc}; fix the syntax")]
        ) from exc


def parse_bbox(text: str) -> tuple[float, float, float, float]:
    """``west,south,east,north`` in degrees (west > east: the box crosses the antimeridian)."""
    parts = text.split(",")
    try:
        w, s, e, n = (float(p) for p in parts)
    except ValueError:
        raise InvalidRequest(
            f"bbox {text!r} is not four numbers; write bbox=west,south,east,north in degrees, "
            "e.g. bbox=24.9,60.1,25.0,60.2"
        ) from None
    if not (-180 <= w <= 180 and -180 <= e <= 180 and -90 <= s <= n <= 90):
        raise InvalidRequest(
            f"bbox {text!r} is out of range: longitudes in [-180, 180], latitudes in [-90, 90] "
            "with south <= north (order: west,south,east,north)"
        )
    return w, s, e, n


def store_bounds(store: Store) -> tuple[float, float, float, float]:
    """(west, south, east, north) of a store's fence (a circle's box on the sphere)."""
    if store.center is not None and store.radius_m is not None:
        lon, lat = store.center
        dlat = store.radius_m / _M_PER_DEG
        cos = math.cos(math.radians(lat))
        dlon = 180.0 if cos < 1e-6 else min(180.0, dlat / cos)
        return lon - dlon, max(-90.0, lat - dlat), lon + dlon, min(90.0, lat + dlat)
    assert store.polygon is not None
    w, s, e, n = store.polygon.bounds
    return float(w), float(s), float(e), float(n)


def _intersects(b: tuple[float, float, float, float], q: tuple[float, float, float, float]) -> bool:
    w, s, e, n = q
    if b[1] > n or b[3] < s:
        return False
    spans = [(w, e)] if w <= e else [(w, 180.0), (-180.0, e)]
    lo, hi = b[0], b[2]
    # a circle near the antimeridian may reach past +-180: test it shifted too
    boxes = [(lo, hi), (lo - 360.0, hi - 360.0), (lo + 360.0, hi + 360.0)]
    return any(bl <= qe and bh >= qw for qw, qe in spans for bl, bh in boxes)


def _identifiers(store: Store) -> list[tuple[str, str]]:
    return (
        [("BSSID", b) for b in store.wifi]
        + [("beacon", k) for k in store.beacons]
        + [("NFC tag", t) for t in store.nfc]
    )


def _owner(catalog: Catalog, kind: str, key: str) -> int | None:
    if kind == "BSSID":
        return catalog.by_bssid(key)
    if kind == "beacon":
        uuid, major, minor = key.rsplit(":", 2)
        return catalog.by_beacon(uuid, major, minor)
    return catalog.by_nfc(key)


def clashes(catalog: Catalog, store: Store, replacing: Iterable[str] = ()) -> list[str]:
    """Identifiers of ``store`` that another live store claims (stores in ``replacing`` are
    being replaced in the same change and do not count: their new version is checked)."""
    skip = {store.store_id, *replacing}
    out = []
    for kind, key in _identifiers(store):
        slot = _owner(catalog, kind, key)
        if slot is None:
            continue
        owner = catalog.stores[slot].store_id
        if owner not in skip:
            out.append(
                f"{kind} {key} is already claimed by live store {owner!r}; a {kind} must identify "
                "one store: remove it from one of them"
            )
    return out


def _relink(add: Callable[[Store], int], catalog: Catalog, stores: Iterable[Store]) -> None:
    """After several changes, a store whose identifier moved from one store to another may have
    lost its look-up (Catalog replaces a store by unlinking all of the old version's keys): add
    such stores once more, which links their keys again."""
    for s in stores:
        slot = catalog.slot_of(s.store_id)
        if slot is None:
            continue
        if any(_owner(catalog, kind, key) != slot for kind, key in _identifiers(s)):
            add(s)


def overlay(target: Catalog | LiveIndex, changes: Sequence[StoreChange]) -> list[str]:
    """Lay persisted live changes over a catalog loaded from the file (or over a fence index);
    returns warnings for changes that no longer fit (invalid, or an identifier now claimed by
    a store of the file): those are skipped and the file's version stays."""
    catalog = target if isinstance(target, Catalog) else target.catalog
    warnings: list[str] = []
    added: list[Store] = []
    for c in changes:
        if c.feature is None:
            if catalog.slot_of(c.store_id) is not None:
                target.remove(c.store_id)
            continue
        try:
            store = store_from_feature(c.feature)
        except CatalogError as exc:
            warnings.append(f"store {c.store_id!r} changed through the API is invalid now: {exc}")
            continue
        bad = clashes(catalog, store)
        if bad:
            warnings.append(
                f"store {c.store_id!r} changed through the API is skipped: " + "; ".join(bad)
            )
            continue
        target.add(store)
        added.append(store)
    _relink(target.add, catalog, added)
    return warnings


def overlay_state(target: Catalog | LiveIndex, state: str | Path, after: int = 0) -> int:
    """``overlay`` the changes persisted in a state file numbered after ``after`` (if any); logs
    warnings; returns the number of the last change read (``after`` when none)."""
    changes = read_store_changes(state, after)
    for w in overlay(target, changes):
        log.warning("%s", w)
    if changes:
        log.info("%d store change(s) made through the API laid over the catalog", len(changes))
    return max((c.seq for c in changes), default=after)


class _Listing:
    """Per catalog, numpy tables of every slot's fence box, merchant and liveness, so a page of
    ``GET /v1/stores`` filtered by bbox or merchant costs a vector scan (a few ms at 500k
    stores) instead of a Python loop over every store (~80 ms) on the event loop. Kept up to
    date from the catalog's change log (``Catalog.changed``): only changed slots are re-read."""

    # Boxes are widened by this (degrees) so the vector test never drops a store the exact test
    # (``_intersects`` on ``store_bounds``, re-run on every candidate) would keep.
    PAD = 1e-9

    def __init__(self, catalog: Catalog) -> None:
        """Vectorised (~0.2 s at 500k circles): only polygons' boxes are read one by one."""
        self.codes: dict[str, int] = {}
        self.pos = catalog.changed_base + len(catalog.changed)  # before reading: changes made
        stores = list(catalog.stores)  # meanwhile (another thread) are caught up by ``sync``
        n = self.n = len(stores)
        centers = [s.center for s in stores]
        radii = [s.radius_m for s in stores]
        circ = [c is not None and r is not None for c, r in zip(centers, radii, strict=True)]
        box = np.empty((n, 4))
        idx = np.flatnonzero(np.array(circ, dtype=bool))
        if len(idx):
            c = np.array([centers[i] for i in idx], dtype=float).reshape(-1, 2)
            dlat = np.array([radii[i] for i in idx], dtype=float) / _M_PER_DEG
            cos = np.cos(np.radians(c[:, 1]))
            dlon = np.where(cos < 1e-6, 180.0, np.minimum(180.0, dlat / np.maximum(cos, 1e-6)))
            box[idx, 0] = c[:, 0] - dlon
            box[idx, 1] = np.maximum(-90.0, c[:, 1] - dlat)
            box[idx, 2] = c[:, 0] + dlon
            box[idx, 3] = np.minimum(90.0, c[:, 1] + dlat)
        for i, is_circle in enumerate(circ):
            if not is_circle:
                box[i] = store_bounds(stores[i])
        box[:, :2] -= self.PAD
        box[:, 2:] += self.PAD
        # one contiguous row per edge (west, south, east, north): a scan reads each as one block
        self.box = np.ascontiguousarray(box.T)
        codes = self.codes
        self.merchant = np.array(
            [codes.setdefault(s.merchant_id, len(codes)) for s in stores], dtype=np.int64
        )
        self.alive = np.zeros(n, dtype=bool)
        self.alive[[slot for slot, _ in catalog.alive() if slot < n]] = True

    def _grow(self, catalog: Catalog, n: int) -> None:
        if n > len(self.alive):
            size = max(n, 2 * len(self.alive), 64)
            for name in ("merchant", "alive"):
                old = getattr(self, name)
                new = np.zeros(size, dtype=old.dtype)
                new[: len(old)] = old
                setattr(self, name, new)
            box = np.zeros((4, size))
            box[:, : self.box.shape[1]] = self.box
            self.box = box
        self.n = n

    def _read(self, catalog: Catalog, slot: int) -> None:
        store = catalog.stores[slot]
        w, s, e, n = store_bounds(store)
        self.box[:, slot] = (w - self.PAD, s - self.PAD, e + self.PAD, n + self.PAD)
        self.merchant[slot] = self.codes.setdefault(store.merchant_id, len(self.codes))
        self.alive[slot] = catalog.is_alive(slot)

    def sync(self, catalog: Catalog) -> bool:
        """Catch up with the catalog's changes; False when the log no longer reaches back to
        this table (rebuild it)."""
        if self.pos < catalog.changed_base:
            return False
        todo = catalog.changed[self.pos - catalog.changed_base :]
        self._grow(catalog, len(catalog.stores))
        for slot in set(todo):
            self._read(catalog, slot)
        self.pos = catalog.changed_base + len(catalog.changed)
        return True

    def slots(
        self, start: int, merchant_id: str | None, box: tuple[float, float, float, float] | None
    ) -> Any:
        """The live slots from ``start`` on that pass the filters, in slot order."""
        n = self.n
        if box is not None:  # the latitude band first: the most selective, no copy
            w, s, e, north = box
            mask = self.box[1, start:n] <= north
            mask &= self.box[3, start:n] >= s
            mask &= self.alive[start:n]
        else:
            mask = self.alive[start:n].copy()
        if merchant_id is not None:
            code = self.codes.get(merchant_id)
            if code is None:
                return np.empty(0, dtype=np.int64)
            mask &= self.merchant[start:n] == code
        found = np.flatnonzero(mask) + start
        if box is not None and len(found):  # the longitudes only for the latitude band
            b = self.box[:, found].T
            spans = [(w, e)] if w <= e else [(w, 180.0), (-180.0, e)]
            hit = np.zeros(len(found), dtype=bool)
            for shift in (0.0, -360.0, 360.0):  # a circle near the antimeridian may reach past it
                lo, hi = b[:, 0] + shift, b[:, 2] + shift
                for qw, qe in spans:
                    hit |= (lo <= qe) & (hi >= qw)
            found = found[hit]
        return found


_LISTINGS: weakref.WeakKeyDictionary[Catalog, _Listing] = weakref.WeakKeyDictionary()


def _listing(catalog: Catalog) -> _Listing:
    table = _LISTINGS.get(catalog)
    if table is None or not table.sync(catalog):
        table = _LISTINGS[catalog] = _Listing(catalog)
    return table


def prepare_listing(catalog: Catalog) -> None:
    """Build the catalog's listing table if it has none yet (seconds at 500k stores: the
    router runs this in a worker thread; changes made meanwhile are caught up from the log)."""
    if catalog in _LISTINGS:
        return
    with _BUILDING:  # one build at a time: the requests that come meanwhile wait for it
        if catalog not in _LISTINGS:
            _LISTINGS[catalog] = _Listing(catalog)


_BUILDING = threading.Lock()


def listing_ready(catalog: Catalog) -> bool:
    """Whether the catalog's listing table is built (else ``prepare_listing`` in a thread)."""
    return catalog in _LISTINGS


class LiveStores:
    """The API's store operations over a live fence index and the state file.

    ``scope``: the merchant the caller is limited to (None: an operator)."""

    def __init__(self, target: FenceTarget, state: ApiState) -> None:
        self.target = target
        self.state = state

    @property
    def catalog(self) -> Catalog:
        return self.target.index().catalog

    def _live(self, store_id: str) -> Store | None:
        cat = self.catalog
        slot = cat.slot_of(store_id)
        return None if slot is None else cat.stores[slot]

    # --- reads -----------------------------------------------------------------------------------

    def get(self, store_id: str, scope: str | None) -> Store:
        store = self._live(store_id)
        if store is None or (scope is not None and store.merchant_id != scope):
            raise NotFound(f"no store {store_id!r}" + ("" if scope is None else f" of merchant {scope!r}"))
        return store

    def find(
        self,
        scope: str | None,
        *,
        merchant_id: str | None = None,
        bbox: str | None = None,
        limit: int = 100,
        cursor: str | None = None,
    ) -> tuple[list[Store], str | None]:
        """Live stores in slot order, filtered; the next page's cursor (None: the last page)."""
        if scope is not None:
            if merchant_id is not None and merchant_id != scope:
                raise AccessDenied(
                    f"this token sees only the stores of merchant {scope!r}; drop merchant_id or "
                    "use an operator token"
                )
            merchant_id = scope
        box = parse_bbox(bbox) if bbox is not None else None
        if not 1 <= limit <= MAX_PAGE:
            raise InvalidRequest(f"limit must be 1 to {MAX_PAGE}, got {limit}")
        start = 0
        if cursor is not None:
            try:
                start = int(cursor)
            except ValueError:
                raise InvalidRequest(
                    f"cursor {cursor!r} is not one this API gave; pass next_cursor from the previous page"
                ) from None
        out: list[Store] = []
        cat = self.catalog
        stores = cat.stores
        if merchant_id is None and box is None:
            slots: Iterable[int] = range(max(0, start), len(stores))
        else:  # a vector scan: no Python loop over the whole catalog on the event loop
            slots = _listing(cat).slots(min(max(0, start), len(stores)), merchant_id, box).tolist()
        for slot in slots:
            if not cat.is_alive(slot):
                continue
            s = stores[slot]
            if merchant_id is not None and s.merchant_id != merchant_id:
                continue
            if box is not None and not _intersects(store_bounds(s), box):
                continue
            if len(out) == limit:
                return out, str(slot)
            out.append(s)
        return out, None

    # --- changes ---------------------------------------------------------------------------------

    def put(self, store_id: str, body: bytes, scope: str | None) -> tuple[Store, bool]:
        """Create or replace one store from a GeoJSON Feature; (store, created)."""
        store = store_from_feature(parse_body(body))
        if store.store_id != store_id:
            raise InvalidRequest(
                f"the Feature's store_id {store.store_id!r} differs from the URL's {store_id!r}; "
                "make them equal (to rename a store, PUT the new id and DELETE the old)"
            )
        self._check_scope(store, scope)
        old = self._live(store_id)
        if old is not None and scope is not None and old.merchant_id != scope:
            raise Conflict(
                f"store_id {store_id!r} is taken by another merchant; choose another store_id"
            )
        bad = clashes(self.catalog, store)
        if bad:
            raise CatalogError([Problem(None, store_id, r) for r in bad])
        self._apply([store], [])
        return store, old is None

    def delete(self, store_id: str, scope: str | None) -> Store:
        store = self.get(store_id, scope)
        self._apply([], [store])
        return store

    @staticmethod
    def parse_collection(body: bytes) -> tuple[list[Store], dict[str, int]]:
        """Validate a FeatureCollection on its own (pure: may run in a worker thread); its
        stores and each store's feature position. Raises CatalogError."""
        obj = parse_body(body)
        stores, problems = parse_stores(obj)
        if problems:
            raise CatalogError(problems)
        return stores, _feature_index(obj)

    def import_collection(
        self, parsed: tuple[list[Store], dict[str, int]], scope: str | None, *, dry_run: bool = False
    ) -> ImportReport:
        """Upsert every store of a FeatureCollection checked by ``parse_collection`` (all or
        nothing): created, updated and unchanged store ids."""
        stores, at = parsed
        problems: list[Problem] = []
        ids = {s.store_id for s in stores}
        cat = self.catalog
        report = ImportReport(dry_run=dry_run)
        changed: list[Store] = []
        for s in stores:
            i = at.get(s.store_id)
            if scope is not None and s.merchant_id != scope:
                problems.append(Problem(i, s.store_id, _scope_reason(scope, s.merchant_id)))
                continue
            old = self._live(s.store_id)
            if old is not None and scope is not None and old.merchant_id != scope:
                problems.append(
                    Problem(i, s.store_id, "store_id is taken by another merchant; choose another")
                )
                continue
            problems.extend(Problem(i, s.store_id, r) for r in clashes(cat, s, ids))
            if old is None:
                report.created.append(s.store_id)
                changed.append(s)
            elif to_feature(old) == to_feature(s):
                report.unchanged.append(s.store_id)
            else:
                report.updated.append(s.store_id)
                changed.append(s)
        if problems:
            raise CatalogError(problems)
        if changed and not dry_run:
            self._apply(changed, [])
        return report

    # --- internals -------------------------------------------------------------------------------

    @staticmethod
    def _check_scope(store: Store, scope: str | None) -> None:
        if scope is not None and store.merchant_id != scope:
            raise AccessDenied(_scope_reason(scope, store.merchant_id))

    def _apply(self, puts: list[Store], deletes: list[Store]) -> None:
        """Change the live index, then persist; undo the index change if persisting fails."""
        index = self.target.index()
        cat = index.catalog
        done: list[tuple[str, Store | None]] = []  # (store_id, the version before)
        try:
            for s in puts:
                slot = cat.slot_of(s.store_id)
                done.append((s.store_id, None if slot is None else cat.stores[slot]))
                index.add(s)
            for s in deletes:
                done.append((s.store_id, s))
                index.remove(s.store_id)
            _relink(index.add, cat, puts)
            self.state.record(
                [StoreChange(s.store_id, s.merchant_id, to_feature(s)) for s in puts]
                + [StoreChange(s.store_id, s.merchant_id, None) for s in deletes]
            )
        except BaseException:
            restored = []
            for sid, before in reversed(done):
                if before is None:
                    if cat.slot_of(sid) is not None:
                        index.remove(sid)
                else:
                    index.add(before)
                    restored.append(before)
            _relink(index.add, cat, restored)
            raise
        if deletes:
            self.target.removed([s.store_id for s in deletes])


def _scope_reason(scope: str, merchant_id: str) -> str:
    return (
        f"this token may only put stores of merchant {scope!r}, not {merchant_id!r}; set "
        f'"merchant_id": {json.dumps(scope)} or use an operator token'
    )


def _feature_index(obj: Any) -> dict[str, int]:
    """store_id -> the position of its feature in a FeatureCollection."""
    out: dict[str, int] = {}
    feats = obj.get("features") if isinstance(obj, dict) else None
    for i, f in enumerate(feats if isinstance(feats, list) else []):
        props = f.get("properties") if isinstance(f, dict) else None
        sid = props.get("store_id") if isinstance(props, dict) else None
        if isinstance(sid, str):
            out.setdefault(sid.strip(), i)
    return out


__all__ = [
    "FenceTarget",
    "ImportReport",
    "LiveIndex",
    "LiveStores",
    "clashes",
    "overlay",
    "overlay_state",
    "parse_bbox",
    "prepare_listing",
    "parse_body",
    "store_bounds",
]

"""FenceIndex: which stores' fences hold a fix, and how far the fix is from each nearby fence.

Design (see docs/benchmarks.md for the figures that chose it):

* **base**: every store known at the last compaction, packed into flat float64/int64 records and
  a uniform lon/lat grid (CSR lists of entry boxes per cell), searched by the numba kernel in
  fences.kernel. Records are Morton-ordered so neighbouring stores sit together in memory.
  Fences far larger than the typical one (> 16x and > 1 km) sit in a second, coarse grid;
* **delta**: stores added or changed since then, as records appended to the same packed arrays
  and found through a live ``rtree.index.Index`` (the index of record for live updates);
* an alive flag per record: ``update`` and ``remove`` kill the old record (it never matches
  again) and ``update``/``add`` append a new one to the delta. ``compact()`` folds the delta into
  a new base; it runs by itself when the delta outgrows ``compact_at``.

Slots are catalog positions (``Catalog.add`` / ``Catalog.replace``): an update keeps its slot.

Matching rule: a store is returned for a fix when its signed distance is <= accuracy + margin.
Signed distance: circles, haversine(fix, centre) - radius; polygons, the distance to the
boundary in a local equirectangular projection around the fix, negative inside. Points on a
polygon's boundary (within 1 µm) are inside; see fences.kernel and fences.geo for precision.

Threads: libspatialindex (behind rtree) is not thread-safe even for reads, and the kernel reuses
per-index scratch arrays: use one FenceIndex from one thread (give each thread its own).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np
import shapely
from numpy.typing import ArrayLike, NDArray
from rtree import index as rtree_index

from fences import kernel
from fences.catalog import Catalog
from fences.errors import CatalogError, FencesError, Problem, UnknownStoreError
from fences.geo import M_PER_DEG, circle_boxes, query_boxes, wrap_lon
from fences.store import Store

F64 = NDArray[np.float64]
I64 = NDArray[np.int64]
_STALE_SINGLE = 16
"""Single queries served by the rtree after a change before the delta's grid is rebuilt."""


class QueryError(FencesError, ValueError):
    """A fix or accuracy that cannot be matched (NaN, latitude beyond ±90, negative accuracy)."""


@dataclass
class _Pack:
    """Packed records for some stores (layout in fences.kernel), plus their entry boxes."""

    recf: F64  # (n, 4)
    reci: I64  # (n, 5)
    ring_len: I64  # vertices per ring, in ring order
    verts: F64  # (nv, 2)
    ent_rec: I64  # record (pack-local) of each entry box
    ent_box: F64  # (ne, 4)


def _bad(store_id: str, reason: str) -> CatalogError:
    return CatalogError([Problem(None, store_id, reason)])


@dataclass
class _Shapes:
    """Fences as arrays, row k for the k-th store: ``circle`` marks circles; ``center`` (n, 2)
    and ``radius`` hold theirs (anything for a polygon), ``polygons`` (object) the shapely
    geometry of the others; ``ids`` names row k in errors."""

    circle: NDArray[np.bool_]
    center: F64
    radius: F64
    polygons: NDArray[Any]
    ids: Callable[[int], str]

    def take(self, rows: I64) -> _Shapes:
        ids = self.ids
        return _Shapes(
            self.circle[rows], self.center[rows], self.radius[rows], self.polygons[rows],
            lambda k: ids(int(rows[k])),
        )  # fmt: skip


def _shapes(stores: list[Store]) -> _Shapes:
    """The fences of Store objects as arrays."""
    n = len(stores)
    for s in stores:
        if (s.center is None) == (s.polygon is None):
            raise _bad(
                s.store_id,
                "a store needs either center + radius_m (a circle) or a polygon, not both or neither",
            )
    circle = np.array([s.center is not None for s in stores], dtype=bool)
    center = np.full((n, 2), np.nan)
    radius = np.full(n, np.nan)
    polygons = np.full(n, None, dtype=object)
    ci = np.flatnonzero(circle).tolist()
    if ci:
        center[ci] = np.array([stores[i].center for i in ci], dtype=np.float64).reshape(-1, 2)
        radius[ci] = np.array(
            [stores[i].radius_m if stores[i].radius_m is not None else np.nan for i in ci]
        )
    pi = np.flatnonzero(~circle).tolist()
    if pi:
        polygons[pi] = np.array([stores[i].polygon for i in pi], dtype=object)
    return _Shapes(circle, center, radius, polygons, lambda k: stores[k].store_id)


def _pack(sh: _Shapes, slots: I64) -> _Pack:
    """Pack fences in the given order; records are numbered 0..len-1 in that order."""
    n = len(sh.circle)
    recf = np.zeros((n, 4))
    reci = np.zeros((n, 5), dtype=np.int64)
    reci[:, 3] = slots
    is_circle = sh.circle
    ci = np.flatnonzero(is_circle)
    ent_rec: list[I64] = []
    ent_box: list[F64] = []
    if len(ci):
        c = sh.center[ci]
        rad = sh.radius[ci]
        ok = (
            np.isfinite(c).all(axis=1) & (np.abs(c[:, 1]) <= 90.0) & np.isfinite(rad) & (rad >= 0.0)
        )
        if not ok.all():
            k = int(ci[np.flatnonzero(~ok)[0]])
            raise _bad(
                sh.ids(k), "circle needs a finite centre (lon, lat within range) and radius_m >= 0"
            )
        lon = wrap_lon(c[:, 0])
        recf[ci, 0] = lon
        recf[ci, 1] = c[:, 1]
        recf[ci, 2] = np.cos(np.radians(c[:, 1]))
        recf[ci, 3] = rad
        reci[ci, 0] = kernel.CIRCLE
        owner, boxes = circle_boxes(lon, c[:, 1], rad)
        reci[ci, 4] = (np.bincount(owner, minlength=len(ci)) > 1).astype(np.int64)
        ent_rec.append(ci[owner])
        ent_box.append(boxes)
    pi = np.flatnonzero(~is_circle)
    ring_len = np.zeros(0, dtype=np.int64)
    verts = np.zeros((0, 2))
    if len(pi):
        geoms = sh.polygons[pi]
        kinds = shapely.get_type_id(geoms)
        bad = ~np.isin(kinds, (3, 6)) | shapely.is_empty(geoms)
        if bad.any():
            k = int(pi[np.flatnonzero(bad)[0]])
            raise _bad(
                sh.ids(k), "polygon fence must be a non-empty shapely Polygon or MultiPolygon"
            )
        if (kinds == 6).any():
            parts, part_owner = shapely.get_parts(geoms, return_index=True)
        else:  # Polygons only: get_parts would copy each one (4 µs apiece) to return it as is
            parts, part_owner = geoms, np.arange(len(geoms), dtype=np.int64)
        rings, ring_part = shapely.get_rings(parts, return_index=True)
        coords, coord_ring = shapely.get_coordinates(rings, return_index=True)
        if not np.isfinite(coords).all():
            raise _bad(sh.ids(int(pi[0])), "polygon coordinates must be finite numbers")
        ring_len = np.bincount(coord_ring, minlength=len(rings)).astype(np.int64)
        ring_owner = part_owner[ring_part]
        lo = np.searchsorted(ring_owner, np.arange(len(pi)), side="left")
        hi = np.searchsorted(ring_owner, np.arange(len(pi)), side="right")
        reci[pi, 0] = kernel.POLYGON
        reci[pi, 1] = lo
        reci[pi, 2] = hi
        reci[pi, 4] = (np.bincount(part_owner, minlength=len(pi)) > 1).astype(np.int64)
        verts = np.ascontiguousarray(coords, dtype=np.float64)
        b = shapely.bounds(parts)
        ent_rec.append(pi[part_owner])
        ent_box.append(b.astype(np.float64))
    return _Pack(
        recf=recf,
        reci=reci,
        ring_len=ring_len,
        verts=verts,
        ent_rec=np.concatenate(ent_rec) if ent_rec else np.zeros(0, dtype=np.int64),
        ent_box=np.concatenate(ent_box) if ent_box else np.zeros((0, 4)),
    )


class _Grow:
    """An append-only numpy array with amortised O(1) appends (capacity doubles)."""

    def __init__(self, arr: Any) -> None:
        self.n = len(arr)
        self.arr: Any = arr

    def extend(self, block: Any) -> int:
        start = self.n
        need = start + len(block)
        if need > len(self.arr):
            cap = max(need, 2 * len(self.arr), 16)
            new = np.zeros((cap, *self.arr.shape[1:]), dtype=self.arr.dtype)
            new[:start] = self.arr[:start]
            self.arr = new
        self.arr[start:need] = block
        self.n = need
        return start


def _morton(x: F64, y: F64) -> NDArray[np.uint64]:
    """Z-order key of points quantised to 2**16 steps over their extent (for memory locality)."""

    def spread(v: F64) -> NDArray[np.uint64]:
        lo, hi = float(v.min()), float(v.max())
        q = ((v - lo) / max(hi - lo, 1e-12) * 65535.0).astype(np.uint64)
        q = (q | (q << np.uint64(8))) & np.uint64(0x00FF00FF)
        q = (q | (q << np.uint64(4))) & np.uint64(0x0F0F0F0F)
        q = (q | (q << np.uint64(2))) & np.uint64(0x33333333)
        q = (q | (q << np.uint64(1))) & np.uint64(0x55555555)
        return q

    if len(x) == 0:
        return np.zeros(0, dtype=np.uint64)
    return spread(x) | (spread(y) << np.uint64(1))


def _store_points(sh: _Shapes) -> tuple[F64, F64]:
    """A representative (lon, lat) per fence for Morton ordering."""
    n = len(sh.circle)
    x = np.zeros(n)
    y = np.zeros(n)
    circ = np.flatnonzero(sh.circle)
    poly = np.flatnonzero(~sh.circle)
    if len(circ):
        x[circ], y[circ] = sh.center[circ, 0], sh.center[circ, 1]
    if len(poly):
        b = shapely.bounds(sh.polygons[poly])
        x[poly], y[poly] = (b[:, 0] + b[:, 2]) / 2, (b[:, 1] + b[:, 3]) / 2
    ok = np.isfinite(x) & np.isfinite(y)
    return np.where(ok, x, 0.0), np.where(ok, y, 0.0)


def _large(ent_rec: I64, ent_box: F64, n_rec: int, cell_m: float | None) -> NDArray[np.bool_]:
    """Entries of records much larger than the typical fence (> 16x its size and > 1 km): all
    entries of such a record, so a store lives in one grid only."""
    if len(ent_rec) == 0:
        return np.zeros(0, dtype=bool)
    mid = np.radians(np.minimum(np.abs(ent_box[:, 1] + ent_box[:, 3]) / 2.0, 80.0))
    size = np.maximum((ent_box[:, 2] - ent_box[:, 0]) * np.cos(mid), ent_box[:, 3] - ent_box[:, 1])
    size_m = size * M_PER_DEG
    limit = max(16.0 * float(np.median(size_m)), 6.0 * (cell_m or 0.0), 1000.0)
    big_rec = np.zeros(n_rec, dtype=bool)
    big_rec[ent_rec[size_m > limit]] = True
    return np.asarray(big_rec[ent_rec], dtype=bool)


def _aligned_rows(n: int, width: int) -> F64:
    """An (n, width) float64 array starting on a 64-byte boundary: 8-float rows = cache lines."""
    raw = np.empty(n * width + 8)
    skip = (-raw.ctypes.data % 64) // 8
    return raw[skip : skip + n * width].reshape(n, width)


def _grid(
    ent_rec: I64, ent_box: F64, recf: F64, reci: I64, cell_m: float | None
) -> tuple[F64, NDArray[np.int32], F64]:
    """Uniform grid over the entry boxes: (gp, cstart, occ) in fences.kernel's layout."""
    ne = len(ent_rec)
    if ne == 0:
        gp = np.array([0.0, 0.0, 1.0, 1.0, 1.0, 1.0, -1.0, -1.0])  # x1 < x0: nothing overlaps
        return gp, np.zeros(2, dtype=np.int32), np.zeros((0, 8))
    x0, y0 = float(ent_box[:, 0].min()), float(ent_box[:, 1].min())
    x1, y1 = float(ent_box[:, 2].max()), float(ent_box[:, 3].max())
    coslat = math.cos(math.radians(min(abs(y0 + y1) / 2.0, 80.0)))
    # cell side in metres: no smaller than a typical fence, no more cells than ~2 per entry
    w_m = (ent_box[:, 2] - ent_box[:, 0]) * M_PER_DEG * coslat
    h_m = (ent_box[:, 3] - ent_box[:, 1]) * M_PER_DEG
    area = max((x1 - x0) * M_PER_DEG * coslat * (y1 - y0) * M_PER_DEG, 1.0)
    if cell_m is None:
        # measured (geopush bench match): ~2.5 typical fences a side balances candidates per
        # cell against the size of the cell table
        cell_m = max(2.5 * float(np.median(np.maximum(w_m, h_m))), 1.0)
    cell_m = max(cell_m, math.sqrt(area / (8 * ne + 64)))
    cw = cell_m / (M_PER_DEG * coslat)
    ch = cell_m / M_PER_DEG
    nx = max(1, min(int((x1 - x0) / cw) + 1, 1 << 20))
    ny = max(1, min(int((y1 - y0) / ch) + 1, 1 << 20))
    cw = max(cw, (x1 - x0) / nx * (1 + 1e-12), 1e-12)
    ch = max(ch, (y1 - y0) / ny * (1 + 1e-12), 1e-12)

    def cell(v: F64, lo: float, size: float, n: int) -> I64:
        return np.clip(((v - lo) / size).astype(np.int64), 0, n - 1)

    ix0 = cell(ent_box[:, 0], x0, cw, nx)
    ix1 = cell(ent_box[:, 2], x0, cw, nx)
    iy0 = cell(ent_box[:, 1], y0, ch, ny)
    iy1 = cell(ent_box[:, 3], y0, ch, ny)
    wx = ix1 - ix0 + 1
    cnt = wx * (iy1 - iy0 + 1)
    e = np.repeat(np.arange(ne, dtype=np.int64), cnt)
    k = np.arange(len(e), dtype=np.int64) - np.repeat(np.cumsum(cnt) - cnt, cnt)
    cells = (iy0[e] + k // wx[e]) * nx + (ix0[e] + k % wx[e])
    order = np.argsort(cells, kind="stable")
    e = e[order]
    occ = _aligned_rows(len(e), 8)
    occ[:, :4] = ent_box[e]
    rec = ent_rec[e]
    occ[:, 4:6] = recf[rec, :2]
    occ[:, 6] = np.where(reci[rec, 0] == kernel.CIRCLE, recf[rec, 3], -1.0)
    occ[:, 7] = rec
    if len(e) >= 2**31:
        raise FencesError("the fence grid outgrew 2**31 rows: use a larger cell_m")
    # int32 offsets: half the memory of int64 and measurably fewer cache misses per fix
    cstart = np.zeros(nx * ny + 1, dtype=np.int32)
    np.cumsum(np.bincount(cells, minlength=nx * ny), out=cstart[1:])
    gp = np.array([x0, y0, cw, ch, float(nx), float(ny), x1, y1])
    return gp, cstart, occ


class FenceIndex:
    """Store fences indexed for matching fixes (see the module docstring for the rules)."""

    def __init__(
        self,
        stores: Catalog | Iterable[Store],
        *,
        cell_m: float | None = None,
        compact_at: int | None = None,
    ) -> None:
        """Index ``stores`` (a Catalog is shared, not copied: slots are its positions).

        ``cell_m`` fixes the grid's cell side in metres (default: adaptive); ``compact_at`` is the
        delta size (records) that triggers an automatic compaction (default: 4096 + 5% of base).
        """
        self.catalog: Catalog = stores if isinstance(stores, Catalog) else Catalog(stores)
        self._cell_m = cell_m
        self._compact_at_fixed = compact_at
        self._ef = np.zeros(1)
        self._ei = np.zeros(1, dtype=np.int64)
        self._ofix = np.empty(64, dtype=np.int64)
        self._oslot = np.empty(64, dtype=np.int64)
        self._od = np.empty(64)
        self._removed: set[int] = set()
        self._build()

    # ----------------------------------------------------------------- build and compaction
    def _build(self) -> None:
        catalog = self.catalog
        stores = catalog.stores
        dead = self._removed | catalog._removed  # catalogs keep tombstones of removals
        n = len(stores)
        live = np.arange(n, dtype=np.int64)
        if dead:
            live = live[~np.isin(live, np.fromiter(dead, dtype=np.int64, count=len(dead)))]
        cols = catalog.columns()
        if cols is not None:  # the bulk loader's columns: no Store objects made
            ids = cols.ids
            sh = _Shapes(
                cols.is_circle(), cols.center, cols.radius, cols.polygons, lambda k: ids[k]
            ).take(live)
        else:
            lst = [stores[i] for i in live.tolist()]
            sh = _shapes(lst)
        x, y = _store_points(sh)
        order = np.argsort(_morton(x, y), kind="stable")
        sh = sh.take(order)
        slots = live[order]
        pack = _pack(sh, slots)
        nrec = len(slots)
        big = _large(pack.ent_rec, pack.ent_box, nrec, self._cell_m)
        self._gp, self._cstart, self._occ = _grid(
            pack.ent_rec[~big], pack.ent_box[~big], pack.recf, pack.reci, self._cell_m
        )
        # fences far larger than the typical one get a coarse grid of their own, so a few 50 km
        # circles in a city of 100 m shops do not copy themselves into millions of fine cells
        self._coarse = (
            _grid(pack.ent_rec[big], pack.ent_box[big], pack.recf, pack.reci, None)
            if big.any()
            else None
        )
        self._recf = _Grow(pack.recf)
        self._reci = _Grow(pack.reci)
        self._ringv = _Grow(np.concatenate([[0], np.cumsum(pack.ring_len)]).astype(np.int64))
        self._verts = _Grow(pack.verts)
        self._slot_rec = np.full(len(stores), -1, dtype=np.int64)
        self._slot_rec[slots] = np.arange(len(slots), dtype=np.int64)
        self._n_base = nrec
        self._delta = rtree_index.Index(interleaved=True)
        self._n_delta = 0
        # the delta's entry boxes (x0, y0, x1, y1, record) and a small grid over them, rebuilt
        # lazily: batches always use it; single fixes use the rtree until it has been rebuilt
        self._dent = _Grow(np.zeros((0, 5)))
        self._dgrid: tuple[F64, NDArray[np.int32], F64] | None = None
        self._stale_queries = 0
        self._compact_at = self._compact_at_fixed or (4096 + self._n_base // 20)

    def compact(self) -> None:
        """Fold the live delta into a freshly built base (a full rebuild; seconds at 500k)."""
        self._build()

    # ----------------------------------------------------------------- snapshots
    def base_arrays(self) -> dict[str, NDArray[Any]]:
        """The packed base as named arrays, for ``from_base_arrays`` (fences.snapshot). Only an
        index as built (no live changes since) can be exported: the delta lives in an rtree."""
        if self._n_delta or self._removed or self._cell_m is not None:
            raise FencesError(
                "only a freshly built index with the default cell size can be exported; "
                "export before adding, updating or removing stores"
            )
        out: dict[str, NDArray[Any]] = {
            "gp": self._gp,
            "cstart": self._cstart,
            "occ": self._occ,
            "recf": self._recf.arr[: self._recf.n],
            "reci": self._reci.arr[: self._reci.n],
            "ringv": self._ringv.arr[: self._ringv.n],
            "verts": self._verts.arr[: self._verts.n],
            "slot_rec": self._slot_rec,
        }
        if self._coarse is not None:
            out["coarse_gp"], out["coarse_cstart"], out["coarse_occ"] = self._coarse
        return out

    @classmethod
    def from_base_arrays(
        cls, catalog: Catalog, arrays: dict[str, NDArray[Any]], *, compact_at: int | None = None
    ) -> FenceIndex:
        """The index ``base_arrays`` exported, over the same ``catalog`` (no rebuild: the arrays
        are used as given, e.g. memory-mapped; live updates append to copies)."""
        self = cls.__new__(cls)
        self.catalog = catalog
        self._cell_m = None
        self._compact_at_fixed = compact_at
        self._ef = np.zeros(1)
        self._ei = np.zeros(1, dtype=np.int64)
        self._ofix = np.empty(64, dtype=np.int64)
        self._oslot = np.empty(64, dtype=np.int64)
        self._od = np.empty(64)
        self._removed = set()
        self._gp, self._cstart, self._occ = arrays["gp"], arrays["cstart"], arrays["occ"]
        self._coarse = (
            (arrays["coarse_gp"], arrays["coarse_cstart"], arrays["coarse_occ"])
            if "coarse_gp" in arrays
            else None
        )
        self._recf = _Grow(arrays["recf"])
        self._reci = _Grow(arrays["reci"])
        self._ringv = _Grow(arrays["ringv"])
        self._verts = _Grow(arrays["verts"])
        self._slot_rec = arrays["slot_rec"]
        self._n_base = len(self._recf.arr)
        self._delta = rtree_index.Index(interleaved=True)
        self._n_delta = 0
        self._dent = _Grow(np.zeros((0, 5)))
        self._dgrid = None
        self._stale_queries = 0
        self._compact_at = self._compact_at_fixed or (4096 + self._n_base // 20)
        return self

    # ----------------------------------------------------------------- live updates
    def add(self, store: Store) -> int:
        """Index a new store (or replace the one with the same store_id); returns its slot."""
        try:
            known: int | None = self.catalog.slot(store.store_id)
        except UnknownStoreError:
            known = None
        if known is not None and known not in self._removed:
            return self.update(store)
        pack = _pack(_shapes([store]), np.zeros(1, dtype=np.int64))  # validate first
        slot = self.catalog.add(store)
        self._removed.discard(slot)
        self._append(slot, pack)
        return slot

    def update(self, store: Store) -> int:
        """Replace the fence of an indexed store (same store_id); returns its (unchanged) slot."""
        slot = self._live_slot(store.store_id)
        pack = _pack(_shapes([store]), np.zeros(1, dtype=np.int64))  # validate first
        self.catalog.replace(store)
        self._kill(slot)
        self._append(slot, pack)
        return slot

    def remove(self, store_id: str) -> None:
        """Stop matching a store. Its slot never matches again (until the id is added back)."""
        slot = self._live_slot(store_id)
        self._kill(slot)
        self._removed.add(slot)
        remove = getattr(self.catalog, "remove", None)
        if callable(remove):
            remove(store_id)

    def _live_slot(self, store_id: str) -> int:
        slot = self.catalog.slot(store_id)
        if slot in self._removed:
            raise UnknownStoreError(store_id)
        return slot

    def _kill(self, slot: int) -> None:
        if slot < len(self._slot_rec) and self._slot_rec[slot] >= 0:
            self._reci.arr[self._slot_rec[slot], 0] = kernel.DEAD
            self._slot_rec[slot] = -1

    def _append(self, slot: int, pack: _Pack) -> None:
        ring0 = self._ringv.n - 1
        reci = pack.reci.copy()
        reci[:, 1:3] += ring0
        reci[:, 3] = slot
        rec = self._recf.extend(pack.recf)
        self._reci.extend(reci)
        v0 = self._verts.n
        self._verts.extend(pack.verts)
        # ring offsets: drop the old terminal offset and write the new tail
        self._ringv.n -= 1
        self._ringv.extend(v0 + np.concatenate([[0], np.cumsum(pack.ring_len)]).astype(np.int64))
        if slot >= len(self._slot_rec):
            grown = np.full(max(slot + 1, 2 * len(self._slot_rec)), -1, dtype=np.int64)
            grown[: len(self._slot_rec)] = self._slot_rec
            self._slot_rec = grown
        self._slot_rec[slot] = rec
        for box in pack.ent_box:
            self._delta.insert(rec, (float(box[0]), float(box[1]), float(box[2]), float(box[3])))
        self._dent.extend(np.column_stack([pack.ent_box, np.full(len(pack.ent_box), float(rec))]))
        self._dgrid = None
        self._stale_queries = 0
        self._n_delta += 1
        if self._n_delta >= self._compact_at:
            self.compact()

    # ----------------------------------------------------------------- reads
    def __len__(self) -> int:
        return int(np.count_nonzero(self._slot_rec >= 0))

    def store(self, slot: int) -> Store:
        """The store in ``slot``; UnknownStoreError when the slot is empty or removed."""
        if not 0 <= slot < len(self._slot_rec) or self._slot_rec[slot] < 0:
            raise UnknownStoreError(f"slot {slot}")
        return self.catalog.stores[slot]

    def distance(self, slot: int, lon: float, lat: float) -> float:
        """Signed distance in metres from (lon, lat) to one store's fence (negative inside)."""
        self.store(slot)
        lon, lat = _check_fix(lon, lat)
        rec = int(self._slot_rec[slot])
        return float(
            kernel.record_sd(
                lon, lat, rec, self._recf.arr, self._reci.arr, self._ringv.arr, self._verts.arr
            )
        )

    def query(
        self, lon: float, lat: float, acc_m: float = 0.0, margin_m: float = 0.0
    ) -> list[tuple[int, float]]:
        """Every store whose fence holds the fix or lies within acc_m + margin_m metres of it, as
        (slot, signed distance in metres, negative inside), nearest first."""
        # plain floats: an int would make numba compile another specialisation of the kernel
        lon, lat, acc_m, margin_m = float(lon), float(lat), float(acc_m), float(margin_m)
        r = acc_m + margin_m
        if not (
            acc_m >= 0.0
            and margin_m >= 0.0
            and r < math.inf
            and -90.0 <= lat <= 90.0
            and -180.0 <= lon < 180.0
        ):
            lon, lat = _check_fix(lon, lat)
            _check_r(acc_m, margin_m)
        out = self._single(lon, lat, r, self._gp, self._cstart, self._occ)
        if self._coarse is not None:
            out += self._single(lon, lat, r, *self._coarse)
            out.sort(key=lambda t: t[1])
        if self._n_delta:
            if self._dgrid is None and self._stale_queries < _STALE_SINGLE:
                self._stale_queries += 1
                out += self._delta_rtree(lon, lat, r)
            else:
                out += self._single(lon, lat, r, *self._delta_grid())
            out.sort(key=lambda t: t[1])
        return out

    def _single(
        self, lon: float, lat: float, r: float, gp: F64, cstart: NDArray[np.int32], occ: F64
    ) -> list[tuple[int, float]]:
        # the jitted core is called directly: one dispatch, no allocation
        nxt, n = kernel._core(
            lon, lat, r, self._ef, self._ef, self._ef, self._ei, 0, True, gp, cstart, occ,
            self._recf.arr, self._reci.arr, self._ringv.arr, self._verts.arr,
            self._ofix, self._oslot, self._od,
        )  # fmt: skip
        while nxt == 0:
            self._grow_out(2 * len(self._oslot))
            nxt, n = kernel._core(
                lon, lat, r, self._ef, self._ef, self._ef, self._ei, 0, True, gp, cstart, occ,
                self._recf.arr, self._reci.arr, self._ringv.arr, self._verts.arr,
                self._ofix, self._oslot, self._od,
            )  # fmt: skip
        return list(zip(self._oslot[:n].tolist(), self._od[:n].tolist(), strict=True)) if n else []

    def _delta_grid(self) -> tuple[F64, NDArray[np.int32], F64]:
        if self._dgrid is None:
            ent = self._dent.arr[: self._dent.n]
            self._dgrid = _grid(
                ent[:, 4].astype(np.int64),
                np.ascontiguousarray(ent[:, :4]),
                self._recf.arr,
                self._reci.arr,
                None,
            )
        return self._dgrid

    def _delta_rtree(self, lon: float, lat: float, r: float) -> list[tuple[int, float]]:
        """The live delta through the rtree (while its grid is stale after a change)."""
        recs: set[int] = set()
        for box in query_boxes(lon, lat, r):
            recs.update(self._delta.intersection(box))
        out: list[tuple[int, float]] = []
        reci = self._reci.arr
        for rec in recs:
            if reci[rec, 0] == kernel.DEAD:
                continue
            d = float(
                kernel.record_sd(
                    lon, lat, rec, self._recf.arr, reci, self._ringv.arr, self._verts.arr
                )
            )
            if d <= r:
                out.append((int(reci[rec, 3]), d))
        return out

    def _grow_out(self, cap: int) -> None:
        self._ofix = np.empty(cap, dtype=np.int64)
        self._oslot = np.empty(cap, dtype=np.int64)
        self._od = np.empty(cap)

    def query_many(
        self,
        lons: ArrayLike,
        lats: ArrayLike,
        accs: ArrayLike | float | None = None,
        margin_m: float = 0.0,
        *,
        sort_fixes: bool = True,
    ) -> tuple[I64, I64, F64]:
        """The batch form of ``query``: parallel arrays (fix index, slot, signed distance),
        ordered by fix index, then distance. ``accs`` is per fix or one value for all.

        ``sort_fixes`` processes fixes in grid-cell order (same results, fewer cache misses)."""
        x = np.ascontiguousarray(lons, dtype=np.float64).reshape(-1)
        y = np.ascontiguousarray(lats, dtype=np.float64).reshape(-1)
        if x.shape != y.shape:
            raise QueryError(f"lons and lats differ in length ({len(x)} vs {len(y)})")
        n = len(x)
        if accs is None or np.ndim(accs) == 0:
            rs = np.full(n, (0.0 if accs is None else float(accs)) + float(margin_m))  # type: ignore[arg-type]
        else:
            rs = np.asarray(accs, dtype=np.float64).reshape(-1) + float(margin_m)
            if rs.shape != x.shape:
                raise QueryError(
                    f"accs has {len(rs)} values for {n} fixes: give one per fix or one for all"
                )
        bad = kernel.check_fixes(x, y, rs)
        if bad == 1:
            raise QueryError("fixes need finite lon and lat, with lat within [-90, 90] (lon first)")
        if bad == 2:
            raise QueryError("accuracies and margin must be finite and >= 0 metres")
        if bad == 3:
            x = wrap_lon(x)
        sorted_ = sort_fixes and n >= 4096  # smaller batches rarely share a cell
        order = kernel.cell_order(x, y, self._gp) if sorted_ else np.arange(n, dtype=np.int64)
        chunks = self._batch(x, y, rs, order, self._gp, self._cstart, self._occ)
        if self._coarse is not None:
            chunks += self._batch(x, y, rs, order, *self._coarse)
        if self._n_delta:
            chunks += self._batch(x, y, rs, order, *self._delta_grid())
        fix = np.concatenate([c[0] for c in chunks]) if len(chunks) > 1 else chunks[0][0]
        slot = np.concatenate([c[1] for c in chunks]) if len(chunks) > 1 else chunks[0][1]
        dist = np.concatenate([c[2] for c in chunks]) if len(chunks) > 1 else chunks[0][2]
        if len(chunks) > 1 or sorted_:
            o = np.lexsort((dist, fix)) if len(chunks) > 1 else np.argsort(fix, kind="stable")
            fix, slot, dist = fix[o], slot[o], dist[o]
        return fix, slot, dist

    def _batch(
        self,
        x: F64,
        y: F64,
        rs: F64,
        order: I64,
        gp: F64,
        cstart: NDArray[np.int32],
        occ: F64,
    ) -> list[tuple[I64, I64, F64]]:
        """Run the kernel over one grid, growing the output until every fix fits."""
        n = len(x)
        cap = max(64, n // 2)
        chunks: list[tuple[I64, I64, F64]] = []
        p = 0
        while True:
            of = np.empty(cap, dtype=np.int64)
            os_ = np.empty(cap, dtype=np.int64)
            od = np.empty(cap)
            p, m = kernel.query_batch(
                x, y, rs, order, p, gp, cstart, occ, self._recf.arr, self._reci.arr,
                self._ringv.arr, self._verts.arr, of, os_, od,
            )  # fmt: skip
            chunks.append((of[:m], os_[:m], od[:m]))
            if p >= n:
                return chunks
            cap *= 2


def _check_fix(lon: float, lat: float) -> tuple[float, float]:
    lon, lat = float(lon), float(lat)
    if not (math.isfinite(lon) and math.isfinite(lat) and -90.0 <= lat <= 90.0):
        raise QueryError(
            f"fix ({lon}, {lat}) needs finite lon and lat, with lat within [-90, 90] (order is lon, lat)"
        )
    if not -180.0 <= lon < 180.0:
        lon = float(wrap_lon(lon))
    return lon, lat


def _check_r(acc_m: float, margin_m: float) -> None:
    r = acc_m + margin_m
    if not (math.isfinite(r) and acc_m >= 0 and margin_m >= 0):
        raise QueryError(
            f"accuracy ({acc_m}) and margin ({margin_m}) must be finite and >= 0 metres"
        )

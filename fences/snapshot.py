"""A compiled snapshot of a validated catalog and its FenceIndex, for a fast restart.

``load_index(source, snapshot)`` is what the daemon calls at start-up and on reload: when the
snapshot file exists, was written by this code and for exactly this source file, the catalog and
the index come from it in well under a second at 500,000 stores; otherwise the source is loaded
and validated (``fences.catalog.load_catalog``), indexed, and the snapshot is (re)written.
The snapshot is only a start-up accelerator: the loaded index takes live store changes and
reloads exactly like a freshly built one.

File layout (one file, written to ``<path>.tmp-<pid>`` and renamed into place, so a reader sees
the old snapshot or the new one, never half of one)::

    b"GEOPUSH-FENCES-SNAPSHOT\\n"  magic
    8 bytes                         length of the header, little-endian
    header                          JSON: format, code digest, source (sha256, size), arrays
    arrays                          raw little-endian numpy data, each at a 64-byte boundary

The arrays are mapped with ``mmap`` copy-on-write (MAP_PRIVATE): nothing is read or copied up
front, pages come from the page cache on first touch, and a live update that writes into an
array (``FenceIndex.remove`` marks a record dead) writes a private copy of that page, never the
file. The base index arrays are exactly ``FenceIndex.base_arrays``; the catalog is its columns
(ids, each merchant_id once and a code per slot, names, centres, radii, polygons as WKB, the
rarer fields as msgpack), and each Store object is made on first access (``LazyStores``), so a
restart does not build 500,000 of them.

Validity: the header records ``sha256`` and the size of the source file's content (a digest of
the content rather than its mtime: a deploy that copies the same file again keeps the snapshot,
one that changes a byte does not, whatever the clocks say; sha256 runs at 0.6-1.6 GB/s here,
0.1-0.3 s for a 183 MB catalog in the page cache, the fastest of hashlib's on this CPU with SHA
extensions: blake2b 0.2 s, md5 0.24 s; it is computed in a thread while the snapshot is mapped and
its catalog restored, hashlib releasing the GIL, and checked before ``load`` returns anything,
so a free core hides it), plus a digest of the code that defines the layout (this
module, fences.index, fences.kernel, fences.catalog, fences.fastload, fences.store) and
``FORMAT``. Any mismatch, a truncated file or an unreadable one means "no snapshot": the source
is loaded cold and the snapshot rewritten.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import mmap
import os
import struct
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec
import numpy as np
import shapely
from numpy.typing import NDArray

from fences.catalog import Catalog, _gc_paused, load_catalog
from fences.columns import PLAIN, LazyStores
from fences.errors import FencesError
from fences.index import FenceIndex
from fences.store import Store

log = logging.getLogger(__name__)

FORMAT = 2
MAGIC = b"GEOPUSH-FENCES-SNAPSHOT\n"
_ALIGN = 64


@functools.cache
def _code_digest() -> str:
    """A digest of the modules that define what a snapshot holds: any change invalidates it."""
    import fences.catalog
    import fences.columns
    import fences.fastload
    import fences.index
    import fences.kernel
    import fences.store

    h = hashlib.sha256(f"{FORMAT}:{sys.byteorder}:{np.__version__}".encode())
    for mod in (
        fences.catalog,
        fences.columns,
        fences.fastload,
        fences.index,
        fences.kernel,
        fences.store,
    ):
        h.update(Path(str(mod.__file__)).read_bytes())
    h.update(Path(__file__).read_bytes())
    return h.hexdigest()


def source_digest(path: str | os.PathLike[str]) -> dict[str, Any]:
    """sha256 and size of a file's content."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        size = os.fstat(fh.fileno()).st_size
        if size:  # hashed where the page cache holds it: no copy (mmap of an empty file fails)
            with mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as mm:
                h.update(mm)
                size = len(mm)
    return {"sha256": h.hexdigest(), "size": size}


@dataclass
class LoadInfo:
    """How ``load_index`` got its index, and how long each step took (wall seconds)."""

    source: str  # "snapshot" or "cold"
    seconds: dict[str, float] = field(default_factory=dict)
    reason: str = ""  # why the snapshot was not used, when it was not
    snapshot: str | None = None


# --------------------------------------------------------------------------------------------
# The catalog's columns and a lazily materialised store list


class _Meta(msgspec.Struct, array_like=True):
    ids: list[str]
    merchants: list[str]  # each merchant_id once; slot k's is merchants[cat_merchant[k]]
    names: list[str] | None  # None: every name is ""
    tagged: list[int]


# a slot's rarer fields: wifi, beacons, nfc, tz, max_accuracy_m, tags, properties
_Rare = tuple[list[str], list[str], list[str], str, float, list[str], dict[str, Any]]
_PLAIN = PLAIN


def _catalog_columns(catalog: Catalog) -> tuple[_Meta, dict[str, NDArray[Any]]]:
    stores = catalog.stores
    n = len(stores)
    if len(catalog) != n:
        raise FencesError("a catalog with removed stores cannot be snapshotted")
    encode = msgspec.msgpack.encode
    given = catalog.columns()
    if given is not None:  # the bulk loader's columns: no Store objects made
        center, radius = given.center, given.radius
        poly_at: list[int] = np.flatnonzero(~given.is_circle()).tolist()
        rare_at = sorted(k for k, row in given.rare.items() if row[:6] != _PLAIN or row[6])
        rare = [encode(given.rare[k]) for k in rare_at]
        names, ids, merchants = given.names, given.ids, given.merchants
        polygons = given.polygons[poly_at]
    else:
        center = np.full((n, 2), np.nan)
        radius = np.full(n, np.nan)
        poly_at = []
        rare_at = []
        rare = []
        for k, s in enumerate(stores):
            if s.center is not None:
                center[k] = s.center
                radius[k] = s.radius_m
            else:
                poly_at.append(k)
            fields = (s.wifi, s.beacons, s.nfc, s.tz, s.max_accuracy_m, s.tags)
            if fields != _PLAIN or s.properties:
                rare_at.append(k)
                rare.append(encode((*fields, s.properties)))
        names = [s.name for s in stores]
        ids = [s.store_id for s in stores]
        merchants = [s.merchant_id for s in stores]
        polygons = np.array([stores[k].polygon for k in poly_at], dtype=object)
    first_seen = list(dict.fromkeys(merchants))
    code = dict(zip(first_seen, range(len(first_seen)), strict=True))
    meta = _Meta(
        ids=ids,
        merchants=first_seen,
        names=names if any(names) else None,
        tagged=sorted(catalog.tagged),
    )
    wkb = list(shapely.to_wkb(polygons))
    cols = {"cat_center": center, "cat_radius": radius}
    cols["cat_merchant"] = np.fromiter(map(code.__getitem__, merchants), dtype=np.int32, count=n)
    # slot k's WKB is cat_wkb[off[k]:off[k + 1]] (empty for a circle); its rare fields likewise
    cols["cat_poly_off"], cols["cat_wkb"] = _blobs(n, poly_at, wkb)
    cols["cat_rare_off"], cols["cat_rare"] = _blobs(n, rare_at, rare)
    tables = (catalog._by_bssid, catalog._by_beacon, catalog._by_nfc)
    for name, table in zip(_LOOKUPS, tables, strict=True):
        cols[name] = np.frombuffer(encode(table), dtype=np.uint8)  # the look-ups, as they are
    return meta, cols


def _blobs(n: int, at: list[int], items: list[bytes]) -> tuple[NDArray[Any], NDArray[Any]]:
    lens = np.zeros(n, dtype=np.int64)
    lens[at] = np.fromiter((len(b) for b in items), dtype=np.int64, count=len(items))
    off = np.concatenate([[0], np.cumsum(lens)]).astype(np.int64)
    blob = np.frombuffer(b"".join(items), dtype=np.uint8) if items else np.zeros(0, np.uint8)
    return off, blob


def _restore_catalog(meta: _Meta, cols: dict[str, NDArray[Any]]) -> Catalog:
    # each merchant_id decoded once (a few thousand), slot by slot from its code
    ids, names = meta.ids, meta.names
    merchant_of = cols["cat_merchant"]
    if len(ids) != len(merchant_of):
        raise ValueError("store ids and merchants of different lengths")
    merchants: list[str] = np.asarray(meta.merchants, dtype=object)[merchant_of].tolist()
    center, radius = cols["cat_center"], cols["cat_radius"]
    poly_off, wkb = cols["cat_poly_off"], cols["cat_wkb"]
    rare_off, rare = cols["cat_rare_off"], cols["cat_rare"]
    decode_rare = msgspec.msgpack.Decoder(_Rare).decode

    def make(k: int) -> Store:
        name = names[k] if names is not None else ""
        a, b = int(rare_off[k]), int(rare_off[k + 1])
        wifi, beacons, nfc, tz, acc, tags, props = (
            decode_rare(rare[a:b].tobytes()) if a < b else (*_PLAIN, {})
        )
        a, b = int(poly_off[k]), int(poly_off[k + 1])
        if a == b:
            c = center[k]
            shape: tuple[Any, Any, Any] = ((float(c[0]), float(c[1])), float(radius[k]), None)
        else:
            shape = (None, None, shapely.from_wkb(wkb[a:b].tobytes()))
        return Store(
            ids[k], merchants[k], name, *shape, tuple(wifi), tuple(beacons), tuple(nfc),
            tz, acc, tuple(tags), props,
        )  # fmt: skip

    stores = LazyStores(len(ids), make, ids, merchants)
    # the BSSID, beacon and NFC look-ups decoded when first used: not before the first event of
    # their kind (~0.02 s each at 100,000 keys)
    by_bssid, by_beacon, by_nfc = (_decoder(cols[name]) for name in _LOOKUPS)
    return Catalog._restored(stores, ids, set(meta.tagged), by_bssid, by_beacon, by_nfc)


_LOOKUPS = ("cat_by_bssid", "cat_by_beacon", "cat_by_nfc")
_LOOKUP = msgspec.msgpack.Decoder(dict[str, int])


def _decoder(blob: NDArray[Any]) -> Callable[[], dict[str, int]]:
    return lambda: _LOOKUP.decode(blob.data)


# --------------------------------------------------------------------------------------------
# The file


def _align(n: int) -> int:
    return (n + _ALIGN - 1) // _ALIGN * _ALIGN


def save(index: FenceIndex, path: str | os.PathLike[str], source: dict[str, Any]) -> int:
    """Write the snapshot of a freshly built ``index`` for the source file described by
    ``source`` (``source_digest``); returns the bytes written. Atomic (temporary file + rename)."""
    meta, cols = _catalog_columns(index.catalog)
    arrays: dict[str, NDArray[Any]] = {**index.base_arrays(), **cols}
    arrays["meta"] = np.frombuffer(msgspec.msgpack.encode(meta), dtype=np.uint8)
    entries: dict[str, Any] = {}
    off = 0
    for name, a in arrays.items():
        a = np.ascontiguousarray(a)
        if a.dtype.byteorder == ">":
            raise FencesError(f"snapshot array {name} is big-endian")
        off = _align(off)
        entries[name] = [a.dtype.str, list(a.shape), off]
        off += a.nbytes
    header = json.dumps(
        {"format": FORMAT, "code": _code_digest(), "source": source, "arrays": entries,
         "data_bytes": off},
    ).encode()  # fmt: skip
    start = _align(len(MAGIC) + 8 + len(header))
    dest = Path(path)
    tmp = dest.with_name(f"{dest.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as fh:
            fh.write(MAGIC + struct.pack("<Q", len(header)) + header)
            for name, a in arrays.items():
                fh.seek(start + entries[name][2])
                fh.write(np.ascontiguousarray(a).data)
            fh.truncate(start + off)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, dest)
    finally:
        if tmp.exists():
            tmp.unlink()
    return start + off


class SnapshotMismatch(FencesError):
    """The snapshot is missing, unreadable, from other code or for another source file."""


def _read_header(path: Path) -> tuple[dict[str, Any], int]:
    try:
        with open(path, "rb") as fh:
            head = fh.read(len(MAGIC) + 8)
            if len(head) < len(MAGIC) + 8 or not head.startswith(MAGIC):
                raise SnapshotMismatch("not a geopush fences snapshot")
            (n,) = struct.unpack("<Q", head[len(MAGIC) :])
            header = json.loads(fh.read(n))
    except FileNotFoundError:
        raise SnapshotMismatch("no snapshot yet") from None
    except (OSError, ValueError) as exc:
        raise SnapshotMismatch(f"unreadable snapshot ({exc})") from exc
    return header, _align(len(MAGIC) + 8 + n)


def load(
    path: str | os.PathLike[str], source: dict[str, Any] | Callable[[], dict[str, Any]]
) -> FenceIndex:
    """The FenceIndex (and its Catalog) stored at ``path``; raises SnapshotMismatch unless it was
    written by this code for the source ``source`` describes (a ``source_digest`` result, or a
    function computing it, called only once the snapshot's header has been found readable)."""
    p = Path(path)
    header, start = _read_header(p)
    try:
        if header.get("format") != FORMAT or header.get("code") != _code_digest():
            raise SnapshotMismatch("written by another version of geopush")
        if p.stat().st_size != start + int(header["data_bytes"]):
            raise SnapshotMismatch("truncated snapshot")
        want = header["source"]
        # the catalog's digest is computed in a thread while the snapshot is mapped and its
        # catalog restored (hashlib releases the GIL), and checked before anything is returned
        with ThreadPoolExecutor(1, thread_name_prefix="snapshot-digest") as pool:
            digest = pool.submit(source) if callable(source) else None
            got: dict[str, Any] = {} if callable(source) else source
            try:
                index = _map(p, header, start)
            finally:
                if digest is not None:
                    got = digest.result()
        if got.get("sha256") != want.get("sha256") or got.get("size") != want.get("size"):
            raise SnapshotMismatch("the catalog file changed since the snapshot was written")
    except (OSError, ValueError, KeyError, TypeError, msgspec.DecodeError) as exc:
        raise SnapshotMismatch(f"unreadable snapshot ({exc})") from exc
    return index


def _map(p: Path, header: dict[str, Any], start: int) -> FenceIndex:
    """The index and catalog stored in the snapshot file ``p`` (header already checked)."""
    with open(p, "rb") as fh:
        mm = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_COPY)
    arrays: dict[str, NDArray[Any]] = {}
    for name, (dtype, shape, off) in header["arrays"].items():
        count = int(np.prod(shape)) if shape else 1
        a = np.frombuffer(mm, dtype=np.dtype(dtype), count=count, offset=start + off)
        arrays[name] = a.reshape(shape)
    with _gc_paused():  # a million strings and a few big dicts: no cycles to look for
        meta = msgspec.msgpack.decode(arrays.pop("meta").tobytes(), type=_Meta)
        cols = {k: arrays.pop(k) for k in list(arrays) if k.startswith("cat_")}
        catalog = _restore_catalog(meta, cols)
    return FenceIndex.from_base_arrays(catalog, arrays)


def load_index(
    source: str | os.PathLike[str], snapshot: str | os.PathLike[str] | None
) -> tuple[FenceIndex, LoadInfo]:
    """The catalog ``source`` indexed: from the ``snapshot`` file when it matches, else loaded
    cold (and the snapshot rewritten; a snapshot that cannot be written is logged, not fatal).
    ``snapshot=None``: always cold, nothing written. Raises CatalogError for an invalid catalog."""
    t0 = time.perf_counter()
    if snapshot is None:
        index = FenceIndex(load_catalog(source))
        return index, LoadInfo(
            "cold", {"total": time.perf_counter() - t0}, "no snapshot configured"
        )
    digest: dict[str, Any] = {}

    def compute() -> dict[str, Any]:
        digest.update(source_digest(source))
        return digest

    try:
        index = load(snapshot, compute)
        info = LoadInfo("snapshot", {"total": time.perf_counter() - t0}, snapshot=str(snapshot))
        return index, info
    except SnapshotMismatch as exc:
        reason = str(exc)
    t1 = time.perf_counter()
    catalog = load_catalog(source)
    t2 = time.perf_counter()
    index = FenceIndex(catalog)
    t3 = time.perf_counter()
    info = LoadInfo(
        "cold",
        {"catalog": t2 - t1, "index": t3 - t2},
        reason=reason,
        snapshot=str(snapshot),
    )
    try:
        if not digest:
            compute()
        save(index, snapshot, digest)
    except (OSError, FencesError) as exc:
        log.warning(
            "could not write the fences snapshot %s (%s): the next start loads the catalog cold "
            "again; give a writable file (--fences-snapshot) or 'off'",
            snapshot,
            exc,
        )
    info.seconds["save"] = time.perf_counter() - t3
    info.seconds["total"] = time.perf_counter() - t0
    return index, info


__all__ = ["FORMAT", "LazyStores", "LoadInfo", "SnapshotMismatch", "load", "load_index", "save"]

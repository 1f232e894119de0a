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
(ids, merchants, names, centres, radii, polygons as WKB, the rarer fields as msgpack), and each
Store object is made on first access (``LazyStores``), so a restart does not build 500,000 of them.

Validity: the header records ``sha256`` and the size of the source file's content (a digest of
the content rather than its mtime: a deploy that copies the same file again keeps the snapshot,
one that changes a byte does not, whatever the clocks say; sha256 runs at ~0.6 GB/s here, 0.3 s
for a 184 MB catalog, in a thread that overlaps the mapping), plus a digest of the code that
defines the layout (this module, fences.index, fences.kernel, fences.catalog, fences.fastload,
fences.store) and ``FORMAT``. Any mismatch, a truncated file or an unreadable one means "no
snapshot": the source is loaded cold and the snapshot rewritten.
"""

from __future__ import annotations

import hashlib
import json
import logging
import mmap
import os
import struct
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, SupportsIndex, overload

import msgspec
import numpy as np
import shapely
from numpy.typing import NDArray

from fences.catalog import Catalog, load_catalog
from fences.errors import FencesError
from fences.index import FenceIndex
from fences.store import Store

log = logging.getLogger(__name__)

FORMAT = 1
MAGIC = b"GEOPUSH-FENCES-SNAPSHOT\n"
_ALIGN = 64


def _code_digest() -> str:
    """A digest of the modules that define what a snapshot holds: any change invalidates it."""
    import fences.catalog
    import fences.fastload
    import fences.index
    import fences.kernel
    import fences.store

    h = hashlib.sha256(f"{FORMAT}:{sys.byteorder}:{np.__version__}".encode())
    for mod in (fences.catalog, fences.fastload, fences.index, fences.kernel, fences.store):
        h.update(Path(str(mod.__file__)).read_bytes())
    h.update(Path(__file__).read_bytes())
    return h.hexdigest()


def source_digest(path: str | os.PathLike[str]) -> dict[str, Any]:
    """sha256 and size of a file's content."""
    h = hashlib.sha256()
    size = 0
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 22):
            h.update(chunk)
            size += len(chunk)
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


class LazyStores(list[Store]):
    """A catalog's store list whose Store objects are made on first access (from a snapshot's
    columns). It is a list (the engine indexes ``catalog.stores[slot]``); slots not yet made hold
    None underneath, which ``__getitem__`` and iteration never show. ``materialize()`` makes all."""

    def __init__(
        self, n: int, make: Callable[[int], Store], owner: Callable[[int], tuple[str, str]]
    ) -> None:
        super().__init__([None] * n)  # type: ignore[list-item]
        self._make = make
        self._owner = owner

    def owner(self, k: int) -> tuple[str, str]:
        """(store_id, merchant_id) of slot k, without making its Store."""
        s = list.__getitem__(self, k)
        return self._owner(k) if s is None else (s.store_id, s.merchant_id)

    @overload
    def __getitem__(self, i: SupportsIndex) -> Store: ...
    @overload
    def __getitem__(self, i: slice) -> list[Store]: ...
    def __getitem__(self, i: SupportsIndex | slice) -> Store | list[Store]:
        if isinstance(i, slice):
            return [self[k] for k in range(*i.indices(len(self)))]
        s = list.__getitem__(self, i)
        if s is None:
            k = i.__index__()
            s = self._make(k if k >= 0 else k + len(self))
            list.__setitem__(self, i, s)
        return s

    def __iter__(self) -> Iterator[Store]:
        for k in range(len(self)):
            yield self[k]

    def materialize(self) -> None:
        for k in range(len(self)):
            self[k]

    def __eq__(self, other: object) -> bool:
        return list(self) == (list(other) if isinstance(other, list) else other)

    __hash__ = None


class _Meta(msgspec.Struct, array_like=True):
    ids: list[str]
    merchants: list[str]
    names: list[str] | None  # None: every name is ""
    # slot -> (wifi, beacons, nfc, tz, max_accuracy_m, tags, properties) when any differs
    rare: dict[int, tuple[list[str], list[str], list[str], str, float, list[str], dict[str, Any]]]


def _catalog_columns(catalog: Catalog) -> tuple[_Meta, dict[str, NDArray[Any]]]:
    stores = catalog.stores
    n = len(stores)
    if len(catalog) != n:
        raise FencesError("a catalog with removed stores cannot be snapshotted")
    center = np.full((n, 2), np.nan)
    radius = np.full(n, np.nan)
    poly_at: list[int] = []
    rare: dict[int, Any] = {}
    plain = ((), (), (), "UTC", 100.0, ())
    for k, s in enumerate(stores):
        if s.center is not None:
            center[k] = s.center
            radius[k] = s.radius_m
        else:
            poly_at.append(k)
        fields = (s.wifi, s.beacons, s.nfc, s.tz, s.max_accuracy_m, s.tags)
        if fields != plain or s.properties:
            rare[k] = (*fields, s.properties)
    names = [s.name for s in stores]
    meta = _Meta(
        ids=[s.store_id for s in stores],
        merchants=[s.merchant_id for s in stores],
        names=names if any(names) else None,
        rare=rare,
    )
    wkb = shapely.to_wkb(np.array([stores[k].polygon for k in poly_at], dtype=object))
    lens = np.zeros(n, dtype=np.int64)  # slot k's WKB is blob[off[k]:off[k + 1]], empty for circles
    lens[poly_at] = np.fromiter((len(b) for b in wkb), dtype=np.int64, count=len(wkb))
    poly_off = np.concatenate([[0], np.cumsum(lens)]).astype(np.int64)
    blob = np.frombuffer(b"".join(wkb), dtype=np.uint8) if len(wkb) else np.zeros(0, np.uint8)
    cols = {"cat_center": center, "cat_radius": radius, "cat_poly_off": poly_off, "cat_wkb": blob}
    return meta, cols


def _restore_catalog(meta: _Meta, cols: dict[str, NDArray[Any]]) -> Catalog:
    ids, merchants, names, rare = meta.ids, meta.merchants, meta.names, meta.rare
    center, radius = cols["cat_center"], cols["cat_radius"]
    poly_off, wkb = cols["cat_poly_off"], cols["cat_wkb"]
    n = len(ids)

    def make(k: int) -> Store:
        name = names[k] if names is not None else ""
        r = rare.get(k)
        wifi, beacons, nfc, tz, acc, tags, props = (
            ((), (), (), "UTC", 100.0, (), {}) if r is None else r
        )
        a, b = int(poly_off[k]), int(poly_off[k + 1])
        if a == b:
            c = center[k]
            shape: tuple[Any, Any, Any] = ((float(c[0]), float(c[1])), float(radius[k]), None)
        else:
            shape = (None, None, shapely.from_wkb(wkb[a:b].tobytes()))
        return Store(
            ids[k], merchants[k], name, *shape, tuple(wifi), tuple(beacons), tuple(nfc),
            tz, acc, tuple(tags), dict(props),
        )  # fmt: skip

    stores = LazyStores(n, make, lambda k: (ids[k], merchants[k]))
    idents = {
        k: (tuple(r[0]), tuple(r[1]), tuple(r[2])) for k, r in rare.items() if r[0] or r[1] or r[2]
    }
    tagged = {k for k, r in rare.items() if r[5]}
    return Catalog._restored(stores, ids, tagged, idents)


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
    function computing it: it then runs in a thread while the file is mapped)."""
    p = Path(path)
    header, start = _read_header(p)
    if header.get("format") != FORMAT or header.get("code") != _code_digest():
        raise SnapshotMismatch("written by another version of geopush")
    got: dict[str, Any] = {}
    worker: threading.Thread | None = None
    if callable(source):
        fn = source

        def digest() -> None:
            got.update(fn())

        worker = threading.Thread(target=digest, name="snapshot-digest", daemon=True)
        worker.start()
    else:
        got = source
    try:
        size = p.stat().st_size
        if size != start + int(header["data_bytes"]):
            raise SnapshotMismatch("truncated snapshot")
        with open(p, "rb") as fh:
            mm = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_COPY)
        arrays: dict[str, NDArray[Any]] = {}
        for name, (dtype, shape, off) in header["arrays"].items():
            count = int(np.prod(shape)) if shape else 1
            a = np.frombuffer(mm, dtype=np.dtype(dtype), count=count, offset=start + off)
            arrays[name] = a.reshape(shape)
        meta = msgspec.msgpack.decode(arrays.pop("meta").tobytes(), type=_Meta)
    except (OSError, ValueError, KeyError, TypeError, msgspec.DecodeError) as exc:
        raise SnapshotMismatch(f"unreadable snapshot ({exc})") from exc
    finally:
        if worker is not None:
            worker.join()
    if got.get("sha256") != header["source"].get("sha256") or got.get("size") != header[
        "source"
    ].get("size"):
        raise SnapshotMismatch("the catalog file changed since the snapshot was written")
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
        log.warning("could not write the fences snapshot %s: %s", snapshot, exc)
    info.seconds["save"] = time.perf_counter() - t3
    info.seconds["total"] = time.perf_counter() - t0
    return index, info


__all__ = ["FORMAT", "LazyStores", "LoadInfo", "SnapshotMismatch", "load", "load_index", "save"]

"""A catalog's stores as columns, and a store list whose Store objects are made on first access.

A 500,000-store catalog holds 500,000 ``Store`` objects only once something asks for each of
them: the bulk loader (fences.fastload) and the snapshot (fences.snapshot) keep the stores as
columns (ids, merchants, names, centres, radii, polygons, and the rarer fields of the few stores
that have them) and hand the catalog a ``LazyStores`` list. ``FenceIndex`` builds from the
columns directly (``Catalog.columns``), and the campaign check reads (store_id, merchant_id)
pairs without making stores (``Catalog.owners``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, SupportsIndex, overload

import numpy as np
import shapely
from numpy.typing import NDArray

from fences.store import Store

Row = tuple[
    tuple[str, ...], tuple[str, ...], tuple[str, ...], str, float, tuple[str, ...], dict[str, Any]
]
"""A store's fields after its shape: wifi, beacons, nfc, tz, max_accuracy_m, tags, properties."""
PLAIN = ((), (), (), "UTC", 100.0, ())
"""wifi, beacons, nfc, tz, max_accuracy_m, tags of a store that has none of them."""


@dataclass
class StoreColumns:
    """Every store of a catalog, slot k in row k. ``center`` (n, 2) and ``radius`` (n,) are NaN
    for a polygon store; ``polygons`` (n,) holds shapely geometries, None for a circle;
    ``rare`` holds the ``Row`` of the slots that have more than PLAIN and no properties."""

    ids: list[str]
    merchants: list[str]
    names: list[str]
    center: NDArray[np.float64]
    radius: NDArray[np.float64]
    polygons: NDArray[Any]
    rare: dict[int, Row]

    def __len__(self) -> int:
        return len(self.ids)

    def is_circle(self) -> NDArray[np.bool_]:
        return np.asarray(shapely.is_missing(self.polygons), dtype=bool)

    def store(self, k: int) -> Store:
        """The Store of slot k (a new object each call)."""
        row = self.rare.get(k)
        wifi, beacons, nfc, tz, acc, tags, props = row if row is not None else (*PLAIN, {})
        polygon = self.polygons[k]
        if polygon is None:
            c = self.center[k]
            shape: tuple[Any, Any, Any] = ((float(c[0]), float(c[1])), float(self.radius[k]), None)
        else:
            shape = (None, None, polygon)
        return Store(
            self.ids[k], self.merchants[k], self.names[k], *shape, wifi, beacons, nfc, tz, acc,
            tags, props,
        )  # fmt: skip


class LazyStores(list[Store]):
    """A catalog's store list whose Store objects are made on first access (from columns). It is
    a list (the engine indexes ``catalog.stores[slot]``); slots not yet made hold None
    underneath, which ``__getitem__`` and iteration never show. ``materialize()`` makes all.
    ``columns``: the StoreColumns the stores come from, when the maker has them (the bulk
    loader does; the snapshot keeps its own encoded columns)."""

    def __init__(
        self,
        n: int,
        make: Callable[[int], Store],
        ids: list[str],
        merchants: list[str],
        columns: StoreColumns | None = None,
    ) -> None:
        super().__init__([None] * n)  # type: ignore[list-item]
        self._make = make
        self._ids = ids
        self._merchants = merchants
        self.columns = columns

    def owner(self, k: int) -> tuple[str, str]:
        """(store_id, merchant_id) of slot k, without making its Store."""
        s = list.__getitem__(self, k)
        return (self._ids[k], self._merchants[k]) if s is None else (s.store_id, s.merchant_id)

    def owners(self) -> Iterator[tuple[str, str]] | None:
        """(store_id, merchant_id) of every slot at C speed while no slot has been made or
        replaced (as at start-up); None once some has (ask ``owner`` slot by slot)."""
        if len(self) == len(self._ids) and self.count(None) == len(self):  # type: ignore[arg-type]
            return zip(self._ids, self._merchants, strict=True)
        return None

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


__all__ = ["PLAIN", "LazyStores", "Row", "StoreColumns"]

"""geopush fences: the store catalog, the fence index and the matching path.

Public API (imported lazily, so ``geopush --help`` does not pay for numba and shapely)::

    from fences import Store, Catalog, FenceIndex, load_catalog, FencesError

* ``Store``       one store's fence (circle or polygon) and identifiers (fences.store)
* ``Catalog``     stores in slot order, with constant-time BSSID / beacon / NFC look-ups
* ``load_catalog`` read and validate a GeoJSON catalog (fences.catalog)
* ``FenceIndex``  which fences hold a fix and how far it is from each (fences.index)
* errors: ``FencesError`` (root), ``CatalogError``, ``Problem``, ``UnknownStoreError``,
  ``ImportOsmError``, ``QueryError``
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from fences.errors import CatalogError, FencesError, ImportOsmError, Problem, UnknownStoreError

if TYPE_CHECKING:
    from fences.catalog import Catalog, load_catalog
    from fences.index import FenceIndex, QueryError
    from fences.store import Store

_LAZY = {
    "Store": "fences.store",
    "Catalog": "fences.catalog",
    "load_catalog": "fences.catalog",
    "FenceIndex": "fences.index",
    "QueryError": "fences.index",
}

__all__ = [
    "Catalog",
    "CatalogError",
    "FenceIndex",
    "FencesError",
    "ImportOsmError",
    "Problem",
    "QueryError",
    "Store",
    "UnknownStoreError",
    "load_catalog",
]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'fences' has no attribute {name!r}")
    try:
        return getattr(importlib.import_module(module), name)
    except AttributeError:
        raise AttributeError(f"fences.{name} is not available yet in {module}") from None

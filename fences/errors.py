"""Errors raised by fences/.

    FencesError
    ├── CatalogError       a catalog is invalid; ``problems`` lists every Problem found at once
    ├── UnknownStoreError  a store_id that the catalog/index does not hold
    └── ImportOsmError     an OpenStreetMap file could not be read or converted

Foreign errors (shapely's GEOSException, OSError, json errors, osmium) are translated where they
enter, ``raise CatalogError(...) from exc``.
"""

from __future__ import annotations

from dataclasses import dataclass


class FencesError(Exception):
    """Root of every error fences/ raises on purpose."""


@dataclass(frozen=True, slots=True)
class Problem:
    """One thing wrong with one feature of a catalog. A ``warning`` is likely wrong but loads
    (e.g. coordinates that look swapped): ``geopush fences check`` prints and counts it and fails
    on it only with ``--strict``; loading never raises for it."""

    index: int | None  # the feature's position in the FeatureCollection, None for file-level
    store_id: str | None
    reason: str  # a sentence a person can act on
    warning: bool = False

    def __str__(self) -> str:
        where = "catalog" if self.index is None else f"feature {self.index}"
        if self.store_id is not None:
            where += f" (store_id {self.store_id!r})"
        return f"{where}: {'warning: ' if self.warning else ''}{self.reason}"


class CatalogError(FencesError):
    def __init__(self, problems: list[Problem]) -> None:
        head = f"{len(problems)} problem(s) in catalog"
        super().__init__(head + ":\n  " + "\n  ".join(str(p) for p in problems[:50]))
        self.problems = problems


class UnknownStoreError(FencesError, KeyError):
    pass


class ImportOsmError(FencesError):
    pass

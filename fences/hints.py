"""Warnings that a store's coordinates look swapped: [lat, lon] written where GeoJSON wants
[lon, lat]. Inside [-90, 90] both orders are valid positions, so the validator cannot reject them;
these hints use what else the catalog says about where a store is:

* its ``tz``: a store far from its time zone (``tz_hint``): more than ``TZ_FAR_KM`` from the
  zone's principal city in the tz database's zone.tab (or, for a zone not listed there, its UTC
  offset more than ``TZ_FAR_H`` hours from longitude / 15);
* its merchant's other stores (``merchant_hints``): a store more than ``MERCHANT_FAR_KM`` from the
  median location of its merchant's stores (3 stores or more).

Either fires only when swapping the two numbers would explain it (the swapped position lies near
the zone's city / within a tenth of the distance of the merchant's median; the offset agrees
within ``TZ_NEAR_H``), so a chain with a store abroad is left alone. Hints are ``Problem``s with
``warning=True``: ``geopush fences check`` prints and counts them; loading ignores them.
"""

from __future__ import annotations

import functools
import math
import os
import statistics
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

from fences.errors import Problem
from fences.store import Store

R_KM = 6_371.0088
TZ_FAR_KM = 2_500.0
TZ_FAR_H = 4.0
TZ_NEAR_H = 2.0
MERCHANT_FAR_KM = 1_000.0
MERCHANT_MIN_STORES = 3


def km(lon1: float, lat1: float, lon2: float, lat2: float) -> float:
    """Great-circle distance in kilometres (haversine)."""
    p1, p2 = math.radians(lat1), math.radians(lat2)
    a = (
        math.sin((p2 - p1) / 2) ** 2
        + math.cos(p1) * math.cos(p2) * math.sin(math.radians(lon2 - lon1) / 2) ** 2
    )
    return 2 * R_KM * math.asin(min(1.0, math.sqrt(a)))


def location(store: Store) -> tuple[float, float]:
    """(lon, lat) of a store: a circle's centre, a polygon's representative point."""
    if store.center is not None:
        return store.center
    assert store.polygon is not None, "a store is a circle or a polygon"
    pt = store.polygon.representative_point()
    return float(pt.x), float(pt.y)


def _swap_advice(store: Store, lon: float, lat: float) -> str:
    if store.center is not None:
        how = f"write [{lat:g}, {lon:g}]"
    else:
        how = "swap the two numbers of every position"
    return (
        f"the coordinates look swapped: GeoJSON positions are [longitude, latitude], so {how} "
        "(or fix the location if it is right and the hint is not)"
    )


def _parse_dms(text: str, deg_digits: int) -> float:
    sign = -1.0 if text[0] == "-" else 1.0
    digits = text[1:]
    deg = int(digits[:deg_digits])
    minutes = int(digits[deg_digits : deg_digits + 2])
    seconds = int(digits[deg_digits + 2 :] or 0)
    return sign * (deg + minutes / 60 + seconds / 3600)


def _zone_tab_dirs() -> list[Path]:
    import zoneinfo

    dirs = [Path(p) for p in zoneinfo.TZPATH]
    try:
        import tzdata  # the PyPI time zone data, when the system has none

        dirs.append(Path(os.path.dirname(tzdata.__file__)) / "zoneinfo")
    except ImportError:
        pass
    return dirs


@functools.lru_cache(maxsize=1)
def zone_cities() -> dict[str, tuple[float, float]]:
    """Zone name -> (lon, lat) of its principal city, from zone1970.tab and zone.tab (empty when
    the tz database ships neither)."""
    out: dict[str, tuple[float, float]] = {}
    for d in _zone_tab_dirs():
        for name in ("zone1970.tab", "zone.tab"):
            try:
                text = (d / name).read_text(encoding="utf-8")
            except OSError:
                continue
            for line in text.splitlines():
                if not line or line.startswith("#"):
                    continue
                cols = line.split("\t")
                if len(cols) < 3:
                    continue
                coord, zone = cols[1], cols[2]
                split = max(coord.rfind("+"), coord.rfind("-"))
                lat_s, lon_s = coord[:split], coord[split:]
                try:
                    lat = _parse_dms(lat_s, 2)
                    lon = _parse_dms(lon_s, 3)
                except (ValueError, IndexError):
                    continue
                out.setdefault(zone, (lon, lat))
    return out


@functools.lru_cache(maxsize=1024)
def utc_offsets_h(tz: str) -> tuple[float, ...]:
    """The zone's UTC offsets in hours in January and July (standard and summer time)."""
    from zoneinfo import ZoneInfo

    zone = ZoneInfo(tz)
    out = []
    for month in (1, 7):
        off = datetime(2026, month, 15, 12, tzinfo=UTC).astimezone(zone).utcoffset()
        out.append(0.0 if off is None else off.total_seconds() / 3600)
    return tuple(out)


def _hours_apart(a: float, b: float) -> float:
    d = abs(a - b) % 24
    return min(d, 24 - d)


def _offset_gap(tz: str, lon: float) -> float:
    return min(_hours_apart(o, lon / 15) for o in utc_offsets_h(tz))


def tz_hint(store: Store) -> str | None:
    """Why this store's coordinates look swapped given its ``tz``, or None."""
    tz = store.tz
    if "/" not in tz or tz.startswith("Etc/"):
        return None  # UTC and fixed offsets say nothing about a place
    lon, lat = location(store)
    if abs(lon) > 90:
        return None  # swapped, it would not be a position
    city = zone_cities().get(tz)
    if city is not None:
        far, near = km(lon, lat, *city), km(lat, lon, *city)
        if far > TZ_FAR_KM and near < min(TZ_FAR_KM, far / 3):
            return (
                f"it lies {far:,.0f} km from its time zone {tz} (whose reference city is at "
                f"[{city[0]:.2f}, {city[1]:.2f}]); {_swap_advice(store, lon, lat)}"
            )
        return None
    given, swapped = _offset_gap(tz, lon), _offset_gap(tz, lat)
    if given > TZ_FAR_H and swapped <= TZ_NEAR_H:
        offs = "/".join(f"{o:+g}" for o in sorted(set(utc_offsets_h(tz))))
        return (
            f"its time zone {tz} (UTC{offs}) is {given:.0f} hours from the solar time of its "
            f"longitude {lon:g}; {_swap_advice(store, lon, lat)}"
        )
    return None


def merchant_hints(stores: Sequence[tuple[int, Store]]) -> list[Problem]:
    """Warnings for stores far from the median location of their merchant's stores when swapping
    their coordinates brings them near it; ``stores`` are (feature index, store)."""
    groups: dict[str, list[tuple[int, Store, float, float]]] = {}
    for i, s in stores:
        lon, lat = location(s)
        groups.setdefault(s.merchant_id, []).append((i, s, lon, lat))
    out: list[Problem] = []
    for merchant, group in groups.items():
        if len(group) < MERCHANT_MIN_STORES:
            continue
        mlon = statistics.median(g[2] for g in group)
        mlat = statistics.median(g[3] for g in group)
        for i, s, lon, lat in group:
            far = km(lon, lat, mlon, mlat)
            if far <= MERCHANT_FAR_KM or abs(lon) > 90:
                continue
            near = km(lat, lon, mlon, mlat)
            if near < min(MERCHANT_FAR_KM, far / 10):
                reason = (
                    f"it lies {far:,.0f} km from the median location [{mlon:.2f}, {mlat:.2f}] of "
                    f"merchant {merchant!r}'s {len(group)} stores; {_swap_advice(s, lon, lat)}"
                )
                out.append(Problem(i, s.store_id, reason, warning=True))
    return out

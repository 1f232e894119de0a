"""FenceIndex.query / query_many / distance held against the brute-force oracle (index_oracle).

Catalogs and fixes come from index_cases (seeded numpy; hypothesis picks seeds, locales and
sizes, derandomized so CI is reproducible). Tolerance: a store whose oracle distance is within
1 µm of the threshold (accuracy + margin) may go either way; every other store must agree, and
distances must agree within 10 µm (both sides compute the same documented metric).
"""

from __future__ import annotations

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from index_cases import LOCALES, random_catalog, random_fixes, random_store
from index_oracle import matches, signed_distance

from fences.index import FenceIndex
from fences.store import Store

PROFILE = settings(
    max_examples=150,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow],
)
LIVE_PROFILE = settings(PROFILE, max_examples=80)
DIST_TOL = 1e-5


def check_fix(
    index: FenceIndex, live: dict[int, Store], lon: float, lat: float, acc: float, margin: float
) -> list[tuple[int, float]]:
    got = index.query(lon, lat, acc, margin)
    sd, must, may = matches(live, lon, lat, acc + margin)
    slots = [s for s, _ in got]
    where = f"fix ({lon!r}, {lat!r}) acc={acc} margin={margin}"
    assert len(slots) == len(set(slots)), f"{where}: duplicate slots {got}"
    assert must <= set(slots), f"{where}: missed {must - set(slots)} (oracle {sd})"
    assert set(slots) <= may, f"{where}: extra {set(slots) - may} (oracle {sd})"
    for slot, d in got:
        assert abs(d - sd[slot]) <= DIST_TOL, (
            f"{where}: slot {slot} distance {d} vs oracle {sd[slot]}"
        )
    assert [d for _, d in got] == sorted(d for _, d in got), f"{where}: not sorted by distance"
    return got


def check_batch(
    index: FenceIndex,
    fixes: list[tuple[float, float, float, float]],
    singles: list[list[tuple[int, float]]],
) -> None:
    lons = np.array([f[0] for f in fixes])
    lats = np.array([f[1] for f in fixes])
    accs = np.array([f[2] for f in fixes])
    # per-fix margin folded into accs: query_many's margin is one value for the batch
    margins = np.array([f[3] for f in fixes])
    fix, slot, dist = index.query_many(lons, lats, accs + margins)
    assert fix.dtype == np.int64 and slot.dtype == np.int64 and dist.dtype == np.float64
    assert (np.diff(fix) >= 0).all(), "query_many must order rows by fix index"
    for i, single in enumerate(singles):
        rows = fix == i
        assert slot[rows].tolist() == [s for s, _ in single] or sorted(
            slot[rows].tolist()
        ) == sorted(s for s, _ in single)
        assert np.allclose(np.sort(dist[rows]), sorted(d for _, d in single), rtol=0, atol=1e-9)
        assert (np.diff(dist[rows]) >= 0).all()


@PROFILE
@given(
    seed=st.integers(0, 2**31),
    locale=st.integers(0, len(LOCALES) - 1),
    n_stores=st.integers(0, 14),
)
def test_query_matches_oracle(seed: int, locale: int, n_stores: int) -> None:
    rng = np.random.default_rng(seed)
    stores = random_catalog(rng, locale, n_stores)
    index = FenceIndex(stores)
    live = dict(enumerate(stores))
    fixes = random_fixes(rng, stores, locale, 25)
    singles = [check_fix(index, live, *f) for f in fixes]
    check_batch(index, fixes, singles)
    for slot, s in live.items():
        lon, lat = fixes[0][0], fixes[0][1]
        assert abs(index.distance(slot, lon, lat) - signed_distance(s, lon, lat)) <= DIST_TOL


@LIVE_PROFILE
@given(
    seed=st.integers(0, 2**31),
    locale=st.integers(0, len(LOCALES) - 1),
    compact_at=st.sampled_from([2, 5, 1000]),
)
def test_live_updates_match_oracle(seed: int, locale: int, compact_at: int) -> None:
    """add / update / remove / compact interleaved with queries, against a model dict."""
    rng = np.random.default_rng(seed)
    lon0, lat0 = LOCALES[locale]
    stores = random_catalog(rng, locale, int(rng.integers(0, 6)))
    index = FenceIndex(stores, compact_at=compact_at)
    live = dict(enumerate(stores))
    by_id = {s.store_id: i for i, s in live.items()}
    removed: set[int] = set()
    next_id = len(stores)
    for _ in range(12):
        op = rng.random()
        if op < 0.35 or not live:
            s = random_store(rng, f"n{next_id}", lon0, lat0)
            next_id += 1
            slot = index.add(s)
            assert slot not in live and slot not in removed, "a new store must get a fresh slot"
            live[slot] = s
            by_id[s.store_id] = slot
        elif op < 0.6:
            slot = int(rng.choice(sorted(live)))
            new = random_store(rng, live[slot].store_id, lon0, lat0)
            assert index.update(new) == slot
            live[slot] = new
        elif op < 0.8:
            slot = int(rng.choice(sorted(live)))
            index.remove(live[slot].store_id)
            del live[slot]
            removed.add(slot)
        elif op < 0.85:
            index.compact()
        assert len(index) == len(live)
        fixes = random_fixes(rng, list(live.values()), locale, 6)
        singles = [check_fix(index, live, *f) for f in fixes]
        for got in singles:
            assert not {s for s, _ in got} & removed, "a removed slot matched"
        check_batch(index, fixes, singles)
        # the batch rebuilt the delta's grid: single fixes now go through it instead of the rtree
        for f, before in zip(fixes, singles, strict=True):
            assert check_fix(index, live, *f) == before

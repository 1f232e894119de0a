"""The store listing's vector tables (engine/api/live.py ``_Listing``) follow the live catalog:
after adds, moves, removals and a change log that no longer reaches back, a filtered page is
what a scan of every live store gives."""

from __future__ import annotations

import random

from engine.api.live import FenceTarget, LiveStores, _intersects, parse_bbox, store_bounds
from fences.catalog import Catalog, store_from_feature
from fences.index import FenceIndex

from .conftest import circle, square


def _brute(cat: Catalog, merchant: str | None, bbox: str | None) -> list[str]:
    box = parse_bbox(bbox) if bbox else None
    return [
        s.store_id
        for _slot, s in cat.alive()
        if (merchant is None or s.merchant_id == merchant)
        and (box is None or _intersects(store_bounds(s), box))
    ]


def _all(live: LiveStores, merchant: str | None, bbox: str | None) -> list[str]:
    out: list[str] = []
    cursor = None
    while True:
        page, cursor = live.find(None, merchant_id=merchant, bbox=bbox, limit=7, cursor=cursor)
        out += [s.store_id for s in page]
        if cursor is None:
            return out


def test_filtered_pages_follow_every_change_of_the_catalog() -> None:
    rnd = random.Random(3)

    def feature(i: int) -> dict:
        lon, lat = rnd.uniform(-179.9, 179.9), rnd.uniform(-60, 60)
        make = circle if i % 3 else square
        return make(f"s{i}", f"m{rnd.randrange(4)}", lon, lat)

    index = FenceIndex(Catalog([store_from_feature(feature(i)) for i in range(300)]))
    index.catalog.CHANGE_LOG = 40  # type: ignore[misc]  # the log is cut often: rebuilds too
    live = LiveStores(FenceTarget(lambda: index), None)  # type: ignore[arg-type]
    queries = [
        ("m1", None),
        (None, "-10,-30,40,30"),
        ("m2", "170,-60,-170,60"),
        ("m0", "0,0,90,60"),
    ]
    for step in range(60):
        for merchant, bbox in queries:
            assert _all(live, merchant, bbox) == _brute(index.catalog, merchant, bbox), (
                step,
                merchant,
                bbox,
            )
        for _ in range(rnd.randrange(1, 30)):
            i = rnd.randrange(400)
            if rnd.random() < 0.3 and index.catalog.slot_of(f"s{i}") is not None:
                index.remove(f"s{i}")
            else:
                index.add(store_from_feature(feature(i)))

"""Small worlds for the core's tests: stores around a point, event builders, a runner."""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any

from engine.campaigns import CampaignSet, parse_campaigns
from engine.core import Core, CoreConfig
from engine.events import Ap, Beacon, Event, Gps, Nfc, Payment, ProfileEvent, Wifi
from engine.outputs import Push, VisitEvent
from engine.profiles import ProfileBook
from engine.state import MemoryStore, Output
from fences.catalog import Catalog
from fences.index import FenceIndex
from fences.store import Store, beacon_key

LON0, LAT0 = 24.94, 60.17
M_LAT = 111_195.0
M_LON = M_LAT * math.cos(math.radians(LAT0))
UUID = "F7826DA6-4FA2-4E98-8024-BC5B71E0893E"
T0 = 1_780_000_000.0  # a Thursday, 2026-05-28 20:26:40 UTC


def at(x_m: float, y_m: float) -> tuple[float, float]:
    """(lon, lat) of a point x_m east and y_m north of the origin."""
    return LON0 + x_m / M_LON, LAT0 + y_m / M_LAT


def circle(
    store_id: str,
    x_m: float,
    y_m: float,
    r_m: float = 50.0,
    *,
    merchant_id: str | None = None,
    wifi: Sequence[str] = (),
    beacon_minor: int | None = None,
    nfc: Sequence[str] = (),
    tags: Sequence[str] = (),
    max_accuracy_m: float = 100.0,
    tz: str = "UTC",
) -> Store:
    return Store(
        store_id=store_id,
        merchant_id=merchant_id or f"m-{store_id}",
        center=at(x_m, y_m),
        radius_m=r_m,
        wifi=tuple(wifi),
        beacons=(beacon_key(UUID, 1, beacon_minor),) if beacon_minor is not None else (),
        nfc=tuple(nfc),
        tags=tuple(tags),
        max_accuracy_m=max_accuracy_m,
        tz=tz,
    )


def gps(user: str, ts: float, x_m: float, y_m: float, acc: float = 10.0) -> Gps:
    lon, lat = at(x_m, y_m)
    return Gps(user=user, ts=ts, lon=lon, lat=lat, acc=acc)


def wifi(user: str, ts: float, *aps: tuple[str, float]) -> Wifi:
    return Wifi(user=user, ts=ts, aps=[Ap(bssid=b, rssi=r) for b, r in aps])


def beacon(user: str, ts: float, minor: int, rssi: float = -60.0) -> Beacon:
    return Beacon(user=user, ts=ts, uuid=UUID, major=1, minor=minor, rssi=rssi)


def nfc(user: str, ts: float, tag: str) -> Nfc:
    return Nfc(user=user, ts=ts, tag=tag)


def pay(user: str, ts: float, merchant_id: str, amount: float = 10.0) -> Payment:
    return Payment(user=user, ts=ts, merchant_id=merchant_id, amount=amount)


def profile(user: str, ts: float, tags: Iterable[str] = (), opt_out: bool = False) -> ProfileEvent:
    return ProfileEvent(user=user, ts=ts, tags=list(tags), opt_out=opt_out)


def campaign(cid: str, merchant_id: str, trigger: str = "enter", **kw: Any) -> dict[str, Any]:
    c: dict[str, Any] = {
        "id": cid,
        "merchant_id": merchant_id,
        "trigger": trigger,
        "coupon": {"title": f"{cid} coupon", "value": 5, "currency": "EUR", "expires_in_s": 3600},
    }
    c.update(kw)
    return c


def campaigns(*cs: dict[str, Any], **top: Any) -> CampaignSet:
    return parse_campaigns({"campaigns": list(cs), **top})


class World:
    """A Core over a MemoryStore, driven like replay: process micro-batches, commit each."""

    def __init__(
        self,
        stores: Sequence[Store],
        camps: CampaignSet | None = None,
        config: CoreConfig = CoreConfig(),  # noqa: B008
        profiles: ProfileBook | None = None,
    ) -> None:
        self.index = FenceIndex(Catalog(stores))
        self.store = MemoryStore()
        self.core = Core(self.index, camps or CampaignSet(), self.store, config, profiles)
        self.outs: list[Output] = []

    def run(self, events: Sequence[Event], batch: int = 1024, flush: float | None = None) -> list[Output]:
        new: list[Output] = []
        for i in range(0, len(events), batch):
            outs = self.core.process(events[i : i + batch])
            self.store.commit(outs)
            new.extend(outs)
        if flush is not None:
            outs = self.core.flush(flush)
            self.store.commit(outs)
            new.extend(outs)
        self.outs.extend(new)
        return new

    def visits(self) -> list[VisitEvent]:
        return [o for o in self.outs if isinstance(o, VisitEvent)]

    def pushes(self) -> list[Push]:
        return [o for o in self.outs if isinstance(o, Push)]

    def trail(self) -> list[tuple[str, str, str, float]]:
        """(user, store, event, ts) of every visit event, in emission order."""
        return [(v.user, v.store_id, v.event, v.ts) for v in self.visits()]

"""A small synthetic city for the daemon's tests and ``geopush bench e2e``: circular stores on a
grid, one campaign per merchant, and users walking store to store.

Deterministic from a seed. Each user alternates an "outside" fix (between stores) and an "inside"
fix (a store's centre), 10 s apart, so about every other GPS fix enters a store (enter visit and,
when a campaign allows, a push) and every other one exits (exit visit). Walking speed stays far
under the core's spoofing limit.
"""

from __future__ import annotations

import json
import math
import random
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

LON0, LAT0 = 24.94, 60.17
M_LAT = 111_195.0
M_LON = M_LAT * math.cos(math.radians(LAT0))
T0 = 1_780_000_000.0
STEP_M = 200.0  # store spacing
RADIUS_M = 40.0


def at(x_m: float, y_m: float) -> tuple[float, float]:
    return LON0 + x_m / M_LON, LAT0 + y_m / M_LAT


@dataclass(frozen=True)
class City:
    side: int  # side x side stores

    def center(self, i: int) -> tuple[float, float]:
        return at((i % self.side) * STEP_M, (i // self.side) * STEP_M)

    def outside(self, i: int) -> tuple[float, float]:
        """A point between store i and its east neighbour (100 m from both centres)."""
        return at((i % self.side) * STEP_M + STEP_M / 2, (i // self.side) * STEP_M + STEP_M / 2)

    def catalog(self) -> dict[str, Any]:
        feats = []
        for i in range(self.side * self.side):
            lon, lat = self.center(i)
            feats.append(
                {
                    "type": "Feature",
                    "geometry": {"type": "Point", "coordinates": [lon, lat]},
                    "properties": {
                        "store_id": f"s{i}",
                        "merchant_id": f"m{i}",
                        "name": f"Store {i}",
                        "radius_m": RADIUS_M,
                    },
                }
            )
        return {"type": "FeatureCollection", "features": feats}

    def campaigns(self, inventory: dict[int, int] | None = None) -> dict[str, Any]:
        camps = []
        for i in range(self.side * self.side):
            c: dict[str, Any] = {
                "id": f"c{i}",
                "merchant_id": f"m{i}",
                "trigger": "enter",
                "coupon": {"title": f"10% at store {i}", "value": 10, "currency": "EUR", "expires_in_s": 3600},
            }
            if inventory and i in inventory:
                c["inventory"] = inventory[i]
            camps.append(c)
        return {"campaigns": camps}

    def write(self, folder: Path, inventory: dict[int, int] | None = None) -> tuple[Path, Path]:
        """Write ``fences.geojson`` and ``campaigns.json`` into ``folder``; return their paths."""
        folder.mkdir(parents=True, exist_ok=True)
        f, c = folder / "fences.geojson", folder / "campaigns.json"
        f.write_text(json.dumps(self.catalog()))
        c.write_text(json.dumps(self.campaigns(inventory)))
        return f, c


def user_events(
    city: City, user: str, n: int, seed: int, t0: float = T0, inside_every: int = 2, stay: int = 1
) -> list[dict[str, Any]]:
    """``n`` GPS fixes of one user, 10 s apart, in periods of ``inside_every`` fixes: the last
    ``stay`` of each period at a store's centre (the first of them enters), the others outside
    between stores (the first one after a stay exits). The user moves to a neighbouring store
    after each visit (<= 200 m per 10 s: a walk, never a spoofing-speed jump)."""
    rng = random.Random(f"{seed}:{user}")
    side = city.side
    store = rng.randrange(side * side)
    out = []
    for k in range(n):
        if k % inside_every >= inside_every - stay:
            lon, lat = city.center(store)
            if k % inside_every != inside_every - 1:
                out.append(_fix(user, t0 + 10.0 * k, lon, lat))
                continue
            x, y = store % side, store // side
            x = min(max(x + rng.choice((-1, 0, 1)), 0), side - 2)
            y = min(max(y + rng.choice((-1, 0, 1)), 0), side - 2)
            store = y * side + x
        else:
            lon, lat = city.outside(store)
        out.append(_fix(user, t0 + 10.0 * k, lon, lat))
    return out


def _fix(user: str, ts: float, lon: float, lat: float) -> dict[str, Any]:
    return {"type": "gps", "user": user, "ts": ts, "lon": round(lon, 7), "lat": round(lat, 7), "acc": 8.0}


def trace(
    city: City, users: int, per_user: int, seed: int = 1, inside_every: int = 2, prefix: str = "u"
) -> Iterator[dict[str, Any]]:
    """Events of ``users`` users interleaved round-robin (time order per user, roughly global)."""
    per = [user_events(city, f"{prefix}{u}", per_user, seed, inside_every=inside_every) for u in range(users)]
    for k in range(per_user):
        for evs in per:
            yield evs[k]


def write_trace(path: Path, events: Iterator[dict[str, Any]]) -> int:
    n = 0
    with path.open("w") as fh:
        for ev in events:
            fh.write(json.dumps(ev, separators=(",", ":")) + "\n")
            n += 1
    return n


__all__ = ["City", "T0", "trace", "user_events", "write_trace"]

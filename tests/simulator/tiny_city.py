"""A hand-made city small enough to reason about: 4 circle stores on a street, 6 walkers who pass
through them, one enter campaign per merchant. Used by the demo tests."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

LON0, LAT0 = 24.94, 60.17
T0 = datetime(2026, 11, 25, 10, 0, tzinfo=UTC).timestamp()
M_PER_DEG_LAT = 111_320.0


def write_tiny_city(d: Path, walkers: int = 6, minutes: int = 30) -> dict[str, Path]:
    d.mkdir(parents=True, exist_ok=True)
    stores = []
    for i in range(4):
        lon = LON0 + i * 0.004  # ~220 m apart along a street
        stores.append(
            {
                "type": "Feature",
                "geometry": {"type": "Point", "coordinates": [lon, LAT0]},
                "properties": {
                    "store_id": f"s{i}",
                    "merchant_id": f"m{i}",
                    "name": f"Shop {i}",
                    "radius_m": 40.0,
                },
            }
        )
    (d / "stores.geojson").write_text(json.dumps({"type": "FeatureCollection", "features": stores}))
    campaigns = [
        {
            "id": f"c-m{i}-welcome",
            "merchant_id": f"m{i}",
            "trigger": "enter",
            "priority": 1,
            "coupon": {
                "title": f"10% off at Shop {i}",
                "value": 10,
                "currency": "EUR",
                "expires_in_s": 3600,
            },
        }
        for i in range(4)
    ]
    (d / "campaigns.json").write_text(json.dumps({"campaigns": campaigns}))
    lines = []
    steps = minutes * 6  # a fix every 10 s
    span_lon = 0.004 * 3
    for u in range(walkers):
        for k in range(steps):
            # walk along the street and back, slowly (~1.2 m/s), each walker offset in time
            frac = ((k + u * 7) % steps) / steps
            pos = 2 * frac if frac < 0.5 else 2 * (1 - frac)
            lines.append(
                (
                    T0 + 10.0 * k,
                    {
                        "type": "gps",
                        "user": f"u{u}",
                        "ts": T0 + 10.0 * k,
                        "lon": LON0 + pos * span_lon,
                        "lat": LAT0 + 0.00003 * (u - 3),
                        "acc": 8.0,
                    },
                )
            )
    lines.sort(key=lambda t: (t[0], t[1]["user"]))
    with open(d / "trace.jsonl", "w") as fh:
        fh.write('{"type": "gps", "user": "u0", "ts": "not a time"}\n')  # one dead letter, early
        for _, ev in lines:
            fh.write(json.dumps(ev) + "\n")
    return {
        "stores": d / "stores.geojson",
        "campaigns": d / "campaigns.json",
        "trace": d / "trace.jsonl",
    }

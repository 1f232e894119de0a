"""One device's clock cannot change anyone else's decisions (hardening issue, section 3).

Devices whose clocks run an hour ahead or sit in the year 2100, sending GPS fixes, payments and
profiles, among honest users: the honest users get exactly the visits and pushes they get
without them, in replay (here) and through the daemon (tests/daemon/test_isolation.py)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from _corekit import T0, World, circle, gps

from engine.replay import replay
from simulator.bench.workload import City, trace

Y2100 = 4_102_444_800.0  # the latest time the wire format accepts


def skewed_events(city: City) -> list[dict[str, Any]]:
    """Four devices with wrong clocks: two an hour ahead (GPS inside a store, a payment), two in
    2100 (a payment, a profile) -- pairs that even agree with each other."""
    lon, lat = city.center(5)
    return [
        {"type": "gps", "user": "sk-hour", "ts": T0 + 3600, "lon": lon, "lat": lat, "acc": 8.0},
        {"type": "payment", "user": "sk-hour-pay", "ts": T0 + 3650, "merchant_id": "m3", "amount": 5.0},
        {"type": "payment", "user": "sk-2100-pay", "ts": Y2100, "merchant_id": "m2", "amount": 5.0},
        {"type": "profile", "user": "sk-2100-prof", "ts": Y2100, "tags": ["vip"]},
    ]


def honest_events(city: City) -> list[dict[str, Any]]:
    """30 walkers over 20 minutes, and one user who enters a store and goes silent (the sweep
    exits her at her presence timeout)."""
    evs = list(trace(city, 30, 120))
    lon, lat = city.center(9)
    evs.insert(3, {"type": "gps", "user": "quiet", "ts": T0 + 1, "lon": lon, "lat": lat, "acc": 8.0})
    return evs


def _replay(tmp: Path, name: str, events: list[dict[str, Any]], fences: Path, camps: Path) -> dict[str, Any]:
    path = tmp / f"{name}.jsonl"
    path.write_text("".join(json.dumps(e) + "\n" for e in events))
    out = tmp / name
    summary = replay(path, fences, camps, out_dir=out, progress=False, batch_size=50)
    return {
        "summary": summary,
        "visits": (out / "visits.jsonl").read_text().splitlines(),
        "pushes": (out / "pushes.jsonl").read_text().splitlines(),
    }


def _of_honest(lines: list[str]) -> list[str]:
    return sorted(x for x in lines if not json.loads(x)["user"].startswith("sk-"))


def test_skewed_devices_change_no_honest_decision_in_replay(tmp_path: Path) -> None:
    city = City(4)
    fences, camps = city.write(tmp_path, inventory={0: 2})
    honest = honest_events(city)
    mixed = list(honest)
    for i, ev in enumerate(skewed_events(city)):
        mixed.insert(40 + 25 * i, ev)  # early in the trace, in different batches
    want = _replay(tmp_path, "honest", honest, fences, camps)
    got = _replay(tmp_path, "mixed", mixed, fences, camps)
    # the honest run has timeouts swept by other users' event time (the quiet user's exit)
    assert any('"user":"quiet"' in v and '"exit"' in v for v in want["visits"])
    assert _of_honest(got["visits"]) == sorted(want["visits"])
    assert _of_honest(got["pushes"]) == sorted(want["pushes"])
    # the skewed devices' events were applied to themselves only (one enters its store)
    assert got["summary"]["payments"] == want["summary"]["payments"] + 2
    assert any('"user":"sk-hour"' in v for v in got["visits"])


def test_one_user_alone_does_not_move_the_watermark_a_quorum_does() -> None:
    w = World([circle("A", 0, 0, 50), circle("B", 1000, 0, 50)])
    w.run([gps("u", T0, 0, 0)])
    w.run([gps("v", T0 + 5000, 1000, 0)])  # one clock far ahead: moves nothing
    assert w.core.watermark == float("-inf")
    w.run([gps("x", T0 + 100, 1000, 0), gps("y", T0 + 120, 1000, 0)])
    # u, x and y reached T0 within max_skew of each other (v stands alone up there)
    assert w.core.watermark == T0
    w.run([gps(p, T0 + 1000 + i, 1000, 0) for i, p in enumerate(("x", "y", "z"))])
    assert w.core.watermark == T0 + 1000
    assert ("u", "A", "exit", T0 + 900) in w.trail()  # swept by the quorum's time, not v's
    assert ("v", "B", "exit", T0 + 5000 + 900) not in w.trail()

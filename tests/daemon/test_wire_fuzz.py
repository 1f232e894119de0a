"""Hostile payloads over the wire: a generated corpus (deep nesting in every field position of every
event type, huge arrays, huge strings, control characters, oversized payloads) published through a
real broker to the running daemon (real core), interleaved with a city's normal traffic. The
daemon must stay up, every bad message must reach the dead-letter topic (bounded), and the normal
traffic must be decided exactly as replay decides it."""

from __future__ import annotations

import asyncio
import hashlib
import json
import random
from typing import Any

from engine.daemon.pipeline import Decoder, Topics
from simulator.bench.workload import T0

from .conftest import Collector, World, publish_all, received_outputs, running_service

OUT_TOPICS = ["geopush/push/#", "geopush/visits/#", "geopush/deadletter"]
DEADLETTER_MAX = 16 * 1024
NEST = "\x00NEST\x00"
FZ = "fz"  # the fuzz corpus's user: far from the city, so its valid messages decide nothing
LON, LAT = -170.0, -80.0

VALID: dict[str, dict[str, Any]] = {
    "gps": {"type": "gps", "user": FZ, "ts": T0, "lon": LON, "lat": LAT, "acc": 5.0},
    "wifi": {"type": "wifi", "user": FZ, "ts": T0, "aps": [{"bssid": "02:00:00:00:00:01", "rssi": -50}]},
    "beacon": {"type": "beacon", "user": FZ, "ts": T0, "uuid": "FZ", "major": 1, "minor": 2, "rssi": -60},
    "nfc": {"type": "nfc", "user": FZ, "ts": T0, "tag": "fz-tag"},
    "payment": {"type": "payment", "user": FZ, "ts": T0, "merchant_id": "fz-nowhere", "amount": 1.0},
    "profile": {"type": "profile", "user": FZ, "ts": T0, "tags": ["fz"], "opt_out": False},
    "redeem": {"type": "redeem", "user": FZ, "ts": T0, "merchant_id": "fz-nowhere", "code": "ABCDEFGHJK-1"},
}  # fmt: skip
def test_the_corpus_covers_every_event_type() -> None:
    from engine.events import EVENT_TYPES

    assert set(VALID) == set(EVENT_TYPES)


OWNTRACKS = {"_type": "location", "tst": int(T0), "lat": LAT, "lon": LON, "acc": 15, "tid": "fz"}


def _nested(depth: int, kind: str) -> bytes:
    return (b'{"a":' * depth + b"1" + b"}" * depth) if kind == "object" else b"[" * depth + b"]" * depth


def _with(d: Any, filler: bytes) -> bytes:
    return json.dumps(d).encode().replace(json.dumps(NEST).encode(), filler)


def _positions(d: dict[str, Any]) -> list[dict[str, Any]]:
    """``d`` with NEST in each field's place, as an extra field, and in each list's first item."""
    out = [{**d, k: NEST} for k in d] + [{**d, "x": NEST}]
    for k, v in d.items():
        if isinstance(v, list) and v:
            first = {**v[0], "x": NEST} if isinstance(v[0], dict) else NEST
            out.append({**d, k: [first, *v[1:]]})
    return out


def corpus(seed: int = 7) -> list[tuple[str, bytes]]:
    rng = random.Random(seed)
    ev_topic, ot_topic = f"geopush/events/{FZ}", f"owntracks/{FZ}/phone"
    out: list[tuple[str, bytes]] = []
    # deep nesting in every position of every event type, alone and inside a batch; OwnTracks
    for depth in (1000, 5000):
        for kind in ("array", "object"):
            filler = _nested(depth, kind)
            for base in VALID.values():
                inner = {k: v for k, v in base.items() if k != "user"}
                out += [(ev_topic, _with(p, filler)) for p in _positions(base)]
                out += [
                    (ev_topic, _with({"type": "batch", "user": FZ, "events": [p]}, filler))
                    for p in _positions(inner)
                ]
            out += [(ot_topic, _with(p, filler)) for p in _positions(OWNTRACKS)]
            out.append((ev_topic, filler))
    # huge arrays: valid ones (processed), invalid ones (dead-lettered)
    aps = [{"bssid": f"02:00:00:00:{i >> 8:02x}:{i & 255:02x}", "rssi": -70} for i in range(1400)]
    out += [
        (ev_topic, json.dumps({**VALID["wifi"], "aps": aps}).encode()),
        (ev_topic, json.dumps({**VALID["wifi"], "aps": list(range(30_000))}).encode()),
        (ev_topic, json.dumps({**VALID["profile"], "tags": [f"t{i}" for i in range(6000)]}).encode()),
        (ev_topic, json.dumps({**VALID["profile"], "tags": [None] * 20_000}).encode()),
        (ev_topic, json.dumps({"type": "batch", "user": FZ, "events": [
            {**VALID["gps"], "ts": T0 + i * 0.001} for i in range(700)]}).encode()),
        (ev_topic, json.dumps({"type": "batch", "user": FZ, "events": [1] * 30_000}).encode()),
        (ev_topic, json.dumps({**VALID["gps"], "x": [0] * 30_000}).encode()),
        (ev_topic, b"[" + b"0," * 30_000 + b"0]"),
        (ot_topic, json.dumps([OWNTRACKS] * 600).encode()),
        (ot_topic, json.dumps([OWNTRACKS, *[[]] * 20_000]).encode()),
    ]  # fmt: skip
    # huge strings and control characters
    ctrl = "".join(chr(rng.randrange(32)) for _ in range(9000))
    out += [
        (ev_topic, json.dumps({**VALID["gps"], "user": "u" * 60_000}).encode()),
        (ev_topic, json.dumps({**VALID["nfc"], "tag": "t" * 60_000}).encode()),
        (ev_topic, json.dumps({**VALID["gps"], "x": ctrl}).encode()),  # escaped: valid, ignored
        (ev_topic, json.dumps({**VALID["nfc"], "tag": ctrl}).encode()),
        (ev_topic, b'{"type":"nfc","user":"fz","ts":1,"tag":"' + ctrl.encode() + b'"}'),  # raw
        (ev_topic, bytes(rng.randrange(32) for _ in range(60_000))),
        (ev_topic, bytes(rng.randrange(256) for _ in range(60_000))),
        (ev_topic, b"\x01" * 250_000),  # too large: its dead letter must still be small
        (ev_topic, ("é" * 100_000).encode()),
        (ev_topic, b""),
        (ev_topic, b"null"),
        (ev_topic, b"{}"),
        (ot_topic, json.dumps({**OWNTRACKS, "tid": ctrl}).encode()),
        (ot_topic, b"\x00" * 70_000),
    ]
    # every event type plain and valid, to be sure the corpus's valid messages pass too
    out += [(ev_topic, json.dumps(v).encode()) for v in VALID.values()]
    return out


def _verdicts(msgs: list[tuple[str, bytes]]) -> tuple[list[tuple[str, bytes]], set[str]]:
    """The decoder's verdict on each message: the rejected ones, and the event types accepted."""
    decode = Decoder(Topics())
    bad, types = [], set()
    for t, p in msgs:
        try:
            types.update(type(ev).__name__.lower() for ev in decode(t, p))
        except Exception:  # noqa: BLE001  (whatever fails to decode must be dead-lettered)
            bad.append((t, p))
    return bad, types


async def test_hostile_corpus_over_the_wire(broker, tmp_path):
    world = World(tmp_path, users=15, per_user=16)
    expected = world.oracle()
    fuzz = corpus()
    assert len(set(fuzz)) == len(fuzz)
    bad, types = _verdicts(fuzz)
    assert types == {"gps", "wifi", "beacon", "nfc", "payment", "profileevent", "redeem"}  # all
    assert 300 < len(bad) < len(fuzz)  # most are bad; the valid ones must be processed
    # interleave: the hostile messages spread through the city's traffic
    msgs = list(world.messages)
    step = max(1, len(msgs) // len(fuzz))
    for i, m in enumerate(fuzz):
        msgs.insert(min(len(msgs), i * (step + 1)), m)
    async with Collector(broker.url, OUT_TOPICS) as col, running_service(
        broker.url, tmp_path / "s.db", world=world, batch_size=50
    ) as svc:
        await publish_all(broker.url, msgs)
        await col.wait_for(
            lambda c: received_outputs(c) == expected
            and len(c.on("geopush/deadletter")) >= len(bad),
            timeout=60,
        )
        await asyncio.sleep(0.3)  # anything extra would show up now
        assert svc.state == "online"  # up all along: the task would have ended otherwise
        assert svc.totals["messages"] == len(msgs)
    letters = col.on("geopush/deadletter")
    assert max(len(p) for _, p in letters) < DEADLETTER_MAX
    got = sorted(json.loads(p)["sha256"] for _, p in letters)
    assert got == sorted(hashlib.sha256(p).hexdigest() for _, p in bad)  # each bad one, once
    assert received_outputs(col) == expected  # the city's traffic decided as replay decides it


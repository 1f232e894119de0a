"""One device cannot change anyone else's decisions, through the daemon (hardening issue, section 3):
clocks ahead, a poisoned watermark in the state file, retained inputs, dropped events made visible."""

from __future__ import annotations

import asyncio
import json
import time

from engine.daemon.service import DEADLETTER_SAMPLE, WATERMARK_KEY
from engine.stores.sqlite_store import SQLiteStore
from engine.transport.mqtt import MqttLink, parse_broker_url

from .conftest import Collector, World, needs_mosquitto, publish_all, running_service

OUT_TOPICS = ["geopush/push/#", "geopush/visits/#", "geopush/deadletter"]
Y2100 = 4_102_444_800.0
T0 = 1_780_000_000.0  # simulator.bench.workload.T0: May 2026, before the test's wall clock


def skewed_events(city) -> list[dict]:
    """As tests/engine/test_clock_isolation.py: two devices an hour ahead (GPS in a store, a
    payment), two in 2100 (a payment, a profile)."""
    lon, lat = city.center(5)
    return [
        {"type": "gps", "user": "sk-hour", "ts": T0 + 3600, "lon": lon, "lat": lat, "acc": 8.0},
        {"type": "payment", "user": "sk-hour-pay", "ts": T0 + 3650, "merchant_id": "m3", "amount": 5.0},
        {"type": "payment", "user": "sk-2100-pay", "ts": Y2100, "merchant_id": "m2", "amount": 5.0},
        {"type": "profile", "user": "sk-2100-prof", "ts": Y2100, "tags": ["vip"]},
    ]


def honest_events(city) -> list[dict]:
    """30 walkers over 20 minutes, and a user who enters a store and goes silent."""
    from simulator.bench.workload import trace

    evs = list(trace(city, 30, 120))
    lon, lat = city.center(9)
    evs.insert(3, {"type": "gps", "user": "quiet", "ts": T0 + 1, "lon": lon, "lat": lat, "acc": 8.0})
    return evs


def _msg(ev: dict) -> tuple[str, bytes]:
    return f"geopush/events/{ev['user']}", json.dumps(ev, separators=(",", ":")).encode()


def _honest_visits(col: Collector) -> set[bytes]:
    return {p for t, p in col.on("geopush/visits/") if not json.loads(p)["user"].startswith("sk-")}


def _honest_pushes(col: Collector) -> set[str]:
    return {d["push_id"] for d in col.json_on("geopush/push/") if not d["user"].startswith("sk-")}


async def test_skewed_devices_change_no_honest_decision_through_the_daemon(broker, tmp_path):
    world = World(tmp_path, users=30, per_user=20)
    honest = honest_events(world.city)
    world.events = honest
    world.messages = [_msg(e) for e in honest]
    # what the daemon decides without the skewed devices: the daemon itself, and replay
    async with Collector(broker.url, OUT_TOPICS, client_id="col-a") as want, running_service(
        broker.url, tmp_path / "a.db", world=world, batch_size=16
    ) as svc:
        await publish_all(broker.url, world.messages)
        await want.wait_for(lambda c: svc.totals["events"] >= len(honest) and svc.outbox.pending == 0)
        await asyncio.sleep(0.3)
    oracle = world.oracle()
    assert {json.loads(p)["push_id"] for _, p in want.on("geopush/push/")} == oracle["pushes"]
    assert any(json.loads(p)["user"] == "quiet" and json.loads(p)["event"] == "exit" for _, p in want.on("geopush/visits/"))

    mixed = [_msg(e) for e in honest]
    for i, ev in enumerate(skewed_events(world.city)):
        mixed.insert(40 + 25 * i, _msg(ev))
    async with Collector(broker.url, OUT_TOPICS, client_id="col-b") as got, running_service(
        broker.url, tmp_path / "b.db", world=world, batch_size=16, client_id="engine-b"
    ) as svc:
        await publish_all(broker.url, mixed)
        await got.wait_for(lambda c: svc.totals["messages"] >= len(mixed) and svc.outbox.pending == 0)
        await asyncio.sleep(0.3)
        dropped = json.loads(svc._status_payload("online"))["dropped"]  # noqa: SLF001
    assert _honest_visits(got) == _honest_visits(want)
    assert _honest_pushes(got) == _honest_pushes(want)
    # the two devices in 2100 are far ahead of the receiving clock: dead-lettered, applied nowhere
    dead = got.json_on("geopush/deadletter")
    assert sorted(json.loads(d["payload"])["user"] for d in dead if d["reason"] == "clock_skew") == [
        "sk-2100-pay", "sk-2100-prof",
    ]  # fmt: skip
    assert dropped["clock_skew"] == 2
    assert svc.metrics.registry.get_sample_value("geopush_events_dropped_total", {"reason": "clock_skew"}) == 2


async def test_dropped_events_are_counted_by_reason_and_sampled_to_the_dead_letter_topic(broker, tmp_path):
    world = World(tmp_path, users=1, per_user=1)
    lon, lat = world.city.center(0)
    fix = {"type": "gps", "user": "u", "ts": 1_780_000_000.0, "lon": lon, "lat": lat, "acc": 8.0}
    jump = dict(fix, ts=fix["ts"] + 10, lon=lon + 1.0)  # ~55 km in 10 s: beyond the speed limit
    late = [dict(fix, ts=fix["ts"] - 100 - i) for i in range(25)]  # older than u's last event
    async with Collector(broker.url, ["geopush/deadletter"]) as col, running_service(
        broker.url, tmp_path / "s.db", world=world
    ) as svc:
        await publish_all(broker.url, [_msg(fix), _msg(jump)] + [_msg(e) for e in late])
        await col.wait_for(lambda c: svc.totals["messages"] >= 27 and svc.outbox.pending == 0)
        await asyncio.sleep(0.3)
        status = json.loads(svc._status_payload("online"))  # noqa: SLF001
        metric = svc.metrics.registry.get_sample_value
        assert metric("geopush_events_dropped_total", {"reason": "speed"}) == 1
        assert metric("geopush_events_dropped_total", {"reason": "out_of_order"}) == 25
    assert status["dropped"] == {"speed": 1, "out_of_order": 25}
    dead = col.json_on("geopush/deadletter")
    speed = [d for d in dead if d["reason"] == "speed"]
    assert len(speed) == 1 and json.loads(speed[0]["payload"])["ts"] == jump["ts"]
    # sampled: at most DEADLETTER_SAMPLE per reason and minute (two minutes if the run straddles one)
    n = sum(d["reason"] == "out_of_order" for d in dead)
    assert DEADLETTER_SAMPLE <= n <= 2 * DEADLETTER_SAMPLE < 25
    assert len({d["id"] for d in dead}) == len(dead)


async def test_a_poisoned_watermark_in_the_state_file_is_repaired_at_start(broker, tmp_path):
    world = World(tmp_path, users=1, per_user=1)
    state = tmp_path / "s.db"
    store = SQLiteStore(state)
    store.commit([], meta={WATERMARK_KEY: repr(Y2100)})  # what a device in 2100 left behind
    store.close()
    lon, lat = world.city.center(0)
    now = time.time()
    fix = {"type": "gps", "user": "u", "ts": now - 60, "lon": lon, "lat": lat, "acc": 8.0}
    async with Collector(broker.url, OUT_TOPICS) as col, running_service(
        broker.url, state, world=world
    ) as svc:
        assert svc.core.watermark < now
        assert svc.totals["watermark_repaired"] == 1
        await publish_all(broker.url, [_msg(fix)])
        await col.wait_for(lambda c: svc.totals["events"] >= 1 and svc.outbox.pending == 0)
        await asyncio.sleep(0.3)
    # the visit opened and stays open: not entered and timed out at once by a watermark in 2100
    assert [d["event"] for d in col.json_on("geopush/visits/")] == ["enter"]
    store = SQLiteStore(state)
    try:
        assert float(store.get_meta(WATERMARK_KEY) or "-inf") < now
    finally:
        store.close()


@needs_mosquitto
async def test_a_retained_payment_counts_once_across_engine_restarts(broker, tmp_path):
    world = World(tmp_path, users=1, per_user=1)
    state = tmp_path / "s.db"
    payment = {"type": "payment", "user": "alice", "ts": 1_780_000_000.0, "merchant_id": "m1", "amount": 9.5}
    # an OwnTracks-style device publishes retained: the broker keeps it for every new subscriber
    pub = MqttLink(parse_broker_url(broker.url), client_id="alice")
    await pub.connect()
    await pub.publish(*_msg(payment), retain=True)
    await pub.disconnect()
    # more traffic than the input window holds, so only the per-topic record can recognise it
    others = [
        _msg({"type": "gps", "user": "bob", "ts": 1_780_000_000.0 + i, "lon": 1.0, "lat": 1.0, "acc": 5})
        for i in range(1100)
    ]
    seen = []
    for run in range(3):  # the first start, then two restarts
        async with running_service(broker.url, state, world=world, input_window=1000) as svc:
            await asyncio.wait_for(_until(lambda: svc.totals["messages"] >= 1), 15)
            if run == 0:
                await publish_all(broker.url, others)
                await asyncio.wait_for(_until(lambda: svc.totals["messages"] >= 1101), 15)
            await asyncio.sleep(0.3)
            seen.append(svc.totals["retained_seen"])
    store = SQLiteStore(state)
    try:
        assert store.all_users()["alice"].payments == {"m1": 1}  # not 3
    finally:
        store.close()
    assert seen == [0, 1, 1]  # recognised at each restart


async def _until(pred) -> None:
    while not pred():
        await asyncio.sleep(0.02)

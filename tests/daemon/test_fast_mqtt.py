"""The link's own QoS 1 packets (engine/transport/mqtt.py: built PUBLISHes, parsed PUBLISH/PUBACK,
batched PUBACKs) against a real broker: exactly once, right topics, payloads, retain flags and
callbacks, the in-flight limit, and what a broker crash does to publishes in flight."""

from __future__ import annotations

import asyncio
import collections

import pytest

from engine.daemon.metrics import Metrics
from engine.daemon.outbox import Outbox
from engine.errors import TransportError
from engine.stores.sqlite_store import OutRow, SQLiteStore
from engine.transport.mqtt import MqttLink, _varint, parse_broker_url

from .conftest import Collector, fast_path_only, needs_mosquitto, publish_all


def test_remaining_length_encoding() -> None:
    assert [_varint(n) for n in (0, 127, 128, 16_383, 16_384, 268_435_455)] == [
        b"\x00", b"\x7f", b"\x80\x01", b"\xff\x7f", b"\x80\x80\x01", b"\xff\xff\xff\x7f",
    ]  # fmt: skip


class Dones:
    """One callback per publish; records what each was called with, and how often."""

    def __init__(self) -> None:
        self.calls: dict[int, list[BaseException | None]] = collections.defaultdict(list)

    def cb(self, i: int):  # noqa: ANN201
        return lambda exc: self.calls[i].append(exc)

    def ok(self) -> set[int]:
        return {i for i, c in self.calls.items() if c == [None]}


async def test_built_publishes_arrive_exactly_once_with_their_topic_payload_and_callback(broker):
    # payload sizes cross the 1-, 2- and 3-byte remaining-length encodings (and 64 KiB reads)
    sizes = [0, 3, 120, 130, 5_000, 16_400, 70_000, 300_000]
    items = [(f"fast/{i % 7}/x{i}", bytes([i % 251]) * sizes[i % len(sizes)] + b"#%d" % i)
             for i in range(2_000)]  # fmt: skip
    dones = Dones()
    tx = MqttLink(parse_broker_url(broker.url), client_id="tx", max_inflight_out=0)
    async with Collector(broker.url, ["fast/#"]) as col:
        await tx.connect()
        try:
            for i, (t, p) in enumerate(items):
                tx.publish_cb(t, p, dones.cb(i))
            assert tx.publishes_in_flight == len(items)
            await col.wait_for(lambda c: len(dones.calls) == len(items), timeout=30)
            assert tx.publishes_in_flight == 0
            # paho's own packets share the packet-id space: a subscribe and a QoS 0 publish
            # between built ones neither collide nor disturb their callbacks
            tx.publish_cb("fast/a/late", b"late", dones.cb(-1))
            await tx.subscribe(["nothing/here"])
            await tx.publish("fast/a/q0", b"zero", qos=0)
            await col.wait_for(lambda c: len(c.messages) == len(items) + 2, timeout=30)
        finally:
            await tx.disconnect()
        await asyncio.sleep(0.2)  # anything extra (a repeat) would show up now
    assert dones.ok() == {*range(len(items)), -1}  # each callback once, with success
    got = collections.Counter(col.messages)
    assert got == collections.Counter([*items, ("fast/a/late", b"late"), ("fast/a/q0", b"zero")])
    # per topic, in publish order
    for k in range(7):
        assert [p for t, p in col.messages if t.startswith(f"fast/{k}/")] == [
            p for t, p in items if t.startswith(f"fast/{k}/")
        ]


async def test_retain_flag_and_bad_topics(broker):
    tx = MqttLink(parse_broker_url(broker.url), client_id="tx", max_inflight_out=0)
    await tx.connect()
    try:
        await tx.publish("fast/kept", b"retained", retain=True)
        await tx.publish("fast/gone", b"not retained")
        for bad in ("", "a/+/b", "a/#"):
            with pytest.raises(TransportError):
                await tx.publish(bad, b"x")
    finally:
        await tx.disconnect()
    # a subscriber arriving later gets only the retained message
    async with Collector(broker.url, ["fast/#"]) as col:
        await col.wait_for(lambda c: len(c.messages) == 1)
        await asyncio.sleep(0.2)
    assert col.messages == [("fast/kept", b"retained")]


@fast_path_only  # the limit on the link's own QoS 1 packets (paho applies its own on the plain path)
async def test_in_flight_limit_holds_back_the_rest_in_order(broker):
    tx = MqttLink(parse_broker_url(broker.url), client_id="tx", max_inflight_out=5)
    dones = Dones()
    peak = [0]
    items = [(f"lim/{i}", b"%d" % i) for i in range(300)]

    def cb(i: int):  # noqa: ANN202
        inner = dones.cb(i)

        def done(exc: BaseException | None) -> None:
            peak[0] = max(peak[0], len(tx._raw_done))  # noqa: SLF001
            inner(exc)

        return done

    async with Collector(broker.url, ["lim/#"]) as col:
        await tx.connect()
        try:
            for i, (t, p) in enumerate(items):
                tx.publish_cb(t, p, cb(i))
            assert len(tx._raw_done) == 5  # noqa: SLF001
            await col.wait_for(lambda c: len(c.messages) == len(items), timeout=30)
        finally:
            await tx.disconnect()
    assert peak[0] <= 5
    assert dones.ok() == set(range(len(items)))
    assert col.messages == items  # one topic per message, one connection: broker keeps order


async def test_ack_many_acknowledges_exactly_the_messages_given(broker):
    """Acked messages are gone from the persistent session; the others are redelivered (dup)."""
    msgs = [(f"acks/{i}", b"m%d" % i) for i in range(40)]
    url = parse_broker_url(broker.url)
    rx = MqttLink(url, client_id="rx-acks", clean_session=False, manual_ack=True)
    await rx.connect()
    await rx.subscribe(["acks/#"], qos=1)
    await publish_all(broker.url, msgs)
    got = []
    while len(got) < len(msgs):
        assert await rx.wait_inbound(timeout=10)
        rx.pump(1000)
        got.extend(rx.take(1000))
    assert [(m.topic, m.payload) for m in got] == msgs and not any(m.dup for m in got)
    acked = [m for i, m in enumerate(got) if i % 3 != 0]
    assert rx.ack_many(acked) == len(acked)
    await asyncio.sleep(0.3)  # the PUBACKs reach the broker
    await rx.disconnect()
    await rx.connect()  # same session: the broker resends what was not acknowledged
    again = []
    while len(again) < len(msgs) - len(acked):
        assert await rx.wait_inbound(timeout=10)
        rx.pump(1000)
        again.extend(rx.take(1000))
    await asyncio.sleep(0.3)
    rx.pump(1000)
    again.extend(rx.take(1000))
    assert [(m.topic, m.payload) for m in again] == [x for i, x in enumerate(msgs) if i % 3 == 0]
    assert all(m.dup for m in again)
    assert rx.ack_many(got) == 0  # acks for a previous connection's messages are not sent
    assert rx.ack_many(again) == len(again)
    await rx.disconnect()


@needs_mosquitto
async def test_a_broker_crash_fails_every_pending_publish_once(mosquitto_factory):
    broker = mosquitto_factory(persistence=True)
    tx = MqttLink(parse_broker_url(broker.url), client_id="tx", max_inflight_out=100)
    await tx.connect()
    dones = Dones()
    for i in range(500):  # queued, not yet written: the event loop has not run since
        tx.publish_cb(f"crash/{i}", b"x" * 100, dones.cb(i))
    broker.kill()
    await asyncio.wait_for(tx.wait_disconnected(), 30)
    await tx.disconnect()
    assert sorted(dones.calls) == list(range(500))
    assert all(len(c) == 1 and isinstance(c[0], TransportError) for c in dones.calls.values())
    assert tx.publishes_in_flight == 0


@needs_mosquitto
async def test_outbox_republishes_what_a_broker_crash_left_unacknowledged(mosquitto_factory, tmp_path):
    """Rows acked before the crash are marked sent and never repeated; rows in flight (or queued)
    at the crash fail and are re-published from SQLite after the reconnect, each once."""
    broker = mosquitto_factory(persistence=True)
    store = SQLiteStore(tmp_path / "s.db")
    link = MqttLink(parse_broker_url(broker.url), client_id="engine", max_inflight_out=0)
    outbox = Outbox(link, store, Metrics(), max_in_flight=50)
    first = [OutRow(f"a{i}", f"out/a/{i}", b"A%d" % i) for i in range(100)]
    second = [OutRow(f"b{i}", f"out/b/{i}", b"B%d" % i) for i in range(300)]
    store.commit([], extra=first)
    store.commit([], extra=second)
    try:
        await link.connect()
        outbox.reset_from_store()
        run = asyncio.create_task(outbox.run())
        # only the first rows: hold the second back until the first are acked and marked
        outbox._pending.clear()  # noqa: SLF001
        outbox.push(first)
        assert await outbox.wait_idle(10)
        assert store.count("outbox", "WHERE sent = 1") == 100
        outbox.push(second)  # 50 in flight, 250 queued ...
        assert outbox.pending == 300
        broker.kill()  # ... and the broker dies before any of them is written
        await asyncio.wait_for(link.wait_disconnected(), 30)
        outbox.stop()
        await run
        await link.disconnect()
        assert outbox._in_flight == 0  # noqa: SLF001  every pending callback failed
        broker.start()
        async with Collector(broker.url, ["out/#"]) as col:
            await link.connect()
            assert outbox.reset_from_store() == 300
            run = asyncio.create_task(outbox.run())
            assert await outbox.wait_idle(20)
            await col.wait_for(lambda c: len(c.messages) == 300)
            await asyncio.sleep(0.3)
            outbox.stop()
            await run
    finally:
        await link.disconnect()
        store.close()
    assert sorted(col.messages) == sorted((r.topic, r.payload) for r in second)
    again = SQLiteStore(tmp_path / "s.db")
    try:
        assert again.count("outbox", "WHERE sent = 0") == 0
    finally:
        again.close()

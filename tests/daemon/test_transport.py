"""Round trip, dead letters and status over a real broker, with a stand-in core."""

from __future__ import annotations

import json
from typing import Any

from .conftest import Collector, StandInCore, gps, publish_all, running_service


async def test_event_to_push_round_trip(broker, tmp_path):
    async with Collector(broker.url, ["geopush/push/#", "geopush/status/#"]) as col:
        async with running_service(broker.url, tmp_path / "s.db") as svc:
            await publish_all(broker.url, [("geopush/events/alice", gps("alice", 100.0))])
            await col.wait_for(lambda c: len(c.on("geopush/push/")) == 1)
            assert svc.totals["pushes"] == 1
        push = col.json_on("geopush/push/alice")[0]
        assert push["push_id"] == "alice:100.0" and push["kind"] == "push"
        states = [s["state"] for s in col.json_on("geopush/status/")]
        assert "online" in states and states[-1] == "offline"


async def test_bad_messages_go_to_deadletter_while_good_traffic_flows(broker, tmp_path):
    bad = [
        ("geopush/events/bob", b"{not json", "malformed_json"),
        (
            "geopush/events/bob",
            b'{"type":"gps","user":"bob","ts":1,"lon":1,"lat":1,"acc":1,"x":"'
            + b"a" * 70_000
            + b'"}',
            "too_large",
        ),
        (
            "geopush/events/bob",
            b'{"type":"gps","user":"bob","ts":5,"lon":1,"lat":NaN,"acc":1}',
            "malformed_json",
        ),
        (
            "geopush/events/bob",
            b'{"type":"gps","user":"bob","ts":5,"lon":1,"lat":91,"acc":1}',
            "out_of_range",
        ),
        (
            "geopush/events/bob",
            b'{"type":"gps","user":"bob","ts":5,"lon":1,"lat":1e400,"acc":1}',
            "out_of_range",
        ),
        ("geopush/events/bob", gps("mallory", 7.0), "wrong_user"),
        ("geopush/events/bob", b'{"type":"teleport","user":"bob","ts":5}', "unknown_type"),
        ("geopush/events/bob", b"\xff\xfe binary", "malformed_json"),
    ]
    good = [("geopush/events/carol", gps("carol", float(i))) for i in range(1, 21)]
    mixed = [
        x
        for pair in zip(good, [(t, p) for t, p, _ in bad] + [None] * 20, strict=False)
        for x in pair
        if x
    ]
    async with Collector(broker.url, ["geopush/push/#", "geopush/deadletter"]) as col:
        async with running_service(broker.url, tmp_path / "s.db"):
            await publish_all(broker.url, mixed)
            await col.wait_for(
                lambda c: (
                    len(c.on("geopush/push/")) == 20 and len(c.on("geopush/deadletter")) == len(bad)
                )
            )
        letters = col.json_on("geopush/deadletter")
    got = sorted((d["topic"], d["reason"]) for d in letters)
    assert got == sorted((t, r) for t, _, r in bad)
    by_reason = {d["reason"]: d for d in letters}
    assert by_reason["unknown_type"]["payload"] == '{"type":"teleport","user":"bob","ts":5}'
    assert by_reason["unknown_type"]["encoding"] == "text"
    assert all(d["detail"] for d in letters)
    binary = [d for d in letters if d["encoding"] == "base64"]
    assert len(binary) == 1 and binary[0]["size"] == len(b"\xff\xfe binary")


async def test_outputs_are_committed_and_marked_sent(broker, tmp_path):
    from engine.stores.sqlite_store import SQLiteStore

    state = tmp_path / "s.db"
    msgs = [("geopush/events/dave", gps("dave", float(i))) for i in range(1, 51)]
    async with Collector(broker.url, ["geopush/push/#"]) as col, running_service(broker.url, state):
        await publish_all(broker.url, msgs)
        await col.wait_for(lambda c: len(c.messages) == 50)
    store = SQLiteStore(state)
    try:
        rows = store.outbox()
        assert len(rows) == 50 and all(sent for *_, sent in rows)
        assert len(store.push_ids()) == 50
        assert store.logged_inputs() == 50
        assert json.loads(rows[0][2])["user"] == "dave"
    finally:
        store.close()


async def test_link_moves_large_and_small_packets_intact_with_nothing_stuck(broker):
    """The link's coalesced writes (partial sends of a multi-MB queue) and buffered reads (one
    recv serving many packets, a large packet refilling the buffer) deliver every payload, byte
    for byte, in order, without waiting for later traffic: the receiver acks nothing, so once
    the publisher is done no further byte arrives to wake a stalled reader."""
    import asyncio
    import random

    from engine.transport.mqtt import MqttLink, parse_broker_url

    rng = random.Random(5)
    # ~5 KB packets (a 50-event batch message) split across 64 KiB reads, plus odd sizes; fewer
    # than the broker's in-flight window (200 in these tests), so all arrive with no ack sent.
    sizes = [rng.choice((3, 200, 5_000, 5_000, 5_000, 70_000, 300_000)) for _ in range(150)]
    payloads = [bytes([i % 251]) * n + str(i).encode() for i, n in enumerate(sizes)]
    rx = MqttLink(parse_broker_url(broker.url), client_id="rx", manual_ack=True)
    tx = MqttLink(parse_broker_url(broker.url), client_id="tx", max_inflight_out=0)
    await rx.connect()
    await rx.subscribe(["big/+"], qos=1)
    await tx.connect()
    try:
        await asyncio.gather(*(tx.publish_nowait(f"big/{i}", p) for i, p in enumerate(payloads)))
        got: list[bytes] = []
        while len(got) < len(payloads):
            # no pump(): only the event loop's reader callback reads, as during subscribe()
            assert await rx.wait_inbound(timeout=10.0), f"stuck after {len(got)} messages"
            got.extend(m.payload for m in rx.take(1000))
        assert got == payloads
    finally:
        await tx.disconnect()
        await rx.disconnect()


class _CoreThatFailsOnMallory(StandInCore):
    """A core bug stand-in: any batch holding one of mallory's events raises."""

    def process(self, events: list[Any]) -> list[Any]:
        if any(ev.user == "mallory" for ev in events):
            raise RuntimeError("boom")
        return super().process(events)


async def test_a_core_failure_dead_letters_only_the_poison_message(broker, tmp_path):
    state = tmp_path / "s.db"
    msgs = [("geopush/events/erin", gps("erin", float(i))) for i in range(1, 11)]
    msgs.insert(5, ("geopush/events/mallory", gps("mallory", 5.5)))
    async with Collector(broker.url, ["geopush/push/#", "geopush/deadletter"]) as col:
        async with running_service(
            broker.url, state, core_factory=_CoreThatFailsOnMallory
        ) as svc:
            await publish_all(broker.url, msgs)
            await col.wait_for(
                lambda c: len(c.on("geopush/push/")) == 10 and len(c.on("geopush/deadletter")) == 1
            )
            assert svc.totals["pushes"] == 10
        letter = col.json_on("geopush/deadletter")[0]
    assert letter["reason"] == "engine_error" and letter["topic"] == "geopush/events/mallory"
    assert sorted(p["push_id"] for p in col.json_on("geopush/push/erin")) == sorted(
        f"erin:{float(i)}" for i in range(1, 11)
    )

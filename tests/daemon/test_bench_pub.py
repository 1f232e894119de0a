"""The bench's raw-socket QoS 1 publisher (simulator/bench/pub.py) against a real broker."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from simulator.bench.pub import (
    MAX_PACKET_ID,
    BenchPublishError,
    RawPublisher,
    RawSubscriber,
    encode_publish,
    packet_id,
    publish,
)
from simulator.embedded_broker import free_port

from .conftest import Collector, needs_mosquitto, publish_all


def test_publish_packets_are_encoded_as_mqtt_3_1_1_qos1() -> None:
    p = encode_publish("a/b", b"hi", 7)
    assert p == b"\x32\x09\x00\x03a/b\x00\x07hi"
    big = encode_publish("t", b"x" * 200, 65535)  # remaining length 205 needs two bytes
    assert big[:3] == b"\x32\xcd\x01" and big[3:6] == b"\x00\x01t" and big[6:8] == b"\xff\xff"
    assert [packet_id(i) for i in (0, 1, 65534, 65535, 65536)] == [1, 2, 65535, 1, 2]


async def test_every_message_arrives_exactly_once_with_its_topic_and_payload(broker) -> None:
    # payload sizes cross the 1-, 2- and 3-byte remaining-length encodings
    sizes = [0, 5, 120, 130, 1000, 20_000, 200_000]
    items = [
        (f"bench/raw/{i % 13}", f"{i}:".encode() + b"p" * sizes[i % len(sizes)]) for i in range(3000)
    ]
    async with Collector(broker.url, ["bench/raw/#"]) as col:
        rep = await asyncio.to_thread(publish, broker.url, items, None, max_in_flight=50)
        assert rep.n == len(items)
        await col.wait_for(lambda c: len(c.messages) >= len(items), timeout=60)
        await asyncio.sleep(0.3)  # nothing more (no duplicates) arrives late
    assert len(col.messages) == len(items)
    assert sorted(col.messages) == sorted(items)
    assert 1 <= rep.max_in_flight_seen <= 50
    times = rep.send_times()
    assert len(times) == len(items) and times == sorted(times)


async def test_pacing_roughly_holds_the_rate(broker) -> None:
    items = [("bench/paced", str(i).encode()) for i in range(1000)]  # 2 s at 500 msg/s
    rep = await asyncio.to_thread(publish, broker.url, items, 500.0)
    assert rep.n == 1000
    assert rep.seconds >= 1.5
    times = rep.send_times()
    assert times[-1] - times[0] >= 1.5
    assert len(rep.chunks) > 100  # sent as it came due, not in one burst


class _StallsOnce(RawPublisher):
    """A publisher that is not scheduled for 80 ms once (as on a busy 2-core machine)."""

    stalled = False

    def _send_all(self, data: bytes) -> None:
        super()._send_all(data)
        if not self.stalled:
            self.stalled = True
            time.sleep(0.08)


def test_a_paced_publisher_behind_schedule_catches_up_in_small_chunks(broker) -> None:
    rate = 10_000.0  # 80 ms behind = 800 messages overdue; chunks of 2 ms = 20
    packets = RawPublisher.prepare([(f"burst/{i}", b"x") for i in range(3000)])
    with _StallsOnce(broker.url) as pub:
        rep = pub.publish(packets, rate)
    assert rep.n == 3000 and pub.stalled
    assert rep.max_chunk <= 20, rep.max_chunk  # not one chunk of everything overdue
    sizes = [b - a for (a, _), (b, _) in zip([(0, 0.0), *rep.chunks], rep.chunks, strict=False)]
    assert sum(sizes) == 3000
    # ...but it does catch up: full 2 ms chunks, one a tick, until the backlog is gone (on
    # schedule a chunk holds ~1 ms of messages, ~10)
    assert sizes.count(20) >= 30, sizes


def test_a_slow_paced_publisher_keeps_its_pace(broker) -> None:
    """At ~1,000 msg/s a 2 ms chunk rounds to 1-2 messages: the catch-up limit must still let
    the publisher keep (and regain) its pace."""
    from simulator.bench.pub import paced_burst

    rate = 990.0
    packets = RawPublisher.prepare([(f"slow/{i}", b"x") for i in range(990)])
    with RawPublisher(broker.url) as pub:
        rep = pub.publish(packets, rate)
        burst = paced_burst(rate, pub.max_burst_s, pub.tick)
    assert rep.n == 990
    assert rep.max_chunk <= burst  # the publisher keeps to its limit ...
    # ... and that limit lets it regain its pace: one chunk per tick, and a slept tick of the
    # 1 ms asked for lasts ~1.1 ms here; 1 message per tick (the old rounding) is 909/s < 990/s.
    assert burst / (pub.tick * 1.1) > 1.5 * rate


def test_in_flight_window_never_exceeds_its_limit_and_packet_ids_wrap(broker) -> None:
    items = [("bench/window", b"x")] * (MAX_PACKET_ID + 5000)  # ids cycle past 65535
    packets = RawPublisher.prepare(items)
    with RawPublisher(broker.url, max_in_flight=100) as pub:
        rep = pub.publish(packets)
        assert pub.in_flight == 0  # returned only after every PUBACK
    assert rep.n == len(items)
    assert rep.max_in_flight_seen == pub.max_in_flight_seen
    assert 1 <= rep.max_in_flight_seen <= 100


def test_pubacks_read_while_a_large_chunk_is_still_being_sent_count(broker) -> None:
    # 1000 x 5 KB in one chunk takes several sends; the broker acks the first packets meanwhile
    # (once ignored because they were not yet marked in flight: the publisher waited forever)
    items = [("bench/large", b"b" * 5000)] * 3000
    packets = RawPublisher.prepare(items)
    with RawPublisher(broker.url, max_in_flight=1000, stall_timeout=10) as pub:
        rep = pub.publish(packets)
    assert rep.n == 3000 and pub.in_flight == 0


def test_an_id_still_in_flight_is_not_reused() -> None:
    pub = RawPublisher("mqtt://127.0.0.1:1", max_in_flight=10)  # never connected
    busy = pub._busy  # noqa: SLF001
    free_run = pub._free_run  # noqa: SLF001
    pub._mark(65530, 65540, b"\x01" * 10)  # noqa: SLF001  (ids 65531..65535 and 1..5)
    assert [i for i in range(MAX_PACKET_ID + 1) if busy[i]] == [1, 2, 3, 4, 5, *range(65531, 65536)]
    assert free_run(65540, 65545) == 65545  # ids 6..10: free
    lap = MAX_PACKET_ID  # one lap later the same ids come round again
    assert free_run(65527 + lap, 65537 + lap) == 65530 + lap  # ids 65528..65530, then 65531 busy
    busy[65531:65536] = bytes(5)  # their PUBACKs came
    assert free_run(65532 + lap, 65542 + lap) == 65535 + lap  # ids 65533..65535, wrap, 1 busy
    assert free_run(65530 + lap, 65533 + lap) == 65533 + lap  # none busy


def test_a_refused_connection_raises_the_bench_error() -> None:
    port = free_port()  # nobody listens there
    with pytest.raises(BenchPublishError, match="cannot connect"):
        publish(f"mqtt://127.0.0.1:{port}", [("t", b"x")])


@needs_mosquitto
def test_a_broker_refusing_the_client_raises_the_bench_error(mosquitto_factory) -> None:
    b = mosquitto_factory(extra_config="allow_anonymous false\n")
    with pytest.raises(BenchPublishError, match="refused"):
        publish(b.url, [("t", b"x")])


@needs_mosquitto
def test_a_dropped_connection_raises_the_bench_error(mosquitto_factory) -> None:
    b = mosquitto_factory()
    items = [("bench/drop", b"x")] * 5000  # 10 s at 500 msg/s: the broker goes away first
    threading.Timer(0.5, b.stop).start()
    t0 = time.monotonic()
    with pytest.raises(BenchPublishError, match="lost|closed"):
        publish(b.url, items, 500.0)
    assert time.monotonic() - t0 < 8


def test_the_bench_publishers_report_send_times_of_push_causing_fixes(broker) -> None:
    from simulator.bench.e2e import _publish

    started: list[float] = []
    res = _publish(broker.url, "single", "tp-", 400, 2000.0, 2, on_start=lambda: started.append(time.time()))
    assert res["n"] == 400
    assert len(started) == 1  # once, when both publishers were ready, before the first send
    assert min(res["sent"].values()) >= started[0]
    assert res["sent"]  # (user, ts) -> send time of the fixes that enter a store
    assert all(isinstance(t, float) for t in res["sent"].values())
    assert res["cpu"] > 0


def test_a_bench_publisher_failure_is_raised_not_waited_for() -> None:
    from simulator.bench.e2e import _publish

    with pytest.raises(BenchPublishError, match="cannot connect"):
        _publish(f"mqtt://127.0.0.1:{free_port()}", "single", "tf-", 50, None, 1)


async def test_the_raw_subscriber_gets_every_message_once_and_acks_it(broker) -> None:
    # > the broker's in-flight window (200 in the fixture): delivery stalls unless we PUBACK;
    # large payloads arrive over several reads
    sizes = [3, 127, 128, 16_384, 300_000]
    items = [(f"bench/sub/{i % 5}", f"{i}:".encode() + b"s" * sizes[i % 5]) for i in range(1500)]
    got: list[tuple[str, bytes]] = []
    stamps: list[float] = []

    def on_batch(msgs: list[tuple[str, bytes]], received: float) -> None:
        got.extend(msgs)
        stamps.append(received)

    sub = RawSubscriber(broker.url, ["bench/sub/#", "bench/other"], on_batch)
    await sub.start()
    try:
        t0 = time.time()
        await publish_all(broker.url, items)
        deadline = time.monotonic() + 60
        while len(got) < len(items) and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        await asyncio.sleep(0.3)
    finally:
        await sub.stop()
    assert len(got) == len(items) and sorted(got) == sorted(items)
    assert sub.received == len(items) and sub.lost is None
    assert all(t >= t0 for t in stamps)


async def test_the_raw_subscriber_reports_a_refused_connection() -> None:
    sub = RawSubscriber(f"mqtt://127.0.0.1:{free_port()}", ["x"], lambda m, t: None)
    with pytest.raises(BenchPublishError, match="cannot connect"):
        await sub.start()


@needs_mosquitto
async def test_the_raw_subscriber_notices_a_dropped_connection(mosquitto_factory) -> None:
    b = mosquitto_factory()
    sub = RawSubscriber(b.url, ["x"], lambda m, t: None)
    await sub.start()
    b.stop()
    deadline = time.monotonic() + 10
    while sub.lost is None and time.monotonic() < deadline:
        await asyncio.sleep(0.02)
    assert sub.lost is not None
    await sub.stop()

"""MqttLink.hold_reads / release_reads (the service's linger): while held, the event loop does
not read the socket but ``pump`` does; released, messages flow in by themselves again; a
connection lost while held is never watched again (its file number may be reused)."""

from __future__ import annotations

import asyncio

from engine.transport.mqtt import MqttLink, parse_broker_url

from .conftest import fast_path_only, publish_all

pytestmark = fast_path_only  # the plain path keeps aiomqtt's own reader: nothing to hold


async def _subscribed(url: str, client_id: str) -> MqttLink:
    link = MqttLink(parse_broker_url(url), client_id=client_id, manual_ack=True)
    await link.connect()
    await link.subscribe(["held/#"])
    return link


async def _settle(link: MqttLink, n: int, timeout: float = 10.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while len(link.inbox) < n and asyncio.get_running_loop().time() < deadline:
        await asyncio.sleep(0.02)


async def test_held_reads_wait_for_pump_and_flow_again_after_release(broker):
    link = await _subscribed(broker.url, "holder")
    try:
        assert link.hold_reads()
        assert not link.hold_reads()  # already held: nothing to hold twice
        await publish_all(broker.url, [(f"held/{i}", b"x%d" % i) for i in range(20)])
        await asyncio.sleep(0.3)  # plenty of loop turns: none of them reads
        assert len(link.inbox) == 0
        assert link.pump(1000) == 20  # the bytes were waiting in the socket
        await publish_all(broker.url, [("held/late", b"late")])
        await asyncio.sleep(0.2)
        assert len(link.inbox) == 20
        link.release_reads()
        await _settle(link, 21)  # the socket is watched again: no pump needed
        assert [m.payload for m in link.take(100)] == [b"x%d" % i for i in range(20)] + [b"late"]
    finally:
        await link.disconnect()


async def test_a_connection_lost_while_held_is_not_watched_again(broker):
    link = await _subscribed(broker.url, "holder2")
    assert link.hold_reads()
    old_epoch = link.epoch
    await link.disconnect()  # the connection goes while the reads are held
    link.release_reads()  # nothing to re-watch: no error, no reader on a dead file number
    assert not link.hold_reads()  # no socket, nothing held
    await link.connect()  # a new connection: reads work as ever
    try:
        assert link.epoch == old_epoch + 1
        await link.subscribe(["held/#"])
        await publish_all(broker.url, [("held/again", b"again")])
        await _settle(link, 1)
        assert [m.payload for m in link.take(10)] == [b"again"]
    finally:
        await link.disconnect()

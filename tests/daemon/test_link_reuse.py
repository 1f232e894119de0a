"""One MqttLink over several connections (engine/transport/mqtt.py), on both MQTT paths against a
real broker: ``drop`` (no DISCONNECT: the broker publishes the will) leaves the link ready to
``connect`` again, with no socket, event-loop reader or task of the dropped connection left, and
QoS 1 messages still arrive exactly once."""

from __future__ import annotations

import asyncio

import pytest

from engine.transport.mqtt import Inbound, MqttLink, Will, parse_broker_url

from .conftest import Collector, publish_all

PATHS = [pytest.param(True, id="fast"), pytest.param(False, id="plain")]


async def _take(link: MqttLink, n: int, timeout: float = 10.0) -> list[Inbound]:
    got: list[Inbound] = []
    while len(got) < n:
        assert await link.wait_inbound(timeout), f"only {len(got)} of {n} messages arrived"
        got.extend(link.take(n - len(got)))
    return got


def _other_tasks() -> set[asyncio.Task[object]]:
    return {t for t in asyncio.all_tasks() if t is not asyncio.current_task() and not t.done()}


async def _settle() -> None:
    for _ in range(5):  # cancellations asked for with call_soon land within a few loop turns
        await asyncio.sleep(0.02)


@pytest.mark.parametrize("fast", PATHS)
async def test_drop_then_connect_again_delivers_each_message_exactly_once(broker, fast):
    url = parse_broker_url(broker.url)
    link = MqttLink(
        url, client_id=f"reuse-{fast}", clean_session=False, manual_ack=True, fast=fast,
        will=Will("reuse/status", b"gone", retain=False),
    )  # fmt: skip
    async with Collector(broker.url, ["reuse/status"]) as col:
        before = _other_tasks()  # the collector's
        await link.connect()
        assert link.fast_path is fast
        await link.subscribe(["reuse/in/#"], qos=1)
        await publish_all(broker.url, [("reuse/in/a", b"a")], client_id="tx-a")
        (first,) = await _take(link, 1)
        assert first.payload == b"a"
        sock = link._paho.socket()  # noqa: SLF001  (to see that drop closes it)
        assert sock is not None

        link.drop()  # "a" is left unacked: the session redelivers it
        assert not link.connected
        assert sock.fileno() == -1  # closed, not leaked
        await col.wait_for(lambda c: c.on("reuse/status") == [("reuse/status", b"gone")])
        await _settle()
        assert _other_tasks() == before  # aiomqtt's keepalive task and our watcher are gone
        link.inbox.clear()  # the dropped connection's copy: it can no longer be acked
        assert not link.ack(first)

        await link.connect(timeout=5)  # timed out before the fix: the old fd stayed registered
        assert link.connected and link.fast_path is fast
        await publish_all(broker.url, [("reuse/in/b", b"b")], client_id="tx-b")
        got = await _take(link, 2)
        assert sorted(m.payload for m in got) == [b"a", b"b"]
        assert next(m for m in got if m.payload == b"a").dup  # redelivered, flagged so
        assert link.ack_many(got) == 2
        # a fresh publish still reaches the broker (the writer of the new socket works)
        await link.publish("reuse/echo", b"e")
        await asyncio.sleep(0.3)  # let the PUBACKs out
        link.drop()  # and again: a second drop after a reconnect is as clean

        await link.connect(timeout=5)
        try:
            assert not await link.wait_inbound(timeout=0.5)  # both acked exactly once
        finally:
            await link.disconnect()
        await _settle()
        assert _other_tasks() == before

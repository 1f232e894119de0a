"""The embedded broker launcher: both kinds start, carry a message, restart on the same port."""

from __future__ import annotations

import asyncio

import pytest

from simulator.embedded_broker import (
    AmqttBroker,
    EmbeddedBroker,
    MosquittoBroker,
    find_mosquitto,
    start_broker,
    wait_listening,
)

KINDS = [
    "amqtt",
    pytest.param(
        "mosquitto",
        marks=pytest.mark.skipif(
            find_mosquitto() is None,
            reason="mosquitto binary not installed (amqtt path still tested)",
        ),
    ),
]


async def _roundtrip(url: str, topic: str = "geopush/test/x", payload: bytes = b"hello") -> bytes:
    """Subscribe, publish QoS 1, return what came back (amqtt's client: no aiomqtt outside
    engine/daemon)."""
    from amqtt.client import MQTTClient

    sub, pub = MQTTClient(), MQTTClient()
    await sub.connect(url)
    await sub.subscribe([(topic, 1)])
    await pub.connect(url)
    await pub.publish(topic, payload, qos=1)
    msg = await asyncio.wait_for(sub.deliver_message(), timeout=10)
    await pub.disconnect()
    await sub.disconnect()
    assert msg is not None and msg.publish_packet is not None
    return bytes(msg.publish_packet.payload.data)


@pytest.mark.parametrize("kind", KINDS)
async def test_broker_carries_a_message_and_restarts(kind: str) -> None:
    broker = start_broker(kind)  # type: ignore[arg-type]
    try:
        assert broker.kind == kind
        assert broker.url == f"mqtt://127.0.0.1:{broker.port}"
        assert await _roundtrip(broker.url) == b"hello"
        port = broker.port
        broker.restart()
        assert broker.port == port and broker.running
        assert await _roundtrip(broker.url, payload=b"again") == b"again"
    finally:
        broker.stop()
    assert not broker.running
    assert not wait_listening("127.0.0.1", broker.port, timeout=0.3)


def test_auto_prefers_mosquitto_when_installed() -> None:
    with start_broker() as broker:
        expected: type[EmbeddedBroker] = MosquittoBroker if find_mosquitto() else AmqttBroker
        assert isinstance(broker, expected)


@pytest.mark.skipif(find_mosquitto() is None, reason="mosquitto binary not installed")
def test_mosquitto_failure_is_a_clear_error() -> None:
    from engine.errors import TransportError

    bad = MosquittoBroker(extra_config="this_is_not_an_option 1")
    with pytest.raises(TransportError, match="mosquitto did not start"):
        bad.start()

"""`--intake` / `--partitions` validation and the start-up check of NATS's internals (no cluster)."""

from __future__ import annotations

import pytest

from engine.daemon.config import load_settings
from engine.errors import ConfigError
from engine.partitions import partition_of
from engine.transport.jetstream import internals_problems, parse_partition_list

GOOD_STREAM = {"config": {"subjects": ["$MQTT.msgs.>"], "retention": "interest"}}


def test_partition_lists() -> None:
    assert parse_partition_list("0-3,7", 16) == [0, 1, 2, 3, 7]
    assert parse_partition_list("all", 4) == [0, 1, 2, 3]
    for bad, hint in [("0-16", "outside 0-15"), ("a-b", "ranges such as"), ("5-2", "outside")]:
        with pytest.raises(ConfigError, match=hint):
            parse_partition_list(bad, 16)


def test_intake_settings_are_checked_before_start() -> None:
    with pytest.raises(ConfigError, match="scheme must be nats://"):
        load_settings({"intake": "mqtt://h:1883"})
    with pytest.raises(ConfigError, match="outside 0-15"):
        load_settings({"intake": "nats://h:4222", "partitions": "8-16", "partition_count": 16})
    s = load_settings(
        {"intake": "nats://a:4222,b:4222", "partitions": "0-7", "partition_count": 16}
    )
    assert s.intake and s.partitions == "0-7"


def test_internals_check_refuses_what_was_not_tested() -> None:
    assert internals_problems((2, 9), GOOD_STREAM) == []
    assert "nats-server 2.10" in internals_problems((2, 10), GOOD_STREAM)[0]
    assert "no stream $MQTT_msgs" in internals_problems((2, 9), None)[0]
    other = {"config": {"subjects": ["$MQTT.msgs.a.>"], "retention": "interest"}}
    assert "captures" in internals_problems((2, 9), other)[0]


def test_partition_of_is_nats_fnv1a() -> None:
    # Go: fnv.New32a().Write([]byte("a")) = 0xe40c292c; "foobar" = 0xbf9cf968
    assert partition_of("a", 1 << 31) == 0xE40C292C % (1 << 31)
    assert partition_of("foobar", 16) == 0xBF9CF968 % 16


def test_a_new_mqtt_connection_keeps_the_partitions_messages() -> None:
    """The service clears the inbox on a new MQTT connection (the broker sends unacknowledged
    MQTT messages again); a JetStream message's ack stays valid, so it stays (no 10 s wait for
    a redelivery behind the user's later events)."""
    from engine.transport.jetstream import JsInbound, _Inbox
    from engine.transport.mqtt import Inbound

    inbox = _Inbox()
    mqtt = Inbound("geopush/control/e", b"{}", 1, 1, False, 0.0, 1)
    js = JsInbound("geopush/events/u1", b"{}", 0, 1, False, 0.0, 1, False, "$JS.ACK.x", 3)
    inbox.extend([mqtt, js])
    inbox.clear()
    assert list(inbox) == [js]

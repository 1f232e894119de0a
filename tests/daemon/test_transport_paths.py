"""The fast MQTT path's footing (engine/transport/mqtt.py): every connection checks the private
paho-mqtt/aiomqtt names and versions the fast path relies on, and falls back to the plain aiomqtt
path, with a warning, when one is off; the plain path keeps exactly-once against a real broker."""

from __future__ import annotations

import asyncio
import logging

import paho.mqtt as paho_mqtt
import paho.mqtt.client as paho
import pytest

from engine.errors import ConfigError, TransportError
from engine.transport import mqtt
from engine.transport.mqtt import MqttLink, fast_path_default, parse_broker_url

from .conftest import (
    Collector,
    World,
    fast_path_only,
    gps,
    publish_all,
    running_service,
    spawn_daemon,
    wait_online,
)


@pytest.fixture
def fresh_reports(monkeypatch: pytest.MonkeyPatch) -> None:
    """The fallback warning is logged once per process: forget what earlier tests logged."""
    monkeypatch.setattr(mqtt, "_reported", set())


async def _take(link: MqttLink, n: int, timeout: float = 10.0) -> list[mqtt.Inbound]:
    got: list[mqtt.Inbound] = []
    while len(got) < n:
        assert await link.wait_inbound(timeout), f"only {len(got)} of {n} messages arrived"
        got.extend(link.take(n - len(got)))
    return got


@fast_path_only
async def test_the_installed_versions_pass_the_check_and_run_the_fast_path(broker):
    async with MqttLink(parse_broker_url(broker.url), client_id="ok") as link:
        assert link.fast_path
        assert mqtt.fast_path_problems(link._client, link._paho) == []  # noqa: SLF001


async def test_a_missing_paho_private_falls_back_with_a_warning_and_keeps_exactly_once(
    broker, monkeypatch, caplog, fresh_reports
):
    """A paho that lacks a name the fast path patches (as a patch release renaming it would): a
    warning naming it, the plain path, and QoS 1 still exactly once: acked messages are never
    redelivered, unacked ones come back marked DUP on the next connection (the daemon dedups
    those). Deleting one of paho's own methods would break paho itself, so the fast path is
    made to expect one paho does not have."""
    monkeypatch.setattr(
        mqtt, "FAST_PATH_NAMES", (*mqtt.FAST_PATH_NAMES, ("paho", "_packet_read_into", "method"))
    )
    caplog.set_level(logging.WARNING, logger="geopush.transport")
    url = parse_broker_url(broker.url)
    rx = MqttLink(url, client_id="rx-plain", clean_session=False, manual_ack=True, fast=True)
    await rx.connect()
    try:
        assert not rx.fast_path
        await rx.subscribe(["plain/#"], qos=1)
    finally:
        await rx.disconnect()
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1, warnings
    assert "plain aiomqtt path" in warnings[0]
    assert "paho.mqtt.client.Client._packet_read_into is missing" in warnings[0]

    items = [(f"plain/{i % 3}", b"m%d" % i) for i in range(60)]
    await publish_all(broker.url, items, client_id="tx-plain")  # plain too: the name is gone

    await rx.connect()  # the session kept everything published meanwhile
    first = await _take(rx, len(items))
    assert sorted(m.payload for m in first) == sorted(p for _, p in items)
    assert rx.ack_many(first[:25]) == 25
    await asyncio.sleep(0.3)  # let the PUBACKs out before the connection dies
    await rx.disconnect()  # the persistent session keeps the 35 unacked messages in flight

    await rx.connect()
    again = await _take(rx, len(items) - 25)
    assert sorted(m.payload for m in again) == sorted(m.payload for m in first[25:])
    assert all(m.dup for m in again)  # redelivered, and flagged so
    assert rx.ack_many(again) == len(again)
    await asyncio.sleep(0.3)
    await rx.disconnect()

    await rx.connect()
    try:
        assert not await rx.wait_inbound(timeout=0.5)  # every message acked exactly once
    finally:
        await rx.disconnect()
    assert len([r for r in caplog.records if r.levelno == logging.WARNING]) == 1  # once


async def test_the_daemon_on_an_untested_paho_falls_back_and_pushes_each_decision_once(
    broker, tmp_path, monkeypatch, caplog, fresh_reports
):
    monkeypatch.setattr(paho_mqtt, "__version__", "2.3.0")  # a release the fast path never met
    caplog.set_level(logging.WARNING, logger="geopush.transport")
    msgs = [(f"geopush/events/u{i % 5}", gps(f"u{i % 5}", 100.0 + i)) for i in range(200)]
    async with (
        Collector(broker.url, ["geopush/push/#"]) as col,
        running_service(broker.url, tmp_path / "s.db", mqtt_fast=True) as svc,  # tries it
    ):
        assert svc.link is not None and not svc.link.fast_path
        await publish_all(broker.url, msgs)
        await col.wait_for(lambda c: len(c.on("geopush/push/")) == len(msgs))
        await asyncio.sleep(0.3)  # nothing more comes
    pushes = sorted(p["push_id"] for p in col.json_on("geopush/push/"))
    assert pushes == sorted(f"u{i % 5}:{100.0 + i}" for i in range(200))
    assert any("paho-mqtt 2.3.0 is untested" in r.getMessage() for r in caplog.records)


def test_an_untested_version_or_a_changed_kind_fails_the_check(monkeypatch):
    async def problems() -> list[str]:
        import aiomqtt

        client = aiomqtt.Client("localhost", 1)
        return mqtt.fast_path_problems(client, mqtt._paho_of(client))  # noqa: SLF001

    monkeypatch.setattr(paho_mqtt, "__version__", "2.3.0")
    monkeypatch.setattr(paho.Client, "_mid_generate", 7)  # an attribute now, not a method
    found = asyncio.run(problems())
    assert any(p.startswith("paho-mqtt 2.3.0 is untested") for p in found), found
    assert "paho.mqtt.client.Client._mid_generate is not callable" in found


async def test_forced_plain_path_logs_no_warning(broker, caplog, fresh_reports):
    caplog.set_level(logging.INFO, logger="geopush.transport")
    async with MqttLink(parse_broker_url(broker.url), fast=False) as link:
        assert not link.fast_path and link.connected
        await link.publish("plain/x", b"y")
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


def test_geopush_mqtt_fast_is_read_and_a_bad_value_says_what_to_use(monkeypatch):
    for raw, want in (("0", False), ("false", False), ("1", True), ("", True), ("on", True)):
        monkeypatch.setenv("GEOPUSH_MQTT_FAST", raw)
        assert fast_path_default() is want
    monkeypatch.setenv("GEOPUSH_MQTT_FAST", "maybe")
    with pytest.raises(ConfigError, match="use 1 .* or 0"):
        fast_path_default()


async def test_one_owner_per_connection(broker):
    async with MqttLink(parse_broker_url(broker.url)) as link:
        with pytest.raises(TransportError, match="already connected"):
            await link.connect()
        assert link.connected
    assert not link.connected


async def test_geopush_run_mqtt_plain_runs_the_plain_path(broker, tmp_path):
    world = World(tmp_path, side=2, users=2, per_user=2)
    async with Collector(broker.url, ["geopush/status/#"]) as col:
        proc = spawn_daemon(broker.url, tmp_path / "s.db", world, "--mqtt-plain", "--log-level", "INFO")
        try:
            await wait_online(col, proc.pid)
        finally:
            proc.terminate()
            _, err = await asyncio.to_thread(proc.communicate, timeout=30)
    assert proc.returncode == 0, err.decode()[-2000:]
    assert "plain aiomqtt path (fast path switched off" in err.decode()


async def test_foreign_errors_become_transport_errors_that_keep_their_cause(broker):
    async with MqttLink(parse_broker_url(broker.url)) as link:
        for bad in ("", "a/#/b"):
            with pytest.raises(TransportError, match="subscribe") as err:
                await link.subscribe([bad])
            assert isinstance(err.value.__cause__, ValueError)
        with pytest.raises(TransportError, match="publish") as err:
            await link.publish("a/+", b"x", qos=0)  # through paho's publish on both paths
        assert isinstance(err.value.__cause__, ValueError)

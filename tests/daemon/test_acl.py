"""deploy/acl on a real mosquitto: a device publishes only under its own user."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
from pathlib import Path

import pytest

from engine.transport.mqtt import MqttLink, parse_broker_url

from .conftest import Collector, gps, needs_mosquitto, running_service

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
USERS = {
    "geopush-engine": "engine-pw", "alice": "alice-pw", "bob": "bob-pw", "m1": "m1-pw", "m2": "m2-pw",
}  # fmt: skip


def _passwd(folder: Path) -> Path:
    tool = shutil.which("mosquitto_passwd")
    if tool is None:
        pytest.skip("mosquitto_passwd not installed")
    path = folder / "passwd"
    path.touch()
    for user, pw in USERS.items():
        subprocess.run([tool, "-b", str(path), user, pw], check=True, capture_output=True)
    return path


@needs_mosquitto
async def test_deploy_acl_lets_a_device_publish_only_as_itself(mosquitto_factory, tmp_path):
    passwd = _passwd(tmp_path)
    broker = mosquitto_factory(
        extra_config=(
            "allow_anonymous false\n"
            f"password_file {passwd}\n"
            f"acl_file {DEPLOY / 'acl'}\n"
            "max_inflight_messages 200\n"
        )
    )
    url = broker.url
    engine_url = url.replace("mqtt://", "mqtt://geopush-engine:engine-pw@")
    async with running_service(engine_url, tmp_path / "s.db") as svc:
        alice_url = url.replace("mqtt://", "mqtt://alice:alice-pw@")
        async with Collector(alice_url, ["geopush/push/#"], client_id="alice-phone") as alice_inbox:
            alice = MqttLink(parse_broker_url(alice_url), client_id="alice-pub")
            await alice.connect()
            await alice.publish("geopush/events/alice", gps("alice", 10.0))  # her own topic
            await alice.publish("geopush/events/bob", gps("bob", 11.0))  # denied by the ACL
            await alice.publish("geopush/events/alice", gps("bob", 12.0))  # wrong_user
            await alice.publish("geopush/events/alice", gps("alice", 13.0))
            await alice.disconnect()
            await alice_inbox.wait_for(lambda c: len(c.messages) == 2)
            await asyncio.sleep(0.3)
        # mosquitto acknowledges a denied QoS 1 publish and drops it: the engine never sees it
        assert svc.totals["messages"] == 3
        assert svc.totals["reject:wrong_user"] == 1
        assert sorted(m[0] for m in alice_inbox.messages) == ["geopush/push/alice"] * 2
        # alice may read only her own pushes: a push to bob never reaches her subscription
        assert svc.totals["pushes"] == 2

    # and an anonymous client is refused outright
    anon = MqttLink(parse_broker_url(url))
    with pytest.raises(Exception, match="(?i)not authori[sz]ed|refused|connect"):
        await anon.connect(timeout=5)


def _shipped_broker(folder: Path, passwd: Path) -> tuple[subprocess.Popen[bytes], str]:
    """mosquitto from the shipped deploy/mosquitto.conf, adapted only where a test must: a free
    loopback port, the test's password file, temp persistence, a log file (and root)."""
    from simulator.embedded_broker import find_mosquitto, free_port, wait_listening

    from .conftest import AS_ROOT

    port = free_port()
    subs = {
        "listener 1883": f"listener {port} 127.0.0.1",
        "password_file /etc/mosquitto/geopush.passwd": f"password_file {passwd}",
        "acl_file /etc/mosquitto/geopush.acl": f"acl_file {DEPLOY / 'acl'}",
        "persistence_location /var/lib/mosquitto/": f"persistence_location {folder}/",
        "log_dest syslog": f"log_dest file {folder / 'mosquitto.log'}",
    }
    lines = (DEPLOY / "mosquitto.conf").read_text().splitlines()
    for old in subs:
        assert old in lines, f"deploy/mosquitto.conf no longer has {old!r}: adapt this test"
    conf = folder / "mosquitto.conf"
    conf.write_text(AS_ROOT + "\n".join(subs.get(x, x) for x in lines) + "\n")
    binary = find_mosquitto()
    assert binary is not None
    proc = subprocess.Popen([binary, "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    if not wait_listening("127.0.0.1", port, alive=lambda: proc.poll() is None):
        proc.kill()
        raise AssertionError(f"mosquitto did not start: {proc.communicate()[1]!r}")
    return proc, f"mqtt://127.0.0.1:{port}"


@needs_mosquitto
async def test_shipped_config_no_device_can_take_over_the_engines_or_anothers_session(tmp_path):
    proc, url = _shipped_broker(tmp_path, _passwd(tmp_path))
    try:
        engine_url = url.replace("mqtt://", "mqtt://geopush-engine:engine-pw@")
        alice_url = url.replace("mqtt://", "mqtt://alice:alice-pw@")
        bob_url = url.replace("mqtt://", "mqtt://bob:bob-pw@")
        async with running_service(engine_url, tmp_path / "s.db") as svc:
            assert svc.link.epoch == 1
            # alice connects with the engine's client id and speaks: the engine stays on
            alice = MqttLink(parse_broker_url(alice_url), client_id="geopush-engine")
            await alice.connect()
            # bob connects with alice's client id: alice stays on too
            bob = MqttLink(parse_broker_url(bob_url), client_id="geopush-engine")
            await bob.connect()
            await asyncio.wait_for(alice.publish("geopush/events/alice", gps("alice", 10.0)), 5)
            await asyncio.wait_for(bob.publish("geopush/events/bob", gps("bob", 11.0)), 5)
            for _ in range(500):
                if svc.totals["messages"] >= 2:
                    break
                await asyncio.sleep(0.02)
            assert svc.link.epoch == 1 and svc.link.connected  # never knocked off
            assert alice.connected and bob.connected
            await alice.disconnect()
            await bob.disconnect()
    finally:
        proc.terminate()
        proc.communicate(timeout=10)


@needs_mosquitto
async def test_shipped_config_a_merchant_reads_only_its_own_visits(tmp_path):
    """Merchant logins are named by merchant id: m1 reads geopush/visits/m1, never m2's, even
    subscribed to every merchant's."""
    proc, url = _shipped_broker(tmp_path, _passwd(tmp_path))
    try:
        m1_url = url.replace("mqtt://", "mqtt://m1:m1-pw@")
        engine_url = url.replace("mqtt://", "mqtt://geopush-engine:engine-pw@")
        async with Collector(m1_url, ["geopush/visits/#"]) as m1:
            engine = MqttLink(parse_broker_url(engine_url), client_id="geopush-engine")
            await engine.connect()
            # in this order on one connection: were m2's readable, it would arrive first
            await asyncio.wait_for(engine.publish("geopush/visits/m2", b'{"m":"m2"}'), 5)
            await asyncio.wait_for(engine.publish("geopush/visits/m1", b'{"m":"m1"}'), 5)
            await engine.disconnect()
            await m1.wait_for(lambda c: len(c.messages) >= 1)
        assert m1.messages == [("geopush/visits/m1", b'{"m":"m1"}')]
    finally:
        proc.terminate()
        proc.communicate(timeout=10)

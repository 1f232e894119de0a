"""Hot reload (control topic and SIGHUP via the pid file), graceful drain, decoder fuzz."""

from __future__ import annotations

import asyncio
import json

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine.cli import main as geopush
from engine.daemon.pipeline import Decoder, Topics
from engine.errors import DecodeError

from .conftest import Collector, World, publish_all, received_outputs, running_service


def _settled(svc, n_events):
    """All n events processed and every push decided so far received by the collector."""
    return lambda c: (
        svc.totals["events"] == n_events
        and svc.outbox.pending == 0
        and len(c.on("geopush/push/")) == svc.totals["pushes"]
    )


async def test_reload_swaps_campaigns_without_dropping_events(broker, tmp_path):
    world = World(tmp_path, users=10, per_user=20)
    first, second = world.messages[:100], world.messages[100:]
    state = tmp_path / "s.db"
    async with Collector(broker.url, ["geopush/push/#", "geopush/visits/#"]) as col, running_service(
        broker.url, state, world=world
    ) as svc:
        svc.install_signal_handlers()
        await publish_all(broker.url, first)
        await col.wait_for(_settled(svc, 100))
        pushes_before = len(col.on("geopush/push/"))
        assert pushes_before > 0
        # 1) over MQTT, as `geopush reload --broker` does: campaigns now empty -> no more pushes
        world.campaigns.write_text(json.dumps({"campaigns": []}))
        await asyncio.to_thread(geopush, ["reload", "--broker", broker.url])
        await col.wait_for(lambda c: svc.totals["reloads"] == 1)
        await publish_all(broker.url, second[:50])
        await col.wait_for(_settled(svc, 150))
        assert len(col.on("geopush/push/")) == pushes_before  # no campaign, no push
        # 2) SIGHUP through the pid file (`geopush reload --state ...`): campaigns back
        world.city.write(tmp_path)
        assert geopush(["reload", "--state", str(state)]) == 0
        await col.wait_for(lambda c: svc.totals["reloads"] == 2)
        # 3) a broken file is refused; the daemon keeps the previous campaigns and runs on
        world.campaigns.write_text("{broken")
        svc.request_reload()
        await col.wait_for(lambda c: svc.totals["reload_errors"] == 1)
        await publish_all(broker.url, second[50:])
        await col.wait_for(_settled(svc, 200))
        assert len(col.on("geopush/push/")) > pushes_before
    # every event was processed across the reloads: visits equal replay's
    world.city.write(tmp_path)
    assert received_outputs(col)["visits"] == world.oracle()["visits"]


async def test_graceful_stop_drains_and_says_offline(broker, tmp_path):
    world = World(tmp_path, users=10, per_user=10)
    async with Collector(broker.url, ["geopush/status/#", "geopush/push/#"]) as col:
        async with running_service(broker.url, tmp_path / "s.db", world=world) as svc:
            await publish_all(broker.url, world.messages)
            await col.wait_for(lambda c: svc.totals["events"] == len(world.events))
        # leaving running_service sent the stop request and checked the exit code (0)
        await col.wait_for(lambda c: c.json_on("geopush/status/")[-1]["state"] == "offline")
        states = [s["state"] for s in col.json_on("geopush/status/")]
        assert "draining" in states
        assert svc.outbox.pending == 0
        assert len(col.on("geopush/push/")) == len(world.oracle()["pushes"])


_DECODE = Decoder(Topics())
_topics = st.sampled_from(
    ["geopush/events/u1", "geopush/events/", "owntracks/u1/phone", "owntracks/u1", "other/x", "geopush/events/a/b"]
)
_json_values = st.recursive(
    st.none() | st.booleans() | st.floats(allow_nan=True) | st.integers() | st.text(max_size=8),
    lambda kids: st.lists(kids, max_size=4) | st.dictionaries(st.text(max_size=6), kids, max_size=5),
    max_leaves=12,
)
_payloads = st.one_of(
    st.binary(max_size=200),
    _json_values.map(lambda v: json.dumps(v).encode()),
    st.fixed_dictionaries(
        {"type": st.sampled_from(["gps", "wifi", "beacon", "nfc", "payment", "profile", "batch", "x"]),
         "user": st.sampled_from(["u1", "u2", ""])},
        optional={"ts": _json_values, "lon": _json_values, "lat": _json_values, "acc": _json_values,
                  "events": _json_values, "aps": _json_values},
    ).map(lambda d: json.dumps(d).encode()),
)  # fmt: skip


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(topic=_topics, payload=_payloads)
def test_decoder_fuzz_only_ever_raises_decode_errors(topic, payload):
    """Whatever arrives, the daemon's decoder returns events or a DecodeError with a reason
    (which becomes a dead letter): never another exception, which would stall the stream."""
    try:
        events = _DECODE(topic, payload)
    except DecodeError as exc:
        assert exc.reason
        return
    assert topic in ("geopush/events/u1", "owntracks/u1/phone")
    assert all(ev.user == "u1" for ev in events)

"""The daemon with the real core: same decisions as replay, through faults."""

from __future__ import annotations

import asyncio
import json
import signal

from .conftest import (
    Collector,
    World,
    needs_mosquitto,
    publish_all,
    received_outputs,
    running_service,
    spawn_daemon,
    wait_online,
)

OUT_TOPICS = ["geopush/push/#", "geopush/visits/#", "geopush/status/#", "geopush/deadletter"]


def _complete(expected):
    def pred(c):
        got = received_outputs(c)
        return got["pushes"] >= expected["pushes"] and got["visits"] >= expected["visits"]

    return pred


async def test_daemon_decisions_equal_replay(broker, tmp_path):
    world = World(tmp_path, users=30, per_user=20)
    expected = world.oracle()
    assert len(expected["pushes"]) > 100  # the trace exercises pushes and inventory
    async with Collector(broker.url, OUT_TOPICS) as col, running_service(
        broker.url, tmp_path / "s.db", world=world, batch_size=37
    ) as svc:
        await publish_all(broker.url, world.messages)
        await col.wait_for(_complete(expected))
        await asyncio.sleep(0.3)  # anything extra would show up now
        assert svc.totals["events"] == len(world.events)
    got = received_outputs(col)
    assert got == expected
    c0 = [d for d in col.json_on("geopush/push/") if d["campaign_id"] == "c0"]
    assert len({d["push_id"] for d in c0}) == 2  # inventory 2: never oversold


@needs_mosquitto
async def test_broker_restart_mid_stream(mosquitto_factory, tmp_path):
    broker = mosquitto_factory(persistence=True, extra_config="max_inflight_messages 200\n")
    world = World(tmp_path, users=30, per_user=20)
    expected = world.oracle()
    half = len(world.messages) // 2
    async with running_service(broker.url, tmp_path / "s.db", world=world) as svc:
        await publish_all(broker.url, world.messages[:half])
        # Restart while the daemon works through its backlog: mosquitto saves sessions and the
        # queued messages on a clean stop; unacked ones are redelivered on reconnect.
        broker.restart()
        await asyncio.sleep(0.1)
        await asyncio.wait_for(svc.ready.wait(), 30)  # the daemon reconnected by itself
        assert svc.link.epoch >= 2
        async with Collector(broker.url, OUT_TOPICS, client_id="col-2") as col2:
            await publish_all(broker.url, world.messages[half:])
            await col2.wait_for(
                lambda c: svc.totals["events"] >= len(world.events) and svc.outbox.pending == 0
            )
    from engine.stores.sqlite_store import SQLiteStore

    store = SQLiteStore(tmp_path / "s.db")
    try:
        assert store.push_ids() == expected["pushes"]
        assert store.count("outbox", "WHERE sent = 0") == 0
        assert store.inventory()["c0"] == 0
    finally:
        store.close()


async def test_kill_9_mid_stream_loses_nothing_and_repeats_no_decision(broker, tmp_path):
    world = World(tmp_path, users=40, per_user=20)
    expected = world.oracle()
    state = tmp_path / "s.db"
    async with Collector(broker.url, OUT_TOPICS) as col:
        proc = spawn_daemon(broker.url, state, world, "--batch-size", "16")
        try:
            await wait_online(col, proc.pid)
            # The first half streams in and the engine is killed while it works on it; the
            # second half is published only then (the engine can otherwise finish the whole
            # trace before the kill lands), and waits in the broker for the next process.
            half = len(world.messages) // 2
            pub = asyncio.create_task(publish_all(broker.url, world.messages[:half]))
            await col.wait_for(lambda c: len(c.on("geopush/push/")) >= len(expected["pushes"]) // 6)
            proc.send_signal(signal.SIGKILL)  # mid-stream
            before = len(received_outputs(col)["pushes"])
            assert before < len(expected["pushes"])
            proc.wait()
            await pub  # the broker accepted all of the first half; part waits for the engine
            await publish_all(broker.url, world.messages[half:])
            proc = spawn_daemon(broker.url, state, world, "--batch-size", "16")
            await wait_online(col, proc.pid)
            await col.wait_for(_complete(expected), timeout=40)
            proc.send_signal(signal.SIGTERM)  # graceful: drain, checkpoint, offline status
            assert proc.wait(20) == 0
            pid = proc.pid
            await col.wait_for(
                lambda c: any(s.get("pid") == pid and s["state"] == "offline" for s in c.json_on("geopush/status/"))
            )
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    got = received_outputs(col)
    assert got == expected  # nothing lost, no decision made twice, no extra decision
    # A push may be re-sent after the crash (PUBACK'd but not yet marked sent), but always with
    # the same id and the same bytes: one decision, never a second one.
    by_id: dict[str, set[bytes]] = {}
    for _t, p in col.on("geopush/push/"):
        by_id.setdefault(json.loads(p)["push_id"], set()).add(p)
    assert all(len(v) == 1 for v in by_id.values())
    last = [s for s in col.json_on("geopush/status/") if s.get("pid") == pid][-1]["counters"]
    print(
        f"\nkill -9 after {before}/{len(expected['pushes'])} pushes; after restart: "
        f"{len(col.on('geopush/push/')) - len(by_id)} push messages re-sent with the same id, "
        f"{last.get('duplicates', 0)} redelivered inputs recognised, "
        f"{last.get('messages', 0)} messages processed by the second process"
    )
    c0 = {p for p, v in by_id.items() if json.loads(next(iter(v)))["campaign_id"] == "c0"}
    assert len(c0) == 2  # inventory 2, across the crash: never oversold


async def test_restart_from_the_fences_snapshot_decides_like_replay(broker, tmp_path, caplog):
    """A graceful restart over the same state starts from the snapshot the first start wrote
    (<state>.fences.snapshot) and carries on with the same decisions as replay."""
    import logging

    caplog.set_level(logging.INFO, logger="geopush.daemon")
    world = World(tmp_path, users=30, per_user=20)
    expected = world.oracle()
    half = len(world.messages) // 2
    async with Collector(broker.url, OUT_TOPICS) as col:
        for k, part in enumerate((world.messages[:half], world.messages[half:])):
            async with running_service(broker.url, tmp_path / "s.db", world=world) as svc:
                await publish_all(broker.url, part)
                n = len(part)
                await col.wait_for(lambda c, svc=svc, n=n: svc.outbox.pending == 0 and svc.totals["events"] >= n)
            loaded = [r.getMessage() for r in caplog.records if r.getMessage().startswith("fences:")]
            assert ("from the snapshot" in loaded[-1]) == (k == 1), loaded
        await col.wait_for(_complete(expected))
    assert received_outputs(col) == expected

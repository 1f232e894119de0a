"""kill -9 of the real daemon (a subprocess, the real core, a real broker) after it committed
outputs and before any webhook delivery could happen (the receiver is down): the next start
delivers every one of them."""

from __future__ import annotations

import asyncio
import json
import signal
import time

from daemon.conftest import (  # noqa: F401  (broker: the daemon's real-broker fixture)
    Collector,
    World,
    broker,
    needs_mosquitto,
    publish_all,
    received_outputs,
    spawn_daemon,
    wait_online,
)

from engine.daemon.webhooks import WebhookStore
from engine.stores.sqlite_store import SQLiteStore

from .conftest import Receiver

OUT = ["geopush/visits/#", "geopush/push/#", "geopush/status/#"]


@needs_mosquitto
async def test_outputs_committed_before_a_kill_9_are_all_delivered_after_the_restart(broker, tmp_path, monkeypatch):  # noqa: F811
    monkeypatch.setenv("GEOPUSH_WEBHOOK_RETRY_BASE_S", "0.05")
    monkeypatch.setenv("GEOPUSH_WEBHOOK_RETRY_CAP_S", "0.3")
    monkeypatch.setenv("GEOPUSH_WEBHOOK_PAUSE_AFTER", "100000")
    world = World(tmp_path, users=20, per_user=15)
    expected = world.oracle()
    want = expected["pushes"] | expected["visits"]
    state = tmp_path / "state.db"
    SQLiteStore(state).close()
    rec = Receiver()  # down: every attempt is refused
    hooks = WebhookStore(state)
    for i in range(16):  # the city's merchants m0..m15
        hooks.create(f"m{i}", f"{rec.url}/m{i}")
    hooks.close()
    async with Collector(broker.url, OUT) as col:
        proc = spawn_daemon(broker.url, state, world)
        try:
            await wait_online(col, proc.pid)
            await publish_all(broker.url, world.messages)
            deadline = time.monotonic() + 90  # a guard against a hang
            while received_outputs(col) != expected:  # committed (and published on MQTT)
                assert proc.poll() is None, proc.stderr.read().decode()  # type: ignore[union-attr]
                assert time.monotonic() < deadline, "the daemon did not process the trace"
                await asyncio.sleep(0.05)
            proc.send_signal(signal.SIGKILL)
            proc.wait()
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        assert rec.accepted() == []
        rec.start()
        proc = spawn_daemon(broker.url, state, world)
        try:
            deadline = time.monotonic() + 90
            while set(rec.accepted()) != want:
                assert proc.poll() is None, proc.stderr.read().decode()  # type: ignore[union-attr]
                assert time.monotonic() < deadline, f"{len(want - set(rec.accepted()))} never delivered"
                await asyncio.sleep(0.05)
            proc.terminate()
            assert proc.wait(20) == 0
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            rec.stop()
    assert set(rec.accepted()) == want  # none lost (a repeat would carry the same id)
    for h in rec.hits:  # each went to its merchant's endpoint
        assert h.path == f"/hook/{json.loads(h.body)['merchant_id']}"

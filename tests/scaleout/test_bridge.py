"""Phones -> mosquitto -> `geopush bridge` -> partition logs -> `geopush worker` -> mosquitto:
the phones keep publishing to geopush/events/{user}, and subscribers get what replay decides,
also when the bridge is killed -9 mid-stream (its persistent session keeps what it did not ack)."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from daemon.conftest import Collector, World, publish_all, received_outputs

from scaleout.test_cluster import ROOT, P, Workers, _store, _wait_applied
from simulator.bench.redis_cluster import RedisClusterServer
from simulator.embedded_broker import MosquittoBroker, find_mosquitto

pytestmark = [
    pytest.mark.cluster,
    pytest.mark.skipif(find_mosquitto() is None, reason="needs the mosquitto binary ($share, sessions)"),
]


def _bridge(url: str, state: str, folder: Path, name: str = "bridge-1") -> subprocess.Popen[bytes]:
    args = [sys.executable, "-m", "engine.daemon.partitioned_cli", "bridge", "--broker", url,
            "--state", state, "--partitions", str(P), "--client-id", name]  # fmt: skip
    log = open(folder / f"{name}.log", "ab")  # noqa: SIM115 - closed with the process
    return subprocess.Popen(args, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, stdout=log,
                            stderr=subprocess.STDOUT)  # fmt: skip


async def _wait_logged(store: object, n: int, timeout: float = 60.0) -> None:
    from engine.stores.cluster_store import ClusterStore

    assert isinstance(store, ClusterStore)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while sum(int(store.r.xlen(store.key(p, "log"))) for p in range(P)) < n:
        assert loop.time() < deadline, "the bridge did not log every message"
        await asyncio.sleep(0.05)


async def test_phones_topics_unchanged_bridge_killed_mid_stream(
    group_broker: MosquittoBroker, redis_cluster: RedisClusterServer, tmp_path: Path
) -> None:
    world = World(tmp_path, users=24, per_user=16, inventory={0: 10**6})
    expected = world.oracle()
    reader = _store(redis_cluster, "reader")
    workers = Workers(redis_cluster, world, tmp_path)
    workers.extra = ["--broker", group_broker.url]
    bridge = _bridge(group_broker.url, redis_cluster.url, tmp_path)
    try:
        async with Collector(group_broker.url, ["geopush/push/#", "geopush/visits/#"]) as col:
            workers.start("w1")
            workers.start("w2")
            await _wait_subscribed(tmp_path, bridge)
            half = len(world.messages) // 2
            await publish_all(group_broker.url, world.messages[:half])
            await _wait_logged(reader, half)
            bridge.send_signal(signal.SIGKILL)
            bridge.wait()
            await publish_all(group_broker.url, world.messages[half:])  # queued in its session
            bridge = _bridge(group_broker.url, redis_cluster.url, tmp_path)
            await _wait_subscribed(tmp_path, bridge, times=2)
            await _wait_logged(reader, len(world.messages))
            await asyncio.to_thread(_wait_applied, reader, workers)

            def done(c: Collector) -> bool:
                got = received_outputs(c)
                return got["pushes"] >= expected["pushes"] and got["visits"] >= expected["visits"]

            await col.wait_for(done, timeout=30)
            assert received_outputs(col) == expected
    finally:
        bridge.send_signal(signal.SIGTERM)
        bridge.wait(10)
        workers.stop_all()
    # Nothing lost; a message the bridge logged but had not acked when killed comes again and
    # is logged twice: the workers recognise it (input digests), so outputs are still replay's.
    logged = sum(int(reader.r.xlen(reader.key(p, "log"))) for p in range(P))
    assert logged >= len(world.messages)
    assert all(not reader.unsent(p) for p in range(P))  # every output published and deleted


async def _wait_subscribed(folder: Path, bridge: subprocess.Popen[bytes], times: int = 1) -> None:
    """Until the bridge logged its subscription (``times`` such lines: restarts append)."""
    for _ in range(600):
        assert bridge.poll() is None, "the bridge exited:\n" + (folder / "bridge-1.log").read_text()
        if (folder / "bridge-1.log").read_text().count("subscribed to") >= times:
            return
        await asyncio.sleep(0.05)
    raise AssertionError("the bridge did not subscribe")

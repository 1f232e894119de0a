"""A broker that stops acknowledging must not cost `geopush worker` its leases: the outputs it
publishes wait in the partitions' outboxes (drained by a publisher thread, docs/scaling.md
"Leases"), while the worker keeps renewing and committing.

Real parts: `geopush worker` processes (``--broker``) on a Redis Cluster (3+3), mosquitto paused
with SIGSTOP (connections open, no PUBACK) for longer than the lease TTL while the second half
of the trace is logged; a subscriber on the broker collects what the phones would get.
"""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from daemon.conftest import AS_ROOT, Collector, World, received_outputs

from scaleout.test_cluster import P, Workers, _feed, _store, _wait_applied, _wait_owners
from simulator.bench.redis_cluster import RedisClusterServer
from simulator.embedded_broker import MosquittoBroker, find_mosquitto

pytestmark = [
    pytest.mark.cluster,
    pytest.mark.skipif(find_mosquitto() is None, reason="needs the mosquitto binary"),
]

LEASE_TTL_S = 1.0  # Workers starts `geopush worker --lease-ttl-ms 1000`


@pytest.fixture
def broker() -> Iterator[MosquittoBroker]:
    b = MosquittoBroker(extra_config=AS_ROOT)
    b.start()
    try:
        yield b
    finally:
        b.stop()


def _visit_id(d: dict[str, object]) -> str:
    return f"{d['visit_id']}:dwell:{d['dwell_s']}" if d["event"] == "dwell" else f"{d['visit_id']}:{d['event']}"


async def test_a_broker_that_stops_acknowledging_does_not_move_partitions(
    broker: MosquittoBroker, redis_cluster: RedisClusterServer, tmp_path: Path
) -> None:
    world = World(tmp_path, users=24, per_user=16, inventory={0: 10**6})
    expected = world.oracle()
    assert len(expected["pushes"]) > 50 and len(expected["visits"]) > 100
    feeder = _store(redis_cluster, "bridge")
    workers = Workers(redis_cluster, world, tmp_path)
    workers.extra = ["--broker", broker.url]

    def leases() -> dict[int, bytes | None]:
        return {p: feeder.r.get(feeder.key(p, "lease")) for p in range(P)}

    def pending() -> int:
        return sum(len(rows) for p in range(P) for _, rows in feeder.unsent(p))

    half = len(world.messages) // 2
    try:
        async with Collector(broker.url, ["geopush/push/#", "geopush/visits/#"]) as col:
            workers.start("w1")
            workers.start("w2")
            await asyncio.to_thread(_wait_owners, feeder, {"w1", "w2"})
            _feed(feeder, world.messages[:half])
            await asyncio.to_thread(_wait_applied, feeder, workers)
            before = leases()
            assert all(before.values())

            broker.pause()  # no PUBACK from here on
            try:
                _feed(feeder, world.messages[half:])
                # The workers go on committing: every message is applied while the broker
                # sleeps, and they keep their leases (same owner, same epoch) throughout ...
                applier = asyncio.create_task(asyncio.to_thread(_wait_applied, feeder, workers))
                while not applier.done():
                    assert leases() == before, "a partition moved while the broker did not ack"
                    await asyncio.sleep(0.05)
                await applier
                # ... and for several TTLs more (the broker still asleep)
                for _ in range(4):
                    await asyncio.sleep(LEASE_TTL_S)
                    assert leases() == before, "a partition moved while the broker did not ack"
                held = pending()
                assert held > 0  # the outputs wait in the outboxes, not lost, not yet sent
            finally:
                broker.resume()

            def complete(c: Collector) -> bool:
                got = received_outputs(c)
                return got["pushes"] >= expected["pushes"] and got["visits"] >= expected["visits"]

            await col.wait_for(complete, timeout=60)
            deadline = asyncio.get_running_loop().time() + 30
            while pending():  # every output leaves its outbox once the broker acknowledged it
                assert asyncio.get_running_loop().time() < deadline, f"{pending()} outputs still in outboxes"
                await asyncio.sleep(0.05)
            await asyncio.sleep(0.5)  # anything extra would show up now
            after = leases()
    finally:
        workers.stop_all()
    assert after == before  # same owners, same epochs: no partition moved
    assert received_outputs(col) == expected
    times = Counter(json.loads(p)["push_id"] for _, p in col.on("geopush/push/"))
    times.update(_visit_id(json.loads(p)) for _, p in col.on("geopush/visits/"))
    assert max(times.values()) == 1, [k for k, v in times.items() if v > 1][:5]  # once per id
    print(f"outputs held in the outboxes while the broker was paused: {held}")

"""`geopush run --intake nats://...` workers on a 3-node NATS cluster decide what `geopush replay`
decides, through a broker node killed mid-stream (docs/scaling.md).

Phones publish over MQTT QoS 1 to the cluster; the cluster's mapping puts each user into one of
16 partitions; 1 or 3 workers consume disjoint sets of partitions and push back through the
cluster's MQTT listener; a subscriber collects the pushes and visits at QoS 1. A user's events
stay in one partition, consumed in order by one worker, so the whole trace is published at once.
"""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
from pathlib import Path

import pytest
from daemon.conftest import Collector, World, received_outputs, spawn_daemon, wait_online

from cluster.conftest import PARTITIONS
from cluster.harness import publish_rounds, stream_leader
from engine.transport.jetstream import MSGS_STREAM
from simulator.bench.nats_cluster import NatsCluster
from simulator.bench.redis_server import RedisServer, find_redis_server

pytestmark = pytest.mark.cluster

OUT_TOPICS = ["geopush/push/#", "geopush/visits/#", "geopush/status/#"]
USERS, PER_USER = 40, 16
SPLITS = {1: ["all"], 3: ["0-5", "6-10", "11-15"]}


@pytest.mark.parametrize("workers", [1, 3])
async def test_cluster_workers_decide_what_replay_decides_through_a_node_kill(
    nats_cluster: NatsCluster, tmp_path: Path, workers: int
) -> None:
    c = nats_cluster
    world = World(tmp_path, users=USERS, per_user=PER_USER, inventory={0: 10**6})
    expected = world.oracle()
    assert len(expected["pushes"]) > 50 and len(expected["visits"]) > 100
    redis = None
    if workers > 1:
        if find_redis_server() is None:
            pytest.skip("redis-server not found: several workers share a Redis state")
        redis = RedisServer()
        redis.start()
    victim = c.index_of(await stream_leader(c, MSGS_STREAM))
    url = c.mqtt_url(next(i for i in range(len(c.nodes)) if i != victim))
    procs: list[subprocess.Popen[bytes]] = []
    try:
        for k, parts in enumerate(SPLITS[workers]):
            state = redis.url if redis is not None else str(tmp_path / "state.sqlite")
            group = ["--group", "g"] if redis is not None else []
            procs.append(
                spawn_daemon(
                    url,
                    state,
                    world,  # type: ignore[arg-type]
                    "--intake",
                    c.nats_urls,
                    "--partitions",
                    parts,
                    "--partition-count",
                    str(PARTITIONS),
                    "--client-id",
                    f"w{k}",
                    "--pid-file",
                    str(tmp_path / f"w{k}.pid"),
                    *group,
                )  # fmt: skip
            )
        async with Collector(url, OUT_TOPICS, client_id="collector") as col:
            for p in procs:
                try:
                    await wait_online(col, p.pid, timeout=60)
                except AssertionError:
                    for q in procs:
                        q.terminate()
                    errs = [q.communicate(timeout=20)[1].decode()[-1500:] for q in procs]
                    raise AssertionError(f"a worker did not come online: {errs}") from None

            async def kill(k: int) -> None:
                if k == PER_USER // 2:
                    c.kill(victim)  # the node leading $MQTT_msgs, mid-stream

            survivors = [c.mqtt_url(i) for i in range(len(c.nodes)) if i != victim]
            resent = await publish_rounds(survivors, world.messages, USERS, between=kill)

            def complete(col: Collector) -> bool:
                got = received_outputs(col)
                return got["pushes"] >= expected["pushes"] and got["visits"] >= expected["visits"]

            await col.wait_for(complete, timeout=90)
            await asyncio.sleep(0.5)  # anything extra would show up now
            assert received_outputs(col) == expected
            # Decided once: every push id carries one payload. On the wire a push may come twice
            # when the node holding its PUBACK dies (the outbox re-sends it unacknowledged, as
            # docs/protocol.md promises: at least once, stable ids; phones drop the copy).
            by_id: dict[str, set[bytes]] = {}
            for _t, p in col.on("geopush/push/"):
                by_id.setdefault(json.loads(p)["push_id"], set()).add(bytes(p))
            assert all(len(v) == 1 for v in by_id.values()), "a push decided twice, differently"

            def events_by_worker(col: Collector) -> dict[str, int]:
                last = {
                    d["client_id"]: d for d in col.json_on("geopush/status/") if "counters" in d
                }
                return {w: int(d["counters"].get("events", 0)) for w, d in last.items()}

            await col.wait_for(lambda col: sum(events_by_worker(col).values()) >= len(world.events))
            counts = events_by_worker(col)
            print(f"events per worker: {counts}; messages sent again: {resent}")
            # every event once, plus at most the copies of messages the phones sent again
            assert len(world.events) <= sum(counts.values()) <= len(world.events) + resent, counts
            assert all(counts.get(f"w{k}", 0) > 0 for k in range(workers)), counts
    finally:
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in procs:
            try:
                p.wait(20)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        if redis is not None:
            redis.close()

"""One stack: a 3-node NATS cluster as the broker (phones publish over MQTT QoS 1; each partition
one durable consumer on ``$MQTT_msgs``) and a Redis Cluster (3 masters + 3 replicas) as the state,
with `geopush worker --intake nats://...` processes holding leases on the partitions. They decide
exactly what `geopush replay` decides on the same trace, with 1, 2 and 3 workers and through each
fault: a worker killed (kill -9), a worker joining mid-stream, the NATS node leading
``$MQTT_msgs`` killed, a Redis master failed over (docs/scaling.md, "One stack").

The workers run without ``--broker``: what they decide stays in the partitions' outbox streams
in Redis, one entry per commit, so "decided once" is read exactly (each output id in one entry).
Phones publish round by round (a user's messages in order, as phones do); a round's messages
whose PUBACK was lost with a node are sent again, and the engine recognises the copies. The
last test drives two workers in-process: one commits everything and dies before acknowledging,
the next owner gets it all again and recognises every message by its digest.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import nats
import pytest
from daemon.conftest import Collector, World, received_outputs
from scaleout.procs import WorkerProcs

from cluster.conftest import PARTITIONS
from cluster.harness import publish_rounds, stream_leader
from engine.daemon.pipeline import Renderer, Topics
from engine.outputs import Push, decode_output
from engine.stores.cluster_store import ClusterStore, connect_cluster
from engine.transport.jetstream import MSGS_STREAM, durable_name, parse_nats_urls
from simulator.bench.nats_cluster import NatsCluster
from simulator.bench.redis_cluster import RedisClusterServer

pytestmark = pytest.mark.cluster

ROOT = Path(__file__).resolve().parents[2]
USERS, PER_USER = 24, 16
OUT_TOPICS = ["geopush/push/#", "geopush/visits/#"]


@pytest.fixture
def redis_cluster() -> Iterator[RedisClusterServer]:
    import shutil

    if shutil.which("redis-server") is None or shutil.which("redis-cli") is None:
        pytest.skip("redis-server and redis-cli not found on PATH: the stack tests need them")
    with RedisClusterServer() as cl:
        yield cl


class Stack(WorkerProcs):
    """`geopush worker --intake` processes on the test's NATS cluster and Redis Cluster."""

    stop_wait_s = 30.0

    def __init__(self, nc: NatsCluster, rc: RedisClusterServer, world: World, folder: Path,
                 broker: str | None = None) -> None:  # fmt: skip
        super().__init__()
        self.nc, self.rc, self.world, self.folder = nc, rc, world, folder
        self.broker = broker
        self.store = ClusterStore(connect_cluster(rc.url), worker="test", partitions=PARTITIONS,
                                  render=Renderer(Topics()))  # fmt: skip

    def start(self, name: str) -> None:
        args = [sys.executable, "-m", "engine.daemon.partitioned_cli", "worker", "--state", self.rc.url,
                "--partitions", str(PARTITIONS), "--client-id", name, "--fences", str(self.world.fences),
                "--campaigns", str(self.world.campaigns), "--batch-size", "8", "--lease-ttl-ms", "1000",
                "--intake", self.nc.nats_urls]  # fmt: skip
        if self.broker is not None:
            args += ["--broker", self.broker]
        log = open(self.folder / f"{name}.log", "wb")  # noqa: SIM115 - closed with the process
        self.procs[name] = subprocess.Popen(args, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)},
                                            stdout=log, stderr=subprocess.STDOUT)  # fmt: skip

    def log(self, name: str) -> str:
        return (self.folder / f"{name}.log").read_text(errors="replace")[-3000:]

    def logs(self) -> str:
        return "\n".join(f"--- {n}\n{self.log(n)}" for n in self.procs)

    def check_alive(self) -> None:
        dead = {n: p.returncode for n, p in self.procs.items() if p.poll() not in (None, -9)}
        assert not dead, f"worker exited: {dead}\n{self.logs()}"

    def wait_owners(self, names: set[str], timeout: float = 60.0) -> None:
        """Until the partitions' leases are held by exactly the workers ``names``, all of them."""
        deadline = time.monotonic() + timeout
        owners: set[str] = set()
        while True:
            self.check_alive()
            try:
                vals = [self.store.r.get(self.store.key(p, "lease")) for p in range(PARTITIONS)]
            except Exception:  # noqa: BLE001  (a failover in progress: ask again)
                vals = [None]
            owners = {bytes(v).decode().split(":")[0] for v in vals if v is not None}
            if owners == names and all(v is not None for v in vals):
                return
            if time.monotonic() > deadline:
                raise AssertionError(f"lease owners {owners}, expected {names}\n{self.logs()}")
            time.sleep(0.1)

    async def wait_applied(self, timeout: float = 120.0) -> None:
        """Until every partition's consumer has nothing left to deliver and nothing unacknowledged
        (a message is acknowledged after the commit that applied it)."""
        nc = await nats.connect(
            servers=parse_nats_urls(self.nc.nats_urls), max_reconnect_attempts=-1
        )
        deadline = time.monotonic() + timeout
        late: list[int] = []
        try:
            while True:
                self.check_alive()
                late = []
                for p in range(PARTITIONS):
                    subject = f"$JS.API.CONSUMER.INFO.{MSGS_STREAM}.{durable_name('geopush', p)}"
                    try:
                        info = json.loads((await nc.request(subject, b"{}", timeout=5)).data)
                    except Exception:  # noqa: BLE001  (a node failing over: ask again)
                        late.append(p)
                        continue
                    if "error" in info or info["num_pending"] or info["num_ack_pending"]:
                        late.append(p)
                if not late:
                    return
                if time.monotonic() > deadline:
                    raise AssertionError(f"partitions {late} not applied\n{self.logs()}")
                await asyncio.sleep(0.3)
        finally:
            await nc.close()

    def outputs(self) -> tuple[dict[str, set[str]], Counter[str]]:
        got: dict[str, set[str]] = {"pushes": set(), "visits": set()}
        times: Counter[str] = Counter()
        for p in range(PARTITIONS):
            for _, rows in self.store.unsent(p):
                for r in rows:
                    got["pushes" if isinstance(decode_output(r.payload), Push) else "visits"].add(
                        r.out_id
                    )
                    times[r.out_id] += 1
        return got, times

    def epochs(self) -> dict[int, int]:
        return {
            p: int(self.store.r.get(self.store.key(p, "epoch")) or 0) for p in range(PARTITIONS)
        }


async def _run(
    nats_cluster: NatsCluster,
    redis_cluster: RedisClusterServer,
    tmp_path: Path,
    workers: list[str],
    fault: Callable[[Stack, int], Awaitable[None]] | None = None,
    *,
    phone_nodes: list[int] | None = None,
    owners_after: set[str] | None = None,
    wire_node: int | None = None,
    inventory: int = 10**6,
    check: Callable[[Stack, dict[str, set[str]], dict[str, set[str]]], None] | None = None,
) -> Stack:
    """Start ``workers``, publish the trace (``fault(stack, round)`` after each round), wait until
    every message is applied and compare the decisions with replay's: read from the outbox
    streams, or with ``wire_node`` as received by a subscriber on that node's MQTT listener,
    which the workers publish to (``--broker``)."""
    world = World(tmp_path, users=USERS, per_user=PER_USER, inventory={0: inventory})
    expected = world.oracle()
    assert len(expected["pushes"]) > 50 and len(expected["visits"]) > 100
    await stream_leader(nats_cluster, MSGS_STREAM)  # an MQTT connection makes $MQTT_msgs
    wire = None if wire_node is None else nats_cluster.mqtt_url(wire_node)
    stack = Stack(nats_cluster, redis_cluster, world, tmp_path, broker=wire)
    col = None if wire is None else Collector(wire, OUT_TOPICS, client_id="collector")
    try:
        if col is not None:
            await col.__aenter__()
        for w in workers:
            stack.start(w)
        await asyncio.to_thread(stack.wait_owners, set(workers))
        nodes = phone_nodes if phone_nodes is not None else range(len(nats_cluster.nodes))
        urls = [nats_cluster.mqtt_url(i) for i in nodes]

        async def between(k: int) -> None:
            if fault is not None:
                await fault(stack, k)

        resent = await publish_rounds(urls, world.messages, USERS, between=between)
        await stack.wait_applied()
        await asyncio.to_thread(stack.wait_owners, owners_after or set(workers))
        if col is None:
            got, times = stack.outputs()
        else:

            def complete(col: Collector) -> bool:
                got = received_outputs(col)
                return got["pushes"] >= expected["pushes"] and got["visits"] >= expected["visits"]

            await col.wait_for(complete, timeout=120)
            await asyncio.sleep(0.5)  # anything extra would show up now
            got = received_outputs(col)
            # On the wire a push may come twice (at least once, stable ids: docs/protocol.md);
            # decided once means one payload per push id.
            payloads: dict[str, set[bytes]] = {}
            for _t, p in col.on("geopush/push/"):
                payloads.setdefault(json.loads(p)["push_id"], set()).add(bytes(p))
            times = Counter({k: len(v) for k, v in payloads.items()})
        print(f"messages sent again: {resent}; epochs {stack.epochs()}")
    finally:
        await asyncio.to_thread(stack.stop_all)
        if col is not None:
            await col.__aexit__(None, None, None)
    assert max(times.values()) == 1, [k for k, v in times.items() if v > 1][:5]  # decided once
    if check is not None:
        check(stack, got, expected)
        return stack
    assert got == expected
    assert max(times.values()) == 1, [k for k, v in times.items() if v > 1][:5]  # decided once
    return stack


@pytest.mark.parametrize("n", [1, 2, 3])
async def test_workers_on_nats_and_redis_cluster_decide_what_replay_decides(
    nats_cluster: NatsCluster, redis_cluster: RedisClusterServer, tmp_path: Path, n: int
) -> None:
    await _run(nats_cluster, redis_cluster, tmp_path, [f"w{i}" for i in range(1, n + 1)])


async def test_a_worker_paused_then_killed_mid_stream(
    nats_cluster: NatsCluster, redis_cluster: RedisClusterServer, tmp_path: Path
) -> None:
    """w1 is paused (SIGSTOP, as by a long GC pause) with a backlog in its open pull requests
    until w2 holds every partition, then resumed: its leases are gone, so the batches it was
    about to commit are fenced (nothing applied) and it gives back what it held; rendezvous
    hands it half the partitions again. Three rounds later it is killed (kill -9) with work in
    hand: w2 takes its partitions and holds their new messages until the dead one's come back
    (after the ack wait), then applies them all in stream order."""

    async def fault(stack: Stack, k: int) -> None:
        if k == 3:
            stack.freeze("w1")
        if k == 6:
            await asyncio.to_thread(stack.wait_owners, {"w2"})
            stack.thaw("w1")
            await asyncio.to_thread(stack.wait_owners, {"w1", "w2"})
        if k == 9:
            stack.kill("w1")

    stack = await _run(
        nats_cluster, redis_cluster, tmp_path, ["w1", "w2"], fault, owners_after={"w2"}
    )
    assert max(stack.epochs().values()) >= 3  # partitions changed hands twice


async def test_a_worker_joins_mid_stream(
    nats_cluster: NatsCluster, redis_cluster: RedisClusterServer, tmp_path: Path
) -> None:
    """A third worker joins: rendezvous moves a share of the partitions to it; their old owners
    stop pulling them and give back (NAK) what they held, in order, before it applies them."""

    async def fault(stack: Stack, k: int) -> None:
        if k == PER_USER // 3:
            stack.start("w3")
            await asyncio.to_thread(stack.wait_owners, {"w1", "w2", "w3"})

    stack = await _run(nats_cluster, redis_cluster, tmp_path, ["w1", "w2"], fault,
                       owners_after={"w1", "w2", "w3"})  # fmt: skip
    assert max(stack.epochs().values()) >= 2


async def test_the_nats_node_leading_the_stream_killed_mid_stream(
    nats_cluster: NatsCluster, redis_cluster: RedisClusterServer, tmp_path: Path
) -> None:
    """The node leading ``$MQTT_msgs`` is killed (the phones publish to the other two). Here the
    workers publish their outputs to a surviving node's MQTT listener and a subscriber there
    collects them: what reaches the phones equals replay's decisions, one payload per push id.
    While the election stalls their PUBACKs the workers keep their leases: no partition moves
    (the outputs wait in the outboxes; docs/scaling.md "Leases")."""
    victim = nats_cluster.index_of(await stream_leader(nats_cluster, MSGS_STREAM))
    before: dict[int, int] = {}

    async def fault(stack: Stack, k: int) -> None:
        if k == PER_USER // 2:
            before.update(stack.epochs())
            nats_cluster.kill(victim)

    others = [i for i in range(len(nats_cluster.nodes)) if i != victim]
    stack = await _run(nats_cluster, redis_cluster, tmp_path, ["w1", "w2"], fault, phone_nodes=others,
                       wire_node=others[0])  # fmt: skip
    assert stack.epochs() == before, f"partitions moved: {before} -> {stack.epochs()}\n{stack.logs()}"


async def test_the_node_holding_the_phones_sessions_killed_mid_stream(
    nats_cluster: NatsCluster, redis_cluster: RedisClusterServer, tmp_path: Path
) -> None:
    """The node the phones publish to is killed: they reconnect to another and send the round's
    unacknowledged messages again (copies the workers recognise)."""
    leader = nats_cluster.index_of(await stream_leader(nats_cluster, MSGS_STREAM))
    victim = next(i for i in range(len(nats_cluster.nodes)) if i != leader)
    order = [victim] + [i for i in range(len(nats_cluster.nodes)) if i != victim]

    async def fault(stack: Stack, k: int) -> None:
        if k == PER_USER // 2:
            nats_cluster.kill(victim)

    # the phones start on the victim (publish_rounds moves on to the next URL when it dies)
    await _run(nats_cluster, redis_cluster, tmp_path, ["w1", "w2"], fault, phone_nodes=order)


async def test_a_redis_master_failed_over_mid_stream(
    nats_cluster: NatsCluster, redis_cluster: RedisClusterServer, tmp_path: Path
) -> None:
    async def fault(stack: Stack, k: int) -> None:
        if k == PER_USER // 2:
            dead = redis_cluster.master_of_slot(stack.store.r.keyslot(stack.store.key(0, "u")))
            redis_cluster.kill(dead)
            await asyncio.to_thread(redis_cluster.wait_failover, dead)

    await _run(nats_cluster, redis_cluster, tmp_path, ["w1", "w2"], fault)


def test_messages_applied_but_not_acknowledged_are_applied_once(
    nats_cluster: NatsCluster, redis_cluster: RedisClusterServer, tmp_path: Path
) -> None:
    """Worker a commits every message and dies before acknowledging any (the window between
    commit and ack); its leases lapse. Worker b takes the partitions: the server delivers all
    of them again after the ack wait, and b recognises each by its digest: applied once."""
    from engine.campaigns import load_campaigns
    from engine.core import Core
    from engine.daemon.partitioned import NatsPartitionWorker
    from engine.transport.jetstream_leased import PartitionIntake
    from fences.catalog import load_catalog
    from fences.index import FenceIndex

    world = World(tmp_path, users=USERS, per_user=4, inventory={0: 10**6})
    index, campaigns = FenceIndex(load_catalog(world.fences)), load_campaigns(world.campaigns)
    asyncio.run(stream_leader(nats_cluster, MSGS_STREAM))
    urls = parse_nats_urls(nats_cluster.nats_urls)

    def worker(name: str) -> NatsPartitionWorker:
        intake = PartitionIntake(urls, partition_count=PARTITIONS, name=name)
        intake.start()
        store = ClusterStore(connect_cluster(redis_cluster.url), worker=name, partitions=PARTITIONS,
                             render=Renderer(Topics()), lease_ttl_ms=1000)  # fmt: skip
        w = NatsPartitionWorker(store, lambda s: Core(index, campaigns, s), Topics(), intake=intake,  # type: ignore[arg-type]
                                batch=1000)  # fmt: skip
        w.tick()
        assert len(w.cores) == PARTITIONS
        return w

    a = worker("a")
    asyncio.run(publish_rounds([nats_cluster.mqtt_url(0)], world.messages, USERS))
    n = len(world.messages)
    applied: set[int] = set()
    deadline = time.monotonic() + 60
    while len(applied) < n:  # apply and commit, never acknowledge (no ``done``)
        assert time.monotonic() < deadline, f"a applied {len(applied)} of {n}"
        a.tick()  # renews the leases
        for p in sorted(a.cores):
            msgs = [m for m in a.intake.take(p, 1000) if m.seq not in applied]
            if msgs and a.apply(p, [(m.topic, m.payload) for m in msgs], str(msgs[-1].seq)):
                applied.update(m.seq for m in msgs)
        time.sleep(0.05)
    assert a.events == len(world.events) and a.duplicates == 0
    a.intake.stop(give_back=False)  # "kill -9": nothing acknowledged, nothing given back
    for p in range(PARTITIONS):  # its leases and heartbeat lapse
        a.store.r.delete(a.store.key(p, "lease"))
    a.store.r.delete(f"{a.store.prefix}:{{workers}}")
    decided = {k for k in a.store.r.scan_iter(match=f"{a.store.prefix}:*:p:*", count=1000)}
    b = worker("b")
    deadline = time.monotonic() + 60
    while b.duplicates < n:
        assert time.monotonic() < deadline, (
            f"b recognised {b.duplicates} of {n}, applied {b.events} events; {b.intake.received} received"
        )
        b.tick()
        for p in sorted(b.cores):
            b.step(p)
        time.sleep(0.05)
    b.intake.stop()
    assert b.events == 0 and b.duplicates == n  # every copy recognised, none applied again
    assert {k for k in b.store.r.scan_iter(match=f"{b.store.prefix}:*:p:*", count=1000)} == decided


def _replay_pushes(world: World) -> list[Push]:
    """The pushes `geopush replay` decides on the world's trace, decoded."""
    import tempfile

    from engine.replay import replay

    with tempfile.TemporaryDirectory() as tmp:
        trace = Path(tmp) / "trace.jsonl"
        trace.write_bytes(b"".join(p + b"\n" for _, p in world.messages))
        replay(trace, world.fences, world.campaigns, out_dir=Path(tmp) / "out", progress=False)
        lines = (Path(tmp) / "out" / "pushes.jsonl").read_bytes().splitlines()
    return [o for o in map(decode_output, lines) if isinstance(o, Push)]


async def test_coupons_are_never_oversold_through_a_worker_kill(
    nats_cluster: NatsCluster, redis_cluster: RedisClusterServer, tmp_path: Path
) -> None:
    """Store 0's campaign has 3 coupons for far more enters; a worker is killed mid-stream. Which
    users get the 3 depends on which partitions reach the pool first (not replay's order), so
    here: exactly 3 coupons pushed (none oversold, none lost: the global pool, the partitions'
    blocks and the coupons pushed add up to the inventory), everything else as replay."""
    inventory = 3

    async def fault(stack: Stack, k: int) -> None:
        if k == PER_USER // 2:
            stack.kill("w1")

    def check(stack: Stack, got: dict[str, set[str]], expected: dict[str, set[str]]) -> None:
        st = stack.store
        pushes = [decode_output(r.payload) for q in range(PARTITIONS) for _, rows in st.unsent(q)
                  for r in rows]  # fmt: skip
        limited = {o.out_id for o in pushes if isinstance(o, Push) and o.campaign_id == "c0"}
        replay_limited = {o.push_id for o in _replay_pushes(stack.world) if o.campaign_id == "c0"}
        assert len(replay_limited) == inventory  # replay gives its 3 to other users, maybe
        assert len(limited) == inventory, sorted(limited)
        pool = int(st.r.get(st.pool_key("c0")) or 0)
        blocks = sum(int(st.r.hget(st.key(q, "inv"), "c0") or 0) for q in range(PARTITIONS))
        assert pool + blocks + len(limited) == inventory, (pool, blocks, sorted(limited))
        assert got["visits"] == expected["visits"]
        assert got["pushes"] - limited == expected["pushes"] - replay_limited

    await _run(nats_cluster, redis_cluster, tmp_path, ["w1", "w2"], fault, owners_after={"w2"},
               inventory=inventory, check=check)  # fmt: skip

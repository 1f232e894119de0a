"""Partition-affine workers on a real Redis Cluster (3 masters + 3 replicas on free ports):
leases and fencing, coupons reserved in blocks never oversold, and `geopush worker` processes
deciding exactly what `geopush replay` decides, through kill -9, a join and a master failover.

The trace goes into the partitions' logs the way `geopush bridge` puts it there
(``bridge_message``; the bridge over mosquitto is tested in test_bridge.py). A partition's log
keeps its users' events in order, so no round-by-round pacing is needed (unlike the `$share`
group in test_workers.py).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from daemon.conftest import World  # the daemon's synthetic world (tests/daemon/conftest.py)

from engine.daemon.partitioned import bridge_message
from engine.daemon.pipeline import Renderer, Topics
from engine.outputs import Coupon, Push, decode_output
from engine.partitions import partition_of
from engine.state import Output
from engine.stores.cluster_store import ClusterStore, LeaseLost, connect_cluster
from scaleout.procs import WorkerProcs
from simulator.bench.redis_cluster import RedisClusterServer

pytestmark = pytest.mark.cluster

P = 16
ROOT = Path(__file__).resolve().parents[2]
TOPICS = Topics()


def _store(cl: RedisClusterServer, worker: str, **kw: Any) -> ClusterStore:
    return ClusterStore(connect_cluster(cl.url), worker=worker, partitions=P, render=Renderer(TOPICS), **kw)


def _push(user: str, pid: str, campaign: str) -> Output:
    return Push(push_id=pid, user=user, campaign_id=campaign, store_id="s1", merchant_id="m1",
                visit_id="v1", trigger="enter", ts=1.0, coupon=Coupon("10% off", 10.0, "EUR", 3600))  # fmt: skip


def _users_in(p: int, n: int) -> list[str]:
    out, i = [], 0
    while len(out) < n:
        if partition_of(f"u{i}", P) == p:
            out.append(f"u{i}")
        i += 1
    return out


# --- leases ----------------------------------------------------------------------------------


def test_a_worker_that_lost_its_lease_commits_nothing(redis_cluster: RedisClusterServer) -> None:
    w1, w2 = _store(redis_cluster, "w1"), _store(redis_cluster, "w2")
    assert w1.acquire(3) and not w2.acquire(3)
    (u,) = _users_in(3, 1)
    w1.begin(3, [u])
    w1.user(u).last_ts = 42.0
    # w1 stalls past its TTL (the key expires), w2 takes the partition over: a higher epoch.
    w1.r.delete(w1.key(3, "lease"))
    assert w2.acquire(3)
    assert w1.leases[3] == "w1:1" and w2.leases[3] == "w2:2"
    with pytest.raises(LeaseLost, match="lease 'w1:1' lost"):
        w1.commit([], log_to="1-0")
    assert 3 not in w1.leases and not w1.acquire(3)
    w2.begin(3, [u])
    assert w2.user(u).last_ts != 42.0  # nothing of w1's batch was applied
    assert w2.offsets[3] == ""
    w2.commit([], log_to="1-0")
    assert w2.offsets[3] == "1-0"
    # A batch read from a stale offset (its entries were applied already) applies nothing.
    w2.offsets[3] = ""
    w2.begin(3, [u])
    w2.offsets[3] = ""
    w2.user(u).last_ts = 43.0
    with pytest.raises(LeaseLost, match="offset moved to 1-0"):
        w2.commit([], log_to="1-0")
    assert w2.r.get(w2.key(3, "off")) == b"1-0"
    assert w2.acquire(3)
    w2.begin(3, [u])
    assert w2.user(u).last_ts != 43.0
    w2.release(3)
    assert w1.acquire(3) and w1.leases[3] == "w1:3"


# --- coupons across partitions -----------------------------------------------------------------


def _take(store: ClusterStore, p: int, users: list[str], campaign: str, total: int) -> int:
    """One batch of partition ``p``: each user takes a coupon if any is left; how many were taken."""
    got = 0
    for _ in range(20):
        store.begin(p, users)
        outs = []
        for u in users:
            if store.take_coupon(campaign, total):
                outs.append(_push(u, f"{campaign}:{u}", campaign))
        try:
            store.commit(outs)
        except Exception as exc:  # Refused: re-run with the counts it learnt
            if type(exc).__name__ != "Refused":
                raise
            continue
        got = len(outs)
        break
    return got


def _ledger(store: ClusterStore, campaign: str) -> tuple[int, int]:
    """(coupons left in the pool, coupons sitting in partitions' blocks)."""
    pool = int(store.r.get(store.pool_key(campaign)) or 0)
    blocks = sum(int(store.r.hget(store.key(p, "inv"), campaign) or 0) for p in range(P))
    return pool, blocks


@pytest.mark.parametrize("inventory", [1, 2, 3])
def test_coupons_are_never_oversold_across_partitions(
    redis_cluster: RedisClusterServer, inventory: int
) -> None:
    stores = [_store(redis_cluster, f"w{i}", block=2) for i in range(4)]
    taken = 0
    for p in range(8):
        st = stores[p % 4]
        assert st.acquire(p)
        taken += _take(st, p, _users_in(p, 2), "c1", inventory)
    pool, blocks = _ledger(stores[0], "c1")
    assert taken == inventory  # demand (16) > inventory: all of it used, none twice
    assert pool + blocks + taken == inventory
    pids = {k.decode() for k in _scan(stores[0], "*:p:c1:*")}
    assert len(pids) == inventory


def _scan(store: ClusterStore, pattern: str) -> Iterator[bytes]:
    yield from store.r.scan_iter(match=f"{store.prefix}:{pattern}", count=1000)


def test_a_reservation_asked_again_is_granted_once(redis_cluster: RedisClusterServer) -> None:
    """A commit lost after its reservation (Redis failed on the reply) is re-run: the re-run asks
    for the same reservation number and gets the same grant, not a second one."""
    st = _store(redis_cluster, "w1", block=2)
    users = _users_in(2, 2)
    assert st.acquire(2)
    st.begin(2, users)
    assert all(st.take_coupon("c1", 10) for _ in users)
    st._reserve_missing()  # granted 2 (seq 0); then the commit "fails"
    st.rollback()
    assert _ledger(st, "c1") == (8, 0)
    assert _take(st, 2, users, "c1", 10) == 2
    assert _ledger(st, "c1") == (8, 0)  # the same 2 coupons, credited and taken


_CRASH = """
import os, signal, sys
sys.path.insert(0, {tests!r})
from cluster_child import crash_after_reserve
crash_after_reserve({url!r}, {p}, {users!r})
"""


def test_kill_9_between_reservation_and_commit_loses_nothing(
    redis_cluster: RedisClusterServer, tmp_path: Path
) -> None:
    """A worker reserves coupons from the pool for partition p, then dies (kill -9) before its
    commit credits them. The partition's next owner asks for the same reservation and gets the
    same grant back: nothing lost, nothing granted twice, never oversold."""
    inventory, p = 3, 5
    users = _users_in(p, 2)
    code = _CRASH.format(tests=str(Path(__file__).parent), url=redis_cluster.url, p=p, users=users)
    res = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)},
                         capture_output=True, timeout=60, check=False)  # fmt: skip
    assert res.returncode == -signal.SIGKILL, res.stderr.decode()[-2000:]
    after = _store(redis_cluster, "w2", block=2)
    pool, blocks = _ledger(after, "c1")
    assert (pool, blocks) == (inventory - 2, 0)  # granted 2, credited to nobody yet
    after.r.delete(after.key(p, "lease"))  # the dead worker's lease lapses
    assert after.acquire(p)
    assert _take(after, p, users, "c1", inventory) == 2
    assert _ledger(after, "c1") == (inventory - 2, 0)  # the same grant, not a second one
    q = next(x for x in range(P) if x != p)
    assert after.acquire(q)
    assert _take(after, q, _users_in(q, 3), "c1", inventory) == 1
    assert _ledger(after, "c1") == (0, 0)


# --- worker processes vs replay ----------------------------------------------------------------


class Workers(WorkerProcs):
    """`geopush worker` processes on the test's cluster (outputs stay in the outbox streams)."""

    def __init__(self, cl: RedisClusterServer, world: World, folder: Path) -> None:
        super().__init__()
        self.cl, self.world, self.folder = cl, world, folder
        self.extra: list[str] = []

    def start(self, name: str) -> None:
        args = [sys.executable, "-m", "engine.daemon.partitioned_cli", "worker", "--state", self.cl.url, "--partitions", str(P),
                "--client-id", name, "--fences", str(self.world.fences), "--campaigns",
                str(self.world.campaigns), "--batch-size", "8", "--lease-ttl-ms", "1000", *self.extra]  # fmt: skip
        log = open(self.folder / f"{name}.log", "wb")  # noqa: SIM115 - closed with the process
        self.procs[name] = subprocess.Popen(args, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)},
                                            stdout=log, stderr=subprocess.STDOUT)  # fmt: skip

    def freeze(self) -> None:
        for p in self.procs.values():
            if p.poll() is None:
                p.send_signal(signal.SIGSTOP)

    def thaw(self) -> None:
        for p in self.procs.values():
            if p.poll() is None:
                p.send_signal(signal.SIGCONT)

    def log(self, name: str) -> str:
        return (self.folder / f"{name}.log").read_text(errors="replace")[-3000:]


def _feed(store: ClusterStore, messages: list[tuple[str, bytes]]) -> None:
    for topic, payload in messages:
        bridge_message(store, TOPICS, topic, payload)


def _wait_applied(store: ClusterStore, workers: Workers, timeout: float = 90.0) -> None:
    """Until every partition's applied offset is its log's last entry."""
    deadline = time.monotonic() + timeout
    while True:
        late = []
        for p in range(P):
            try:
                last = store.r.xrevrange(store.key(p, "log"), count=1)
                off = store.r.get(store.key(p, "off"))
            except Exception:  # a failover in progress: ask again
                late.append(p)
                continue
            if last and (off is None or off != last[0][0]):
                late.append(p)
        if not late:
            return
        dead = {n: p.returncode for n, p in workers.procs.items() if p.poll() not in (None, -9)}
        assert not dead, f"worker exited: {dead}\n" + "\n".join(workers.log(n) for n in dead)
        if time.monotonic() > deadline:
            logs = "\n".join(f"--- {n}\n{workers.log(n)}" for n in workers.procs)
            raise AssertionError(f"partitions {late} not applied\n{logs}")
        time.sleep(0.05)


def _wait_owners(store: ClusterStore, names: set[str], timeout: float = 30.0) -> None:
    """Until the partitions' leases are held by exactly the workers ``names``, all of them."""
    deadline = time.monotonic() + timeout
    while True:
        vals = [store.r.get(store.key(p, "lease")) for p in range(P)]
        owners = {bytes(v).decode().split(":")[0] for v in vals if v is not None}
        if owners == names and all(v is not None for v in vals):
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"lease owners {owners}, expected {names}")
        time.sleep(0.05)


def _outputs(store: ClusterStore) -> tuple[dict[str, set[str]], Counter[str]]:
    got: dict[str, set[str]] = {"pushes": set(), "visits": set()}
    times: Counter[str] = Counter()
    for p in range(P):
        for _, rows in store.unsent(p):
            for r in rows:
                got["pushes" if isinstance(decode_output(r.payload), Push) else "visits"].add(r.out_id)
                times[r.out_id] += 1
    return got, times


def _world(tmp_path: Path) -> tuple[World, dict[str, set[str]]]:
    world = World(tmp_path, users=24, per_user=16, inventory={0: 10**6})
    expected = world.oracle()
    assert len(expected["pushes"]) > 50 and len(expected["visits"]) > 100
    return world, expected


@pytest.mark.parametrize("n", [1, 2, 3])
def test_workers_decide_what_replay_decides(redis_cluster: RedisClusterServer, tmp_path: Path, n: int) -> None:
    world, expected = _world(tmp_path)
    feeder = _store(redis_cluster, "bridge")
    workers = Workers(redis_cluster, world, tmp_path)
    try:
        for i in range(1, n + 1):
            workers.start(f"w{i}")
        _feed(feeder, world.messages)
        _wait_applied(feeder, workers)
        _wait_owners(feeder, set(workers.procs))  # every worker holds partitions
    finally:
        workers.stop_all()
    got, times = _outputs(feeder)
    assert got == expected
    assert max(times.values()) == 1  # nothing decided twice


def test_kill_9_join_and_master_failover_mid_stream(
    redis_cluster: RedisClusterServer, tmp_path: Path
) -> None:
    world, expected = _world(tmp_path)
    feeder = _store(redis_cluster, "bridge")
    workers = Workers(redis_cluster, world, tmp_path)
    msgs = world.messages
    k = len(msgs) // 4
    try:
        workers.start("w1")
        workers.start("w2")
        _wait_owners(feeder, {"w1", "w2"})
        # Each fault strikes while the workers have a backlog to apply: they are frozen
        # (SIGSTOP) while a quarter of the trace is logged, then resumed and hit at once.
        workers.freeze()
        _feed(feeder, msgs[:k])
        workers.thaw()
        workers.kill("w1")  # mid-batch: its partitions move to w2 once its heartbeat lapses
        _feed(feeder, msgs[k : 2 * k])
        _wait_applied(feeder, workers)
        _wait_owners(feeder, {"w2"})
        workers.start("w3")  # a join: partitions rebalance while the stream goes on
        _feed(feeder, msgs[2 * k : 3 * k])
        _wait_owners(feeder, {"w2", "w3"})
        workers.freeze()
        _feed(feeder, msgs[3 * k :])
        # a master fails mid-stream (the one serving partition 0's slot): killed while the
        # workers are frozen with a backlog, so they resume against a dead master
        dead = redis_cluster.master_of_slot(feeder.r.keyslot(feeder.key(0, "u")))
        redis_cluster.kill(dead)
        workers.thaw()
        redis_cluster.wait_failover(dead)
        _wait_applied(feeder, workers)
        _wait_owners(feeder, {"w2", "w3"})
        epochs = {p: int(feeder.r.get(feeder.key(p, "epoch")) or 0) for p in range(P)}
    finally:
        workers.stop_all()
    got, times = _outputs(feeder)
    assert got == expected
    assert max(times.values()) == 1
    assert max(epochs.values()) >= 2  # partitions did change hands


def _silent_world(tmp_path: Path) -> World:
    """A trace long enough for presence time-outs (15 min), where 8 of 24 users go silent
    after 6 fixes, some of them inside a store: their exits come from the sweep, not a fix."""
    world = World(tmp_path, users=24, per_user=110, inventory={0: 10**6})
    seen: Counter[str] = Counter()
    keep = []
    for t, p in world.messages:
        seen[t] += 1
        if t.rsplit("/", 1)[1] in {f"u{i}" for i in range(8)} and seen[t] > 6:
            continue
        keep.append((t, p))
    world.messages = keep
    return world


def test_a_moved_partition_times_out_its_silent_users(redis_cluster: RedisClusterServer, tmp_path: Path) -> None:
    """Worker w1 applies the first half of the trace and dies; w2 takes its partitions over and
    must re-arm the visit timers of users who went silent under w1, or their exits (by presence
    time-out, from the sweep) are never decided. Two partitions: each has ~12 users, enough for
    the core's watermark quorum."""
    import threading

    from engine.campaigns import load_campaigns
    from engine.core import Core
    from engine.daemon.partitioned import PartitionWorker, bridge_messages
    from fences.catalog import load_catalog
    from fences.index import FenceIndex

    world = _silent_world(tmp_path)
    expected = world.oracle()
    assert sum(v.endswith(":exit") for v in expected["visits"]) > 100
    index, campaigns = FenceIndex(load_catalog(world.fences)), load_campaigns(world.campaigns)
    parts = 2

    def store(name: str) -> ClusterStore:
        return ClusterStore(connect_cluster(redis_cluster.url), worker=name, partitions=parts,
                            render=Renderer(TOPICS), lease_ttl_ms=500)  # fmt: skip

    feeder = store("bridge")

    def run(name: str, msgs: list[tuple[str, bytes]]) -> None:
        w = PartitionWorker(store(name), lambda s: Core(index, campaigns, s), TOPICS, batch=8)  # type: ignore[arg-type]
        bridge_messages(feeder, TOPICS, msgs)
        stop = threading.Event()
        th = threading.Thread(target=w.run, args=(stop,))
        th.start()
        try:
            deadline = time.monotonic() + 60
            while True:
                ends = [feeder.r.xrevrange(feeder.key(p, "log"), count=1) for p in range(parts)]
                if all(not e or feeder.r.get(feeder.key(p, "off")) == e[0][0] for p, e in enumerate(ends)):
                    return
                assert time.monotonic() < deadline and th.is_alive(), "the worker did not apply the logs"
                time.sleep(0.05)
        finally:
            w.leave = lambda: None  # type: ignore[method-assign]  # "dies": no release, leases lapse
            stop.set()
            th.join()

    half = len(world.messages) // 2
    run("w1", world.messages[:half])
    for p in range(parts):  # w1's leases and heartbeat lapse (as after kill -9)
        feeder.r.delete(feeder.key(p, "lease"))
    feeder.r.delete(f"{feeder.prefix}:{{workers}}")
    run("w2", world.messages[half:])
    got: dict[str, set[str]] = {"pushes": set(), "visits": set()}
    for p in range(parts):
        for _, rows in feeder.unsent(p):
            for r in rows:
                got["pushes" if isinstance(decode_output(r.payload), Push) else "visits"].add(r.out_id)
    assert got == expected

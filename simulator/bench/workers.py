"""``geopush bench e2e --workers N``: a worker group's throughput over mosquitto and Redis.

For each worker count 1..N the benchmark starts that many ``geopush run --group NAME --state
redis://...`` processes on one broker (shared subscription) and one Redis, and measures how fast
they drain a synthetic city's trace (``simulator.bench.workload``): the workers are frozen
(SIGSTOP) while the broker takes the whole trace, then timed from the moment they resume until
their status counters show every event handled, so the publisher's own speed is not in the
figure. In the same run, one ``geopush run`` on a SQLite file is the baseline. Redis round trips
are counted by Redis itself (``INFO commandstats``): every command a client sent, not the ones
the commit script runs inside Redis. CPU per event is the processes' user + system time.

Each run starts from empty state (the Redis DB is flushed between runs, so a ``--state`` given
here must name an empty DB: the benchmark refuses one with keys).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from engine.errors import ConfigError, GeopushError

# Commands the RedisStore only runs inside its commit script (see redis_store._left): whatever
# Redis counts for them did not cross the network.
_INSIDE_SCRIPT = {"get", "set", "exists", "xadd", "hset"}
_BENCH_OWN = {"config|resetstat", "info", "flushdb", "dbsize", "ping"}


@dataclass
class GroupRun:
    label: str
    workers: int
    events: int
    messages: int
    seconds: float
    events_per_s: float
    worker_cpu_us_per_event: float = 0.0  # all workers' CPU (user + sys) / events
    redis_cpu_us_per_event: float | None = None
    round_trips: int | None = None
    round_trips_per_event: float | None = None
    commit_scripts: int | None = None
    events_per_s_per_worker: float = 0.0


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The worker-group options of ``geopush bench e2e``."""
    g = p.add_argument_group("worker group (scale-out over Redis)")
    g.add_argument(
        "--workers", type=int, default=0, metavar="N",
        help="measure a group of 1..N `geopush run --group` workers sharing Redis state "
        "(0 = skip; the issue's figures use 2)",
    )  # fmt: skip
    g.add_argument(
        "--state", metavar="URL", default=None,
        help="redis://HOST:PORT/DB of an EMPTY Redis DB for the group (default: start a "
        "redis-server with appendfsync always on a free port)",
    )  # fmt: skip
    g.add_argument(
        "--group-users",
        type=int,
        default=2000,
        metavar="N",
        help="users in the trace (default %(default)s)",
    )
    g.add_argument(
        "--group-per-user",
        type=int,
        default=20,
        metavar="N",
        help="GPS fixes per user (default %(default)s)",
    )
    g.add_argument(
        "--group-inside-every", type=int, default=10, metavar="N",
        help="every N-th fix is inside a store (an enter, usually a push; default %(default)s, "
        "as in the single-engine runs)",
    )  # fmt: skip
    g.add_argument(
        "--group-message-events", type=int, default=10, metavar="K",
        help="events per MQTT message (1 = single-event messages; K > 1 = a user's K "
        "consecutive fixes as one batch message; default %(default)s)",
    )  # fmt: skip
    g.add_argument(
        "--group-batch-size", type=int, default=100, metavar="N",
        help="the workers' --batch-size: messages per micro-batch, i.e. per Redis commit "
        "(default %(default)s)",
    )  # fmt: skip
    g.add_argument(
        "--cluster", action="store_true",
        help="also measure 1..N partition-affine `geopush worker` processes on a Redis Cluster "
        "(3 masters + 3 replicas started here), fed through the partitions' logs as "
        "`geopush bridge` feeds them (docs/scaling.md)",
    )  # fmt: skip
    g.add_argument(
        "--partitions", type=int, default=64, metavar="P",
        help="partitions for --cluster (default %(default)s)",
    )  # fmt: skip
    g.add_argument(
        "--nats-cluster", type=int, default=0, metavar="P",
        help="run against a 3-node NATS cluster started here (JetStream, MQTT listeners, P "
        "partitions): the workers consume their share of the partitions (`geopush run --intake`; "
        "docs/scaling.md) instead of a $share subscription on mosquitto (0 = mosquitto)",
    )  # fmt: skip
    g.add_argument(
        "--stack", type=int, default=0, metavar="P",
        help="interleaved with the mosquitto + single Redis group runs (the baseline), measure "
        "1..N `geopush worker --intake` processes on ONE stack started here: a 3-node NATS "
        "cluster (P partitions, phones publish to its MQTT listener, pushes go out through it) "
        "and a Redis Cluster of 3 masters + 3 replicas for the state and leases (docs/scaling.md, "
        "\"One stack\"; 0 = skip)",
    )  # fmt: skip
    g.add_argument(
        "--no-sqlite-baseline", action="store_true",
        help="skip the single-process SQLite run measured as the baseline",
    )  # fmt: skip


def run_group_bench(args: argparse.Namespace) -> list[GroupRun]:
    """Run the worker-group benchmark described by ``args``; print and return the figures."""
    return asyncio.run(_main(args))


async def _main(args: argparse.Namespace) -> list[GroupRun]:
    from simulator.bench.redis_server import RedisServer
    from simulator.bench.workload import City, trace
    from simulator.embedded_broker import MosquittoBroker

    if args.workers < 1:
        raise ConfigError("--workers N needs N >= 1")
    tmp = Path(tempfile.mkdtemp(prefix="geopush-bench-workers-"))
    city = City(8)
    fences, campaigns = city.write(tmp, inventory={0: 10**9})
    events = list(
        trace(city, args.group_users, args.group_per_user, inside_every=args.group_inside_every)
    )
    messages = _messages(events, args.group_users, args.group_message_events)
    broker_url = getattr(args, "broker", None)
    broker = None
    server = None
    cluster = None
    try:
        if args.nats_cluster:
            from simulator.bench.nats_cluster import NatsCluster

            cluster = NatsCluster(partitions=args.nats_cluster)
            cluster.start()
            broker_url = cluster.mqtt_url(0)
            args.intake = cluster.nats_urls
            _say(f"NATS cluster: 3 nodes, {args.nats_cluster} partitions, mqtt {broker_url}")
        if not broker_url:
            broker = MosquittoBroker()
            broker.start()
            broker_url = broker.url
        redis_url = args.state
        if redis_url is None:
            server = RedisServer()
            server.start()
            redis_url = server.url
        client = _redis(redis_url)
        if client.dbsize():
            raise ConfigError(
                f"--state {redis_url}: the DB has keys; give the benchmark an empty DB"
            )
        files = (str(fences), str(campaigns))
        via = f", NATS {args.nats_cluster} partitions" if args.nats_cluster else ""
        results: list[GroupRun] = []
        _say(f"trace: {len(events)} events in {len(messages)} messages, {args.group_users} users")
        if not args.no_sqlite_baseline:
            res = await _one_run(
                f"sqlite, 1 process{via}", 1, broker_url, str(tmp / "base.sqlite"), None,
                files, messages, len(events), args,
            )  # fmt: skip
            results.append(res)
        stack = int(getattr(args, "stack", 0) or 0)
        for n in range(1, args.workers + 1):
            client.flushdb()
            res = await _one_run(
                f"{'mosquitto + ' if stack else ''}redis, {n} worker{'s' if n > 1 else ''}{via}", n,
                broker_url, redis_url, client, files, messages, len(events), args,
            )  # fmt: skip
            results.append(res)
            if stack:  # interleaved: the baseline and the stack see the same machine load
                for out in (True, False):
                    results.append(await _stack_run(n, stack, files, messages, len(events), args, out))
        client.flushdb()
        if getattr(args, "cluster", False):
            results += _cluster_runs(args, files, messages, len(events))
        _report(results)
        return results
    finally:
        if server is not None:
            server.close()
        if broker is not None:
            broker.stop()
        if cluster is not None:
            cluster.close()


def _cluster_runs(
    args: argparse.Namespace, files: tuple[str, str], messages: list[tuple[str, bytes]], total: int
) -> list[GroupRun]:
    """1..N ``geopush worker`` processes on a fresh Redis Cluster per run: start them, wait
    until every partition is leased, freeze them (SIGSTOP), fill the partitions' logs, resume
    and time until every partition's applied offset reaches its log's end. Round trips: the
    commands clients sent, counted by every master (``INFO commandstats``): EVALSHA (load,
    commit, leases, reservations), XRANGE (log reads), SMEMBERS (restores), XDEL; the commands
    scripts run inside Redis are not round trips."""
    from engine.daemon.partitioned import bridge_messages
    from engine.daemon.pipeline import Topics
    from engine.stores.cluster_store import ClusterStore, connect_cluster
    from simulator.bench.redis_cluster import RedisClusterServer

    out: list[GroupRun] = []
    parts = args.partitions
    for n in range(1, args.workers + 1):
        with RedisClusterServer() as cl:
            feeder = ClusterStore(connect_cluster(cl.url), worker="bench", partitions=parts)
            names = [f"cw{i}" for i in range(1, n + 1)]
            procs = [
                subprocess.Popen(
                    [sys.executable, "-m", "engine.daemon.partitioned_cli", "worker", "--state",
                     cl.url, "--partitions", str(parts), "--client-id", w, "--fences", files[0],
                     "--campaigns", files[1], "--batch-size", str(args.group_batch_size)],
                    stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                )  # fmt: skip
                for w in names
            ]
            try:
                _until_leased(feeder, names, procs)
                for p in procs:
                    os.kill(p.pid, signal.SIGSTOP)
                topics = Topics()
                t_feed = time.perf_counter()
                for k in range(0, len(messages), 500):  # as `geopush bridge` batches them
                    bridge_messages(feeder, topics, messages[k : k + 500])
                feed_s = time.perf_counter() - t_feed
                ends: dict[int, Any] = {}
                for q in range(parts):
                    last = feeder.r.xrevrange(feeder.key(q, "log"), count=1)
                    if last:
                        ends[q] = last[0][0]
                masters = [m for m in cl.ports if "role:master" in cl.cmd(m, "INFO", "replication")]
                for m in masters:
                    cl.cmd(m, "CONFIG", "RESETSTAT")
                cpu0 = sum(_cpu_s(p.pid) for p in procs)
                t0 = time.perf_counter()
                for p in procs:
                    os.kill(p.pid, signal.SIGCONT)
                while True:
                    pending = [q for q, e in ends.items() if feeder.r.get(feeder.key(q, "off")) != e]
                    if not pending:
                        break
                    _all_alive(procs, "a cluster worker")
                    time.sleep(0.02)
                secs = time.perf_counter() - t0
                cpu = sum(_cpu_s(p.pid) for p in procs) - cpu0
                calls = _command_calls(cl, masters)
            finally:
                _stop(procs)
        rt = sum(calls.get(c, 0) for c in ("evalsha", "eval", "xrange", "smembers", "xdel"))
        res = GroupRun(
            f"redis cluster, {n} partition worker{'s' if n > 1 else ''}", n, total, len(messages),
            round(secs, 3), round(total / secs, 1),
            worker_cpu_us_per_event=round(cpu / total * 1e6, 1), round_trips=rt,
            round_trips_per_event=round(rt / total, 4), commit_scripts=None,
            events_per_s_per_worker=round(total / secs / n, 1),
        )  # fmt: skip
        _say(f"{res.label}: {res.events_per_s:,.0f} events/s ({secs:.2f} s); "
             f"bridge-style log append {len(messages) / feed_s:,.0f} msg/s")  # fmt: skip
        out.append(res)
    return out


async def _stack_run(
    n: int, parts: int, files: tuple[str, str], messages: list[tuple[str, bytes]], total: int,
    args: argparse.Namespace, publish_outputs: bool = True,
) -> GroupRun:
    """``n`` ``geopush worker --intake`` processes on a fresh NATS cluster + Redis Cluster:
    start them, wait until every partition is leased, warm them up, freeze them (SIGSTOP),
    publish the trace to the NATS cluster's MQTT listener (QoS 1), resume and time until every
    partition's consumer has nothing left to deliver or acknowledge (a message is acknowledged
    after its commit). Pushes and visits go out through the cluster's MQTT listener (QoS 1), or
    with ``publish_outputs`` False stay in the partitions' outbox streams (no ``--broker``: the
    workers' own pace, without the cluster's QoS 1 storage of every output). Round trips: as in ``_cluster_runs``, counted by every master."""
    import nats

    from engine.stores.cluster_store import ClusterStore, connect_cluster
    from engine.transport.jetstream import MSGS_STREAM, durable_name, parse_nats_urls
    from engine.transport.mqtt import MqttLink, parse_broker_url
    from simulator.bench.nats_cluster import NatsCluster
    from simulator.bench.redis_cluster import RedisClusterServer

    label = f"NATS cluster + Redis Cluster, {n} worker{'s' if n > 1 else ''}"
    label += "" if publish_outputs else ", outputs kept in Redis"
    with NatsCluster(partitions=parts) as nc, RedisClusterServer() as cl:
        pub = MqttLink(parse_broker_url(nc.mqtt_url(0)), max_inflight_out=2000)
        await pub.connect()  # also makes $MQTT_msgs, which the workers check
        js = await nats.connect(servers=parse_nats_urls(nc.nats_urls), max_reconnect_attempts=-1)
        feeder = ClusterStore(connect_cluster(cl.url), worker="bench", partitions=parts)
        names = [f"sw{i}" for i in range(1, n + 1)]
        procs = [
            subprocess.Popen(
                [sys.executable, "-m", "engine.daemon.partitioned_cli", "worker", "--state", cl.url,
                 "--partitions", str(parts), "--client-id", w, "--fences", files[0], "--campaigns",
                 files[1], "--batch-size", str(args.group_batch_size), "--intake", nc.nats_urls,
                 *(["--broker", nc.mqtt_url(1 % len(nc.nodes))] if publish_outputs else [])],
                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
            )  # fmt: skip
            for w in names
        ]

        async def drained() -> bool:
            for q in range(parts):
                subject = f"$JS.API.CONSUMER.INFO.{MSGS_STREAM}.{durable_name('geopush', q)}"
                try:
                    info = json.loads((await js.request(subject, b"{}", timeout=5)).data)
                except Exception:  # noqa: BLE001
                    return False
                if "error" in info or info["num_pending"] or info["num_ack_pending"]:
                    return False
            return True

        async def until_drained(timeout: float) -> None:
            deadline = time.perf_counter() + timeout
            while not await drained():
                _all_alive(procs, "a stack worker")
                if time.perf_counter() > deadline:
                    raise GeopushError(f"the stack's workers did not finish within {timeout:.0f} s")
                await asyncio.sleep(0.05)

        try:
            await asyncio.to_thread(_until_leased, feeder, names, procs)
            warm = [
                (f"geopush/events/warm{i}", _dumps({"type": "gps", "user": f"warm{i}", "ts": 1.7e9,
                                                     "lon": 0.0, "lat": 0.0, "acc": 10.0}))
                for i in range(8 * n)
            ]  # fmt: skip
            await asyncio.gather(*[pub.publish_nowait(t, p, qos=1) for t, p in warm])
            await until_drained(120)
            for p in procs:
                os.kill(p.pid, signal.SIGSTOP)
            try:
                t_pub = time.perf_counter()
                await asyncio.gather(*[pub.publish_nowait(t, p, qos=1) for t, p in messages])
                pub_s = time.perf_counter() - t_pub
                masters = [m for m in cl.ports if "role:master" in cl.cmd(m, "INFO", "replication")]
                for m in masters:
                    cl.cmd(m, "CONFIG", "RESETSTAT")
            finally:
                cpu0 = sum(_cpu_s(p.pid) for p in procs)
                t0 = time.perf_counter()
                for p in procs:
                    os.kill(p.pid, signal.SIGCONT)
            await until_drained(600)
            secs = time.perf_counter() - t0
            cpu = sum(_cpu_s(p.pid) for p in procs) - cpu0
            calls = _command_calls(cl, masters)
        finally:
            _stop(procs)
            await js.close()
            await pub.disconnect()
    rt = sum(calls.get(c, 0) for c in ("evalsha", "eval", "xrange", "smembers", "xdel"))
    res = GroupRun(
        label, n, total, len(messages), round(secs, 3), round(total / secs, 1),
        worker_cpu_us_per_event=round(cpu / total * 1e6, 1), round_trips=rt,
        round_trips_per_event=round(rt / total, 4), commit_scripts=None,
        events_per_s_per_worker=round(total / secs / n, 1),
    )  # fmt: skip
    _say(f"{label}: {res.events_per_s:,.0f} events/s ({secs:.2f} s); "
         f"MQTT QoS 1 ingest into the cluster {len(messages) / pub_s:,.0f} msg/s")  # fmt: skip
    return res


def _until_leased(store: Any, names: list[str], procs: list[Any], timeout: float = 120.0) -> None:
    deadline = time.perf_counter() + timeout
    while True:
        vals = [store.r.get(store.key(q, "lease")) for q in range(store.partitions)]
        owners = {bytes(v).decode().split(":")[0] for v in vals if v is not None}
        if all(v is not None for v in vals) and owners == set(names):
            return
        _all_alive(procs, "a cluster worker")
        if time.perf_counter() > deadline:
            raise GeopushError(f"partitions not leased by {names} within {timeout:.0f} s")
        time.sleep(0.05)


def _redis(url: str) -> Any:
    import redis

    try:
        client = redis.Redis.from_url(url)
        client.ping()
    except (redis.RedisError, ValueError) as exc:
        raise ConfigError(f"--state {url}: cannot reach Redis: {exc}") from exc
    return client


def _messages(events: list[dict[str, Any]], users: int, k: int) -> list[tuple[str, bytes]]:
    """The trace as MQTT messages: single events, or each user's next ``k`` fixes as one batch
    message (per-user order kept; users interleaved round by round as in the trace)."""
    if k <= 1:
        return [(f"geopush/events/{e['user']}", _dumps(e)) for e in events]
    per_user: dict[str, list[dict[str, Any]]] = {}
    for e in events:
        per_user.setdefault(e["user"], []).append(e)
    out = []
    longest = max(len(v) for v in per_user.values())
    for start in range(0, longest, k):
        for user, evs in per_user.items():
            chunk = [{x: v for x, v in e.items() if x != "user"} for e in evs[start : start + k]]
            if chunk:
                body = {"type": "batch", "user": user, "events": chunk}
                out.append((f"geopush/events/{user}", _dumps(body)))
    return out


def _dumps(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode()


async def _one_run(
    label: str,
    n: int,
    broker_url: str,
    state: str,
    redis_client: Any,
    files: tuple[str, str],
    messages: list[tuple[str, bytes]],
    total_events: int,
    args: argparse.Namespace,
) -> GroupRun:
    from engine.transport.mqtt import MqttLink, parse_broker_url

    tag = f"b{int(time.time() * 1000) % 10**8}"
    names = [f"{tag}-w{i}" for i in range(1, n + 1)]
    mon = MqttLink(parse_broker_url(broker_url))
    await mon.connect()
    await mon.subscribe(["geopush/status/+"])
    procs = [_spawn(broker_url, state, files, name, n > 1 or redis_client is not None, args,
                    _share(i, n, args))
             for i, name in enumerate(names)]  # fmt: skip
    last: dict[str, dict[str, Any]] = {}
    try:
        await _until(
            mon,
            last,
            lambda: all(last.get(w, {}).get("state") == "online" for w in names),
            procs,
            120,
        )
        pub = MqttLink(parse_broker_url(broker_url), max_inflight_out=5000)
        await pub.connect()
        # Warm-up outside the timing: each worker's first batch loads the numba-compiled fence
        # kernel and fills caches. Fixes of separate users, a few messages per worker.
        warm = [
            (f"geopush/events/warm{i}", _dumps({"type": "gps", "user": f"warm{i}", "ts": 1.7e9,
                                                 "lon": 0.0, "lat": 0.0, "acc": 10.0}))
            for i in range(8 * n)
        ]  # fmt: skip
        await asyncio.gather(*[pub.publish_nowait(t, p, qos=1) for t, p in warm])

        def handled() -> int:
            return sum(_events(last.get(w)) for w in names)

        await _until(mon, last, lambda: handled() >= len(warm), procs, 120)
        if redis_client is not None:
            redis_client.config_resetstat()
        # Drain a backlog: freeze the workers, let the broker take the whole trace, then time
        # from the moment they resume. The publisher's own speed is then out of the figure.
        for p in procs:
            os.kill(p.pid, signal.SIGSTOP)
        try:
            futs = [pub.publish_nowait(t, p, qos=1) for t, p in messages]
            await asyncio.gather(*futs)
            await pub.disconnect()
        finally:
            cpu0 = sum(_cpu_s(p.pid) for p in procs)
            rcpu0 = _redis_cpu_s(redis_client)
            t0 = time.perf_counter()
            for p in procs:
                os.kill(p.pid, signal.SIGCONT)

        def done() -> bool:
            return handled() >= total_events + len(warm)

        t1 = await _until(mon, last, done, procs, 600)
        cpu = sum(_cpu_s(p.pid) for p in procs) - cpu0
        rcpu = _redis_cpu_s(redis_client) - rcpu0
    finally:
        _stop(procs)
        await mon.disconnect()
    secs = t1 - t0
    res = GroupRun(
        label, n, total_events, len(messages), round(secs, 3), round(total_events / secs, 1),
        worker_cpu_us_per_event=round(cpu / total_events * 1e6, 1),
        events_per_s_per_worker=round(total_events / secs / n, 1),
    )  # fmt: skip
    if redis_client is not None:
        res.redis_cpu_us_per_event = round(rcpu / total_events * 1e6, 2)
    if redis_client is not None:
        stats = redis_client.info("commandstats")
        calls = {k.removeprefix("cmdstat_"): int(v["calls"]) for k, v in stats.items()}
        rt = sum(c for k, c in calls.items() if k not in _INSIDE_SCRIPT | _BENCH_OWN)
        res.round_trips = rt
        res.round_trips_per_event = round(rt / total_events, 4)
        res.commit_scripts = calls.get("evalsha", 0) + calls.get("eval", 0)
    _say(f"{label}: {res.events_per_s:,.0f} events/s ({secs:.2f} s)")
    return res


def _spawn(
    broker: str,
    state: str,
    files: tuple[str, str],
    name: str,
    group: bool,
    args: argparse.Namespace,
    partitions: str | None = None,
) -> subprocess.Popen[bytes]:
    cmd = [
        sys.executable, "-m", "engine", "run", "--broker", broker, "--state", state,
        "--fences", files[0], "--campaigns", files[1], "--client-id", name,
        "--batch-size", str(args.group_batch_size), "--status-interval", "0.1",
        "--log-level", "WARNING", "--no-owntracks",
        "--pid-file", str(Path(tempfile.gettempdir()) / f"geopush-{name}.pid"),
    ]  # fmt: skip
    if group:
        # One group per run: mosquitto keeps an offline worker's persistent session in its
        # shared group and queues that session's share of the messages for it (docs/operations.md),
        # so a previous run's stopped workers would strand part of this run's trace.
        cmd += ["--group", name.rsplit("-", 1)[0]]
    if partitions is not None:
        cmd += ["--intake", args.intake, "--partitions", partitions,
                "--partition-count", str(args.nats_cluster)]  # fmt: skip
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def _share(i: int, n: int, args: argparse.Namespace) -> str | None:
    """Worker ``i`` of ``n``'s contiguous share of the NATS partitions (None: mosquitto)."""
    p = int(getattr(args, "nats_cluster", 0) or 0)
    if not p:
        return None
    lo, hi = i * p // n, (i + 1) * p // n - 1
    return f"{lo}-{hi}"



def _all_alive(procs: Sequence[subprocess.Popen[bytes]], what: str) -> None:
    """Raise with its stderr's tail if one of ``procs`` (``what``: "a stack worker") exited."""
    for p in procs:
        if p.poll() is not None:
            err = p.stderr.read().decode(errors="replace") if p.stderr else ""
            raise GeopushError(f"{what} exited with {p.returncode}:\n{err[-2000:]}")

def _stop(procs: list[Any]) -> None:
    """SIGTERM the worker processes still running, then wait for each (killed after 30 s)."""
    for p in procs:
        if p.poll() is None:
            p.terminate()
    for p in procs:
        try:
            p.wait(30)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def _command_calls(cl: Any, masters: list[int]) -> dict[str, int]:
    """Calls per Redis command summed over the cluster's ``masters`` (INFO commandstats)."""
    calls: dict[str, int] = {}
    for m in masters:
        for line in cl.cmd(m, "INFO", "commandstats").splitlines():
            if line.startswith("cmdstat_"):
                name, rest = line[8:].split(":", 1)
                calls[name] = calls.get(name, 0) + int(rest.split(",")[0].split("=")[1])
    return calls


def _cpu_s(pid: int) -> float:
    """CPU seconds (user + system) a live process has used (Linux /proc; 0 elsewhere)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return 0.0


def _redis_cpu_s(client: Any) -> float:
    if client is None:
        return 0.0
    info = client.info("cpu")
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


def _events(status: dict[str, Any] | None) -> int:
    if not status:
        return 0
    return int(status.get("counters", {}).get("events", 0))


async def _until(
    mon: Any, last: dict[str, dict[str, Any]], cond: Any, procs: list[Any], timeout: float
) -> float:
    """Read status messages into ``last`` until ``cond()``; return the time it first held."""
    deadline = time.perf_counter() + timeout
    next_note = time.perf_counter() + 5.0
    while not cond():
        if time.perf_counter() > next_note:
            next_note += 5.0
            done = {w: _events(s) for w, s in sorted(last.items())}
            _say(f"  ... events handled so far: {done}")
        _all_alive(procs, "a worker")
        if time.perf_counter() > deadline:
            raise GeopushError(f"workers did not finish within {timeout:.0f} s")
        await mon.wait_inbound(0.05)
        for m in mon.take(10_000):
            try:
                body = json.loads(m.payload)
            except ValueError:
                continue
            if isinstance(body, dict) and "client_id" in body:
                last[body["client_id"]] = body
    return time.perf_counter()


def _say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _report(results: list[GroupRun]) -> None:
    from rich.console import Console
    from rich.table import Table

    base = results[0].events_per_s if results else 1.0
    table = Table(title="geopush bench e2e --workers (events handled per second, end to end)")
    cols = ("run", "events/s", "events/s per worker", "vs first row", "worker CPU µs/event", "Redis CPU µs/event",
            "Redis round trips / event", "commits")  # fmt: skip
    for col in cols:
        table.add_column(col, justify="right" if col != "run" else "left")
    for r in results:
        table.add_row(
            r.label,
            f"{r.events_per_s:,.0f}",
            f"{r.events_per_s_per_worker:,.0f}",
            f"{r.events_per_s / base:.2f}x",
            f"{r.worker_cpu_us_per_event:.0f}",
            "-" if r.redis_cpu_us_per_event is None else f"{r.redis_cpu_us_per_event:.1f}",
            "-" if r.round_trips_per_event is None else f"{r.round_trips_per_event:.3f}",
            "-" if r.commit_scripts is None else str(r.commit_scripts),
        )
    Console(stderr=True).print(table)
    print(json.dumps([asdict(r) for r in results]))


def main(argv: list[str] | None = None) -> int:
    """``python -m simulator.bench.workers`` (the same options as under bench e2e)."""
    p = argparse.ArgumentParser(prog="geopush bench e2e --workers", description=__doc__)
    p.add_argument("--broker", default=None, help="mqtt://HOST:PORT (default: start mosquitto)")
    add_arguments(p)
    args = p.parse_args(argv)
    if not args.workers:
        args.workers = 2
    run_group_bench(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())

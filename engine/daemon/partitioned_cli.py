"""``geopush worker`` and ``geopush bridge``: partition-affine workers on a Redis Cluster
(engine/daemon/partitioned.py, docs/scaling.md)."""

from __future__ import annotations

import argparse
import logging
import os
import secrets
import signal
import sys
import threading
import time
from collections.abc import Sequence
from typing import Any, cast
from urllib.parse import urlparse

from engine.errors import ConfigError, GeopushError, StateError
from engine.partitions import DEFAULT_PARTITIONS, check_partitions
from engine.state import StateStore
from fences.errors import FencesError

log = logging.getLogger("geopush.partitioned")


def register(sub: argparse._SubParsersAction[Any]) -> None:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--state", required=True, metavar="redis://HOST:PORT",
                        help="any node of the Redis Cluster (the client finds the others)")
    common.add_argument("--partitions", type=int, default=DEFAULT_PARTITIONS, metavar="P",
                        help=f"number of partitions, fixed for the deployment (default {DEFAULT_PARTITIONS})")
    common.add_argument("--prefix", default="geopush", help="MQTT topic prefix (default geopush)")
    common.add_argument("--client-id", required=True, metavar="NAME", help="this process's name (unique)")

    w = sub.add_parser("worker", parents=[common],
                       help="a partition-affine worker: applies the logs of the partitions it leases",
                       description="Hold leases on a share of the partitions (rendezvous hashing over "
                       "the live workers), apply their input logs with one Core per partition, commit "
                       "each batch in one script on the partition's Redis Cluster slot, publish the "
                       "outputs. See docs/scaling.md.")
    w.add_argument("--fences", required=True, metavar="STORES.geojson")
    w.add_argument("--campaigns", required=True, metavar="CAMPAIGNS")
    w.add_argument("--broker", metavar="mqtt://HOST:PORT", help="publish outputs there (else they stay "
                   "in the partitions' outbox streams)")
    w.add_argument("--intake", metavar="NATS_URLS",
                   help="read the partitions from a NATS JetStream cluster (nats://h1:4222,nats://h2:4222: "
                   "one durable consumer per partition on $MQTT_msgs, the mapping's P = --partitions) "
                   "instead of the Redis logs `geopush bridge` fills; see docs/scaling.md")
    w.add_argument("--batch-size", type=int, default=200, metavar="N", help="log entries per batch")
    w.add_argument("--lease-ttl-ms", type=int, default=2000, metavar="MS",
                   help="lease TTL: a dead worker's partitions move after about this (default 2000)")
    w.add_argument("--coupon-secret", default=os.environ.get("GEOPUSH_COUPON_SECRET"),
                   help="key of coupon codes; default: shared in the cluster, made by the first worker")
    w.set_defaults(func=_worker)

    b = sub.add_parser("bridge", parents=[common],
                       help="append <prefix>/events/{user} messages to their partitions' logs",
                       description="Subscribe to <prefix>/events/+ (shared among bridges, QoS 1, "
                       "persistent session) and append each message to its user's partition log in "
                       "the Redis Cluster before acknowledging it. See docs/scaling.md.")
    b.add_argument("--broker", required=True, metavar="mqtt://HOST:PORT")
    b.add_argument("--bridge-batch", type=int, default=500, metavar="N",
                   help="messages appended per pipeline (default 500)")
    b.add_argument("--bridge-wait-ms", type=float, default=5.0, metavar="MS",
                   help="longest a message waits for its batch (default 5)")
    b.set_defaults(func=_bridge)


def _mqtt(url: str, client_id: str, *, clean: bool) -> Any:
    import paho.mqtt.client as mqtt

    u = urlparse(url)
    if u.scheme != "mqtt" or not u.hostname:
        raise ConfigError(f"--broker {url!r}: expected mqtt://HOST:PORT")
    from paho.mqtt.enums import CallbackAPIVersion

    c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=clean,
                    protocol=mqtt.MQTTv311)
    # a batch's outputs go out together: paho's default window (20 unacknowledged QoS 1
    # messages) would make a clustered broker's PUBACK latency (R3 storage) the pace
    c.max_inflight_messages_set(1000)
    c.connect(u.hostname, u.port or 1883)
    return c


def _publisher(url: str, client_id: str) -> Any:
    """A ``Publish`` for the worker's ``OutboxPublisher`` (engine/daemon/partitioned.py): rows go
    out at QoS 1 and ``acked(timeout)`` says whether the broker acknowledged all of them. paho
    keeps what is unacknowledged across reconnections and sends it again, so a caller only waits
    (a worker's publisher thread waits; the worker's own thread never does)."""
    client = _mqtt(url, client_id, clean=True)
    cond = threading.Condition()
    done: set[int] = set()  # message ids PUBACKed and not yet claimed by a waiter

    def on_publish(_c: Any, _u: Any, mid: int, _rc: Any = None, _p: Any = None) -> None:
        with cond:  # (paho calls this under its own lock: never publish while holding cond)
            done.add(mid)
            cond.notify_all()

    client.on_publish = on_publish
    client.loop_start()

    def publish(rows: Sequence[Any]) -> Any:
        waiting = {client.publish(r.topic, r.payload, qos=1).mid for r in rows}

        def acked(timeout_s: float) -> bool:
            deadline = time.monotonic() + timeout_s
            with cond:
                while True:
                    hit = waiting & done
                    waiting.difference_update(hit)
                    done.difference_update(hit)
                    left = deadline - time.monotonic()
                    if not waiting or left <= 0:
                        return not waiting
                    cond.wait(left)

        return acked

    return publish


def _stop_on_signals() -> threading.Event:
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    return stop


def _worker(args: argparse.Namespace) -> int:
    from engine.campaigns import load_campaigns
    from engine.core import Core, CoreConfig
    from engine.daemon.partitioned import PartitionWorker
    from engine.daemon.pipeline import Renderer, Topics
    from engine.stores.cluster_store import ClusterStore, connect_cluster
    from fences.catalog import load_catalog
    from fences.index import FenceIndex

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    topics = Topics(prefix=args.prefix, client_id=args.client_id)
    partitions = check_partitions(args.partitions)  # before connecting: bad input fails fast
    store = ClusterStore(connect_cluster(args.state), worker=args.client_id,
                         partitions=partitions, render=Renderer(topics),
                         lease_ttl_ms=args.lease_ttl_ms)  # fmt: skip
    index = FenceIndex(load_catalog(args.fences))
    campaigns = load_campaigns(args.campaigns)
    secret = args.coupon_secret or store.shared("coupon_secret", secrets.token_urlsafe(32))
    config = CoreConfig(coupon_secret=secret)
    publish = None
    if args.broker:
        publish = _publisher(args.broker, f"{args.client_id}-out")

    # ClusterStore.commit takes more and returns rows: a compatible extension of StateStore
    def make_core(st: Any) -> Any:
        return Core(index, campaigns, cast("StateStore", st), config)

    stop = _stop_on_signals()
    if args.intake:
        from engine.daemon.partitioned import NatsPartitionWorker
        from engine.transport.jetstream import parse_nats_urls
        from engine.transport.jetstream_leased import PartitionIntake

        intake = PartitionIntake(parse_nats_urls(args.intake), partition_count=partitions,
                                 prefix=args.prefix, name=args.client_id)  # fmt: skip
        intake.start()
        log.info("worker %s: NATS intake %s ready (%d consumers)", args.client_id, args.intake, partitions)
        worker: PartitionWorker = NatsPartitionWorker(store, make_core, topics, intake=intake,
                                                      batch=args.batch_size, publish=publish)  # fmt: skip
        try:
            log.info("worker %s: %d partitions, state %s", args.client_id, args.partitions, args.state)
            worker.run(stop)
        finally:
            intake.stop()
        return 0
    worker = PartitionWorker(store, make_core, topics, batch=args.batch_size, publish=publish)
    log.info("worker %s: %d partitions, state %s", args.client_id, args.partitions, args.state)
    worker.run(stop)
    return 0


def _bridge(args: argparse.Namespace) -> int:
    from engine.daemon.partitioned import bridge_messages
    from engine.daemon.pipeline import Topics
    from engine.stores.cluster_store import ClusterStore, connect_cluster

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    topics = Topics(prefix=args.prefix, client_id=args.client_id)
    partitions = check_partitions(args.partitions)
    store = ClusterStore(connect_cluster(args.state), worker=args.client_id, partitions=partitions)
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    u = urlparse(args.broker)
    if u.scheme != "mqtt" or not u.hostname:
        raise ConfigError(f"--broker {args.broker!r}: expected mqtt://HOST:PORT")
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=args.client_id,
                         clean_session=False, protocol=mqtt.MQTTv311, manual_ack=True)  # fmt: skip

    def on_connect(c: Any, _u: Any, _f: Any, _rc: Any, _p: Any = None) -> None:
        c.subscribe(f"$share/geopush-bridge/{topics.events_sub}", qos=1)

    def on_subscribe(_c: Any, _u: Any, _mid: Any, codes: Any, _p: Any = None) -> None:
        log.info("bridge %s: subscribed to %s (%s)", args.client_id, topics.events_sub, codes)

    # Messages are appended in batches (one pipeline: a round trip per cluster node) by a
    # flusher thread, and each is acknowledged (PUBACK) only after its batch is in Redis.
    pending: list[Any] = []
    cond = threading.Condition()

    def on_message(_c: Any, _u: Any, msg: Any) -> None:
        with cond:
            pending.append(msg)
            if len(pending) >= args.bridge_batch:
                cond.notify()

    def flusher() -> None:
        while True:
            with cond:
                cond.wait_for(lambda: len(pending) >= args.bridge_batch or stop.is_set(),
                              timeout=args.bridge_wait_ms / 1000)  # fmt: skip
                batch = pending[:]
                del pending[:]
            if batch:
                while True:
                    try:
                        bridge_messages(store, topics, [(m.topic, bytes(m.payload)) for m in batch])
                        break
                    except StateError as exc:  # Redis failing over: no PUBACK until appended
                        log.warning("bridge: %s (retrying)", exc)
                        time.sleep(0.2)
                for m in batch:
                    client.ack(m.mid, m.qos)
            elif stop.is_set():
                return

    client.on_connect = on_connect
    client.on_message = on_message
    client.on_subscribe = on_subscribe
    stop = _stop_on_signals()
    client.connect(u.hostname, u.port or 1883)
    thread = threading.Thread(target=flusher, name="bridge-flush", daemon=True)
    thread.start()
    client.loop_start()
    stop.wait()
    client.disconnect()  # unacked messages stay in the session: redelivered on reconnect
    client.loop_stop()
    with cond:
        cond.notify()
    thread.join(10)
    return 0


__all__ = ["register"]


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m engine.daemon.partitioned_cli worker|bridge ...`` (same as ``geopush``)."""
    parser = argparse.ArgumentParser(prog="geopush")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    try:
        return int(args.func(args))
    except (GeopushError, FencesError) as exc:
        print(f"geopush: error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    raise SystemExit(main())

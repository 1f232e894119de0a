"""Partition-affine workers and the ingest bridge (docs/scaling.md; state: engine/stores/cluster_store.py).

**Why a bridge.** mosquitto cannot hand a subscriber only some users' messages (no partitioned
subscriptions; ``$share`` dispatches round-robin), and the phones keep publishing to
``<prefix>/events/{user}``. ``geopush bridge`` subscribes to those topics (``$share`` among
bridges, QoS 1, persistent session) and appends each message to its partition's **log** in the
Redis Cluster (``gp:{p<N>}:log``, ``partition_of(user, P)``), and only then lets the broker
have its PUBACK. A worker reads only the logs of the partitions it holds a lease on. The log
lives in the partition's slot beside its state, so the commit that applies a batch moves the
log offset in the same atomic script: when a partition moves (a worker joins, leaves or dies)
its next owner starts exactly after the last committed entry, nothing lost, nothing applied
twice. (A broker with partitioned streams, NATS JetStream subjects ``geopush.p.<N>.<user>`` with
the same ``partition()``, can replace the bridge: the offset then is the consumer's.)

Each owned partition has its own ``Core`` (own sweep queue and watermark), so a timer never
touches a user of another partition. Outputs go to the partition's outbox stream in the commit;
an ``OutboxPublisher`` thread publishes them (``publish``) and deletes them from the outbox only
once the broker acknowledged them; a new owner first publishes what the old one left unsent
(repeats carry the same ids, as everywhere in geopush).

**The worker's thread never waits on the broker.** Lease renewals (``tick``), log reads and
commits run on it; only the publisher thread waits for PUBACKs. A broker that stops
acknowledging (a node dying, a leader election, a paused process) only lets outputs pile up in
the outboxes (durable, in Redis): the worker keeps its leases and goes on committing, and the
publisher sends the backlog when the broker answers again. Fencing is unchanged (a commit checks
the lease's epoch); publishing needs none: it only sends outputs already committed, by id.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

from engine.errors import DecodeError, StateError
from engine.partitions import partition_of
from engine.stores.cluster_store import ClusterStore, LeaseLost, Refused, owner_of
from engine.stores.redis_store import Row

from .pipeline import Decoder, Topics, digest

log = logging.getLogger("geopush.partitioned")

Acked = Callable[[float], bool]
"""``acked(timeout_s)``: True once the broker acknowledged every row of the publish."""
Publish = Callable[[Sequence[Row]], Acked]
"""Send rows to the broker (QoS 1); returns how to wait for their acknowledgements."""


class OutboxPublisher:
    """Drains owned partitions' outboxes to the broker on its own thread (module doc): a
    partition marked ``due`` is read (``unsent``), published, and its entries deleted
    (``mark_sent``) once the broker acknowledged all of them. While it waits, more commits only
    mark the partition due again: the next round sends everything still in the outbox."""

    def __init__(self, store: ClusterStore, publish: Publish, owns: Callable[[int], bool]) -> None:
        self.store, self.publish, self.owns = store, publish, owns
        self._due: set[int] = set()
        self._cond = threading.Condition()
        self._closing = False
        self._abort = threading.Event()
        self.published = 0  # rows acknowledged by the broker
        self.redis_errors = 0
        self.thread = threading.Thread(target=self._run, name="outbox-publisher", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def due(self, p: int) -> None:
        """Partition ``p``'s outbox may hold something to publish."""
        with self._cond:
            self._due.add(p)
            self._cond.notify()

    def close(self, drain_s: float) -> None:
        """Publish what is due if the broker acknowledges it within ``drain_s``, then stop; what
        is left stays in the outboxes (the partitions' next owners publish it)."""
        with self._cond:
            self._closing = True
            self._cond.notify()
        self.thread.join(drain_s)
        self._abort.set()
        self.thread.join(5)

    def _run(self) -> None:
        while not self._abort.is_set():
            with self._cond:
                self._cond.wait_for(lambda: bool(self._due) or self._closing, timeout=1.0)
                if not self._due and self._closing:
                    return
                todo, self._due = sorted(self._due), set()
            for p in todo:
                if self._abort.is_set():
                    return
                if not self.owns(p):  # moved: its new owner publishes it
                    continue
                try:
                    self._flush(p)
                except StateError as exc:  # Redis failing over: try again soon
                    log.warning("outbox of partition %d: %s (retrying)", p, exc)
                    self.redis_errors += 1
                    self.due(p)
                    self._abort.wait(0.2)
                except Exception:  # noqa: BLE001 - the thread must outlive a broker client's error
                    log.exception("outbox of partition %d: publish failed (retrying)", p)
                    self.due(p)
                    self._abort.wait(1.0)

    def _flush(self, p: int) -> None:
        entries = self.store.unsent(p)
        if not entries:
            return
        rows = [r for _, rows in entries for r in rows]
        acked = self.publish(rows)
        while not acked(0.2):
            if self._abort.is_set():
                return  # not acknowledged: it stays in the outbox
        self.store.mark_sent(p, [i for i, _ in entries])
        self.published += len(rows)


class PartitionWorker:
    """One worker: holds leases, applies its partitions' logs batch by batch (module doc)."""

    def __init__(
        self,
        store: ClusterStore,
        core_factory: Callable[[ClusterStore], Any],
        topics: Topics,
        *,
        batch: int = 200,
        publish: Publish | None = None,
    ) -> None:
        self.store = store
        self.core_factory = core_factory
        self.decode = Decoder(topics)
        self.batch = batch
        self.publish = publish
        self.publisher = None if publish is None else OutboxPublisher(store, publish, self.owns)
        self.cores: dict[int, Any] = {}
        self.events = 0
        self.dead_letters = 0
        self.redis_errors = 0
        self.duplicates = 0  # messages recognised as applied already (input digests)
        self._renewed = 0.0

    # --- ownership -------------------------------------------------------------------------------

    def tick(self) -> None:
        """Heartbeat; take the partitions rendezvous hashing gives this worker, release the
        others, renew what it keeps. Called every lease TTL / 4."""
        st = self.store
        now = time.monotonic()
        if self._renewed and now - self._renewed > st.lease_ttl_ms / 1000:
            log.warning("leases renewed %.1f s after the last renewal (TTL %d ms): the worker's "
                        "thread was held up", now - self._renewed, st.lease_ttl_ms)  # fmt: skip
        self._renewed = now
        live = st.heartbeat()
        if st.worker not in live:
            live = sorted([*live, st.worker])
        want = {p for p in range(st.partitions) if owner_of(p, live) == st.worker}
        for p in list(st.leases):
            if p not in want:
                self.cores.pop(p, None)
                st.release(p)
                self.lost(p)
            elif not st.renew(p):
                log.warning("partition %d: lease lost (lapsed or taken)", p)
                self.cores.pop(p, None)
                self.lost(p)
        for p in sorted(want):
            if p not in st.leases:
                if st.acquire(p):
                    self.adopt(p)
            elif p not in self.cores:  # a Redis error left its core behind the store: rebuild
                self.adopt(p)

    def adopt(self, p: int) -> None:
        """A fresh core for partition ``p``: its open visits' timers and watermark re-armed,
        and what the previous owner committed but did not publish, published."""
        st = self.store
        st.begin(p, [])
        wm = st.watermark
        st.rollback()
        core = self.core_factory(st)
        core.restore(st.open_visits(p), watermark=wm)
        self.cores[p] = core
        self._flush_outbox(p)
        self.owned(p)

    def owns(self, p: int) -> bool:
        return p in self.cores

    def owned(self, p: int) -> None:
        """Partition ``p`` was adopted (a hook for intakes that must start reading it)."""

    def lost(self, p: int) -> None:
        """Partition ``p``'s lease was released or lost (a hook: stop reading it)."""

    def leave(self) -> None:
        for p in list(self.store.leases):
            self.store.release(p)
            self.lost(p)
        self.cores.clear()
        self.store.heartbeat(leave=True)

    # --- applying the logs -----------------------------------------------------------------------

    def step(self, p: int) -> int:
        """Apply up to ``batch`` entries of partition ``p``'s log; how many were applied."""
        st = self.store
        start = st.offsets.get(p, "")
        entries = st.read_log(p, self.batch)
        if not entries:
            return 0

        def offset_moved() -> bool:  # a commit whose reply was lost applied after all
            return st.offsets.get(p, "") != start

        msgs = self._decoded(p, [(topic, payload) for _id, topic, payload in entries])
        done = self._commit(p, msgs, entries[-1][0], stale=offset_moved)
        return len(entries) if done is not None else 0

    def apply(self, p: int, msgs: Sequence[tuple[str, bytes]], offset: str) -> bool:
        """Apply the messages ``msgs`` (topic, payload) of partition ``p`` in one commit, each
        at most once (input digests), moving the partition's offset to ``offset``; False if
        nothing was committed (the lease is lost, or the core is being rebuilt)."""
        decoded = self._decoded(p, msgs)
        fresh = self._commit(p, decoded, offset)
        if fresh is None:
            return False
        self.duplicates += len(decoded) - fresh
        return True

    def _commit(
        self,
        p: int,
        decoded: list[tuple[bytes, list[Any]]],
        offset: str,
        stale: Callable[[], bool] = lambda: False,
    ) -> int | None:
        """Decide the inputs ``decoded`` not seen before and commit them with partition ``p``'s
        offset moved to ``offset``, retrying a refused commit on a rebuilt core; the number of
        fresh inputs, or None if nothing was committed (no core, the lease lost, or ``stale()``
        once the batch began: read on from the store's offset)."""
        st = self.store
        users = {e.user for _, evs in decoded for e in evs}
        for _ in range(100):
            core = self.cores.get(p)
            if core is None:
                return None
            try:
                seen = st.begin(p, users, [d for d, _ in decoded])
                if stale():
                    st.rollback()
                    self.cores.pop(p, None)
                    return None
                fresh = [(d, evs) for d, evs in decoded if d not in seen]
                evs = [e for _, es in fresh for e in es]
                outs = core.process(evs) if evs else []
                st.commit(outs, log_to=offset, inputs=[d for d, _ in fresh],
                          watermark=core.watermark)  # fmt: skip
            except Refused:
                self.adopt(p)  # the failed attempt consumed timers: rebuild the core
                continue
            except LeaseLost:
                st.rollback()
                self.cores.pop(p, None)
                self.lost(p)
                return None
            except StateError:
                # Redis failed mid-batch (a failover): the core may be ahead of the store now;
                # ``tick`` rebuilds it from the store once Redis answers again.
                st.rollback()
                self.cores.pop(p, None)
                raise
            except BaseException:
                st.rollback()
                raise
            self.events += len(evs)
            st.stats.events += len(evs)
            st.stats.batches += 1
            self._flush_outbox(p)
            return len(fresh)
        raise StateError(f"partition {p}: batch refused 100 times")

    def _decoded(self, p: int, msgs: Sequence[tuple[str, bytes]]) -> list[tuple[bytes, list[Any]]]:
        """Each message (topic, payload) of partition ``p`` as (input digest, its events); one
        that does not decode is a dead letter (logged, counted) with no events."""
        out: list[tuple[bytes, list[Any]]] = []
        for topic, payload in msgs:
            try:
                evs = self.decode(topic, payload)
            except DecodeError as exc:
                self.dead_letters += 1
                log.warning("partition %d: dead letter %s: %s", p, topic, exc)
                evs = []
            out.append((digest(topic, payload), evs))
        return out

    def _flush_outbox(self, p: int) -> None:
        """Hand partition ``p``'s outbox to the publisher thread (never waits on the broker)."""
        if self.publisher is not None:
            self.publisher.due(p)

    def idle(self, stop: threading.Event, idle_s: float) -> None:
        stop.wait(idle_s)

    def run(self, stop: threading.Event, *, idle_s: float = 0.01) -> None:
        """Until ``stop`` is set: tick, then apply every owned partition's log; the outboxes
        are published meanwhile by the publisher thread."""
        if self.publisher is not None:
            self.publisher.start()
        try:
            self._loop(stop, idle_s)
        finally:
            if self.publisher is not None:  # while the leases are still held: half a TTL
                self.publisher.close(drain_s=self.store.lease_ttl_ms / 2000)
        self.leave()

    def _loop(self, stop: threading.Event, idle_s: float) -> None:
        every = self.store.lease_ttl_ms / 4000
        next_tick = 0.0
        while not stop.is_set():
            now = time.monotonic()
            done = 0
            try:
                if now >= next_tick:
                    self.tick()
                    next_tick = now + every
                for p in sorted(self.cores):
                    done += self.step(p)
                    if time.monotonic() >= next_tick:
                        break
            except StateError as exc:  # Redis down or failing over: retry soon
                log.warning("redis: %s (retrying)", exc)
                self.redis_errors += 1
                next_tick = 0.0
                stop.wait(0.2)
                continue
            if not done:
                self.idle(stop, idle_s)


class NatsPartitionWorker(PartitionWorker):
    """A ``PartitionWorker`` whose partitions' input comes from their NATS JetStream consumers
    (``PartitionIntake``, engine/transport/jetstream_leased.py) instead of Redis logs: the same
    leases, fencing and commits; a message is acknowledged on JetStream after the commit that
    applied it (or found it applied: its digest). The partition's offset records the stream
    sequence of the last message applied."""

    def __init__(self, store: ClusterStore, core_factory: Callable[[ClusterStore], Any], topics: Topics,
                 *, intake: Any, batch: int = 200, publish: Publish | None = None) -> None:  # fmt: skip
        super().__init__(store, core_factory, topics, batch=batch, publish=publish)
        self.intake = intake

    def owned(self, p: int) -> None:
        self.intake.own(p)

    def lost(self, p: int) -> None:
        self.intake.disown(p)

    def step(self, p: int) -> int:
        msgs = self.intake.take(p, self.batch)
        if not msgs:
            return 0
        if not self.apply(p, [(m.topic, m.payload) for m in msgs], str(msgs[-1].seq)):
            return 0
        self.intake.done(p, msgs)
        return len(msgs)

    def idle(self, stop: threading.Event, idle_s: float) -> None:
        self.intake.arrived.wait(idle_s)
        self.intake.arrived.clear()


def bridge_message(store: ClusterStore, topics: Topics, topic: str, payload: bytes) -> int | None:
    """Append one phone message to its user's partition log; the partition, or None for a topic
    that names no user (not forwarded: the worker would dead-letter it anyway)."""
    user = topic.rsplit("/", 1)[-1] if topic.startswith(f"{topics.prefix}/events/") else ""
    if not user:
        return None
    p = partition_of(user, store.partitions)
    store.append(topic, payload, p)
    return p


def bridge_messages(store: ClusterStore, topics: Topics, items: Sequence[tuple[str, bytes]]) -> int:
    """``bridge_message`` for many messages in one pipeline (per-partition order kept);
    how many were appended."""
    pfx = f"{topics.prefix}/events/"
    batch = []
    for topic, payload in items:
        user = topic.rsplit("/", 1)[-1] if topic.startswith(pfx) else ""
        if user:
            batch.append((topic, payload, partition_of(user, store.partitions)))
    store.append_many(batch)
    return len(batch)


__all__ = ["NatsPartitionWorker", "OutboxPublisher", "PartitionWorker", "bridge_message", "bridge_messages"]

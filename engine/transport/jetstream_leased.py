"""The NATS JetStream intake of partition-affine workers (``geopush worker --intake nats://...``;
docs/scaling.md, "One stack: NATS cluster + Redis Cluster").

A ``PartitionWorker`` (engine/daemon/partitioned.py) holds leases on partitions in the Redis
Cluster; with this intake it reads a partition's messages from the partition's durable pull
consumer on ``$MQTT_msgs`` (the same consumers, checks and mapping as ``geopush run --intake``,
engine/transport/jetstream.py) instead of from a Redis log. The worker calls ``own(p)`` when it
takes a lease and ``disown(p)`` when it loses or releases one; only owned partitions are pulled.

**A partition changing hands.** The consumer is shared by every owner the partition ever has:
what the old owner had been delivered and not acknowledged stays *pending* at the server and is
delivered again (to whoever pulls) after the ack wait, or at once if the old owner gave it back
(``disown`` sends a NAK for every message it holds, and for any message of a disowned partition
that still arrives). The consumer delivers new messages past pending ones, so a new owner could
see a user's later events before the earlier ones the old owner never applied. Hence the
**gate**: a newly owned partition (and every partition after a reconnection, or after a
redelivery is seen) hands nothing to the worker until the consumer's ``num_ack_pending`` equals
the number of distinct messages this intake holds for it, i.e. every message delivered and not
acknowledged is here; then they go to the worker in stream order. The gate asks the server
(one consumer-info request) at most every ``GATE_EVERY_S``; a killed owner's messages come back
after the ack wait (10 s), so a partition taken from a dead worker waits that long.

Exactly once is the store's business, not the broker's: the commit that applies messages
records their digests (``ClusterStore``, ``gp:{p<N>}:in:<digest>``) under the lease (fencing:
an old owner commits nothing once its lease is gone), and messages are acknowledged only after
that commit; a copy delivered again is recognised by its digest and only acknowledged.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import nats
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg

from engine.errors import TransportError
from engine.transport.jetstream import (
    HIGH_WATER,
    PULL_BATCH,
    PULL_EXPIRES_S,
    JsPartitionSource,
    durable_name,
)

log = logging.getLogger(__name__)

GATE_EVERY_S = 0.2  # a gated partition asks the server for its pending count at most this often
NAK = b"-NAK"


@dataclass(slots=True)
class JsMessage:
    """A partition's message: its stream sequence, topic, payload and ack subject."""

    seq: int
    topic: str
    payload: bytes
    reply: str


class PartitionIntake(JsPartitionSource):
    """Pulls the owned partitions' consumers in a background thread (its own asyncio loop);
    the worker thread calls ``own``/``disown``/``take``/``done``."""

    def __init__(
        self,
        nats_urls: list[str],
        *,
        partition_count: int,
        prefix: str = "geopush",
        name: str = "engine",
        pull_batch: int = PULL_BATCH,
    ) -> None:
        self.nats_urls = nats_urls
        self.partition_count = partition_count
        self.prefix = prefix
        self.name = name
        self.pull_batch = pull_batch
        self._nc: NatsClient | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._owned: set[int] = set()
        self._held: dict[int, dict[int, JsMessage]] = {}  # partition -> stream seq -> message
        self._gated: set[int] = set()
        self._checked: dict[int, float] = {}
        self._asking: set[int] = set()
        self._credit: dict[int, int] = {}
        self._asked: dict[int, float] = {}
        self._need: asyncio.Event | None = None
        self._inbox_subject = ""
        self._base = f"{self.subject_prefix}{prefix.replace('/', '.')}.p."
        self._by_durable = {durable_name(prefix, p): p for p in range(partition_count)}
        self.arrived = threading.Event()  # set when messages arrive (the worker may wait on it)
        self.received = 0
        self.redelivered = 0
        self.naks = 0

    # --- lifecycle (worker thread) ----------------------------------------------------------------

    def start(self, timeout: float = 30.0) -> None:
        """Connect, check the cluster (version, stream, mapping) and make sure every partition's
        consumer exists (the stream keeps only messages some consumer wants)."""
        ready = threading.Event()
        failed: list[BaseException] = []

        def main() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            asyncio.set_event_loop(loop)
            try:
                loop.run_until_complete(self._connect(timeout))
            except BaseException as exc:  # noqa: BLE001  (handed to the caller)
                failed.append(exc)
                ready.set()
                loop.close()
                return
            ready.set()
            loop.run_forever()
            loop.run_until_complete(self._close())
            loop.close()

        self._thread = threading.Thread(target=main, name="nats-intake", daemon=True)
        self._thread.start()
        ready.wait()
        if failed:
            self._thread.join()
            exc = failed[0]
            if isinstance(exc, TransportError):
                raise exc
            raise TransportError(f"NATS intake: {exc!r}") from exc

    def stop(self, give_back: bool = True) -> None:
        """Give back every held message (NAK; ``give_back`` False: leave them pending, as a
        crash does), close the connection."""
        if give_back:
            for p in list(self._owned):
                self.disown(p)
        loop, thread = self._loop, self._thread
        if loop is not None and thread is not None and thread.is_alive():
            loop.call_soon_threadsafe(loop.stop)
            thread.join(15)

    # --- ownership and messages (worker thread) -------------------------------------------------

    def own(self, p: int) -> None:
        """Start pulling partition ``p`` (gated until every pending message is here)."""
        with self._lock:
            if p in self._owned:
                return
            self._owned.add(p)
            self._held[p] = {}
            self._gated.add(p)
            self._credit[p] = 0
            self._asked[p] = 0.0
        self._wake()

    def disown(self, p: int) -> None:
        """Stop pulling partition ``p``; its held messages go back to the server (NAK, in stream
        order) for its next owner; messages of ``p`` that still arrive are sent back too."""
        with self._lock:
            if p not in self._owned:
                return
            self._owned.discard(p)
            held = self._held.pop(p, {})
            self._gated.discard(p)
        self._send([held[s].reply for s in sorted(held)], NAK)

    @property
    def owned(self) -> set[int]:
        with self._lock:
            return set(self._owned)

    def take(self, p: int, n: int) -> list[JsMessage]:
        """Up to ``n`` of partition ``p``'s messages in stream order, left held until ``done``;
        none while the partition is gated (see the module doc; the gate is checked in the
        background, so this never waits on the broker)."""
        with self._lock:
            if p not in self._owned:
                return []
            if p in self._gated:
                self._check_gate_soon(p)
                return []
            held = self._held[p]
            return [held[s] for s in sorted(held)[:n]] if held else []

    def done(self, p: int, msgs: Sequence[JsMessage]) -> None:
        """``msgs`` are committed (or were applied before): acknowledge them."""
        with self._lock:
            held = self._held.get(p, {})
            for m in msgs:
                held.pop(m.seq, None)
        self._send([m.reply for m in msgs], b"")

    def pending(self) -> int:
        """Messages held, over all owned partitions."""
        with self._lock:
            return sum(len(h) for h in self._held.values())

    def _check_gate_soon(self, p: int) -> None:
        """(under the lock) Ask the server about gated partition ``p`` unless asked lately."""
        loop = self._loop
        now = time.monotonic()
        if loop is None or p in self._asking or now - self._checked.get(p, 0.0) < GATE_EVERY_S:
            return
        self._asking.add(p)

        def ask() -> None:
            loop.create_task(self._check_gate(p))

        loop.call_soon_threadsafe(ask)

    async def _check_gate(self, p: int) -> None:
        """Open partition ``p``'s gate if every message delivered and not acknowledged
        (``num_ack_pending``) is held here. Only held messages up to the stream sequence the
        server had delivered when it answered count (later ones are not in its count)."""
        info: dict[str, Any] | None = None
        try:
            resp = await self._request(
                f"$JS.API.CONSUMER.INFO.{self.stream}.{durable_name(self.prefix, p)}", {}
            )
            info = None if "error" in resp else resp
        except Exception as exc:  # noqa: BLE001  (a node failing over: ask again later)
            log.info("partition %d: consumer info failed (%r); asking again", p, exc)
        with self._lock:
            self._asking.discard(p)
            self._checked[p] = time.monotonic()
            if info is None or p not in self._owned or p not in self._gated:
                return
            upto = int(info.get("delivered", {}).get("stream_seq", 0))
            have = sum(1 for s in self._held[p] if s <= upto)
            if int(info.get("num_ack_pending", -1)) != have:
                return
            self._gated.discard(p)
        log.info("partition %d: every pending message is here (%d); applying", p, have)
        self.arrived.set()

    # --- the loop thread -------------------------------------------------------------------------

    def _wake(self) -> None:
        loop, need = self._loop, self._need
        if loop is not None and need is not None:
            loop.call_soon_threadsafe(need.set)

    def _send(self, replies: list[str], body: bytes) -> None:
        loop = self._loop
        if not replies or loop is None:
            return
        if body == NAK:
            self.naks += len(replies)

        async def send() -> None:
            nc = self._nc
            if nc is None:
                return
            with contextlib.suppress(Exception):  # lost: the server delivers it again later
                for r in replies:
                    await nc.publish(r, body)

        with contextlib.suppress(RuntimeError):  # the loop is closing
            asyncio.run_coroutine_threadsafe(send(), loop)

    async def _connect(self, timeout: float) -> None:
        async def error(exc: Exception) -> None:
            log.warning("NATS intake: %s", exc or type(exc).__name__)

        async def disconnected() -> None:
            log.warning("NATS intake: disconnected (reconnecting)")

        async def reconnected() -> None:
            # a pull answer may have been lost with the connection: gate every partition
            log.warning(
                "NATS intake: reconnected; partitions gated until their pending messages are here"
            )
            with self._lock:
                self._gated.update(self._owned)
                for p in self._owned:
                    self._credit[p] = 0
            if self._need is not None:
                self._need.set()

        try:
            self._nc = await nats.connect(
                servers=self.nats_urls, connect_timeout=min(timeout, 5.0),
                max_reconnect_attempts=-1, reconnect_time_wait=0.5, allow_reconnect=True,
                name=f"geopush-{self.name}", error_cb=error, disconnected_cb=disconnected,
                reconnected_cb=reconnected,
            )  # fmt: skip
        except Exception as exc:  # noqa: BLE001  (nats-py raises several kinds)
            raise TransportError(f"cannot connect to NATS {self.nats_urls}: {exc}") from exc
        # A JetStream API request may time out on a busy cluster (several workers starting at
        # once, a leader election): ask again until ``2 x timeout``; a refusal is final.
        deadline = time.monotonic() + 2 * timeout
        while True:
            try:
                await self._check_source(timeout)
                await self.ensure_consumers(list(range(self.partition_count)))
                break
            except TransportError as exc:
                if not str(exc).startswith("NATS request") or time.monotonic() > deadline:
                    raise
                log.warning("NATS intake: %s (asking again)", exc)
                await asyncio.sleep(1.0)
        self._need = asyncio.Event()
        self._inbox_subject = self._nc.new_inbox()
        await self._nc.subscribe(f"{self._inbox_subject}.*", cb=self._on_msg)
        asyncio.get_running_loop().create_task(self._keep_pulling(), name="jetstream-pulls")

    async def _close(self) -> None:
        nc, self._nc = self._nc, None
        if nc is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(nc.flush(), 5.0)
            with contextlib.suppress(Exception):
                await asyncio.wait_for(nc.close(), 5.0)

    async def _keep_pulling(self) -> None:
        """One pull request open per owned partition while fewer than ``HIGH_WATER`` messages
        are held; a request never answered (its node died) is replaced after its lifetime."""
        nc, need = self._nc, self._need
        assert nc is not None and need is not None
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(need.wait(), 0.25)
            need.clear()
            if not nc.is_connected:
                continue
            now = time.monotonic()
            with self._lock:
                held = sum(len(h) for h in self._held.values())
                todo = []
                for p in sorted(self._owned):
                    if held >= HIGH_WATER:
                        break
                    if self._credit[p] > 0 and now - self._asked[p] < PULL_EXPIRES_S + 2.0:
                        continue
                    self._credit[p] = self.pull_batch
                    self._asked[p] = now
                    todo.append(p)
            for p in todo:
                await self._pull(nc, p)

    async def _on_msg(self, msg: Msg) -> None:
        reply = msg.reply
        need = self._need
        if not reply:  # a status: 408 the request expired, 404/409 nothing or refused
            try:
                part = int(msg.subject.rsplit(".", 1)[1])
            except ValueError:
                return
            with self._lock:
                if part in self._credit:
                    self._credit[part] = 0
            if need is not None:
                need.set()
            return
        # $JS.ACK.<stream>.<consumer>.<delivered>.<stream seq>.<consumer seq>.<ts>.<pending>
        tokens = reply.split(".")
        part = self._by_durable.get(tokens[3], -1) if len(tokens) >= 9 else -1
        subject = msg.subject
        if part < 0 or not subject.startswith(self._base):
            log.warning("JetStream message on unexpected subject %s: left unacknowledged", subject)
            return
        user = subject[len(self._base) :].split(".", 1)[-1].replace("//", ".")
        seq = int(tokens[5])
        with self._lock:
            if part not in self._owned:  # disowned meanwhile: back to the server at once
                owned = False
            else:
                owned = True
                if tokens[4] != "1":
                    self.redelivered += 1
                    self._gated.add(part)  # something was lost or given back: order again
                self._held[part][seq] = JsMessage(
                    seq, f"{self.prefix}/events/{user}", msg.data, reply
                )
                self.received += 1
                credit = self._credit.get(part, 0) - 1
                self._credit[part] = credit
        if not owned:
            self.naks += 1
            with contextlib.suppress(Exception):
                await msg.respond(NAK)
            return
        self.arrived.set()
        if credit <= 0 and need is not None:
            need.set()


__all__ = ["JsMessage", "PartitionIntake"]

"""The guarantee, measured: phones publish over MQTT QoS 1 while a broker node is killed; every
message the broker PUBACKed must reach the engine's consumer (tests and docs/scaling.md)."""

from __future__ import annotations

import asyncio
import collections
import json
import time
from dataclasses import dataclass, field
from typing import Any

import nats

from engine.transport.jetstream import MSGS_STREAM, JetStreamLink, parse_nats_urls
from engine.transport.mqtt import MqttLink, parse_broker_url
from simulator.bench.nats_cluster import NatsCluster


@dataclass
class Outcome:
    published: int = 0
    acked: set[int] = field(default_factory=set)  # PUBACKed by the broker
    consumed: collections.Counter[int] = field(default_factory=collections.Counter)
    killed: str = ""
    stalls: int = 0
    seconds: float = 0.0

    @property
    def lost(self) -> set[int]:
        return self.acked - set(self.consumed)

    @property
    def duplicates(self) -> int:
        return sum(n - 1 for n in self.consumed.values() if n > 1)

    def summary(self) -> str:
        return (
            f"published {self.published}, PUBACKed {len(self.acked)}, consumed "
            f"{len(self.consumed)} distinct ({self.duplicates} redelivered twice), lost "
            f"{len(self.lost)}; killed {self.killed}; {self.stalls} publisher stalls; {self.seconds:.1f} s"
        )


async def stream_leader(c: NatsCluster, stream: str = MSGS_STREAM) -> str:
    """The server leading ``stream``; for $MQTT_msgs an MQTT connection creates it first."""
    if stream == MSGS_STREAM:
        link = MqttLink(parse_broker_url(c.mqtt_url(0)), client_id="stream-maker")
        await link.connect()
        await link.disconnect()
    nc = await nats.connect(servers=parse_nats_urls(c.nats_urls))
    try:
        deadline = time.monotonic() + 20
        while True:
            msg = await nc.request(f"$JS.API.STREAM.INFO.{stream}", b"{}", timeout=5)
            leader = json.loads(msg.data).get("cluster", {}).get("leader")
            if leader or time.monotonic() > deadline:
                return str(leader)
            await asyncio.sleep(0.2)
    finally:
        await nc.close()


async def publish_consume_kill(
    c: NatsCluster,
    n: int = 12_000,
    users: int = 300,
    window: int = 200,
    settle_s: float = 60.0,
    stall_s: float = 5.0,
    link_cls: type[JetStreamLink] = JetStreamLink,
) -> Outcome:
    """Publish ``n`` numbered messages at QoS 1 (``window`` in flight) to one node, consume all
    partitions with a JetStreamLink on another, and SIGKILL the node leading $MQTT_msgs once a
    third are PUBACKed. The publisher moves to a surviving node when its own connection drops."""
    out = Outcome()
    P = c.partitions
    eng = link_cls(
        parse_broker_url(c.mqtt_url(1)), nats_urls=parse_nats_urls(c.nats_urls),
        partitions=list(range(P)), partition_count=P, client_id="engine",
        clean_session=False, manual_ack=True, max_inflight_out=0,
    )  # fmt: skip
    await eng.connect()
    leader = await stream_leader(c, link_cls.stream)
    victim = c.index_of(leader)
    out.killed = f"{leader} (leader of {link_cls.stream})"
    pub_nodes = [i for i in range(len(c.nodes)) if i != victim]

    async def consume() -> None:
        while True:
            await eng.wait_inbound(0.5)
            batch = eng.take(1000)
            for m in batch:
                out.consumed[int(m.payload.split(b'"seq":')[1].split(b"}")[0])] += 1
            eng.ack_many(batch)  # after "commit": the counter above

    consumer = asyncio.create_task(consume())
    t0 = time.monotonic()
    sem = asyncio.Semaphore(window)
    link: MqttLink | None = None
    killed = False
    seq = 0
    while seq < n:
        if link is None or not link.connected:
            if link is not None:
                await link.disconnect()
            node = pub_nodes[seq % len(pub_nodes)] if link is not None else pub_nodes[0]
            link = MqttLink(
                parse_broker_url(c.mqtt_url(node)), client_id=f"phones-{seq}", max_inflight_out=0
            )
            try:
                await link.connect(timeout=5)
            except Exception:  # noqa: BLE001
                await asyncio.sleep(0.5)
                continue
        try:
            await asyncio.wait_for(sem.acquire(), stall_s)
        except TimeoutError:  # no PUBACK for a while: a phone gives up and reconnects elsewhere
            out.stalls += 1
            link.drop()  # fails what is in flight (their semaphore slots come back)
            continue

        def done(exc: BaseException | None, s: int = seq) -> None:
            sem.release()
            if exc is None:
                out.acked.add(s)

        link.publish_cb(f"geopush/events/u{seq % users}", b'{"seq":%d}' % seq, done)
        seq += 1
        out.published = seq
        if not killed and len(out.acked) >= n // 3:
            c.kill(victim)
            killed = True
    if link is not None:  # the last PUBACKs, or give up on them
        end = time.monotonic() + stall_s
        while link.publishes_in_flight and time.monotonic() < end:
            await asyncio.sleep(0.1)
    deadline = time.monotonic() + settle_s
    while out.lost and time.monotonic() < deadline:
        await asyncio.sleep(0.5)
    out.seconds = time.monotonic() - t0
    consumer.cancel()
    if link is not None:
        await link.disconnect()
    await eng.disconnect()
    return out


async def publish_rounds(
    urls: list[str],
    messages: list[tuple[str, bytes]],
    users: int,
    between: Any = None,
    stall_s: float = 5.0,
) -> int:
    """Publish QoS 1 like phones do: round by round (one message per user, the round's PUBACKs
    awaited before the next, so a user's messages stay in order); when PUBACKs stop coming
    (a node died) reconnect, to the next URL, and send the round's unacknowledged ones again.
    ``between(k)`` runs after round k. Returns how many messages were sent again (each may
    be stored twice: a PUBACK lost with its connection; the engine counts such a copy as an
    event and recognises its effects)."""
    link: MqttLink | None = None
    resent, turn = 0, 0
    for k in range(0, len(messages), users):
        todo = dict(enumerate(messages[k : k + users]))
        while todo:
            if link is None or not link.connected:
                if link is not None:
                    await link.disconnect()
                    turn += 1
                link = MqttLink(parse_broker_url(urls[turn % len(urls)]), max_inflight_out=0)
                try:
                    await link.connect(timeout=5)
                except Exception:  # noqa: BLE001  (a dead node: try the next)
                    link, turn = None, turn + 1
                    await asyncio.sleep(0.2)
                    continue
            futs = {i: link.publish_nowait(t, p) for i, (t, p) in todo.items()}
            await asyncio.wait(futs.values(), timeout=stall_s)
            for i, f in futs.items():
                if f.done() and f.exception() is None:
                    del todo[i]
                elif not f.done():
                    f.cancel()
            if todo:
                resent += len(todo)
                link.drop()
        if between is not None:
            await between(k // users)
    if link is not None:
        await link.disconnect()
    return resent


class UserStreamLink(JetStreamLink):
    """The trap (docs/scaling.md): the same intake on a user stream ``GEOPUSH`` that captures
    the partitioned subjects, which an MQTT PUBACK does not wait for. For the test that shows
    what consuming ``$MQTT_msgs`` avoids."""

    stream = "GEOPUSH"
    subject_prefix = ""

    async def _check_source(self, timeout: float) -> None:
        cfg = {"name": self.stream, "subjects": ["geopush.p.>"], "num_replicas": 3,
               "storage": "file", "retention": "limits"}  # fmt: skip
        resp = await self._request(f"$JS.API.STREAM.CREATE.{self.stream}", cfg, timeout=10)
        if "error" in resp and resp["error"].get("err_code") != 10058:  # 10058: exists
            raise RuntimeError(resp)

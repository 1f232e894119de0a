"""Intake from a NATS JetStream cluster, partition by partition (docs/scaling.md).

Phones publish over MQTT 3.1.1 at QoS 1 to ``{prefix}/events/{user}`` on any node of a NATS
cluster whose MQTT listeners share the subject mapping
``"{prefix}.events.*": "{prefix}.p.{{partition(P,1)}}.{{wildcard(1)}}"``. The engine consumes its
partitions with one durable pull consumer per partition and acknowledges each message after the
commit that applied it; pushes go back out through the MQTT listener (QoS 1, the outbox's
ordinary path), so phones subscribed to ``{prefix}/push/{user}`` get them at QoS 1.

Which stream, and why a private one. NATS acknowledges an MQTT QoS 1 PUBLISH (PUBACK) once the
message is stored in its own replicated stream ``$MQTT_msgs``, not in a user stream that
captures the subject: killing the node that led such a user stream lost thousands of PUBACKed
messages (docs/scaling.md, "Broker choice"). Consuming ``$MQTT_msgs`` itself (subjects
``$MQTT.msgs.{prefix}.p.{n}.{user}``) loses none, but the stream is an internal detail of
nats-server, so ``connect`` checks it before use (``internals_problems``): the server's version
(the tested minor, ``TESTED_NATS``), the stream's subjects and retention, and that the mapping is
in place; on any mismatch it refuses with the reason. The stream keeps a message only while a
consumer is interested (interest retention): the durable consumers of every partition are
created at the first start (``ensure_consumers``), before phones publish, and persist.

``JetStreamLink`` is an ``MqttLink`` (outputs, control topic, will) whose inbox also receives the
partitions' messages as ``JsInbound``; ``ack``/``ack_many`` acknowledge them on JetStream. The
service uses it exactly as it uses ``MqttLink``.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import logging
import time
from dataclasses import dataclass
from typing import Any

import nats
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg

from engine.errors import ConfigError, TransportError
from engine.partitions import partition_of
from engine.transport.mqtt import BrokerAddress, Inbound, MqttLink

log = logging.getLogger(__name__)

MSGS_STREAM = "$MQTT_msgs"  # nats-server's internal stream of MQTT QoS 1 messages
MSGS_PREFIX = "$MQTT.msgs."
TESTED_NATS = (2, 9)  # the nats-server minor whose internal stream this module reads
PULL_BATCH = 1000  # messages asked per pull request, per partition
PULL_EXPIRES_S = 5.0  # a pull request's lifetime at the server (a new one follows)
ACK_WAIT_S = 10.0  # unacknowledged for this long: the server delivers the message again
MAX_ACK_PENDING = 20_000  # per partition: delivered, not yet acknowledged (after commit)
# No new pull requests while the inbox holds this many messages; the pulls of all partitions
# together ask for at most about as many, so nothing waits in the inbox near ACK_WAIT_S (it
# would be delivered again, and the engine would only recognise the copy).
HIGH_WATER = 8_000


def parse_nats_urls(spec: str) -> list[str]:
    """``nats://h1:4222,nats://h2:4222`` (or ``h1:4222,...``) -> the server list."""
    urls = [u.strip() for u in spec.split(",") if u.strip()]
    if not urls:
        raise TransportError(f"--intake {spec!r}: no server; e.g. nats://localhost:4222")
    out = []
    for u in urls:
        if "://" not in u:
            u = f"nats://{u}"
        if not u.startswith("nats://"):
            raise TransportError(f"--intake {u!r}: scheme must be nats://")
        out.append(u)
    return out


def parse_partition_list(spec: str, count: int) -> list[int]:
    """``--partitions`` of ``geopush run --intake``: ``"0-7,12,14-15"`` -> sorted partition
    numbers, each below ``count``; ``"all"``: every one."""
    if spec.strip() == "all":
        return list(range(count))
    out: set[int] = set()
    for part in spec.split(","):
        part = part.strip()
        try:
            if "-" in part:
                lo_s, hi_s = part.split("-", 1)
                lo, hi = int(lo_s), int(hi_s)
            else:
                lo = hi = int(part)
        except ValueError:
            raise ConfigError(
                f"--partitions {spec!r}: expected numbers and ranges such as 0-7,12 or 'all'"
            ) from None
        if lo > hi or lo < 0 or hi >= count:
            raise ConfigError(
                f"--partitions {spec!r}: {part} is outside 0-{count - 1} "
                f"(--partition-count is {count})"
            )
        out.update(range(lo, hi + 1))
    if not out:
        raise ConfigError(f"--partitions {spec!r} names no partition")
    return sorted(out)


@dataclass(slots=True)
class JsInbound(Inbound):
    """A message of a partition: acknowledged on JetStream (``reply``: its ack subject)."""

    reply: str = ""
    partition: int = -1


class _Inbox(collections.deque[Inbound]):
    """The link's inbox. A new MQTT connection voids the unacknowledged MQTT messages (the
    service clears the inbox, the broker sends them again); a JetStream message's ack stays
    valid across connections, so ``clear`` keeps those (no redelivery wait, no reordering)."""

    def clear(self) -> None:
        keep = [m for m in self if isinstance(m, JsInbound)]
        super().clear()
        self.extend(keep)


def durable_name(prefix: str, partition: int) -> str:
    return f"{prefix.replace('/', '_').replace('.', '_')}-p{partition}"


def filter_subject(prefix: str, partition: int, subject_prefix: str = MSGS_PREFIX) -> str:
    return f"{subject_prefix}{prefix.replace('/', '.')}.p.{partition}.*"


def internals_problems(version: tuple[int, int], stream_info: dict[str, Any] | None) -> list[str]:
    """Why the internal stream cannot be used as this module expects (empty: it can)."""
    problems = []
    if version != TESTED_NATS:
        problems.append(
            f"nats-server {version[0]}.{version[1]} (this intake reads nats-server's internal "
            f"stream {MSGS_STREAM} as {TESTED_NATS[0]}.{TESTED_NATS[1]} lays it out; test it "
            "on this version, then widen TESTED_NATS)"
        )
    if stream_info is None:
        problems.append(
            f"no stream {MSGS_STREAM}: is the MQTT listener enabled with JetStream on this "
            "account (mqtt {{ listen: ... }} and jetstream {{ ... }} in nats-server.conf)?"
        )
        return problems
    cfg = stream_info.get("config", {})
    if cfg.get("subjects") != [f"{MSGS_PREFIX}>"]:
        problems.append(f"{MSGS_STREAM} captures {cfg.get('subjects')}, not ['{MSGS_PREFIX}>']")
    if cfg.get("retention") not in ("interest", "limits"):
        problems.append(f"{MSGS_STREAM} has retention {cfg.get('retention')!r}")
    return problems


async def _nats_error(exc: Exception) -> None:
    log.warning("NATS intake: %s", exc or type(exc).__name__)  # nats-py reconnects by itself


async def _nats_disconnected() -> None:
    log.warning("NATS intake: disconnected (reconnecting; unacknowledged messages return)")


async def _nats_reconnected() -> None:
    log.warning("NATS intake: reconnected")


class JsPartitionSource:
    """The checks and consumers shared by the intakes of ``$MQTT_msgs`` partitions
    (``JetStreamLink`` here, ``PartitionIntake`` in engine/transport/jetstream_leased.py): needs
    ``_nc``, ``prefix`` and ``partition_count``."""

    stream = MSGS_STREAM  # the stream consumed, and the prefix of its subjects
    subject_prefix = MSGS_PREFIX
    _nc: NatsClient | None
    prefix: str
    partition_count: int
    pull_batch: int
    _inbox_subject: str  # pulled messages arrive on ``<this>.<partition>``

    async def _pull(self, nc: NatsClient, part: int) -> None:
        """Ask partition ``part``'s consumer for its next ``pull_batch`` messages (a request
        that lives ``PULL_EXPIRES_S`` at the server); one that fails to go out is dropped: its
        credit runs out and it is asked again."""
        body = {"batch": self.pull_batch, "expires": int(PULL_EXPIRES_S * 1e9)}
        with contextlib.suppress(Exception):
            await nc.publish(
                f"$JS.API.CONSUMER.MSG.NEXT.{self.stream}.{durable_name(self.prefix, part)}",
                json.dumps(body).encode(),
                reply=f"{self._inbox_subject}.{part}",
            )

    async def _check_source(self, timeout: float) -> None:
        """Refuse a server whose internal stream is not laid out as tested, or a cluster without
        the partition mapping."""
        nc = self._nc
        assert nc is not None
        v = nc.connected_server_version
        info = await self._stream_info(timeout)
        problems = internals_problems((v.major, v.minor), info)
        if problems:
            raise TransportError(
                "NATS intake refused: " + "; ".join(problems) + " (docs/scaling.md)"
            )
        await self._check_mapping()

    async def _request(self, subject: str, body: dict[str, Any], timeout: float = 5.0) -> Any:
        nc = self._nc
        assert nc is not None
        try:
            msg = await nc.request(subject, json.dumps(body).encode(), timeout=timeout)
        except Exception as exc:  # noqa: BLE001
            raise TransportError(f"NATS request {subject} failed: {exc!r}") from exc
        return json.loads(msg.data)

    async def _stream_info(self, timeout: float) -> dict[str, Any] | None:
        """``$MQTT_msgs``'s info, waiting up to ``timeout`` for the MQTT listener to create it."""
        deadline = time.monotonic() + timeout
        while True:
            resp = await self._request(f"$JS.API.STREAM.INFO.{self.stream}", {})
            if "error" not in resp:
                return dict(resp)
            if time.monotonic() > deadline:
                return None
            await asyncio.sleep(0.2)

    async def _check_mapping(self) -> None:
        """The node we reach maps ``{prefix}.events.<user>`` to the partition ``partition_of``
        computes for ``--partition-count`` (a plain NATS probe message, which no MQTT QoS 1
        subscriber and no stream sees); and no message sits under ``{prefix}.events.*`` in the
        stream (published on a node without the mapping: no partition's consumer reads it)."""
        p = self.prefix.replace("/", ".")
        nc = self._nc
        assert nc is not None
        rule = f'"{p}.events.*": "{p}.p.{{{{partition({self.partition_count},1)}}}}.{{{{wildcard(1)}}}}"'
        # Eight probe users: for P in 8, 16, ..., 4096 no other count up to 16384 puts all of
        # them where P does (checked); one probe would agree with half the other counts.
        for probe in (f"geopush-mapping-probe-{i}" for i in range(8)):
            want = f"{p}.p.{partition_of(probe, self.partition_count)}.{probe}"
            subject = await self._probe(nc, p, probe)
            if subject != want:
                raise TransportError(
                    f"NATS intake refused: {p}.events.{probe} arrived as {subject}, not as "
                    f"{want}: every node needs the mapping {rule} with P = --partition-count "
                    f"({self.partition_count}); docs/scaling.md"
                )
        resp = await self._request(
            f"$JS.API.STREAM.INFO.{self.stream}",
            {"subjects_filter": f"{self.subject_prefix}{p}.events.>"},
        )
        stray = resp.get("state", {}).get("subjects") or {}
        if stray:
            raise TransportError(
                f"{sum(stray.values())} message(s) in {self.stream} under {p}.events.* (not "
                f"partitioned): every node needs the mapping {rule} (docs/scaling.md); they were "
                "published to a node without it"
            )

    @staticmethod
    async def _probe(nc: NatsClient, p: str, probe: str) -> str:
        """The subject a plain NATS publish to ``{p}.events.{probe}`` arrives as."""
        got: asyncio.Future[str] = asyncio.get_running_loop().create_future()

        async def seen(msg: Msg) -> None:
            if not got.done():
                got.set_result(msg.subject)

        subs = [await nc.subscribe(f"{p}.p.*.{probe}", cb=seen),
                await nc.subscribe(f"{p}.events.{probe}", cb=seen)]  # fmt: skip
        try:
            await nc.publish(f"{p}.events.{probe}", b"")
            return await asyncio.wait_for(got, 5.0)
        except TimeoutError:
            return "nothing"
        finally:
            for sub in subs:
                with contextlib.suppress(Exception):
                    await sub.unsubscribe()

    async def ensure_consumers(self, partitions: list[int]) -> None:
        """One durable pull consumer per partition (idempotent). Create them for every partition
        before phones publish: the stream drops messages nobody is interested in."""
        await asyncio.gather(*(self._ensure_consumer(p) for p in partitions))

    async def _ensure_consumer(self, part: int) -> None:
        name = durable_name(self.prefix, part)
        want = filter_subject(self.prefix, part, self.subject_prefix)
        info = await self._request(f"$JS.API.CONSUMER.INFO.{self.stream}.{name}", {})
        have = info.get("config", {}).get("filter_subject") if "error" not in info else None
        if have == want:
            return
        if have is None:
            cfg = {
                "durable_name": name,
                "deliver_policy": "all",
                "ack_policy": "explicit",
                "ack_wait": int(ACK_WAIT_S * 1e9),
                "max_ack_pending": MAX_ACK_PENDING,
                "filter_subject": want,
                "replay_policy": "instant",
            }
            resp = await self._request(
                f"$JS.API.CONSUMER.DURABLE.CREATE.{self.stream}.{name}",
                {"stream_name": self.stream, "config": cfg},
                timeout=10.0,
            )
            err = resp.get("error")
            if err is None:
                return
            have = f"not created: {err.get('description')}"
        raise TransportError(
            f"consumer {name} on {self.stream}: filter {have!r}, expected {want!r} (delete it "
            "with `nats consumer rm` if it belongs to an old layout)"
        )


class JetStreamLink(MqttLink, JsPartitionSource):
    """An MQTT link (outputs, control, will) plus the intake of some partitions from JetStream."""

    def __init__(
        self,
        address: BrokerAddress,
        *,
        nats_urls: list[str],
        partitions: list[int],
        partition_count: int,
        prefix: str = "geopush",
        pull_batch: int = PULL_BATCH,
        **kw: Any,
    ) -> None:
        super().__init__(address, **kw)
        self.inbox = _Inbox()
        self.nats_urls = nats_urls
        self.partitions = partitions
        self.partition_count = partition_count
        self.prefix = prefix
        self.pull_batch = max(50, min(pull_batch, HIGH_WATER // max(1, len(partitions))))
        self._nc: NatsClient | None = None
        self._inbox_subject = ""
        self._credit: dict[int, int] = {}  # partition -> messages still due on its open pull
        self._asked: dict[int, float] = {}  # partition -> when its open pull was sent
        self._need = asyncio.Event()
        self._keeper: asyncio.Task[None] | None = None
        self._acks: list[str] = []
        self._ack_task: asyncio.Task[None] | None = None
        self._base = f"{self.subject_prefix}{prefix.replace('/', '.')}.p."
        self._by_durable = {durable_name(prefix, p): p for p in partitions}
        self.received = 0  # JetStream messages taken into the inbox (metrics, tests)

    # --- connection ----------------------------------------------------------------------------

    async def connect(self, timeout: float = 10.0) -> None:
        await super().connect(timeout)  # the MQTT listener (creates $MQTT_msgs on first use)
        if self._nc is None:
            try:
                await self._connect_nats(timeout)
            except BaseException:
                await super().disconnect()
                raise

    async def _connect_nats(self, timeout: float) -> None:
        try:
            nc = await nats.connect(
                servers=self.nats_urls,
                connect_timeout=min(timeout, 5.0),
                max_reconnect_attempts=-1,
                reconnect_time_wait=0.5,
                allow_reconnect=True,
                name=f"geopush-{self.client_id or 'engine'}",
                error_cb=_nats_error,
                disconnected_cb=_nats_disconnected,
                reconnected_cb=_nats_reconnected,
            )
        except Exception as exc:  # noqa: BLE001  (nats-py raises several kinds)
            raise TransportError(f"cannot connect to NATS {self.nats_urls}: {exc}") from exc
        self._nc = nc
        try:
            await self._check_source(timeout)
            await self.ensure_consumers(self.partitions)
            self._inbox_subject = nc.new_inbox()
            await nc.subscribe(f"{self._inbox_subject}.*", cb=self._on_msg)
            self._credit = dict.fromkeys(self.partitions, 0)
            self._asked = dict.fromkeys(self.partitions, 0.0)
            self._keeper = asyncio.create_task(self._keep_pulling(), name="jetstream-pulls")
        except BaseException:
            await self._close_nats()
            raise

    async def _close_nats(self) -> None:
        keeper, self._keeper = self._keeper, None
        if keeper is not None:
            keeper.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await keeper
        nc, self._nc = self._nc, None
        if nc is not None:
            await self._flush_acks(nc)
            with contextlib.suppress(Exception):
                await asyncio.wait_for(nc.close(), 5.0)

    async def disconnect(self) -> None:
        await super().disconnect()
        await self._close_nats()

    def drop(self) -> None:
        super().drop()
        nc, self._nc = self._nc, None
        if self._keeper is not None:
            self._keeper.cancel()
            self._keeper = None
        if nc is not None:
            asyncio.ensure_future(nc.close())

    # --- intake --------------------------------------------------------------------------------

    async def _keep_pulling(self) -> None:
        """Keep one pull request open per partition while the inbox has room; a request the
        server never answered (its node died) is replaced after its lifetime."""
        nc = self._nc
        assert nc is not None
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._need.wait(), 0.25)
            self._need.clear()
            if not nc.is_connected:
                continue
            now = time.monotonic()
            for part in self.partitions:
                if len(self.inbox) >= HIGH_WATER:
                    break
                if self._credit[part] > 0 and now - self._asked[part] < PULL_EXPIRES_S + 2.0:
                    continue
                self._credit[part] = self.pull_batch
                self._asked[part] = now
                await self._pull(nc, part)

    async def _on_msg(self, msg: Msg) -> None:
        reply = msg.reply
        if not reply:  # a status: 408 the request expired, 404/409 nothing or refused
            try:
                part = int(msg.subject.rsplit(".", 1)[1])
            except ValueError:
                return
            if part in self._credit:
                self._credit[part] = 0
                self._need.set()
            return
        # $JS.ACK.<stream>.<consumer>.<delivered>.<stream seq>.<consumer seq>.<ts>.<pending>
        tokens = reply.split(".")
        part = self._by_durable.get(tokens[3], -1) if len(tokens) >= 9 else -1
        subject = msg.subject
        if not subject.startswith(self._base):
            log.warning("JetStream message on unexpected subject %s: left unacknowledged", subject)
            return
        user = subject[len(self._base) :].split(".", 1)[-1].replace("//", ".")
        self.inbox.append(
            JsInbound(
                f"{self.prefix}/events/{user}", msg.data, 0, 1, tokens[4] != "1",
                time.time(), self.epoch, False, reply, part,
            )
        )  # fmt: skip
        self.received += 1
        self._wakeup.set()
        credit = self._credit.get(part, 0) - 1
        self._credit[part] = credit
        if credit <= 0:
            self._need.set()

    def ack(self, msg: Inbound) -> bool:
        if isinstance(msg, JsInbound):
            self._queue_acks([msg.reply])
            return True
        return super().ack(msg)

    def ack_many(self, msgs: Any) -> int:
        msgs = list(msgs)
        js = [m.reply for m in msgs if isinstance(m, JsInbound)]
        n = (
            super().ack_many([m for m in msgs if not isinstance(m, JsInbound)])
            if len(js) < len(msgs)
            else 0
        )
        if js:
            self._queue_acks(js)
        return n + len(js)

    def _queue_acks(self, replies: list[str]) -> None:
        """Acks go out from one task (nats-py's publish is a coroutine); an ack that never
        arrives only means a redelivery after ACK_WAIT_S, which the engine recognises."""
        self._acks.extend(replies)
        if self._ack_task is None or self._ack_task.done():
            nc = self._nc
            if nc is not None:
                self._ack_task = asyncio.ensure_future(self._flush_acks(nc))

    async def _flush_acks(self, nc: NatsClient) -> None:
        while self._acks:
            acks, self._acks = self._acks, []
            with contextlib.suppress(Exception):
                for r in acks:
                    await nc.publish(r, b"")

    @property
    def acks_pending(self) -> int:
        return len(self._acks)

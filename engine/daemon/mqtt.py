"""The MQTT transport: the only module in geopush that imports aiomqtt.

A thin layer over ``aiomqtt.Client`` (MQTT 3.1.1: v5 costs ~3x per message here) that adds what
the daemon needs and aiomqtt 2.5 does not expose:

* **manual acknowledgements.** paho-mqtt 2.x can hold the PUBACK of an incoming QoS 1 message
  until the application calls ``ack(mid, qos)`` (``manual_ack_set``); aiomqtt does not wrap it yet
  (empicano/aiomqtt#345), so we switch it on the underlying paho client. The daemon acks a message
  only after the micro-batch holding it is committed to SQLite: a message the broker considers
  delivered is always durable.
* **bounded intake without drops.** aiomqtt's own queue is unbounded and, if bounded with
  ``max_queued_incoming_messages``, *discards* messages. We do neither: with manual acks the broker
  stops sending once its in-flight window for this client (mosquitto ``max_inflight_messages``) is
  full of unacked messages, so our inbox never holds more than that window; everything else waits
  in the broker's persistent session. Backpressure reaches the broker, nothing is dropped.
* **cheap intake.** We take paho's ``on_message`` callback directly and keep (topic, payload, mid,
  dup) instead of building an aiomqtt ``Message`` and an iterator task per message.
* **cheap writes.** paho sends every queued packet with its own ``send`` call: after a batch
  commit that is hundreds of PUBACKs and PUBLISHes, one syscall (and, with TCP_NODELAY, one TCP
  segment the broker must read) each. ``_coalesce_writes`` makes paho send runs of queued packets
  as one buffer (~9% of the engine's CPU under batch load went to ``send``). Likewise paho reads
  every packet with 2-3 ``recv`` calls (command byte, length bytes, body): ``_buffer_reads``
  serves them from one large ``recv``; and ``_lean_pubacks`` decodes an MQTT 3.1.1 PUBACK
  (2 bytes) without building paho's v5 ReasonCode/Properties objects each time.
* **concurrent QoS 1 publishing.** ``publish_nowait`` hands the message to paho and returns a
  future resolved by the PUBACK, so thousands can be in flight (awaiting each one in turn tops out
  near 4k msg/s).

Errors from aiomqtt / paho are translated to ``engine.errors.TransportError`` here.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import socket
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote, urlsplit

import aiomqtt
import paho.mqtt.client as paho
from paho.mqtt.enums import MQTTErrorCode

from engine.errors import ConfigError, TransportError


@dataclass(frozen=True, slots=True)
class BrokerAddress:
    host: str
    port: int
    username: str | None = None
    password: str | None = None


def parse_broker_url(url: str) -> BrokerAddress:
    """``mqtt://[user[:password]@]host[:port]`` (port 1883 by default)."""
    parts = urlsplit(url if "://" in url else f"mqtt://{url}")
    if parts.scheme not in ("mqtt", "tcp"):
        raise ConfigError(
            f"broker URL {url!r}: scheme must be mqtt:// (got {parts.scheme}://); "
            "e.g. mqtt://localhost:1883"
        )
    if not parts.hostname:
        raise ConfigError(f"broker URL {url!r} has no host; e.g. mqtt://localhost:1883")
    try:
        port = parts.port or 1883
    except ValueError as exc:
        raise ConfigError(f"broker URL {url!r}: bad port") from exc
    return BrokerAddress(
        host=parts.hostname,
        port=port,
        username=unquote(parts.username) if parts.username else None,
        password=unquote(parts.password) if parts.password else None,
    )


@dataclass(slots=True)
class Inbound:
    """One received PUBLISH, as the daemon needs it."""

    topic: str
    payload: bytes
    mid: int
    qos: int
    dup: bool
    received: float  # time.time() when paho handed it over
    epoch: int  # connection number: an ack is only valid on the connection that received it


@dataclass(frozen=True, slots=True)
class Will:
    topic: str
    payload: bytes
    qos: int = 1
    retain: bool = True


class MqttLink:
    """One connection to the broker (reusable: ``connect`` again after a disconnect)."""

    def __init__(
        self,
        address: BrokerAddress,
        *,
        client_id: str | None = None,
        clean_session: bool = True,
        manual_ack: bool = False,
        will: Will | None = None,
        keepalive: int = 30,
        max_inflight_out: int = 1000,
        username: str | None = None,
        password: str | None = None,
    ) -> None:
        self.address = address
        self.client_id = client_id
        self.clean_session = clean_session
        self.manual_ack = manual_ack
        self.will = will
        self.keepalive = keepalive
        self.max_inflight_out = max_inflight_out
        self.username = username if username is not None else address.username
        self.password = password if password is not None else address.password
        self.inbox: collections.deque[Inbound] = collections.deque()
        self.epoch = 0
        self._wakeup = asyncio.Event()
        self._client: aiomqtt.Client | None = None
        self._paho: paho.Client | None = None
        # mid -> called with None on PUBACK, or with the error when the connection drops first
        self._pub_done: dict[int, Callable[[BaseException | None], None]] = {}
        self._aiomqtt_on_publish: Any = None

    # --- connection ----------------------------------------------------------------------------

    async def connect(self, timeout: float = 10.0) -> None:
        """Connect (one attempt). Raises TransportError when the broker is unreachable or refuses."""
        will = None
        if self.will is not None:
            will = aiomqtt.Will(
                self.will.topic, self.will.payload, qos=self.will.qos, retain=self.will.retain
            )
        client = aiomqtt.Client(
            self.address.host,
            self.address.port,
            username=self.username,
            password=self.password,
            identifier=self.client_id,
            protocol=aiomqtt.ProtocolVersion.V311,
            clean_session=self.clean_session,
            will=will,
            keepalive=self.keepalive,
            timeout=timeout,
            max_inflight_messages=self.max_inflight_out,
            # Neither aiomqtt nor paho disables Nagle: small PUBACKs and pushes would wait for
            # the peer's delayed ACK (up to ~40 ms). Latency matters more than packet count here.
            socket_options=[(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)],
        )
        pc: paho.Client = client._client  # noqa: SLF001  (see module doc: manual acks)
        pc.manual_ack_set(self.manual_ack)
        _coalesce_writes(pc)
        _buffer_reads(pc)
        _lean_pubacks(pc)
        self.epoch += 1
        epoch = self.epoch
        inbox = self.inbox
        wakeup = self._wakeup

        def on_message(_c: Any, _u: Any, m: paho.MQTTMessage) -> None:
            inbox.append(
                Inbound(m.topic, bytes(m.payload), m.mid, m.qos, bool(m.dup), time.time(), epoch)
            )
            wakeup.set()

        pc.on_message = on_message
        self._aiomqtt_on_publish = pc.on_publish
        pc.on_publish = self._on_publish
        try:
            await client.__aenter__()
        except aiomqtt.MqttError as exc:
            raise TransportError(
                f"cannot connect to mqtt://{self.address.host}:{self.address.port}: {exc}"
            ) from exc
        self._client = client
        self._paho = pc

    async def disconnect(self) -> None:
        client, self._client, self._paho = self._client, None, None
        self._fail_publishes(TransportError("disconnected"))
        if client is not None:
            with contextlib.suppress(aiomqtt.MqttError, asyncio.TimeoutError, OSError):
                await asyncio.wait_for(client.__aexit__(None, None, None), 5.0)
            _retrieve(client)

    def drop(self) -> None:
        """Forget the connection without a DISCONNECT packet (so the broker publishes the will)."""
        client, self._client, self._paho = self._client, None, None
        self._fail_publishes(TransportError("disconnected"))
        if client is not None:
            sock = client._client.socket()  # noqa: SLF001
            if sock is not None:
                with contextlib.suppress(OSError):
                    sock.close()
            _retrieve(client)

    @property
    def connected(self) -> bool:
        return self._client is not None and not self._client._disconnected.done()  # noqa: SLF001

    async def wait_disconnected(self) -> None:
        """Return (never raise) when the connection is lost."""
        if self._client is None:
            return
        with contextlib.suppress(Exception):
            await asyncio.shield(self._client._disconnected)  # noqa: SLF001

    async def subscribe(self, topics: list[str], qos: int = 1) -> None:
        client = self._require()
        try:
            await client.subscribe([(t, qos) for t in topics])
        except aiomqtt.MqttError as exc:
            raise TransportError(f"subscribe {topics} failed: {exc}") from exc

    # --- intake --------------------------------------------------------------------------------

    async def wait_inbound(self, timeout: float | None = None) -> bool:
        """Wait until the inbox is non-empty; False on timeout."""
        while not self.inbox:
            self._wakeup.clear()
            if self.inbox:
                break
            try:
                await asyncio.wait_for(self._wakeup.wait(), timeout)
            except TimeoutError:
                return bool(self.inbox)
        return True

    def pump(self, limit: int) -> int:
        """Read whatever the socket already holds, up to ``limit`` more messages, now.

        paho reads ONE packet per readable-socket callback when it has little outgoing traffic
        (``loop_read`` sizes its loop by the number of outgoing messages), so left alone a busy
        subscriber gets its messages one event-loop turn at a time and every micro-batch holds
        one message. Pumping before taking a batch lets batches grow with the load.
        Returns the number of messages added to the inbox."""
        pc = self._paho
        if pc is None:
            return 0
        inbox = self.inbox
        start = len(inbox)
        for _ in range(limit):
            before = len(inbox)
            try:
                pc.loop_read()
            except Exception:  # noqa: BLE001  (aiomqtt's own reader sees and reports it next turn)
                break
            if len(inbox) == before:  # nothing (more) buffered, or a non-PUBLISH packet
                break
        return len(inbox) - start

    def take(self, limit: int) -> list[Inbound]:
        """Up to ``limit`` messages from the inbox, oldest first, without waiting."""
        inbox = self.inbox
        n = min(limit, len(inbox))
        return [inbox.popleft() for _ in range(n)]

    def ack(self, msg: Inbound) -> bool:
        """Send the PUBACK of a QoS 1 message now. False when the connection that received it is
        gone (the broker will redeliver it on the next connection)."""
        if msg.qos == 0 or not self.manual_ack:
            return True
        pc = self._paho
        if pc is None or msg.epoch != self.epoch:
            return False
        return bool(pc.ack(msg.mid, msg.qos) == paho.MQTT_ERR_SUCCESS)

    # --- publishing ----------------------------------------------------------------------------

    def publish_cb(
        self,
        topic: str,
        payload: bytes,
        done: Callable[[BaseException | None], None],
        qos: int = 1,
        retain: bool = False,
    ) -> None:
        """Queue a PUBLISH; ``done(None)`` runs on PUBACK (QoS 1) or once written (QoS 0),
        ``done(TransportError)`` if it cannot be sent or the connection drops first. ``done`` runs
        inside paho's read callback: no future or event-loop turn per message (the outbox's
        hot path)."""
        pc = self._paho
        if pc is None:
            done(TransportError("not connected"))
            return
        info = pc.publish(topic, payload, qos=qos, retain=retain)
        if info.rc not in (paho.MQTT_ERR_SUCCESS, paho.MQTT_ERR_QUEUE_SIZE):
            done(TransportError(f"publish to {topic} failed: {paho.error_string(info.rc)}"))
        elif qos == 0 or info.is_published():
            done(None)
        else:
            self._pub_done[info.mid] = done

    def publish_nowait(
        self, topic: str, payload: bytes, qos: int = 1, retain: bool = False
    ) -> asyncio.Future[None]:
        """Queue a PUBLISH; the future completes on PUBACK (QoS 1) or when written (QoS 0), and
        fails with TransportError if the connection drops first."""
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()

        def done(exc: BaseException | None) -> None:
            if fut.done():
                return
            if exc is None:
                fut.set_result(None)
            else:
                fut.set_exception(exc)

        self.publish_cb(topic, payload, done, qos, retain)
        return fut

    async def publish(self, topic: str, payload: bytes, qos: int = 1, retain: bool = False) -> None:
        await self.publish_nowait(topic, payload, qos, retain)

    @property
    def publishes_in_flight(self) -> int:
        return len(self._pub_done)

    def _on_publish(self, client: Any, userdata: Any, mid: int, rc: Any, props: Any) -> None:
        done = self._pub_done.pop(mid, None)
        if done is not None:
            done(None)
        elif self._aiomqtt_on_publish is not None:  # aiomqtt's own publishes (none on hot paths)
            self._aiomqtt_on_publish(client, userdata, mid, rc, props)

    def _fail_publishes(self, exc: Exception) -> None:
        dones, self._pub_done = self._pub_done, {}
        for done in dones.values():
            done(exc)

    def _require(self) -> aiomqtt.Client:
        if self._client is None:
            raise TransportError("not connected to the broker")
        return self._client


async def publish_paced(
    link: MqttLink,
    items: Iterable[tuple[str, bytes]],
    *,
    rate: float | None = None,
    max_in_flight: int = 1000,
    on_sent: Callable[[int, float], None] | None = None,
    stop_at: float | None = None,
) -> int:
    """Publish QoS 1 with up to ``max_in_flight`` awaiting PUBACK, at ``rate`` messages/s
    (None = as fast as the broker acknowledges), until ``items`` ends or ``time.monotonic()``
    passes ``stop_at``. Waits for every PUBACK. ``on_sent(i, wall_time)`` sees each send.
    Returns the number of messages published."""
    sem = asyncio.Semaphore(max_in_flight)
    errors: list[BaseException] = []

    def release(fut: asyncio.Future[None]) -> None:
        sem.release()
        if not fut.cancelled() and fut.exception() is not None:
            errors.append(fut.exception())  # type: ignore[arg-type]

    start = time.monotonic()
    n = 0
    for topic, payload in items:
        if stop_at is not None and time.monotonic() >= stop_at:
            break
        if rate:
            ahead = start + n / rate - time.monotonic()
            if ahead > 0.002:
                await asyncio.sleep(ahead)
        await sem.acquire()
        if errors:
            raise TransportError(f"publish failed: {errors[0]}")
        fut = link.publish_nowait(topic, payload, qos=1)
        if on_sent is not None:
            on_sent(n, time.time())
        fut.add_done_callback(release)
        n += 1
    for _ in range(max_in_flight):
        await sem.acquire()
    if errors:
        raise TransportError(f"publish failed: {errors[0]}")
    return n


def _coalesce_writes(pc: paho.Client) -> None:
    """Replace paho's per-packet ``_packet_write`` with one that sends runs of queued packets in
    one ``send``. Packets whose completion paho must act on (QoS 0 PUBLISH: on_publish;
    DISCONNECT: close) go through paho's own writer, as do partial writes' leftovers."""
    original = pc._packet_write  # noqa: SLF001
    out = pc._out_packet  # noqa: SLF001
    send = pc._sock_send  # noqa: SLF001
    publish, disconnect = paho.PUBLISH, paho.DISCONNECT
    max_chunk = 256 * 1024

    def special(p: Any) -> bool:
        cmd = p["command"] & 0xF0
        return bool((cmd == publish and p["qos"] == 0) or cmd == disconnect)

    def packet_write() -> MQTTErrorCode:
        while out:
            if special(out[0]):
                return original()
            taken: list[Any] = []
            size = 0
            while out and size < max_chunk and not special(out[0]):
                p = out.popleft()
                taken.append(p)
                size += p["to_process"]
            data = b"".join(p["packet"][p["pos"] :] for p in taken)
            try:
                sent = send(data)
            except (AttributeError, ValueError):  # socket gone: paho's reader reports it
                out.extendleft(reversed(taken))
                return MQTTErrorCode.MQTT_ERR_SUCCESS
            except BlockingIOError:
                out.extendleft(reversed(taken))
                return MQTTErrorCode.MQTT_ERR_AGAIN
            except OSError:
                out.extendleft(reversed(taken))
                return MQTTErrorCode.MQTT_ERR_CONN_LOST
            pc._last_msg_out = time.monotonic()  # noqa: SLF001  (keepalive, as paho does)
            for i, p in enumerate(taken):
                if sent >= p["to_process"]:
                    sent -= p["to_process"]
                    p["pos"] += p["to_process"]
                    p["to_process"] = 0
                    continue
                p["pos"] += sent  # partial write: the rest waits for the socket
                p["to_process"] -= sent
                out.extendleft(reversed(taken[i:]))
                return MQTTErrorCode.MQTT_ERR_AGAIN
        return MQTTErrorCode.MQTT_ERR_SUCCESS

    pc._packet_write = packet_write  # type: ignore[method-assign]  # noqa: SLF001


def _buffer_reads(pc: paho.Client) -> None:
    """Serve paho's small ``recv`` calls from one 64 KiB ``recv``. Bytes left in the buffer make
    no socket readable, so ``loop_read`` is wrapped to keep reading until the buffer is empty:
    nothing received ever waits for the next packet to arrive."""
    recv = pc._sock_recv  # noqa: SLF001
    loop_read = pc.loop_read
    buf = bytearray()
    served = [0]  # bytes handed to paho so far

    def sock_recv(n: int) -> bytes:
        if not buf:
            data = recv(65536)  # BlockingIOError when nothing is there, b"" on EOF: as paho's
            if not data:
                return data
            buf.extend(data)
        chunk = bytes(buf[:n])
        del buf[:n]
        served[0] += len(chunk)
        return chunk

    def buffered_loop_read(max_packets: int = 1) -> MQTTErrorCode:
        rc = loop_read(max_packets)
        # A read may refill the buffer (a large packet), so loop on bytes consumed, not on the
        # buffer's size: stop only when it is empty or paho takes nothing more (error, closed).
        while buf and rc == MQTTErrorCode.MQTT_ERR_SUCCESS and pc.socket() is not None:
            before = served[0]
            rc = loop_read(max_packets)
            if served[0] == before:
                break
        return rc

    pc._sock_recv = sock_recv  # type: ignore[method-assign,assignment]  # noqa: SLF001
    pc.loop_read = buffered_loop_read  # type: ignore[method-assign]


def _lean_pubacks(pc: paho.Client) -> None:
    """MQTT 3.1.1 PUBACK: the body is the 2-byte message id; hand paho's ``_do_on_publish`` shared
    reason-code and properties objects instead of decoding new ones per PUBACK."""
    from paho.mqtt.packettypes import PacketTypes
    from paho.mqtt.properties import Properties
    from paho.mqtt.reasoncodes import ReasonCode

    original = pc._handle_pubackcomp  # noqa: SLF001
    reason = ReasonCode(PacketTypes.PUBACK)
    props = Properties(PacketTypes.PUBACK)  # type: ignore[no-untyped-call]

    def handle(cmd: Any) -> MQTTErrorCode:
        body = pc._in_packet["packet"]  # noqa: SLF001
        if cmd != "PUBACK" or pc._protocol == paho.MQTTv5 or len(body) != 2:  # noqa: SLF001
            return original(cmd)
        mid = (body[0] << 8) | body[1]
        with pc._out_message_mutex:  # noqa: SLF001
            if mid in pc._out_messages:  # noqa: SLF001
                return pc._do_on_publish(mid, reason, props)  # noqa: SLF001
        return MQTTErrorCode.MQTT_ERR_SUCCESS

    pc._handle_pubackcomp = handle  # type: ignore[method-assign]  # noqa: SLF001


def _retrieve(client: aiomqtt.Client) -> None:
    """Mark aiomqtt's connection futures' exceptions as seen (no "never retrieved" noise)."""
    for fut in (client._connected, client._disconnected):  # noqa: SLF001
        if fut.done() and not fut.cancelled():
            fut.exception()


__all__ = ["BrokerAddress", "Inbound", "MqttLink", "Will", "parse_broker_url", "publish_paced"]

"""Cheap MQTT 3.1.1 clients for ``geopush bench e2e`` on raw sockets, no paho: the QoS 1 load
generator (:class:`RawPublisher`) and the push/status collector (:class:`RawSubscriber`).

Why: the machine the bench runs on has 2 cores. The bench's paho/aiomqtt publishers
(``engine.transport.mqtt.publish_paced``) cost 15-20 µs of CPU per single-event message (6-17 µs of
it sending, depending on mqtt.py's version; the rest generating messages), about as much as
mosquitto and half the engine, so at 50% of the engine's maximum the publishers took the core
the engine needed and the latency measured the fight for CPU, not the engine. Here the work
per message is a slice of a pre-encoded buffer and a few C-level operations per chunk:

* every PUBLISH packet (fixed header 0x32, remaining length, topic, packet id, payload) is
  encoded before the timed part (:meth:`RawPublisher.prepare`);
* the messages due by now go out as ONE chunk, one ``send`` (``_send_all``); between chunks the
  publisher sleeps (granularity ``tick``, 1 ms: at 12k msg/s a chunk holds ~12 messages);
* a paced publisher that fell behind its schedule (it shares the cores with the broker and the
  engine, and is sometimes not scheduled for 10-50 ms) catches up in chunks of at most
  ``max_burst_s`` of its rate (2 ms) one tick apart, i.e. at about twice its rate, not in one
  chunk of everything overdue: a burst of hundreds of messages from a stalled load generator
  is a load of its own, far above the phase's (a traced run at 50% load: ~1,000 messages in
  one write after a publisher stall, the phase's p99 62 ms, the engine otherwise keeping up).
  The phase's average rate is kept (the achieved rate is reported); so is the largest chunk
  (``max_chunk``);
* at most ``max_in_flight`` messages await their PUBACK; packet ids cycle 1..65535 and an id still
  in flight is never reused (a chunk stops before it);
* PUBACKs are read in bulk (one ``recv`` of whatever arrived) and parsed as 4-byte packets;
* a publish counts as done only on its PUBACK (QoS 1: the broker has it); ``publish`` returns
  after the last PUBACK, then DISCONNECT.

The send time of message i is the wall clock (``time.time()``) just before its chunk is handed
to the socket: :meth:`PublishReport.send_times`. Any failure (refused, dropped, stalled) raises
:class:`BenchPublishError`.

The collector had the same problem on the receiving side, smaller (one push per 20 single
events): :class:`RawSubscriber` parses the pushes of each read and sends their PUBACKs in one
write.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import math
import os
import select
import socket
import struct
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

from engine.errors import TransportError
from engine.transport.mqtt import BrokerAddress, parse_broker_url

MAX_PACKET_ID = 65535
PUBACK = 0x40
PINGRESP = 0xD0
CONNACK = 0x20
_CONNACK_CODES = {
    1: "unacceptable protocol version",
    2: "identifier rejected",
    3: "server unavailable",
    4: "bad user name or password",
    5: "not authorized",
}


class BenchPublishError(TransportError):
    """The bench's publisher could not publish: refused or lost connection, or a stalled broker."""


def _varint(n: int) -> bytes:
    """MQTT remaining length: 7 bits per byte, continuation bit 0x80."""
    if not 0 <= n <= 268_435_455:
        raise ValueError(f"MQTT remaining length out of range: {n}")
    out = bytearray()
    while True:
        b, n = n & 0x7F, n >> 7
        out.append(b | 0x80 if n else b)
        if not n:
            return bytes(out)


def _utf8(s: str | bytes) -> bytes:
    b = s.encode() if isinstance(s, str) else s
    if len(b) > 65535:
        raise ValueError("MQTT string longer than 65535 bytes")
    return struct.pack(">H", len(b)) + b


def encode_connect(client_id: str, keepalive: int, *, clean_session: bool = True,
                   username: str | None = None, password: str | None = None) -> bytes:  # fmt: skip
    """An MQTT 3.1.1 CONNECT packet."""
    flags = 0x02 if clean_session else 0
    payload = _utf8(client_id)
    if username is not None:
        flags |= 0x80
        payload += _utf8(username)
        if password is not None:
            flags |= 0x40
            payload += _utf8(password)
    body = _utf8("MQTT") + bytes([4, flags]) + struct.pack(">H", keepalive) + payload
    return b"\x10" + _varint(len(body)) + body


def encode_publish(topic: str, payload: bytes, packet_id: int) -> bytes:
    """An MQTT 3.1.1 PUBLISH packet, QoS 1, not retained, not a duplicate (fixed header 0x32)."""
    if not 1 <= packet_id <= MAX_PACKET_ID:
        raise ValueError(f"packet id out of range: {packet_id}")
    t = _utf8(topic)
    return b"\x32" + _varint(len(t) + 2 + len(payload)) + t + struct.pack(">H", packet_id) + payload


def packet_id(i: int) -> int:
    """The packet id of the i-th message (0-based) of a run: 1..65535, cycling."""
    return i % MAX_PACKET_ID + 1


@dataclass
class PublishReport:
    """What one :meth:`RawPublisher.publish` did."""

    n: int  # messages published (each acknowledged by a PUBACK)
    seconds: float  # first send -> last PUBACK
    chunks: list[tuple[int, float]] = field(default_factory=list)  # (end index, wall time) per send
    max_in_flight_seen: int = 0  # the most messages ever awaiting a PUBACK at once
    max_chunk: int = 0  # the most messages sent in one chunk (one write)
    cpu_seconds: float = 0.0  # this process's CPU during the publish

    def send_times(self) -> list[float]:
        """Per message, the wall-clock time its chunk was handed to the socket."""
        out: list[float] = []
        start = 0
        for end, t in self.chunks:
            out.extend(itertools.repeat(t, end - start))
            start = end
        return out


def paced_burst(rate: float, max_burst_s: float, tick: float) -> int:
    """The most messages one paced chunk may hold: ``max_burst_s`` of the rate (a publisher
    behind schedule catches up one such chunk per tick, ~2x the rate), and at least 2: at
    ~1,000 msg/s a 2 ms chunk is 1-2 messages, and one message per (slept, ~1.1 ms) tick could
    not even keep the pace."""
    return max(2, math.ceil(rate * max(max_burst_s, tick)))


class RawPublisher:
    """One MQTT 3.1.1 connection that publishes QoS 1 (blocking; for a benchmark process).

    ``in_flight`` is the number of messages sent and not yet acknowledged; ``max_in_flight_seen``
    the highest it has been (never above ``max_in_flight``)."""

    def __init__(self, address: BrokerAddress | str, *, client_id: str | None = None,
                 keepalive: int = 60, max_in_flight: int = 1000, tick: float = 0.001,
                 stall_timeout: float = 60.0, max_burst_s: float = 0.002) -> None:  # fmt: skip
        if not 1 <= max_in_flight < MAX_PACKET_ID:
            raise ValueError(f"max_in_flight must be 1..{MAX_PACKET_ID - 1}")
        self.address = parse_broker_url(address) if isinstance(address, str) else address
        self.client_id = client_id or f"bench-pub-{os.getpid()}-{time.monotonic_ns()}"
        self.keepalive = keepalive
        self.max_in_flight = max_in_flight
        self.tick = tick
        self.max_burst_s = max_burst_s
        self.stall_timeout = stall_timeout
        self.in_flight = 0
        self.max_in_flight_seen = 0
        self._sock: socket.socket | None = None
        self._busy = bytearray(MAX_PACKET_ID + 1)  # 1 = that packet id awaits its PUBACK
        self._rx = b""  # bytes received and not yet parsed (a partial packet)
        self._last_out = 0.0

    @property
    def where(self) -> str:
        return f"mqtt://{self.address.host}:{self.address.port}"

    # --- connection --------------------------------------------------------------------------------

    def connect(self, timeout: float = 10.0) -> None:
        """Connect and wait for the CONNACK; BenchPublishError when unreachable or refused."""
        a = self.address
        try:
            sock = socket.create_connection((a.host, a.port), timeout=timeout)
        except OSError as exc:
            raise BenchPublishError(f"bench publisher cannot connect to {self.where}: {exc}") from exc
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock.sendall(encode_connect(self.client_id, self.keepalive,
                                        username=a.username, password=a.password))  # fmt: skip
            ack = b""
            while len(ack) < 4:
                data = sock.recv(4 - len(ack))
                if not data:
                    raise BenchPublishError(f"{self.where} closed the connection before CONNACK")
                ack += data
        except OSError as exc:
            sock.close()
            raise BenchPublishError(f"bench publisher: no CONNACK from {self.where}: {exc}") from exc
        except BenchPublishError:
            sock.close()
            raise
        if ack[0] != CONNACK or ack[1] != 2:
            sock.close()
            raise BenchPublishError(f"{self.where} answered CONNECT with {ack.hex()}, not a CONNACK")
        if ack[3] != 0:
            sock.close()
            why = _CONNACK_CODES.get(ack[3], f"code {ack[3]}")
            raise BenchPublishError(f"{self.where} refused the bench publisher: {why}")
        sock.setblocking(False)
        self._sock = sock
        self._last_out = time.monotonic()

    def disconnect(self) -> None:
        """Send DISCONNECT (when connected) and close."""
        sock, self._sock = self._sock, None
        if sock is None:
            return
        with contextlib.suppress(OSError):
            sock.setblocking(True)
            sock.settimeout(2.0)
            sock.sendall(b"\xe0\x00")
            sock.shutdown(socket.SHUT_WR)
        sock.close()

    def __enter__(self) -> RawPublisher:
        self.connect()
        return self

    def __exit__(self, *exc: object) -> None:
        self.disconnect()

    # --- publishing --------------------------------------------------------------------------------

    @staticmethod
    def prepare(items: Iterable[tuple[str, bytes]]) -> list[bytes]:
        """Encode each (topic, payload) as a QoS 1 PUBLISH; message i gets ``packet_id(i)``."""
        return [encode_publish(t, p, packet_id(i)) for i, (t, p) in enumerate(items)]

    def publish(self, packets: Sequence[bytes], rate: float | None = None) -> PublishReport:
        """Send ``packets`` (from :meth:`prepare`) at ``rate`` messages/s (None: as fast as the
        window allows) and return once every one is acknowledged."""
        sock = self._require()
        n = len(packets)
        ones = b"\x01" * self.max_in_flight
        window = self.max_in_flight
        tick = self.tick
        chunks: list[tuple[int, float]] = []
        monotonic, wall, sleep = time.monotonic, time.time, time.sleep
        poller = select.poll()
        poller.register(sock, select.POLLIN)
        cpu0 = time.process_time()
        t0 = last_progress = monotonic()
        sent = 0
        max_chunk = 0
        # a paced chunk holds at most this many (catching up after a stall: see module doc)
        # (at least 2: at ~1,000 msg/s a 2 ms chunk is 1-2 messages, and one message per tick
        # of ~1.1 ms could not even keep the pace)
        burst = n if rate is None else paced_burst(rate, self.max_burst_s, tick)
        while sent < n or self.in_flight:
            if self.in_flight:
                before = self.in_flight
                self._read_acks()
                if self.in_flight < before:
                    last_progress = monotonic()
            now = monotonic()
            blocked = True  # by the window or by a packet id still in flight
            behind = False  # more than a burst overdue: the next chunk after a tick
            if sent < n:
                due = n if rate is None else min(n, int((now - t0) * rate) + 1)
                end = min(due, sent + window - self.in_flight, sent + burst)
                behind = due > end == sent + burst
                if end > sent:
                    end = self._free_run(sent, end)
                if end > sent:
                    data = b"".join(packets[sent:end])
                    # in flight BEFORE the send: a large chunk goes out in several sends, and
                    # _send_all reads the PUBACKs of its first packets meanwhile
                    self._mark(sent, end, ones)
                    self.in_flight += end - sent
                    if self.in_flight > self.max_in_flight_seen:
                        self.max_in_flight_seen = self.in_flight
                    chunks.append((end, wall()))
                    max_chunk = max(max_chunk, end - sent)
                    self._send_all(data)
                    sent = end
                    last_progress = now
                blocked = due > sent
            if self.in_flight and now - last_progress > self.stall_timeout:
                raise BenchPublishError(
                    f"bench publisher: no PUBACK from {self.where} for {self.stall_timeout:.0f} s "
                    f"({self.in_flight} in flight, {sent} of {n} sent)"
                )
            if now - self._last_out > self.keepalive / 2:
                self._send_all(b"\xc0\x00")  # PINGREQ (its PINGRESP is skipped by _parse)
            if not blocked and rate is not None:  # the next message is not due yet
                sleep(max(tick, t0 + sent / rate - now))
            elif behind:  # catching up: one burst per tick, ~max_burst_s / tick = 2x the rate
                sleep(tick)
            elif self.in_flight:  # window full, an id in flight, or all sent: wait for PUBACKs
                poller.poll(1000)
        seconds = monotonic() - t0
        return PublishReport(n=n, seconds=seconds, chunks=chunks,
                             max_in_flight_seen=self.max_in_flight_seen, max_chunk=max_chunk,
                             cpu_seconds=time.process_time() - cpu0)  # fmt: skip

    # --- internals ---------------------------------------------------------------------------------

    def _require(self) -> socket.socket:
        if self._sock is None:
            raise BenchPublishError("bench publisher: not connected")
        return self._sock

    def _free_run(self, start: int, end: int) -> int:
        """The largest ``e <= end`` such that messages start..e-1 have packet ids not in flight."""
        busy = self._busy
        i = start
        while i < end:
            a = packet_id(i)
            b = min(MAX_PACKET_ID + 1, a + (end - i))  # ids a..b-1 are contiguous
            hit = busy.find(1, a, b)
            if hit >= 0:
                return i + (hit - a)
            i += b - a
        return end

    def _mark(self, start: int, end: int, ones: bytes) -> None:
        busy = self._busy
        i = start
        while i < end:
            a = packet_id(i)
            b = min(MAX_PACKET_ID + 1, a + (end - i))
            busy[a:b] = ones[: b - a]
            i += b - a

    def _send_all(self, data: bytes) -> None:
        """Hand ``data`` to the socket: one ``send`` unless the socket buffer is full."""
        sock = self._require()
        view = memoryview(data)
        while view:
            try:
                k = sock.send(view)
            except BlockingIOError:
                k = 0
            except OSError as exc:
                raise BenchPublishError(f"bench publisher: connection to {self.where} lost: {exc}") from exc
            view = view[k:]
            if view:
                # the broker is not reading: drain our PUBACKs too (it may be blocked on them)
                self._read_acks()
                _, w, _ = select.select([], [sock], [], self.stall_timeout)
                if not w:
                    raise BenchPublishError(f"bench publisher: {self.where} stopped reading for {self.stall_timeout:.0f} s")
        self._last_out = time.monotonic()

    def _read_acks(self) -> None:
        """Read everything that arrived; each PUBACK frees its packet id and a window slot."""
        sock = self._require()
        while True:
            try:
                data = sock.recv(65536)
            except BlockingIOError:
                return
            except OSError as exc:
                raise BenchPublishError(f"bench publisher: connection to {self.where} lost: {exc}") from exc
            if not data:
                raise BenchPublishError(
                    f"bench publisher: {self.where} closed the connection ({self.in_flight} unacknowledged)"
                )
            self._parse(self._rx + data if self._rx else data)
            if len(data) < 65536:
                return

    def _parse(self, buf: bytes) -> None:
        busy = self._busy
        freed = 0
        whole = len(buf) - len(buf) % 4
        # fast path: a run of PUBACKs (0x40 0x02 id id), the normal case
        # (each 4-byte slot from the start must read 0x40 0x02, so the slots are packet bounds)
        q = whole // 4
        if q and buf[0:whole:4].count(PUBACK) == q and buf[1:whole:4].count(2) == q:
            for (pid,) in struct.iter_unpack(">2xH", buf[:whole]):
                if busy[pid]:
                    busy[pid] = 0
                    freed += 1
            self.in_flight -= freed
            self._rx = buf[whole:]
            return
        i, end = 0, len(buf)
        while i + 2 <= end:
            cmd, length = buf[i], buf[i + 1]
            if length & 0x80:
                raise BenchPublishError(f"bench publisher: unexpected packet 0x{cmd:02x} from {self.where}")
            if i + 2 + length > end:
                break
            if cmd == PUBACK and length == 2:
                pid = (buf[i + 2] << 8) | buf[i + 3]
                if busy[pid]:
                    busy[pid] = 0
                    freed += 1
            elif cmd != PINGRESP:
                raise BenchPublishError(f"bench publisher: unexpected packet 0x{cmd:02x} from {self.where}")
            i += 2 + length
        self.in_flight -= freed
        self._rx = buf[i:]


class RawSubscriber(asyncio.Protocol):
    """The bench's collector: an asyncio MQTT 3.1.1 subscriber on a raw transport, no paho.

    Subscribes QoS 1 (clean session) and calls ``on_batch`` with the (topic, payload) of every
    PUBLISH in each chunk the socket delivered and the wall-clock time (``time.time()``) the chunk
    arrived; the chunk's PUBACKs then go out in one write. 27-33 µs of CPU per received push
    (JSON decode and event-loop wake-ups included) where the paho-based Subscriber took 39-52, at
    1,250-2,500 pushes/s."""

    def __init__(self, address: BrokerAddress | str, topics: list[str],
                 on_batch: Callable[[list[tuple[str, bytes]], float], None], *,
                 client_id: str | None = None, keepalive: int = 60) -> None:  # fmt: skip
        self.address = parse_broker_url(address) if isinstance(address, str) else address
        self.topics = topics
        self.on_batch = on_batch
        self.client_id = client_id or f"bench-sub-{os.getpid()}-{time.monotonic_ns()}"
        self.keepalive = keepalive
        self.received = 0
        self._transport: asyncio.Transport | None = None
        self._rx = b""
        self._connack: asyncio.Future[int] | None = None
        self._suback: asyncio.Future[bytes] | None = None
        self._pinger: asyncio.Task[None] | None = None
        self.lost: BaseException | None = None  # set when the connection drops (not on stop)
        self._closing = False

    @property
    def where(self) -> str:
        return f"mqtt://{self.address.host}:{self.address.port}"

    async def start(self, timeout: float = 10.0) -> None:
        """Connect, subscribe; BenchPublishError when unreachable, refused or not granted."""
        loop = asyncio.get_running_loop()
        self._connack = loop.create_future()
        self._suback = loop.create_future()
        a = self.address
        try:
            await asyncio.wait_for(loop.create_connection(lambda: self, a.host, a.port), timeout)
        except (OSError, TimeoutError) as exc:
            raise BenchPublishError(f"bench subscriber cannot connect to {self.where}: {exc}") from exc
        transport = self._require()
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        transport.write(encode_connect(self.client_id, self.keepalive,
                                       username=a.username, password=a.password))  # fmt: skip
        try:
            code = await asyncio.wait_for(asyncio.shield(self._connack), timeout)
            if code:
                why = _CONNACK_CODES.get(code, f"code {code}")
                raise BenchPublishError(f"{self.where} refused the bench subscriber: {why}")
            body = b"\x00\x01" + b"".join(_utf8(t) + b"\x01" for t in self.topics)
            transport.write(b"\x82" + _varint(len(body)) + body)
            granted = await asyncio.wait_for(asyncio.shield(self._suback), timeout)
        except BaseException:
            transport.close()
            raise
        if 0x80 in granted:
            transport.close()
            raise BenchPublishError(f"{self.where} refused the bench subscription to {self.topics}")
        self._pinger = asyncio.create_task(self._ping())

    async def stop(self) -> None:
        if self._pinger is not None:
            self._pinger.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._pinger
        self._closing = True
        t, self._transport = self._transport, None
        if t is not None and not t.is_closing():
            t.write(b"\xe0\x00")  # DISCONNECT
            t.close()

    async def _ping(self) -> None:
        while True:
            await asyncio.sleep(self.keepalive / 2)
            if self._transport is not None:
                self._transport.write(b"\xc0\x00")

    def _require(self) -> asyncio.Transport:
        if self._transport is None:
            raise BenchPublishError(f"bench subscriber: not connected to {self.where}")
        return self._transport

    # --- asyncio.Protocol --------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport

    def connection_lost(self, exc: Exception | None) -> None:
        self._transport = None
        if self._closing:
            return
        self.lost = exc or BenchPublishError(f"{self.where} closed the bench subscriber's connection")
        for fut in (self._connack, self._suback):
            if fut is not None and not fut.done():
                fut.set_exception(BenchPublishError(f"bench subscriber: connection to {self.where} lost: {self.lost}"))

    def data_received(self, data: bytes) -> None:
        now = time.time()
        buf = self._rx + data if self._rx else data
        msgs: list[tuple[str, bytes]] = []
        acks: list[bytes] = []
        i, end = 0, len(buf)
        while i + 2 <= end:
            cmd = buf[i]
            length = buf[i + 1]
            j = i + 2
            if length & 0x80:  # remaining length over 127: up to 4 bytes of 7 bits
                length, shift, j, done = 0, 0, i + 1, False
                while j < end and j < i + 5:
                    b = buf[j]
                    j += 1
                    length |= (b & 0x7F) << shift
                    shift += 7
                    if not b & 0x80:
                        done = True
                        break
                if not done:
                    if j >= i + 5:
                        raise BenchPublishError(f"bench subscriber: malformed packet from {self.where}")
                    break  # the length itself is incomplete
            if j + length > end:
                break  # the body is incomplete
            kind = cmd & 0xF0
            if kind == 0x30:  # PUBLISH
                tlen = (buf[j] << 8) | buf[j + 1]
                topic = buf[j + 2 : j + 2 + tlen].decode()
                k = j + 2 + tlen
                if cmd & 0x06:  # QoS 1 (we subscribe at 1; never 2)
                    acks.append(b"\x40\x02" + buf[k : k + 2])
                    k += 2
                msgs.append((topic, buf[k : j + length]))
            elif kind == 0x20 and self._connack is not None and not self._connack.done():
                self._connack.set_result(buf[j + 1])
            elif kind == 0x90 and self._suback is not None and not self._suback.done():
                self._suback.set_result(bytes(buf[j + 2 : j + length]))
            i = j + length
        self._rx = buf[i:]
        if acks and self._transport is not None:
            self._transport.write(b"".join(acks))
        if msgs:
            self.received += len(msgs)
            self.on_batch(msgs, now)


def publish(url: str, items: Sequence[tuple[str, bytes]], rate: float | None = None, *,
            max_in_flight: int = 1000, client_id: str | None = None) -> PublishReport:  # fmt: skip
    """Connect, publish ``items`` QoS 1 at ``rate`` msg/s (encoded before the clock starts), wait
    for every PUBACK, disconnect."""
    packets = RawPublisher.prepare(items)
    with RawPublisher(url, client_id=client_id, max_in_flight=max_in_flight) as pub:
        return pub.publish(packets, rate)


__all__ = [
    "BenchPublishError",
    "PublishReport",
    "RawPublisher",
    "RawSubscriber",
    "encode_connect",
    "encode_publish",
    "packet_id",
    "publish",
]

"""The MQTT transport: the only module in geopush that imports aiomqtt.

A thin layer over ``aiomqtt.Client`` (MQTT 3.1.1: v5 costs ~3x per message here) that adds what
the daemon needs and aiomqtt 2.5 does not expose:

* **manual acknowledgements.** paho-mqtt 2.x can hold the PUBACK of an incoming QoS 1 message
  until the application calls ``ack(mid, qos)`` (``manual_ack_set``); aiomqtt does not wrap it yet
  (empicano/aiomqtt#345), so we switch it on the underlying paho client. The daemon acks a message
  only after the micro-batch holding it is committed to SQLite: a message the broker considers
  delivered is always durable.
* **bounded intake without drops.** aiomqtt's own queue is unbounded and, if bounded with
  ``max_queued_incoming_messages``, *discards* messages. We do neither. The broker's in-flight
  window (mosquitto ``max_inflight_messages``) is not the bound it seems: mosquitto 2.0.11/2.0.12
  (the Ubuntu 22.04 and Debian 12 packages; fixed in 2.0.13, eclipse/mosquitto#2306) let up to a
  whole window more into flight at each PUBACK of the oldest message, so a subscriber acking after
  each commit is sent its whole backlog. With ``max_inbox`` set (the daemon: 4 x ``batch_size``)
  the link bounds the inbox itself: at ``max_inbox`` messages it stops reading the socket (the
  event loop stops watching it; the fast reader stops before the next PUBLISH in its buffer) and
  reads again once ``take`` has brought it down to half. What the broker sends meanwhile waits in
  the kernel's socket buffers, then in the broker (TCP backpressure); acks still follow commits,
  nothing is dropped. The fast path never holds more than ``max_inbox``; the plain path up to
  ``max_inbox`` + the QoS 1 outputs awaiting PUBACK (paho's ``loop_read`` reads one packet per
  output in flight before the link can stop it). The bound is lifted (``read_past_bound``) only
  while the owner waits for a reply of the broker that may come behind PUBLISHes it has not
  read: ``publish`` awaiting its PUBACK, the outbox waiting for its PUBACKs while intake is
  stopped (engine/daemon/outbox.py); ``subscribe`` returns once the inbox fills instead (a
  persistent session's messages come before the SUBACK) and lets the SUBACK be read later. While
  lifted, only the broker's window bounds the inbox.
* **cheap intake.** We take paho's ``on_message`` callback directly and keep (topic, payload, mid,
  dup) instead of building an aiomqtt ``Message`` and an iterator task per message.
* **cheap writes.** paho sends every queued packet with its own ``send`` call: after a batch
  commit that is hundreds of PUBACKs and PUBLISHes, one syscall (and, with TCP_NODELAY, one TCP
  segment the broker must read) each. ``_coalesce_writes`` makes paho send runs of queued packets
  as one buffer (~9% of the engine's CPU under batch load went to ``send``). Likewise paho reads
  every packet with 2-3 ``recv`` calls (command byte, length bytes, body): ``_fast_reads``
  reads into one 64 KiB buffer and serves them from it (and parses the common packets itself:
  below).
* **concurrent QoS 1 publishing.** ``publish_nowait`` hands the message to paho and returns a
  future resolved by the PUBACK, so thousands can be in flight (awaiting each one in turn tops out
  near 4k msg/s).
* **lean QoS 1 packets.** paho builds an MQTTMessage, an MQTTMessageInfo and a queue entry under
  several locks for each PUBLISH, and more objects for each PUBACK and each received message.
  QoS 1 publishes are built here (at most ``max_inflight_out`` awaiting PUBACK, 0 = no limit:
  the caller bounds it, as the outbox does; the rest wait in order) as MQTT 3.1.1 bytes under a packet id taken from paho's
  own generator (so they never collide with paho's publishes and subscribes) and queued on
  paho's outgoing queue; their PUBACKs resolve our own ``mid -> done`` map. Received PUBLISH
  (QoS 0/1) and PUBACK packets are parsed straight from the read buffer; anything else (CONNACK,
  SUBACK, PINGRESP, QoS 2, a packet paho is halfway through) goes through paho. ``ack_many``
  sends a batch's PUBACKs as one buffer. When the connection drops, every pending callback gets
  ``TransportError`` (the outbox re-publishes unsent rows from SQLite after the reconnect).

Errors from aiomqtt / paho are translated to ``engine.errors.TransportError`` here.

**Two paths, one interface.** Everything above except the manual acknowledgements is the *fast
path*: it reads, calls or replaces the private names of paho-mqtt and aiomqtt listed in
``FAST_PATH_NAMES``, so it is tied to the versions it is tested with (``TESTED_PAHO``,
``TESTED_AIOMQTT``; pyproject.toml pins the same). Every connection first checks those names
(present, of the expected kind) and the versions; if anything is off it logs a warning once and
runs the *plain path*: aiomqtt's connection handling plus paho's public API only (``on_message``
for the DUP flag, ``manual_ack_set``/``ack`` for acknowledging after commit, ``publish`` and
``on_publish`` for QoS 1 callbacks), reached through aiomqtt's one private attribute
``Client._client`` (aiomqtt 2.5 does not wrap manual acks: empicano/aiomqtt#345). The plain
path keeps exactly-once (ack after commit, DUP checked against the input log) at a lower speed
(docs/benchmarks.md). ``GEOPUSH_MQTT_FAST=0`` (or ``MqttLink(fast=False)``; the daemon's
``--mqtt-plain``) forces it.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import functools
import logging
import os
import re
import socket
import struct
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote, urlsplit

import aiomqtt
import paho.mqtt.client as paho
from paho.mqtt.enums import MQTTErrorCode

from engine.errors import ConfigError, TransportError

log = logging.getLogger("geopush.transport")

# --- the fast path's footing ---------------------------------------------------------------------

# The minor versions the fast path is tested with (pyproject.toml pins paho-mqtt to the same).
TESTED_PAHO: tuple[tuple[int, int], ...] = ((2, 2),)
TESTED_AIOMQTT: tuple[tuple[int, int], ...] = ((2, 5),)

# Every private name the fast path reads, calls or replaces, with the kind it must have:
# "method" (callable), "attribute" (present, any value) or a type the value must be an instance
# of. "paho" is the connection's paho.mqtt.client.Client, "aiomqtt" its aiomqtt.Client. The public
# paho methods the fast path replaces (loop_read) are listed too. The entry formats of
# ``_out_packet`` and ``_in_packet`` cannot be checked by name: the version pin covers them
# (``_in_packet``'s keys are checked).
FAST_PATH_NAMES: tuple[tuple[str, str, str | type | tuple[type, ...]], ...] = (
    ("paho", "_packet_write", "method"),  # replaced: _coalesce_writes
    ("paho", "_sock_send", "method"),  # _coalesce_writes
    ("paho", "_out_packet", collections.deque),  # _coalesce_writes, _queue_bytes
    ("paho", "_last_msg_out", float),  # _coalesce_writes (keepalive)
    ("paho", "_call_socket_register_write", "method"),  # _queue_bytes
    ("paho", "_sock_recv", "method"),  # replaced: _fast_reads
    ("paho", "loop_read", "method"),  # replaced: _fast_reads
    ("paho", "_in_packet", dict),  # _fast_reads, _lean_pubacks: "command", "packet"
    ("paho", "_last_bytes_received", float),  # _fast_reads (keepalive)
    ("paho", "_protocol", int),  # _fast_reads, _lean_pubacks
    ("paho", "_out_messages", dict),  # _fast_reads, _lean_pubacks, _raw_publish
    ("paho", "_out_message_mutex", "attribute"),  # _fast_reads, _lean_pubacks
    ("paho", "_do_on_publish", "method"),  # _fast_reads, _lean_pubacks
    ("paho", "_handle_pubackcomp", "method"),  # replaced: _lean_pubacks
    ("paho", "_mid_generate", "method"),  # _raw_publish
    ("paho", "_sock", "attribute"),  # _socket_reader (TLS pending bytes)
    ("aiomqtt", "_disconnected", asyncio.Future),  # connected, wait_disconnected, _socket_reader
    ("aiomqtt", "_connected", asyncio.Future),  # _retrieve
)
_IN_PACKET_KEYS = ("command", "packet")


def _minor(version: str) -> tuple[int, int] | None:
    m = re.match(r"(\d+)\.(\d+)", version)
    return (int(m[1]), int(m[2])) if m else None


def fast_path_problems(client: aiomqtt.Client, pc: paho.Client) -> list[str]:
    """Why the fast path cannot run on this connection (empty: it can): an untested paho-mqtt or
    aiomqtt version, or a name of ``FAST_PATH_NAMES`` missing or of another kind."""
    import paho.mqtt as paho_pkg

    problems = []
    for dist, version, tested in (
        ("paho-mqtt", getattr(paho_pkg, "__version__", "?"), TESTED_PAHO),
        ("aiomqtt", getattr(aiomqtt, "__version__", "?"), TESTED_AIOMQTT),
    ):
        if _minor(version) not in tested:
            want = ", ".join(f"{a}.{b}.x" for a, b in tested)
            problems.append(f"{dist} {version} is untested (the fast path is tested with {want})")
    owners: dict[str, object] = {"paho": pc, "aiomqtt": client}
    missing = object()
    for owner, name, kind in FAST_PATH_NAMES:
        value = getattr(owners[owner], name, missing)
        where = f"{type(owners[owner]).__module__}.{type(owners[owner]).__qualname__}.{name}"
        if value is missing:
            problems.append(f"{where} is missing")
        elif kind == "method" and not callable(value):
            problems.append(f"{where} is not callable")
        elif isinstance(kind, (type, tuple)) and not isinstance(value, kind):
            problems.append(f"{where} is a {type(value).__name__}, not a {_kind_name(kind)}")
    in_packet = getattr(pc, "_in_packet", None)
    if isinstance(in_packet, dict) and not all(k in in_packet for k in _IN_PACKET_KEYS):
        problems.append(f"paho's _in_packet lacks {_IN_PACKET_KEYS} (has {sorted(in_packet)})")
    return problems


def _kind_name(kind: type | tuple[type, ...]) -> str:
    kinds = kind if isinstance(kind, tuple) else (kind,)
    return " or ".join(k.__name__ for k in kinds)


def fast_path_default() -> bool:
    """``GEOPUSH_MQTT_FAST`` (1/0, true/false, yes/no, on/off; unset: 1): whether links try the
    fast path (they still fall back to the plain one when its check fails)."""
    raw = os.environ.get("GEOPUSH_MQTT_FAST", "").strip().lower()
    if raw in ("", "1", "true", "yes", "on"):
        return True
    if raw in ("0", "false", "no", "off"):
        return False
    raise ConfigError(
        f"GEOPUSH_MQTT_FAST={raw!r}: use 1 (the fast MQTT path, the default) or 0 (the plain "
        "aiomqtt path)"
    )


_reported: set[tuple[str, ...]] = set()  # what was logged already (once per process)


def _report_path(fast_wanted: bool, problems: list[str]) -> None:
    key = tuple(problems) if fast_wanted else ("forced",)
    if key in _reported:
        return
    _reported.add(key)
    if not fast_wanted:
        log.info(
            "MQTT transport: plain aiomqtt path (fast path switched off: --mqtt-plain, "
            "mqtt_fast = false or GEOPUSH_MQTT_FAST=0)"
        )
    else:
        log.warning(
            "MQTT transport: the fast path's check failed, using the plain aiomqtt path "
            "(exactly-once kept, fewer messages/s): %s. Install the tested versions "
            "(pip install 'paho-mqtt>=2.2,<2.3' 'aiomqtt>=2.5,<2.6') to get it back.",
            "; ".join(problems),
        )


def _paho_of(client: aiomqtt.Client) -> paho.Client:
    """The paho client under aiomqtt's (its one private name both paths need: manual acks)."""
    pc = getattr(client, "_client", None)
    if not isinstance(pc, paho.Client):
        raise TransportError(
            f"aiomqtt {getattr(aiomqtt, '__version__', '?')} has no paho client at "
            "aiomqtt.Client._client, which geopush needs for acknowledging after commit; "
            "install aiomqtt>=2.5,<2.6"
        )
    return pc


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
    # The broker sends a retained message with this flag only because of a (new) subscription,
    # e.g. at every start of the engine: the daemon recognises the ones it applied already.
    retain: bool = False


@dataclass(frozen=True, slots=True)
class Will:
    topic: str
    payload: bytes
    qos: int = 1
    retain: bool = True


class MqttLink:
    """One connection to the broker (reusable: ``connect`` again after a disconnect; one owner:
    ``connect`` while connected raises). ``async with MqttLink(...) as link:`` connects and
    disconnects. ``fast`` (None: ``GEOPUSH_MQTT_FAST``, default on) tries the fast path; each
    connection says which one it runs in ``fast_path`` (module doc). ``max_inbox`` (0: none)
    bounds the inbox: reads stop there until ``take`` brings it down to half (module doc, "bounded
    intake"); an owner that sets it must keep taking, or await broker replies inside
    ``read_past_bound``. ``drop`` or ``disconnect`` leave the link ready to ``connect`` again."""

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
        fast: bool | None = None,
        max_inbox: int = 0,
    ) -> None:
        self.address = address
        self.fast = fast_path_default() if fast is None else fast
        self.fast_path = False  # whether the current (or last) connection runs the fast path
        self.client_id = client_id
        self.clean_session = clean_session
        self.manual_ack = manual_ack
        self.will = will
        self.keepalive = keepalive
        self.max_inflight_out = max_inflight_out
        self.username = username if username is not None else address.username
        self.password = password if password is not None else address.password
        self.inbox: collections.deque[Inbound] = collections.deque()
        # The inbox's bound (0: none): reads stop while it holds max_inbox messages and start
        # again once it is down to half (``take``); see "bounded intake" in the module doc.
        self.max_inbox = max_inbox
        self._cap = [max_inbox or _NO_CAP]  # what deliver/the fast reader compare against
        self._reads_paused = False  # reads stopped for the bound (not by hold_reads)
        self._unread = False  # resumed while held: release_reads reads the fast reader's buffer
        self._full = asyncio.Event()  # set while reads are paused for the bound
        self._read_on = 0  # nesting of read_past_bound(): the bound is off meanwhile
        self.epoch = 0
        self._wakeup = asyncio.Event()
        self._client: aiomqtt.Client | None = None
        self._paho: paho.Client | None = None
        # mid -> called with None on PUBACK, or with the error when the connection drops first
        self._pub_done: dict[int, Callable[[BaseException | None], None]] = {}
        # Our own QoS 1 publishes (built here, not by paho): mid -> done, and those waiting for
        # room under max_inflight_out.
        self._raw_done: dict[int, Callable[[BaseException | None], None]] = {}
        self._raw_wait: collections.deque[
            tuple[str, bytes, Callable[[BaseException | None], None], bool]
        ] = collections.deque()
        self._held: tuple[Any, int] | None = None  # (socket, epoch) while hold_reads is on
        self._readable: Callable[[], None] | None = None  # the socket's reader (release_reads)
        self._aiomqtt_on_publish: Any = None
        # The plain path's view of the connection (aiomqtt's public message iterator ends when
        # it is lost); None on the fast path, which reads aiomqtt's own future.
        self._lost: asyncio.Event | None = None
        self._watcher: asyncio.Task[None] | None = None

    async def __aenter__(self) -> MqttLink:
        await self.connect()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.disconnect()

    # --- connection ----------------------------------------------------------------------------

    async def connect(self, timeout: float = 10.0) -> None:
        """Connect (one attempt). Raises TransportError when the broker is unreachable or refuses."""
        if self._client is not None:
            raise TransportError(
                "this MqttLink is already connected (one owner per connection): disconnect() first"
            )
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
        pc = _paho_of(client)
        problems = fast_path_problems(client, pc) if self.fast else []
        fast = self.fast and not problems
        if not fast:
            _report_path(self.fast, problems)
        self.fast_path = fast
        pc.manual_ack_set(self.manual_ack)
        self._fail_publishes(TransportError("disconnected"))  # leftovers of a previous connection
        self.epoch += 1
        epoch = self.epoch
        inbox = self.inbox
        wakeup = self._wakeup
        now = time.time

        cap = self._cap
        full = self._pause_reads
        self._reads_paused = False
        self._full.clear()
        self._held = None

        def deliver(topic: str, payload: bytes, mid: int, qos: int, dup: bool, retain: bool) -> None:
            inbox.append(Inbound(topic, payload, mid, qos, dup, now(), epoch, retain))
            wakeup.set()
            if len(inbox) >= cap[0]:
                full()

        def on_message(_c: Any, _u: Any, m: paho.MQTTMessage) -> None:
            deliver(m.topic, bytes(m.payload), m.mid, m.qos, bool(m.dup), bool(m.retain))

        if fast:
            _coalesce_writes(pc)
            _fast_reads(
                pc,
                deliver,
                self._raw_acked,
                manual_ack=self.manual_ack,
                inbox=inbox,
                cap=cap,
                full=full,
            )
            _lean_pubacks(pc, self._raw_acked)
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
        if fast:
            self._lost = None
            self._readable = _socket_reader(client, pc)
        else:
            self._lost = asyncio.Event()
            self._readable = _plain_reader(pc, self._lost)
            self._watcher = asyncio.create_task(_watch(client, self._lost), name="mqtt-watch")

    def _stop_watcher(self) -> None:
        watcher, self._watcher = self._watcher, None
        if watcher is not None:
            watcher.cancel()
        if self._lost is not None:
            self._lost.set()

    async def disconnect(self) -> None:
        client, pc = self._client, self._paho
        self._client = self._paho = None
        self._fail_publishes(TransportError("disconnected"))
        self._stop_watcher()
        self._held = None
        self._readable = None
        self._reads_paused = False
        self._full.clear()
        if client is not None:
            with contextlib.suppress(aiomqtt.MqttError, asyncio.TimeoutError, OSError):
                await asyncio.wait_for(client.__aexit__(None, None, None), 5.0)
            if pc is not None:  # a connection that died without paho closing it (a read error)
                _close_socket(client, pc)
            _retrieve(client)

    def drop(self) -> None:
        """Forget the connection without a DISCONNECT packet (so the broker publishes the will).
        The link is left as after ``disconnect``: ``connect`` works again (same path)."""
        client, pc = self._client, self._paho
        self._client = self._paho = None
        self._held = None
        self._readable = None
        self._reads_paused = False
        self._full.clear()
        self._fail_publishes(TransportError("disconnected"))
        self._stop_watcher()
        if client is not None and pc is not None:
            _close_socket(client, pc)
            _retrieve(client)

    @property
    def connected(self) -> bool:
        client = self._client
        if client is None:
            return False
        if self._lost is not None:  # the plain path
            return not self._lost.is_set()
        return not client._disconnected.done()  # noqa: SLF001

    async def wait_disconnected(self) -> None:
        """Return (never raise) when the connection is lost."""
        if self._client is None:
            return
        if self._lost is not None:
            await self._lost.wait()
            return
        with contextlib.suppress(Exception):
            await asyncio.shield(self._client._disconnected)  # noqa: SLF001

    async def subscribe(self, topics: list[str], qos: int = 1) -> None:
        """Subscribe; return on the SUBACK, or, with a bounded inbox, once the inbox is full: a
        persistent session's messages come before the SUBACK, and the owner must take some for
        the link to read on to it. The SUBSCRIBE then completes meanwhile (a failure is logged;
        a lost connection ends it)."""
        client = self._require()
        sub = asyncio.ensure_future(client.subscribe([(t, qos) for t in topics]))
        if self.max_inbox and not sub.done():
            full = asyncio.ensure_future(self._full.wait())
            try:
                await asyncio.wait({sub, full}, return_when=asyncio.FIRST_COMPLETED)
            except asyncio.CancelledError:
                sub.cancel()
                raise
            finally:
                full.cancel()
            if not sub.done():
                sub.add_done_callback(functools.partial(_late_suback, topics))
                log.debug("subscribe %s: the inbox filled before the SUBACK", topics)
                return
        try:
            await sub
        except aiomqtt.MqttError as exc:
            raise TransportError(f"subscribe {topics} failed: {exc}") from exc
        except ValueError as exc:  # paho's check of a filter or QoS
            raise TransportError(
                f"subscribe {topics} failed: {exc} (a filter is a non-empty topic whose '#' "
                "comes last and whose wildcards fill whole levels; QoS 0, 1 or 2)"
            ) from exc

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
        cap = self._cap
        for _ in range(limit):
            before = len(inbox)
            if before >= cap[0]:  # the bound: leave the rest in the socket (TCP backpressure)
                self._pause_reads()
                break
            try:
                pc.loop_read()
            except Exception:  # noqa: BLE001  (aiomqtt's own reader sees and reports it next turn)
                break
            if len(inbox) == before:  # nothing (more) buffered, or a non-PUBLISH packet
                break
        return len(inbox) - start

    def hold_reads(self) -> bool:
        """Stop the event loop from watching the socket until ``release_reads``; ``pump`` still
        reads it. While the service lingers over a small batch, every TCP segment the broker
        sends (one per message: TCP_NODELAY) would otherwise wake the loop for a read of a few
        messages, ~19 loop turns per micro-batch at 40k single-event messages/s. False when
        there is no socket (nothing held) or on the plain path (aiomqtt keeps its reader)."""
        if not self.fast_path:
            return False
        pc = self._paho
        sock = pc.socket() if pc is not None else None
        if sock is None or self._held is not None:
            return False
        asyncio.get_running_loop().remove_reader(sock.fileno())
        self._held = (sock, self.epoch)
        return True

    def release_reads(self) -> None:
        """Watch the socket again (after ``hold_reads``), unless the connection it belonged to
        is gone meanwhile (its file number may be reused: never watch that)."""
        held, self._held = self._held, None
        pc, readable = self._paho, self._readable
        if held is None or pc is None or readable is None or self._reads_paused:
            return  # (paused for the inbox's bound: ``take`` watches it again)
        sock, epoch = held
        current = pc.socket()
        if epoch != self.epoch or current is None or current is not sock or current.fileno() < 0:
            return
        loop = asyncio.get_running_loop()
        loop.add_reader(current.fileno(), readable)
        if self._unread:
            self._unread = False
            loop.call_soon(readable)

    # --- the inbox's bound ---------------------------------------------------------------------

    @property
    def reads_paused(self) -> bool:
        """Whether reads are stopped because the inbox holds ``max_inbox`` messages."""
        return self._reads_paused

    def _pause_reads(self) -> None:
        """The inbox is full: stop watching the socket (the broker's further packets wait in the
        kernel's buffers, then in the broker: TCP backpressure). ``take`` resumes."""
        if self._reads_paused or self._read_on:
            return
        pc = self._paho
        sock = pc.socket() if pc is not None else None
        if sock is None or sock.fileno() < 0:
            return
        self._reads_paused = True
        self._full.set()
        if self._held is None:  # (hold_reads removed the reader already)
            asyncio.get_running_loop().remove_reader(sock.fileno())

    def _resume_reads(self) -> None:
        self._reads_paused = False
        self._full.clear()
        pc, readable = self._paho, self._readable
        sock = pc.socket() if pc is not None else None
        if sock is None or readable is None or sock.fileno() < 0:
            return
        if self._held is not None:  # release_reads watches it again
            self._unread = True
            return
        loop = asyncio.get_running_loop()
        loop.add_reader(sock.fileno(), readable)
        # What the fast reader left in its buffer makes no socket readable: read it now.
        loop.call_soon(readable)

    @contextlib.contextmanager
    def read_past_bound(self) -> Iterator[None]:
        """Read on whatever the inbox holds, inside this block: for a caller that waits for
        PUBACKs (they come on the same stream, behind the PUBLISHes a paused read leaves in the
        socket) while nothing takes from the inbox. Meanwhile only the broker bounds it."""
        self._read_on += 1
        self._cap[0] = _NO_CAP
        if self._reads_paused:
            self._resume_reads()
        try:
            yield
        finally:
            self._read_on -= 1
            if not self._read_on:
                self._cap[0] = self.max_inbox or _NO_CAP

    def take(self, limit: int) -> list[Inbound]:
        """Up to ``limit`` messages from the inbox, oldest first, without waiting."""
        inbox = self.inbox
        n = min(limit, len(inbox))
        got = [inbox.popleft() for _ in range(n)]
        if self._reads_paused and len(inbox) <= self.max_inbox // 2:
            self._resume_reads()
        return got

    def ack(self, msg: Inbound) -> bool:
        """Send the PUBACK of a QoS 1 message now. False when the connection that received it is
        gone (the broker will redeliver it on the next connection)."""
        if msg.qos == 0 or not self.manual_ack:
            return True
        pc = self._paho
        if pc is None or msg.epoch != self.epoch:
            return False
        return bool(pc.ack(msg.mid, msg.qos) == paho.MQTT_ERR_SUCCESS)

    def ack_many(self, msgs: Iterable[Inbound]) -> int:
        """``ack`` for many messages, their PUBACKs queued as one buffer (one queue entry, not
        one paho packet each). Returns how many were acknowledged (or needed no PUBACK)."""
        pc = self._paho
        if not self.manual_ack:
            return len(list(msgs))
        if pc is None:
            return 0
        epoch, n = self.epoch, 0
        if not self.fast_path:  # paho's public ack, one packet each
            ok = paho.MQTT_ERR_SUCCESS
            return sum(
                1 for m in msgs if m.qos == 0 or (m.epoch == epoch and pc.ack(m.mid, m.qos) == ok)
            )
        words: list[int] = []
        for m in msgs:
            if m.qos == 0:
                n += 1
            elif m.epoch != epoch:
                continue
            elif m.qos == 1:
                words.append(0x40020000 | m.mid)  # PUBACK: 0x40, remaining length 2, mid
            elif pc.ack(m.mid, m.qos) == paho.MQTT_ERR_SUCCESS:
                n += 1
        if words:
            _queue_bytes(pc, paho.PUBACK, struct.pack(f">{len(words)}I", *words))
        return n + len(words)

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
        inside the socket's read callback: no future or event-loop turn per message (the
        outbox's hot path). QoS 1 packets are built here (module doc), at most
        ``max_inflight_out`` awaiting PUBACK (0: no limit), the rest queued in order; QoS 0 and 2
        (and every QoS on the plain path) go through paho's ``publish``."""
        pc = self._paho
        if pc is None:
            done(TransportError("not connected"))
            return
        if qos == 1 and self.fast_path:
            if self.max_inflight_out and len(self._raw_done) >= self.max_inflight_out:
                self._raw_wait.append((topic, payload, done, retain))
            else:
                self._raw_publish(pc, topic, payload, done, retain)
            return
        try:
            info = pc.publish(topic, payload, qos=qos, retain=retain)
        except ValueError as exc:  # a bad topic, QoS or size: paho checks them
            err = TransportError(f"publish to {topic!r} failed: {exc}")
            err.__cause__ = exc
            done(err)
            return
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
        """Publish and wait for the PUBACK (reading past the inbox's bound meanwhile: it may come
        behind received PUBLISHes)."""
        with self.read_past_bound():
            await self.publish_nowait(topic, payload, qos, retain)

    @property
    def publishes_in_flight(self) -> int:
        return len(self._pub_done) + len(self._raw_done) + len(self._raw_wait)

    def _raw_publish(
        self,
        pc: paho.Client,
        topic: str,
        payload: bytes,
        done: Callable[[BaseException | None], None],
        retain: bool,
    ) -> None:
        """Queue an MQTT 3.1.1 QoS 1 PUBLISH built here; ``done`` runs on its PUBACK."""
        t = topic.encode()
        n = len(t) + len(payload) + 4  # topic length, topic, packet id, payload
        if not t or len(t) > 0xFFFF or b"+" in t or b"#" in t or n > _MAX_REMAINING:
            done(TransportError(f"publish to {topic!r} failed: invalid topic or payload too large"))
            return
        raw, out_messages, generate = self._raw_done, pc._out_messages, pc._mid_generate  # noqa: SLF001
        mid = generate()
        while mid in raw or mid in out_messages:  # only after 65535 ids with one still unacked
            mid = generate()
        raw[mid] = done
        head = bytes((0x33 if retain else 0x32,)) + _varint(n)
        _queue_bytes(pc, paho.PUBLISH, b"".join((head, _H(len(t)), t, _H(mid), payload)))

    def _raw_acked(self, mid: int) -> bool:
        """A PUBACK arrived: resolve our publish ``mid`` (True) or say it is paho's (False)."""
        done = self._raw_done.pop(mid, None)
        if done is None:
            return False
        if self._raw_wait:
            pc = self._paho
            while self._raw_wait and pc is not None and len(self._raw_done) < self.max_inflight_out:
                self._raw_publish(pc, *self._raw_wait.popleft())
        done(None)
        return True

    def _on_publish(self, client: Any, userdata: Any, mid: int, rc: Any, props: Any) -> None:
        done = self._pub_done.pop(mid, None)
        if done is not None:
            done(None)
        elif self._aiomqtt_on_publish is not None:  # aiomqtt's own publishes (none on hot paths)
            self._aiomqtt_on_publish(client, userdata, mid, rc, props)

    def _fail_publishes(self, exc: Exception) -> None:
        dones, self._pub_done = self._pub_done, {}
        raw, self._raw_done = self._raw_done, {}
        waiting, self._raw_wait = self._raw_wait, collections.deque()
        for done in (*dones.values(), *raw.values(), *(w[2] for w in waiting)):
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


_NO_CAP = 1 << 62  # the inbox's cap when it has none


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


_MAX_REMAINING = 268_435_455  # the largest MQTT remaining length (4 varint bytes)
_H = struct.Struct(">H").pack  # a 2-byte big-endian integer (lengths, packet ids)


def _varint(n: int) -> bytes:
    """MQTT remaining length encoding."""
    if n < 0x80:
        return bytes((n,))
    out = bytearray()
    while True:
        n, digit = n >> 7, n & 0x7F
        if not n:
            out.append(digit)
            return bytes(out)
        out.append(digit | 0x80)


def _queue_bytes(pc: paho.Client, command: int, data: bytes) -> None:
    """Queue ready-made packet bytes (one or more whole MQTT packets) on paho's outgoing queue,
    in paho's own entry format, and ask the event loop to write them (as paho's
    ``_packet_queue`` does). ``command`` is never a QoS 0 PUBLISH or DISCONNECT, whose
    completion paho acts on: entries are plain bytes to the writer."""
    pc._out_packet.append(  # noqa: SLF001
        {
            "command": command,
            "mid": 0,
            "qos": 1,
            "pos": 0,
            "to_process": len(data),
            "packet": data,
            "info": None,
        }
    )
    pc._call_socket_register_write()  # noqa: SLF001


def _fast_reads(
    pc: paho.Client,
    deliver: Callable[[str, bytes, int, int, bool, bool], None],
    acked: Callable[[int], bool],
    *,
    manual_ack: bool,
    inbox: collections.deque[Inbound] | None = None,
    cap: list[int] | None = None,
    full: Callable[[], None] | None = None,
) -> None:
    """Serve paho's reads from one 64 KiB ``recv`` and handle the common packets ourselves.

    paho reads every packet with 2-3 ``recv`` calls and builds an MQTTMessage (or, for a PUBACK,
    v5 reason-code and properties objects) under several locks. Here each socket-readable
    callback reads once into a buffer and parses the whole packets at its front: PUBLISH (QoS 0/1)
    goes to ``deliver(topic, payload, mid, qos, dup, retain)`` (with a PUBACK queued when acks are not
    manual), PUBACK to ``acked(mid)`` (our own publishes) or else to paho's ``_do_on_publish``.
    The first packet of any other kind (or one paho is already halfway through) is read by paho
    from the same buffer, through ``_sock_recv``, and parsing resumes after it. Bytes left in the
    buffer make no socket readable, so nothing returns while paho could still take some: nothing
    received ever waits for the next packet to arrive. Except for the inbox's bound: once
    ``inbox`` holds ``cap[0]`` messages, parsing stops before the next PUBLISH (left in the
    buffer), nothing more is read and ``full()`` stops the event loop's watch until the owner
    resumes it and reads the buffer (``MqttLink._resume_reads``)."""
    from paho.mqtt.packettypes import PacketTypes
    from paho.mqtt.properties import Properties
    from paho.mqtt.reasoncodes import ReasonCode

    if pc._protocol == paho.MQTTv5:  # noqa: SLF001  (the parser below is MQTT 3.1.1)
        raise TransportError("the fast MQTT reader supports MQTT 3.1.1 only")
    recv = pc._sock_recv  # noqa: SLF001
    loop_read = pc.loop_read
    reason = ReasonCode(PacketTypes.PUBACK)
    props = Properties(PacketTypes.PUBACK)  # type: ignore[no-untyped-call]
    ok = MQTTErrorCode.MQTT_ERR_SUCCESS
    monotonic = time.monotonic
    if inbox is None or cap is None or full is None:
        inbox, cap, full = collections.deque(), [_NO_CAP], lambda: None
    buf = bytearray()
    served = [0]  # bytes consumed so far (by paho or the parser)

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

    def paho_puback(mid: int) -> None:
        with pc._out_message_mutex:  # noqa: SLF001
            if mid in pc._out_messages:  # noqa: SLF001
                pc._do_on_publish(mid, reason, props)  # noqa: SLF001

    def parse() -> None:
        """Handle the whole PUBLISH/PUBACK packets at the front of ``buf``."""
        pos, end = 0, len(buf)
        pubacks: list[int] = []
        try:
            while end - pos >= 2:
                cmd = buf[pos]
                kind = cmd & 0xF0
                if kind != 0x30 and kind != 0x40:  # noqa: PLR1714
                    return
                i = pos + 1  # remaining length: 1-4 bytes
                length = buf[i] & 0x7F
                shift = 7
                while buf[i] & 0x80:
                    i += 1
                    if i >= end or shift > 21:
                        return  # incomplete header (or malformed: paho reports it)
                    length |= (buf[i] & 0x7F) << shift
                    shift += 7
                i += 1
                stop = i + length
                if stop > end:
                    return  # incomplete packet: wait for more bytes
                if kind == 0x40:  # PUBACK
                    if length != 2:
                        return
                    mid = (buf[i] << 8) | buf[i + 1]
                    pos = stop
                    if not acked(mid):
                        paho_puback(mid)
                    continue
                qos = (cmd >> 1) & 3
                if qos > 1 or length < 2:
                    return
                if len(inbox) >= cap[0]:
                    return  # the inbox is full: this PUBLISH waits in the buffer
                j = i + 2 + ((buf[i] << 8) | buf[i + 1])
                if j + (2 if qos else 0) > stop:
                    return  # malformed: paho reports it
                try:
                    topic = buf[i + 2 : j].decode()
                except UnicodeDecodeError:
                    return  # paho's way with a bad topic
                mid = 0
                if qos:
                    mid = (buf[j] << 8) | buf[j + 1]
                    j += 2
                payload = bytes(buf[j:stop])
                pos = stop
                deliver(topic, payload, mid, qos, bool(cmd & 0x08), bool(cmd & 0x01))
                if qos and not manual_ack:
                    pubacks.append(0x40020000 | mid)
        finally:
            if pos:
                del buf[:pos]
                served[0] += pos
                pc._last_bytes_received = monotonic()  # noqa: SLF001  (keepalive, as paho does)
            if pubacks:
                _queue_bytes(pc, paho.PUBACK, struct.pack(f">{len(pubacks)}I", *pubacks))

    def fast_loop_read(max_packets: int = 1) -> MQTTErrorCode:
        if len(inbox) >= cap[0]:
            full()
            return ok
        if pc._in_packet["command"] == 0:  # noqa: SLF001  (paho is not inside a packet)
            if not buf:
                try:
                    data = recv(65536)
                except BlockingIOError:
                    return ok
                except OSError:
                    data = b""  # paho's own read meets the error again and reports it
                if not data:
                    return loop_read(max_packets)  # EOF or error: paho closes the connection
                buf.extend(data)
            parse()
            if not buf:
                return ok
            if len(inbox) >= cap[0]:
                full()
                return ok
        # paho reads the packet we leave (or finishes its own, reading the socket when the buffer
        # is empty); then parse again. Loop on bytes consumed, not on the buffer's size: a read
        # may refill it (a large packet).
        while True:
            before = served[0]
            rc = loop_read(max_packets)
            if rc != ok or pc.socket() is None or served[0] == before:
                return rc
            if buf and pc._in_packet["command"] == 0:  # noqa: SLF001
                parse()
            if not buf:
                return rc
            if len(inbox) >= cap[0]:
                full()
                return rc

    pc._sock_recv = sock_recv  # type: ignore[method-assign,assignment]  # noqa: SLF001
    pc.loop_read = fast_loop_read  # type: ignore[method-assign]


def _lean_pubacks(pc: paho.Client, acked: Callable[[int], bool]) -> None:
    """A PUBACK that paho reads itself (see ``_fast_reads``): resolve our own publish through
    ``acked(mid)``; else hand paho's ``_do_on_publish`` shared reason-code and properties
    objects instead of decoding new v5 ones for an MQTT 3.1.1 PUBACK."""
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
        if acked(mid):
            return MQTTErrorCode.MQTT_ERR_SUCCESS
        with pc._out_message_mutex:  # noqa: SLF001
            if mid in pc._out_messages:  # noqa: SLF001
                return pc._do_on_publish(mid, reason, props)  # noqa: SLF001
        return MQTTErrorCode.MQTT_ERR_SUCCESS

    pc._handle_pubackcomp = handle  # type: ignore[method-assign]  # noqa: SLF001


def _socket_reader(client: aiomqtt.Client, pc: paho.Client) -> Callable[[], None]:
    """The socket's reader callback as aiomqtt registers it (read; with TLS, drain the decoded
    bytes; a failure ends the connection), for ``MqttLink.release_reads`` to register again:
    aiomqtt keeps its own closure out of reach. Made once per connection."""

    def readable() -> None:
        try:
            while True:
                pc.loop_read()
                pending = getattr(pc._sock, "pending", None)  # noqa: SLF001
                if pending is None or pending() <= 0:
                    break
        except Exception as exc:  # noqa: BLE001  (the connection broke: aiomqtt's way)
            disconnected = client._disconnected  # noqa: SLF001  (aiomqtt replaces it per connect)
            if not disconnected.done():
                disconnected.set_exception(exc)

    return readable


def _late_suback(topics: list[str], sub: asyncio.Future[Any]) -> None:
    """A SUBSCRIBE that ``subscribe`` left to complete: log its failure (a lost connection's
    too: the next connection subscribes again)."""
    if sub.cancelled():
        return
    exc = sub.exception()
    if exc is not None:
        log.warning("subscribe %s failed: %s", topics, exc)


def _plain_reader(pc: paho.Client, lost: asyncio.Event) -> Callable[[], None]:
    """The plain path's socket reader, for watching the socket again after the inbox's bound
    paused it (aiomqtt's own is out of reach): paho's public ``loop_read``; a failure ends the
    connection (paho closes the socket on a lost connection itself)."""

    def readable() -> None:
        try:
            pc.loop_read()
        except Exception:  # noqa: BLE001  (the connection broke)
            lost.set()

    return readable


async def _watch(client: aiomqtt.Client, lost: asyncio.Event) -> None:
    """The plain path's watch over the connection: aiomqtt's public message iterator (empty: our
    ``on_message`` takes every message) ends with ``MqttError`` when the connection is lost."""
    try:
        async for _ in client.messages:
            pass
    except aiomqtt.MqttError:
        pass
    finally:
        lost.set()


def _close_socket(client: aiomqtt.Client, pc: paho.Client) -> None:
    """Close the connection's socket, if paho has not, as paho's own close would: the event loop
    stops watching it first (aiomqtt's ``on_socket_close``, reached through paho's public callback
    property: the reader and aiomqtt's keepalive task go). A socket closed while still watched
    leaves its file number in the event loop's selector, and the next connection's socket, which
    gets the same number, is never watched: its CONNACK never read (``drop`` then ``connect``
    timed out). Anyone waiting on the connection hears that it is gone."""
    sock = pc.socket()
    if sock is not None:
        fileno = sock.fileno()
        if fileno >= 0:
            with contextlib.suppress(RuntimeError):  # no running loop: nothing watches it
                loop = asyncio.get_running_loop()
                loop.remove_writer(fileno)
                loop.remove_reader(fileno)
            on_close = pc.on_socket_close
            if on_close is not None:
                with contextlib.suppress(Exception):
                    on_close(pc, pc.user_data_get(), sock)
        with contextlib.suppress(OSError):
            sock.close()
    disconnected = getattr(client, "_disconnected", None)  # aiomqtt's: its pending calls end
    if isinstance(disconnected, asyncio.Future) and not disconnected.done():
        disconnected.set_exception(aiomqtt.MqttError("connection dropped"))


def _retrieve(client: aiomqtt.Client) -> None:
    """Mark aiomqtt's connection futures' exceptions as seen (no "never retrieved" noise); a
    nicety: skipped where aiomqtt has no such futures."""
    for name in ("_connected", "_disconnected"):
        fut = getattr(client, name, None)
        if isinstance(fut, asyncio.Future) and fut.done() and not fut.cancelled():
            fut.exception()


__all__ = [
    "FAST_PATH_NAMES",
    "TESTED_AIOMQTT",
    "TESTED_PAHO",
    "BrokerAddress",
    "Inbound",
    "MqttLink",
    "Will",
    "fast_path_default",
    "fast_path_problems",
    "parse_broker_url",
    "publish_paced",
]
